//! Make dependency files (`-MD`, `-MMD`, `-MF`, `-MT`, `-MQ`, `-MP`): parsing them into a
//! [`DepFile`] and re-emitting them byte for byte in the layout of the compiler that wrote them.
//!
//! On a cache hit hpcc must write the dependency file the real compiler would have written for
//! the *current* invocation. The stored file may differ from that one in its target (another
//! `-o` or `-MT`) and in an absolute root prefix (the checkout moved), and both compilers wrap
//! lines by name length, so a textual search-and-replace on the stored bytes is not enough: the
//! caller parses the stored file, rewrites the names, and [`render`]s it again.
//!
//! # Layouts
//!
//! These were established by running gcc 12 / g++ 12 and clang 14 on names of every length and
//! with spaces, `#`, `$`, `:` and `\` in them; the tests below re-check them against whatever
//! compilers are installed.
//!
//! **GCC** ([`DepStyle::Gcc`]) keeps a column counter that starts at 0. Every name after the
//! first on the rule line is preceded by one space; before writing that space it checks whether
//! `column + escaped_length > 72` and, if so, writes ` \` and a newline and resets the column
//! to 0 (the space then counts as column 1). The `:` after the targets adds one column and is
//! never preceded by a break, so a continuation line looks like ` name name \`. Targets and
//! prerequisites share this rule; lengths are those of the escaped text. With `-MP`, one line
//! `name:` follows per prerequisite except the first, with no blank lines. A compile with no
//! prerequisites at all (`-MMD` on standard input with no user headers) writes an empty file.
//!
//! **Clang** ([`DepStyle::Clang`]) wraps at 75 columns with a different rule for each half:
//! a target after the first is broken onto a new line, indented by two spaces, when
//! `column + length + 2 > 75` (the target's written, quoted length); a prerequisite is
//! preceded by ` \`, a newline and one space when `column + length + 3 > 75`, where *length is
//! the unescaped length*, and then by the usual separating space, so continuation lines start
//! with two spaces. With `-MP` each prerequisite except the first gets a blank line followed
//! by `name:`. Clang always writes the rule line, even with no prerequisites (`x.o:`). Clang
//! does not escape tabs in prerequisites, and on Unix it turns a single `\` in a path into `/`
//! before writing it, so a clang file never contains a lone backslash in a prerequisite.
//!
//! **Escaping.** Both compilers write `$` as `$$`, `#` as `\#`, and a space (gcc: also a tab)
//! as `\ `, doubling any backslashes immediately before it. `:` is not escaped. This is the
//! same quoting `-MQ` applies to a target, available as [`quote_target`].
//!
//! # Targets
//!
//! [`DepFile::targets`] holds each target exactly as it appears in the file, i.e. *already
//! quoted*: `-MT` text is written verbatim by both compilers, while `-MQ` text and the default
//! target are written through [`quote_target`]. A caller building the target list for an
//! invocation therefore passes, in command-line order:
//!
//! - for `-MT text`: `text` unchanged;
//! - for `-MQ text`: `quote_target(text)`;
//! - with neither: `quote_target(o)` where `o` is the `-o` argument exactly as written
//!   (`-MD -o obj/x.o` gives `obj/x.o`), or, without `-o`, the source file's base name with
//!   its extension replaced by `.o` (`src/my file.c` gives `my\ file.o`).
//!
//! Because targets stay in their written form, parsing splits the target text on unescaped
//! blanks only: `-MT 'a b'` and `-MT a -MT b` produce the same file and the same [`DepFile`].
//!
//! [`DepFile::prerequisites`] are unescaped paths, exactly as the compiler spelled them (no
//! normalisation), so a caller can rewrite a root prefix with plain string operations.

use serde::{Deserialize, Serialize};

/// Column limit GCC passes to its dependency writer (`deps_write (..., 72)` in `c-opts.cc`).
const GCC_COLUMN_LIMIT: usize = 72;

/// Column limit of clang's `DependencyFileGenerator` (`MaxColumns`).
const CLANG_COLUMN_LIMIT: usize = 75;

/// Which compiler's byte layout [`render`] reproduces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DepStyle {
    /// gcc and g++: wrap at 72 columns on escaped lengths, one-space continuation indent,
    /// `-MP` rules without blank lines.
    Gcc,
    /// clang and clang++: wrap at 75 columns on unescaped prerequisite lengths, two-space
    /// continuation indent, `-MP` rules each preceded by a blank line.
    Clang,
}

/// A dependency file in structured form: one rule, plus the optional `-MP` phony rules.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DepFile {
    /// The rule's targets as written in the file, i.e. already quoted (see the module docs for
    /// what a caller passes for `-MT`, `-MQ` and the default target).
    pub targets: Vec<String>,
    /// The prerequisites, unescaped, in the compiler's order (the main source file first).
    pub prerequisites: Vec<String>,
    /// Whether `-MP` phony rules (`name:`) follow for every prerequisite except the first.
    pub phony: bool,
}

/// Why a dependency file could not be parsed into a [`DepFile`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum DepFileError {
    /// The first rule has no `:` followed by a blank or the end of the line.
    #[error("dependency file line {line} has no target separator: {text:?}")]
    MissingSeparator {
        /// The 1-based physical line on which the rule starts.
        line: usize,
        /// The logical line, continuations joined, cut to a readable length.
        text: String,
    },
    /// A line after the rule is not a `name:` phony rule.
    #[error("dependency file line {line} is not a phony rule: {text:?}")]
    UnexpectedLine {
        /// The 1-based physical line.
        line: usize,
        /// The line, cut to a readable length.
        text: String,
    },
    /// The phony rules do not name the prerequisites after the first, in order, so the file
    /// could not have been written by `-MP` and cannot be rendered again.
    #[error("dependency file phony rules {found:?} do not match prerequisites {expected:?}")]
    PhonyMismatch {
        /// The prerequisites after the first.
        expected: Vec<String>,
        /// The names of the phony rules found.
        found: Vec<String>,
    },
    /// [`parse_exact`] parsed the file, but rendering it again does not give the same bytes.
    #[error(
        "dependency file is not in {style:?} layout: rendering it again differs at byte {offset}"
    )]
    NotReproducible {
        /// The layout that was checked.
        style: DepStyle,
        /// The first byte offset at which the rendering differs from the input.
        offset: usize,
    },
}

/// Applies the quoting gcc and clang apply to an `-MQ` target (and to the default target):
/// `$` becomes `$$`, `#` becomes `\#`, and a space or tab gets a backslash, with any
/// backslashes right before it doubled.
///
/// ```
/// use hpcc_core::depfile::quote_target;
/// assert_eq!(quote_target("obj dir/a$#.o"), r"obj\ dir/a$$\#.o");
/// assert_eq!(quote_target(r"c\ d"), r"c\\\ d");
/// ```
pub fn quote_target(target: &str) -> String {
    escape(target, true)
}

/// Escapes a name the way both compilers do; `escape_tab` is false for clang's prerequisites,
/// which leave tabs alone.
fn escape(name: &str, escape_tab: bool) -> String {
    let mut escaped = String::with_capacity(name.len() + 4);
    // Backslashes are copied as they come; when a blank follows a run of them, the run is
    // written a second time so that make reads the run back, then the escaped blank.
    let mut backslash_run = 0usize;
    for character in name.chars() {
        match character {
            ' ' => push_escaped_blank(&mut escaped, backslash_run, ' '),
            '\t' if escape_tab => push_escaped_blank(&mut escaped, backslash_run, '\t'),
            '$' => escaped.push_str("$$"),
            '#' => escaped.push_str("\\#"),
            other => escaped.push(other),
        }
        if character == '\\' {
            backslash_run += 1;
        } else {
            backslash_run = 0;
        }
    }
    escaped
}

fn push_escaped_blank(escaped: &mut String, backslash_run: usize, blank: char) {
    escaped.extend(std::iter::repeat_n('\\', backslash_run + 1));
    escaped.push(blank);
}

/// Writes `dep` in the byte layout `style`'s compiler uses (see the module docs).
///
/// For every file `text` a compiler of that style wrote, `render(style, &parse(text)?)` equals
/// `text`; [`parse_exact`] checks exactly that. A [`DepFile`] with neither targets nor
/// prerequisites (what parsing an empty file gives) renders as the empty string.
pub fn render(style: DepStyle, dep: &DepFile) -> String {
    if dep.targets.is_empty() && dep.prerequisites.is_empty() {
        return String::new();
    }
    match style {
        DepStyle::Gcc => render_gcc(dep),
        DepStyle::Clang => render_clang(dep),
    }
}

fn render_gcc(dep: &DepFile) -> String {
    // GCC writes nothing at all when it recorded no prerequisite.
    if dep.prerequisites.is_empty() {
        return String::new();
    }
    let mut out = String::new();
    let mut column = 0usize;
    for target in &dep.targets {
        column = gcc_write_name(&mut out, target, column);
    }
    out.push(':');
    column += 1;
    let escaped: Vec<String> = dep
        .prerequisites
        .iter()
        .map(|prerequisite| escape(prerequisite, true))
        .collect();
    for prerequisite in &escaped {
        column = gcc_write_name(&mut out, prerequisite, column);
    }
    out.push('\n');
    if dep.phony {
        for prerequisite in escaped.iter().skip(1) {
            out.push_str(prerequisite);
            out.push_str(":\n");
        }
    }
    out
}

/// One name in GCC's layout (`make_write_name` in `libcpp/mkdeps.cc`); returns the new column.
fn gcc_write_name(out: &mut String, escaped_name: &str, mut column: usize) -> usize {
    if column > 0 {
        if column + escaped_name.len() > GCC_COLUMN_LIMIT {
            out.push_str(" \\\n");
            column = 0;
        }
        out.push(' ');
        column += 1;
    }
    out.push_str(escaped_name);
    column + escaped_name.len()
}

fn render_clang(dep: &DepFile) -> String {
    let mut out = String::new();
    let mut column = 0usize;
    for target in &dep.targets {
        let length = target.len();
        if column == 0 {
            column += length;
        } else if column + length + 2 > CLANG_COLUMN_LIMIT {
            out.push_str(" \\\n  ");
            column = length + 2;
        } else {
            out.push(' ');
            column += length + 1;
        }
        out.push_str(target);
    }
    out.push(':');
    column += 1;
    for prerequisite in &dep.prerequisites {
        // Clang measures the name before escaping it, and keeps room for a trailing ` \`.
        let length = prerequisite.len();
        if column + length + 1 + 2 > CLANG_COLUMN_LIMIT {
            out.push_str(" \\\n ");
            column = 2;
        }
        out.push(' ');
        out.push_str(&escape(prerequisite, false));
        column += length + 1;
    }
    out.push('\n');
    if dep.phony {
        for prerequisite in dep.prerequisites.iter().skip(1) {
            out.push('\n');
            out.push_str(&escape(prerequisite, false));
            out.push_str(":\n");
        }
    }
    out
}

/// Parses a dependency file written by gcc or clang (either layout; the style is not needed).
///
/// Understands backslash-newline continuations, `\ ` (with GCC's doubled backslashes before
/// it), `\#` and `$$`. The first rule gives the targets (kept as written) and the
/// prerequisites (unescaped); any further non-blank lines must be the `-MP` phony rules for
/// the prerequisites after the first. An empty or blank file parses to [`DepFile::default`].
///
/// # Errors
///
/// [`DepFileError::MissingSeparator`] when the rule has no `:`, [`DepFileError::UnexpectedLine`]
/// when a later line is not `name:`, and [`DepFileError::PhonyMismatch`] when the phony rules
/// are not those `-MP` writes.
pub fn parse(text: &str) -> Result<DepFile, DepFileError> {
    let lines = logical_lines(text);
    let mut remaining = lines.iter().skip_while(|line| line.text.trim().is_empty());
    let Some(rule) = remaining.next() else {
        return Ok(DepFile::default());
    };
    let Some(separator) = find_separator(&rule.text) else {
        return Err(DepFileError::MissingSeparator {
            line: rule.first_line,
            text: shorten(&rule.text),
        });
    };
    let (target_text, prerequisite_text) = (&rule.text[..separator], &rule.text[separator + 1..]);
    let targets = tokens(target_text)
        .into_iter()
        .map(|token| token.raw.to_owned())
        .collect();
    let prerequisites: Vec<String> = tokens(prerequisite_text)
        .into_iter()
        .map(|token| token.unescaped)
        .collect();

    let mut phony_names = Vec::new();
    for line in remaining {
        if line.text.trim().is_empty() {
            continue;
        }
        let name = line
            .text
            .strip_suffix(':')
            .filter(|name| !name.is_empty())
            .ok_or_else(|| DepFileError::UnexpectedLine {
                line: line.first_line,
                text: shorten(&line.text),
            })?;
        let mut name_tokens = tokens(name);
        match (name_tokens.pop(), name_tokens.is_empty()) {
            (Some(token), true) => phony_names.push(token.unescaped),
            _ => {
                return Err(DepFileError::UnexpectedLine {
                    line: line.first_line,
                    text: shorten(&line.text),
                })
            }
        }
    }
    let phony = !phony_names.is_empty();
    if phony {
        let expected = prerequisites.get(1..).unwrap_or_default();
        if phony_names != expected {
            return Err(DepFileError::PhonyMismatch {
                expected: expected.to_vec(),
                found: phony_names,
            });
        }
    }
    Ok(DepFile {
        targets,
        prerequisites,
        phony,
    })
}

/// Parses `text` and checks that [`render`] in `style` gives back exactly `text`, which is the
/// condition for regenerating this compiler's file from the parsed form.
///
/// # Errors
///
/// Everything [`parse`] returns, and [`DepFileError::NotReproducible`] when the layout is not
/// the one `style`'s compiler writes.
pub fn parse_exact(style: DepStyle, text: &str) -> Result<DepFile, DepFileError> {
    let dep = parse(text)?;
    let rendered = render(style, &dep);
    if rendered != text {
        let offset = rendered
            .bytes()
            .zip(text.bytes())
            .take_while(|(left, right)| left == right)
            .count();
        return Err(DepFileError::NotReproducible { style, offset });
    }
    Ok(dep)
}

/// A line with its backslash-newline continuations replaced by spaces.
struct LogicalLine {
    first_line: usize,
    text: String,
}

fn logical_lines(text: &str) -> Vec<LogicalLine> {
    let mut lines = Vec::new();
    let mut current = String::new();
    let mut first_line = 1usize;
    for (index, physical) in text.split('\n').enumerate() {
        let physical = physical.strip_suffix('\r').unwrap_or(physical);
        // A final backslash continues the line; make reads it, with the newline, as a blank.
        // Compilers always write a blank before it, so the name before it is never affected.
        match physical.strip_suffix('\\') {
            Some(continued) => {
                current.push_str(continued);
                current.push(' ');
            }
            None => {
                current.push_str(physical);
                lines.push(LogicalLine {
                    first_line,
                    text: std::mem::take(&mut current),
                });
                first_line = index + 2;
            }
        }
    }
    if !current.is_empty() {
        lines.push(LogicalLine {
            first_line,
            text: current,
        });
    }
    lines
}

/// The byte offset of the `:` that ends the target list: the first one followed by a blank or
/// the end of the line. A colon inside a name (`C:/x`, `co:lon/h.h`) is followed by neither,
/// and a blank inside a target is escaped, so `a:\ b` is not a separator either.
fn find_separator(line: &str) -> Option<usize> {
    let bytes = line.as_bytes();
    bytes.iter().enumerate().find_map(|(index, byte)| {
        let next = bytes.get(index + 1);
        (*byte == b':' && matches!(next, None | Some(b' ' | b'\t'))).then_some(index)
    })
}

/// One name from a rule: its text as written and its unescaped form.
struct Token<'text> {
    raw: &'text str,
    unescaped: String,
}

/// Splits `text` on unescaped blanks, undoing the compilers' escapes.
fn tokens(text: &str) -> Vec<Token<'_>> {
    let bytes = text.as_bytes();
    let mut found = Vec::new();
    let mut start: Option<usize> = None;
    let mut unescaped = String::new();
    let mut index = 0usize;
    // All the bytes this loop dispatches on are ASCII, so every index it slices at or stops on
    // is a character boundary; other bytes are copied whole characters at a time.
    while index < bytes.len() {
        let byte = bytes[index];
        match byte {
            b' ' | b'\t' => {
                if let Some(token_start) = start.take() {
                    found.push(Token {
                        raw: &text[token_start..index],
                        unescaped: std::mem::take(&mut unescaped),
                    });
                }
                index += 1;
            }
            b'\\' => {
                start.get_or_insert(index);
                let run_end = bytes[index..]
                    .iter()
                    .position(|byte| *byte != b'\\')
                    .map_or(bytes.len(), |offset| index + offset);
                let run = run_end - index;
                match bytes.get(run_end) {
                    Some(blank @ (b' ' | b'\t')) => {
                        // 2N+1 backslashes and a blank are N backslashes and a blank inside
                        // the name; 2N backslashes end the name with N backslashes.
                        unescaped.extend(std::iter::repeat_n('\\', run / 2));
                        if run % 2 == 1 {
                            unescaped.push(char::from(*blank));
                            index = run_end + 1;
                        } else {
                            index = run_end;
                        }
                    }
                    Some(b'#') => {
                        unescaped.extend(std::iter::repeat_n('\\', run - 1));
                        unescaped.push('#');
                        index = run_end + 1;
                    }
                    _ => {
                        unescaped.extend(std::iter::repeat_n('\\', run));
                        index = run_end;
                    }
                }
            }
            b'$' => {
                start.get_or_insert(index);
                unescaped.push('$');
                index += if bytes.get(index + 1) == Some(&b'$') {
                    2
                } else {
                    1
                };
            }
            _ => {
                start.get_or_insert(index);
                let character_len = text[index..].chars().next().map_or(1, char::len_utf8);
                unescaped.push_str(&text[index..index + character_len]);
                index += character_len;
            }
        }
    }
    if let Some(token_start) = start {
        found.push(Token {
            raw: &text[token_start..],
            unescaped,
        });
    }
    found
}

/// Cuts a line for an error message so a huge file does not become a huge error.
fn shorten(text: &str) -> String {
    const LIMIT: usize = 200;
    match text.char_indices().nth(LIMIT) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::path::Path;
    use std::process::Command;

    fn dep(targets: &[&str], prerequisites: &[&str], phony: bool) -> DepFile {
        DepFile {
            targets: targets.iter().map(|target| (*target).to_owned()).collect(),
            prerequisites: prerequisites
                .iter()
                .map(|path| (*path).to_owned())
                .collect(),
            phony,
        }
    }

    // ---- Table-driven tests on files captured from gcc 12 and clang 14. ----

    /// Parses `text`, compares with `expected`, and checks that `style` renders it back.
    fn check(style: DepStyle, text: &str, expected: &DepFile) {
        let parsed = parse(text).unwrap_or_else(|error| panic!("{error}: {text:?}"));
        assert_eq!(&parsed, expected, "parsing {text:?}");
        assert_eq!(render(style, &parsed), text, "rendering {expected:?}");
    }

    #[test]
    fn captured_files_parse_and_render_back() {
        let gcc_specials =
            "obj\\ a$$\\#.o: a.c sp\\ ace/h.h h\\#sh/h.h d$$llar/h.h co:lon/h.h bs\\x/h.h\n";
        let clang_phony =
            "s.o: inc/header_number_1.h inc/header_number_2.h\n\ninc/header_number_2.h:\n";
        let gcc_targets = "averyveryveryveryveryveryverylongtargetname_aaaaaaaaaaaaaaaaaaaa.o \\\n anotherveryveryveryveryveryveryveryverylongtarget_bbbbbbbbbbbbbbbbbbbb.o \\\n third\\ target\\ with\\ spaces\\ in\\ it\\ and\\ more\\ more\\ more\\ more\\ more.o: \\\n b.c\n";
        let clang_targets = "averyveryveryveryveryveryverylongtargetname_aaaaaaaaaaaaaaaaaaaa.o \\\n  anotherveryveryveryveryveryveryveryverylongtarget_bbbbbbbbbbbbbbbbbbbb.o \\\n  third\\ target\\ with\\ spaces\\ in\\ it\\ and\\ more\\ more\\ more\\ more\\ more.o: \\\n  b.c\n";
        let long_targets = [
            "averyveryveryveryveryveryverylongtargetname_aaaaaaaaaaaaaaaaaaaa.o",
            "anotherveryveryveryveryveryveryveryverylongtarget_bbbbbbbbbbbbbbbbbbbb.o",
            "third\\ target\\ with\\ spaces\\ in\\ it\\ and\\ more\\ more\\ more\\ more\\ more.o",
        ];
        let cases: Vec<(DepStyle, &str, DepFile)> = vec![
            (DepStyle::Gcc, "b.o: b.c /usr/include/stdc-predef.h\n", dep(&["b.o"], &["b.c", "/usr/include/stdc-predef.h"], false)),
            (DepStyle::Clang, "obj/b.o: b.c\n", dep(&["obj/b.o"], &["b.c"], false)),
            (
                DepStyle::Gcc,
                "tgt one two q\\ $$a\\#b\\ c\\\\\\ d: b.c\n",
                dep(&["tgt", "one", "two", "q\\ $$a\\#b\\ c\\\\\\ d"], &["b.c"], false),
            ),
            (
                DepStyle::Gcc,
                gcc_specials,
                dep(
                    &["obj\\ a$$\\#.o"],
                    &["a.c", "sp ace/h.h", "h#sh/h.h", "d$llar/h.h", "co:lon/h.h", "bs\\x/h.h"],
                    false,
                ),
            ),
            (
                DepStyle::Gcc,
                "s.o: /usr/include/stdc-predef.h inc/header_number_1.h \\\n inc/header_number_2.h\ninc/header_number_1.h:\ninc/header_number_2.h:\n",
                dep(
                    &["s.o"],
                    &["/usr/include/stdc-predef.h", "inc/header_number_1.h", "inc/header_number_2.h"],
                    true,
                ),
            ),
            (DepStyle::Gcc, "", DepFile::default()),
            (DepStyle::Clang, "s.o:\n", dep(&["s.o"], &[], false)),
            (
                DepStyle::Clang,
                clang_phony,
                dep(&["s.o"], &["inc/header_number_1.h", "inc/header_number_2.h"], true),
            ),
            (DepStyle::Gcc, gcc_targets, dep(&long_targets, &["b.c"], false)),
            (DepStyle::Clang, clang_targets, dep(&long_targets, &["b.c"], false)),
            (DepStyle::Gcc, "a\\ b: b.c\n", dep(&["a\\ b"], &["b.c"], false)),
            (DepStyle::Gcc, "C:/x.o: C:/src/x.c\n", dep(&["C:/x.o"], &["C:/src/x.c"], false)),
            (DepStyle::Gcc, "x.o: tab\\\tname.h\n", dep(&["x.o"], &["x.o"][..0], false).with(&["tab\tname.h"])),
        ];
        for (style, text, expected) in cases {
            check(style, text, &expected);
        }
    }

    impl DepFile {
        fn with(mut self, prerequisites: &[&str]) -> DepFile {
            self.prerequisites = prerequisites
                .iter()
                .map(|path| (*path).to_owned())
                .collect();
            self
        }
    }

    #[test]
    fn escapes_are_undone() {
        // (escaped name as written, unescaped)
        let cases = [
            ("a\\ b", "a b"),
            ("a\\\\\\ b", "a\\ b"),
            ("a\\\\#b", "a\\#b"),
            ("a\\#b", "a#b"),
            ("$$a$$", "$a$"),
            ("a\\$$", "a\\$"),
            ("bs\\x", "bs\\x"),
            ("a\\\\\\\\\\ b", "a\\\\ b"),
            ("lone$", "lone$"),
            ("é\\ ü", "é ü"),
        ];
        for (written, unescaped) in cases {
            let parsed =
                parse(&format!("t: {written}\n")).unwrap_or_else(|error| panic!("{error}"));
            assert_eq!(
                parsed.prerequisites,
                vec![unescaped.to_owned()],
                "{written:?}"
            );
        }
    }

    #[test]
    fn quote_target_matches_compilers() {
        let cases = [
            ("x.o", "x.o"),
            ("obj a$#.o", "obj\\ a$$\\#.o"),
            ("q $a#b c\\ d", "q\\ $$a\\#b\\ c\\\\\\ d"),
            ("tab\there", "tab\\\there"),
            ("back\\\\ two", "back\\\\\\\\\\ two"),
            ("c:\\dir\\x.o", "c:\\dir\\x.o"),
        ];
        for (raw, quoted) in cases {
            assert_eq!(quote_target(raw), quoted, "{raw:?}");
        }
    }

    #[test]
    fn malformed_files_are_errors() {
        let cases: [(&str, DepFileError); 4] = [
            (
                "no separator here\n",
                DepFileError::MissingSeparator {
                    line: 1,
                    text: "no separator here".into(),
                },
            ),
            (
                "\n\nx.o: a.c b.h\nb.h: c.h\n",
                DepFileError::UnexpectedLine {
                    line: 4,
                    text: "b.h: c.h".into(),
                },
            ),
            (
                "x.o: a.c \\\n b.h\nother.h:\n",
                DepFileError::PhonyMismatch {
                    expected: vec!["b.h".into()],
                    found: vec!["other.h".into()],
                },
            ),
            (
                "x.o: a.c\nb.h c.h:\n",
                DepFileError::UnexpectedLine {
                    line: 2,
                    text: "b.h c.h:".into(),
                },
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(parse(text), Err(expected), "{text:?}");
        }
        assert_eq!(
            parse_exact(DepStyle::Clang, "x.o: a.c \\\n b.h\n"),
            Err(DepFileError::NotReproducible {
                style: DepStyle::Clang,
                offset: 9
            })
        );
    }

    // ---- Real compilers. ----

    /// A compiler to run: its command, the layout it writes, and the source extension.
    struct Toolchain {
        command: &'static str,
        style: DepStyle,
        extension: &'static str,
    }

    const TOOLCHAINS: [Toolchain; 4] = [
        Toolchain {
            command: "gcc",
            style: DepStyle::Gcc,
            extension: "c",
        },
        Toolchain {
            command: "g++",
            style: DepStyle::Gcc,
            extension: "cpp",
        },
        Toolchain {
            command: "clang",
            style: DepStyle::Clang,
            extension: "c",
        },
        Toolchain {
            command: "clang++",
            style: DepStyle::Clang,
            extension: "cpp",
        },
    ];

    /// Fails the test, naming the compiler, when it is not installed: a comparison that ran
    /// no compiler must not pass.
    fn require(toolchain: &Toolchain) {
        let found = Command::new(toolchain.command)
            .arg("--version")
            .output()
            .is_ok_and(|output| output.status.success());
        assert!(
            found,
            "{} is not on PATH: this test compares the dependency files of gcc, g++, clang and \
             clang++, and needs all four",
            toolchain.command
        );
    }

    /// Runs the compiler in `directory`, feeding `stdin` when given, and panics with its
    /// stderr when it fails.
    fn compile(toolchain: &Toolchain, directory: &Path, args: &[String], stdin: Option<&str>) {
        use std::io::Write;
        let mut command = Command::new(toolchain.command);
        command.current_dir(directory).args(args);
        command.stdin(if stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        });
        command
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = command
            .spawn()
            .expect("the compiler was just found on PATH");
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().expect("stdin was requested as a pipe");
            pipe.write_all(input.as_bytes())
                .expect("the compiler reads all of stdin");
        }
        let output = child.wait_with_output().expect("waiting for the compiler");
        assert!(
            output.status.success(),
            "{} {args:?} failed: {}",
            toolchain.command,
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn write(path: &Path, contents: &str) {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("creating a test directory");
        }
        std::fs::write(path, contents).expect("writing a test file");
    }

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|arg| (*arg).to_owned()).collect()
    }

    /// Directories whose names need escaping (or contain a `:` or `\`), and header names.
    const SPECIAL_HEADERS: [&str; 8] = [
        "sp ace/h.h",
        "two  spaces/h.h",
        "h#sh/x#y.h",
        "d$llar/$$$$$$.h",
        "co:lon/h.h",
        "bs\\x/h.h",
        "bs\\ sp/h.h",
        "mixed $ # dir/a b.h",
    ];

    /// A project with headers of many name lengths and the special headers, and one source
    /// per toolchain extension that includes all of them, plus `stdio.h` when `system` is set.
    fn make_project(directory: &Path, system: bool) -> Vec<String> {
        let mut headers: Vec<String> = SPECIAL_HEADERS
            .iter()
            .map(|name| (*name).to_owned())
            .collect();
        for length in [0usize, 1, 3, 7, 12, 18, 25, 33, 41, 52, 60] {
            headers.push(format!("inc/h{}.h", "x".repeat(length)));
            headers.push(format!("inc/$h{}.h", "y".repeat(length / 2)));
        }
        let mut source = String::new();
        for header in &headers {
            write(&directory.join(header), "\n");
            source.push_str(&format!("#include \"{header}\"\n"));
        }
        if system {
            source.push_str("#include <stdio.h>\n");
        }
        source.push_str("int main(void) { return 0; }\n");
        for extension in ["c", "cpp"] {
            write(&directory.join(format!("main.{extension}")), &source);
        }
        headers
    }

    /// Asserts the self-check the cache relies on for one file a compiler wrote.
    fn assert_reproduces(toolchain: &Toolchain, path: &Path, args: &[String]) -> DepFile {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
        match parse_exact(toolchain.style, &text) {
            Ok(dep) => dep,
            Err(error) => panic!(
                "{} {args:?}: {error}\nwritten:\n{text}\nrendered:\n{}",
                toolchain.command,
                parse(&text)
                    .map(|dep| render(toolchain.style, &dep))
                    .unwrap_or_default()
            ),
        }
    }

    /// Every dependency file gcc, g++, clang and clang++ write for a range of target lengths
    /// (shifting every wrap point by one column at a time), `-MT`/`-MQ` mixes, `-MP`, `-MMD`,
    /// system headers, default targets and standard input renders back byte for byte. Each
    /// of the four compilers must be installed and must have written files.
    #[test]
    fn real_compiler_files_render_back_exactly() {
        TOOLCHAINS.iter().for_each(require);
        let runs = std::thread::scope(|scope| {
            let handles: Vec<_> = TOOLCHAINS
                .iter()
                .map(|toolchain| (toolchain, scope.spawn(move || layouts_of(toolchain))))
                .collect();
            handles
                .into_iter()
                .map(|(toolchain, handle)| {
                    let runs = handle.join().expect("a layout thread panicked");
                    assert!(runs > 0, "{} wrote no dependency file", toolchain.command);
                    runs
                })
                .sum::<usize>()
        });
        println!("checked {runs} dependency files from real compilers");
    }

    fn layouts_of(toolchain: &Toolchain) -> usize {
        let directory = tempfile::tempdir().expect("creating a temporary directory");
        let root = directory.path();
        let headers = make_project(root, true);
        let source = format!("main.{}", toolchain.extension);
        let mut runs = 0usize;

        for length in 1..=80usize {
            let depfile = format!("out{length}.d");
            let mut args = strings(&[
                if length % 2 == 0 { "-MD" } else { "-MMD" },
                "-MF",
                &depfile,
            ]);
            if length % 3 == 0 {
                args.push("-MP".into());
            }
            match length % 4 {
                0 => args.extend(strings(&["-MT", &"t".repeat(length)])),
                1 => args.extend(strings(&["-MQ", &format!("{}$ #x", "q".repeat(length))])),
                2 => args.extend(strings(&[
                    "-MT",
                    &"a".repeat(length),
                    "-MQ",
                    &format!("b${}", "b".repeat(length % 37)),
                    "-MT",
                    &"c".repeat(80 - length),
                    "-MT",
                    "d",
                ])),
                _ => {}
            }
            args.extend(strings(&[
                "-c",
                &source,
                "-o",
                &format!("obj/{}.o", "o".repeat(length)),
            ]));
            std::fs::create_dir_all(root.join("obj")).expect("creating obj");
            compile(toolchain, root, &args, None);
            let dep = assert_reproduces(toolchain, &root.join(&depfile), &args);
            if length % 4 == 3 {
                assert_eq!(
                    dep.targets,
                    vec![quote_target(&format!("obj/{}.o", "o".repeat(length)))]
                );
            }
            runs += 1;
        }

        // Default targets: `-MD` alone names `<stem>.o` and `<stem>.d` in the working directory;
        // with `-o` both follow the output path, quoted.
        compile(toolchain, root, &strings(&["-MD", "-c", &source]), None);
        let dep = assert_reproduces(toolchain, &root.join("main.d"), &[]);
        assert_eq!(dep.targets, vec!["main.o".to_owned()]);
        assert_eq!(dep.prerequisites.first(), Some(&source));
        let output = "obj dir/we$ird#.o";
        std::fs::create_dir_all(root.join("obj dir")).expect("creating obj dir");
        compile(
            toolchain,
            root,
            &strings(&["-MMD", "-MP", "-c", &source, "-o", output]),
            None,
        );
        let dep = assert_reproduces(toolchain, &root.join("obj dir/we$ird#.d"), &[]);
        assert_eq!(dep.targets, vec![quote_target(output)]);
        assert!(dep.phony);
        runs += 2;

        // Absolute paths everywhere make every name long.
        let absolute_source = root.join(&source).display().to_string();
        let absolute_depfile = root.join("absolute.d");
        let args = strings(&[
            "-MD",
            "-MP",
            "-MF",
            &absolute_depfile.display().to_string(),
            "-I",
            &root.display().to_string(),
            "-c",
            &absolute_source,
            "-o",
            &root.join("obj/absolute.o").display().to_string(),
        ]);
        compile(toolchain, root, &args, None);
        assert_reproduces(toolchain, &absolute_depfile, &args);
        runs += 1;

        // Standard input: with and without headers, and with none at all (gcc: empty file).
        let stdin_sources = [
            headers
                .iter()
                .take(4)
                .map(|header| format!("#include \"{header}\"\n"))
                .collect::<String>(),
            format!("#include \"{}\"\n", headers[0]),
            "int z;\n".to_owned(),
        ];
        let language = if toolchain.extension == "c" {
            "c"
        } else {
            "c++"
        };
        for (index, stdin_source) in stdin_sources.iter().enumerate() {
            for flag in ["-MD", "-MMD"] {
                let depfile = format!("stdin{index}{flag}.d");
                let args = strings(&[
                    flag,
                    "-MP",
                    "-MF",
                    &depfile,
                    "-x",
                    language,
                    "-c",
                    "-",
                    "-o",
                    "obj/stdin.o",
                ]);
                compile(toolchain, root, &args, Some(stdin_source));
                assert_reproduces(toolchain, &root.join(&depfile), &args);
                runs += 1;
            }
        }
        runs
    }

    /// Replaces `old_root` by `new_root` at the start of each prerequisite.
    fn move_root(dep: &DepFile, old_root: &str, new_root: &str, targets: Vec<String>) -> DepFile {
        DepFile {
            targets,
            prerequisites: dep
                .prerequisites
                .iter()
                .map(|path| match path.strip_prefix(old_root) {
                    Some(rest) => format!("{new_root}{rest}"),
                    None => path.clone(),
                })
                .collect(),
            phony: dep.phony,
        }
    }

    /// The same project compiled at two roots of different lengths (one with a space) and with
    /// different targets: run 1's parsed file, moved to root 2 and re-targeted, renders exactly
    /// as run 2's file.
    #[test]
    fn moved_root_regenerates_exactly() {
        let directory = tempfile::tempdir().expect("creating a temporary directory");
        let roots = [
            directory.path().join("a/proj"),
            directory
                .path()
                .join("bb/a much longer checkout location/with/more/levels/proj"),
        ];
        for root in &roots {
            make_project(&root.join("include"), true);
            std::fs::create_dir_all(root.join("obj")).expect("creating obj");
        }
        let mut compared = 0usize;
        TOOLCHAINS.iter().for_each(require);
        for toolchain in &TOOLCHAINS {
            // (extra flags, whether -MT names the target; otherwise the default from -o)
            for (flags, explicit_target) in [
                (&["-MD", "-MP"][..], false),
                (&["-MMD"][..], true),
                (&["-MD"][..], true),
            ] {
                let mut files = Vec::new();
                for (index, root) in roots.iter().enumerate() {
                    let root_text = root.display().to_string();
                    let depfile = root.join(format!("obj/{}.d", toolchain.command));
                    let output = format!("{root_text}/obj/main-{index}{}.o", "x".repeat(index * 9));
                    let mut args = strings(flags);
                    let target = if explicit_target {
                        let target =
                            format!("{root_text}/custom-target-{}.o", "y".repeat(index * 5));
                        args.extend(strings(&["-MT", &target]));
                        target
                    } else {
                        quote_target(&output)
                    };
                    args.extend(strings(&[
                        "-MF",
                        &depfile.display().to_string(),
                        "-I",
                        &format!("{root_text}/include"),
                        "-c",
                        &format!("{root_text}/include/main.{}", toolchain.extension),
                        "-o",
                        &output,
                    ]));
                    compile(toolchain, root, &args, None);
                    let text = std::fs::read_to_string(&depfile)
                        .expect("the compiler wrote the dependency file");
                    files.push((root_text, target, text));
                }
                let (first_root, _, first_text) = &files[0];
                let (second_root, second_target, second_text) = &files[1];
                let stored = parse_exact(toolchain.style, first_text)
                    .unwrap_or_else(|error| panic!("{error}"));
                let moved = move_root(
                    &stored,
                    first_root,
                    second_root,
                    vec![second_target.clone()],
                );
                assert_eq!(
                    &render(toolchain.style, &moved),
                    second_text,
                    "{} {flags:?}",
                    toolchain.command
                );
                // The roots are long enough to change the wrapping, so a textual replacement
                // would not have worked.
                assert_ne!(&first_text.replace(first_root, second_root), second_text);
                compared += 1;
            }
        }
        assert_eq!(
            compared,
            TOOLCHAINS.len() * 3,
            "every toolchain and flag set compared"
        );
        println!("compared {compared} regenerated dependency files");
    }

    // ---- Properties. ----

    /// Names as they occur in paths: the characters that need escaping, non-ASCII text, and no
    /// newline, tab (clang leaves tabs unescaped) or trailing backslash (neither compiler
    /// writes a name ending in `\` unambiguously).
    fn name() -> impl Strategy<Value = String> {
        "[a-z0-9_./: #$\\\\é-]{1,40}"
            .prop_filter("no trailing backslash", |name| !name.ends_with('\\'))
    }

    /// A target name; one ending in `:` would end the target list early, in make as here.
    fn target_name() -> impl Strategy<Value = String> {
        name().prop_filter("no trailing colon", |name| !name.ends_with(':'))
    }

    proptest! {
        #[test]
        fn parse_never_panics(text in "(?s).{0,300}") {
            let _ = parse(&text);
        }

        #[test]
        fn parse_never_panics_on_make_syntax(text in "[a-z :#$\\\\\t\r\n]{0,300}") {
            if let Ok(dep) = parse(&text) {
                let _ = render(DepStyle::Gcc, &dep);
                let _ = render(DepStyle::Clang, &dep);
            }
        }

        #[test]
        fn render_then_parse_round_trips(
            raw_targets in prop::collection::vec(target_name(), 1..4),
            prerequisites in prop::collection::vec(name(), 1..12),
            phony in any::<bool>(),
        ) {
            let dep = DepFile {
                targets: raw_targets.iter().map(|target| quote_target(target)).collect(),
                prerequisites,
                phony,
            };
            // A phony rule list is empty, and so invisible, with a single prerequisite.
            let expected = DepFile { phony: phony && dep.prerequisites.len() > 1, ..dep.clone() };
            for style in [DepStyle::Gcc, DepStyle::Clang] {
                let text = render(style, &dep);
                prop_assert_eq!(parse_exact(style, &text), Ok(expected.clone()), "{:?}", text);
            }
        }
    }
}
