//! The rules of `CONTRIBUTING.md` that a machine can check, run as `#[test]`s and by
//! `cargo xtask tidy`.
//!
//! Every `.rs` file under `crates/` and `xtask/` is scanned. The rules look at code only: each
//! file is first reduced by [`code_only`], which blanks out comments and the contents of string
//! and character literals while keeping every line in place. That is what lets prose mention a
//! banned attribute, and lets this file hold its own needles in string literals, without a false
//! report; a plain text search would need an exception list instead, and exception lists rot.
//!
//! The scanner is a small lexer, not a parser: attributes and macro calls are recognised on one
//! line. Splitting `#[ignore]` over several lines would slip past it, but rustfmt never writes
//! it that way.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

/// One checkable rule. Each states why it exists ([`Rule::rationale`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// No ignored tests.
    Ignore,
    /// No tests that expect a panic.
    ShouldPanic,
    /// `allow(unsafe_code)` only on or inside a `sys` module.
    AllowUnsafe,
    /// Every `unsafe` block has a `// SAFETY:` comment right above it.
    UndocumentedUnsafe,
    /// Every non-test module under `crates/*/src` starts with a `//!` doc.
    ModuleDoc,
    /// No `dbg!` left behind.
    Dbg,
    /// No `todo!`.
    Todo,
    /// No `unimplemented!`.
    Unimplemented,
}

impl Rule {
    /// Every rule, in report order.
    pub const ALL: [Rule; 8] = [
        Rule::Ignore,
        Rule::ShouldPanic,
        Rule::AllowUnsafe,
        Rule::UndocumentedUnsafe,
        Rule::ModuleDoc,
        Rule::Dbg,
        Rule::Todo,
        Rule::Unimplemented,
    ];

    /// A short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Rule::Ignore => "no-ignore",
            Rule::ShouldPanic => "no-should-panic",
            Rule::AllowUnsafe => "unsafe-only-in-sys",
            Rule::UndocumentedUnsafe => "safety-comment",
            Rule::ModuleDoc => "module-doc",
            Rule::Dbg => "no-dbg",
            Rule::Todo => "no-todo",
            Rule::Unimplemented => "no-unimplemented",
        }
    }

    /// Why the rule exists, printed with every violation.
    pub fn rationale(self) -> &'static str {
        match self {
            Rule::Ignore => {
                "an ignored test counts as neither run nor failed; a test that cannot run here \
                 reports `skipped: <reason>` through the harness instead"
            }
            Rule::ShouldPanic => {
                "a panic can come from the wrong place and still pass; return an error and assert \
                 on it, or put the precondition in a type"
            }
            Rule::AllowUnsafe => {
                "unsafe code lives in one `#[allow(unsafe_code)] mod sys;` per crate, where each \
                 syscall becomes a safe fn, so review knows where to look"
            }
            Rule::UndocumentedUnsafe => {
                "an unsafe block must say why it is sound, in a `// SAFETY:` comment on the \
                 line(s) right above it"
            }
            Rule::ModuleDoc => "every module starts with a `//!` doc saying what it owns",
            Rule::Dbg => "a debugging leftover that prints to stderr in production",
            Rule::Todo => "unfinished code that panics at run time",
            Rule::Unimplemented => "unfinished code that panics at run time",
        }
    }
}

/// One broken rule at one place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The file, relative to the repository root.
    pub path: PathBuf,
    /// The 1-based line.
    pub line: usize,
    /// The rule broken.
    pub rule: Rule,
    /// The offending line, trimmed.
    pub text: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {}: `{}` ({})",
            self.path.display(),
            self.line,
            self.rule.name(),
            self.text,
            self.rule.rationale()
        )
    }
}

/// The repository root: the parent of this crate's directory.
pub fn repo_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map_or_else(|| manifest_dir.to_path_buf(), Path::to_path_buf)
}

/// Every `.rs` file under `root/crates` and `root/xtask`, sorted, skipping build output
/// (`target`) and hidden directories.
pub fn rust_files(root: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for top in ["crates", "xtask"] {
        collect_rust_files(&root.join(top), &mut files)?;
    }
    files.sort();
    Ok(files)
}

fn collect_rust_files(dir: &Path, files: &mut Vec<PathBuf>) -> io::Result<()> {
    let listing = match fs::read_dir(dir) {
        Ok(listing) => listing,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(with_path(error, dir)),
    };
    for entry in listing {
        let entry = entry.map_err(|error| with_path(error, dir))?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let file_type = entry.file_type().map_err(|error| with_path(error, &path))?;
        if file_type.is_dir() {
            if name != "target" && !name.starts_with('.') {
                collect_rust_files(&path, files)?;
            }
        } else if file_type.is_file() && name.ends_with(".rs") {
            files.push(path);
        }
    }
    Ok(())
}

fn with_path(error: io::Error, path: &Path) -> io::Error {
    io::Error::new(error.kind(), format!("{}: {error}", path.display()))
}

/// What a run over the repository found.
#[derive(Debug, Default)]
pub struct Report {
    /// How many files were scanned.
    pub files_checked: usize,
    /// Every violation, by file then line.
    pub violations: Vec<Violation>,
}

/// Runs every rule over every Rust file of the repository at `root`.
pub fn check_repo(root: &Path) -> io::Result<Report> {
    let mut report = Report::default();
    for path in rust_files(root)? {
        let text = fs::read_to_string(&path).map_err(|error| with_path(error, &path))?;
        let relative = path.strip_prefix(root).unwrap_or(&path);
        report.violations.extend(check_source(relative, &text));
        report.files_checked += 1;
    }
    Ok(report)
}

/// Runs every rule over one file; `path` is relative to the repository root and decides which
/// rules apply (module docs are required under `crates/*/src` only, `sys.rs` may allow unsafe).
pub fn check_source(path: &Path, text: &str) -> Vec<Violation> {
    let code = code_only(text);
    let code_lines: Vec<&str> = code.lines().collect();
    let raw_lines: Vec<&str> = text.lines().collect();
    let mut violations = Vec::new();
    let mut report = |index: usize, rule: Rule| {
        violations.push(Violation {
            path: path.to_path_buf(),
            line: index + 1,
            rule,
            text: raw_lines
                .get(index)
                .map_or("", |line| line.trim())
                .to_owned(),
        });
    };
    let is_sys_module = is_sys_module(path);
    for (index, line) in code_lines.iter().enumerate() {
        if has_attribute(line, "ignore") {
            report(index, Rule::Ignore);
        }
        if has_attribute(line, "should_panic") {
            report(index, Rule::ShouldPanic);
        }
        if !is_sys_module && allows_unsafe_code(line) && !applies_to_mod_sys(&code_lines, index) {
            report(index, Rule::AllowUnsafe);
        }
        if opens_unsafe_block(&code_lines, index) && !has_safety_comment(&raw_lines, index) {
            report(index, Rule::UndocumentedUnsafe);
        }
        for (name, rule) in [
            ("dbg", Rule::Dbg),
            ("todo", Rule::Todo),
            ("unimplemented", Rule::Unimplemented),
        ] {
            if calls_macro(line, name) {
                report(index, rule);
            }
        }
    }
    if needs_module_doc(path) {
        if let Some(index) = missing_module_doc(&raw_lines) {
            report(index, Rule::ModuleDoc);
        }
    }
    violations
}

/// `text` with comments and the insides of string and character literals replaced by spaces;
/// newlines are kept, so line numbers stay the same.
pub fn code_only(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |character: char, out: &mut String| {
        out.push(if character == '\n' { '\n' } else { ' ' });
    };
    let mut index = 0;
    while index < chars.len() {
        let character = chars[index];
        let next = chars.get(index + 1).copied();
        if character == '/' && next == Some('/') {
            while index < chars.len() && chars[index] != '\n' {
                out.push(' ');
                index += 1;
            }
        } else if character == '/' && next == Some('*') {
            // Block comments nest in Rust.
            let mut depth = 0usize;
            while index < chars.len() {
                let pair = (chars[index], chars.get(index + 1).copied());
                if pair == ('/', Some('*')) {
                    depth += 1;
                    out.push_str("  ");
                    index += 2;
                } else if pair == ('*', Some('/')) {
                    depth -= 1;
                    out.push_str("  ");
                    index += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(chars[index], &mut out);
                    index += 1;
                }
            }
        } else if character == '"' {
            out.push('"');
            index += 1;
            while index < chars.len() {
                match chars[index] {
                    '\\' => {
                        blank('\\', &mut out);
                        if let Some(&escaped) = chars.get(index + 1) {
                            blank(escaped, &mut out);
                        }
                        index += 2;
                    }
                    '"' => {
                        out.push('"');
                        index += 1;
                        break;
                    }
                    other => {
                        blank(other, &mut out);
                        index += 1;
                    }
                }
            }
        } else if let Some(hashes) = raw_string_hashes(&chars, index) {
            // `r#"`: keep the opening, blank the body, keep the closing `"#`.
            let opening = 2 + hashes;
            for &kept in &chars[index..index + opening] {
                out.push(kept);
            }
            index += opening;
            while index < chars.len() {
                let closes = chars[index] == '"'
                    && (1..=hashes).all(|offset| chars.get(index + offset) == Some(&'#'));
                if closes {
                    for &kept in &chars[index..index + 1 + hashes] {
                        out.push(kept);
                    }
                    index += 1 + hashes;
                    break;
                }
                blank(chars[index], &mut out);
                index += 1;
            }
        } else if character == '\'' {
            match char_literal_end(&chars, index) {
                Some(end) => {
                    out.push('\'');
                    for &inner in &chars[index + 1..end] {
                        blank(inner, &mut out);
                    }
                    out.push('\'');
                    index = end + 1;
                }
                // A lifetime or a label: plain code.
                None => {
                    out.push('\'');
                    index += 1;
                }
            }
        } else {
            out.push(character);
            index += 1;
        }
    }
    out
}

fn is_ident_char(character: char) -> bool {
    character.is_alphanumeric() || character == '_'
}

/// If a raw string (`r"`, `r#"`, `br##"`, `cr"`) starts with the `r` at `index`, the number of
/// `#`s in its delimiter.
fn raw_string_hashes(chars: &[char], index: usize) -> Option<usize> {
    if chars[index] != 'r' {
        return None;
    }
    let starts_token = match index.checked_sub(1).map(|before| chars[before]) {
        None => true,
        Some('b' | 'c') => index
            .checked_sub(2)
            .is_none_or(|before| !is_ident_char(chars[before])),
        Some(before) => !is_ident_char(before),
    };
    if !starts_token {
        return None;
    }
    let hashes = chars[index + 1..]
        .iter()
        .take_while(|&&character| character == '#')
        .count();
    (chars.get(index + 1 + hashes) == Some(&'"')).then_some(hashes)
}

/// If a character literal (`'x'`, `'\n'`, `'\u{1F600}'`) opens at `index`, the index of its
/// closing quote; `None` for a lifetime or label (`'a`, `'static`, `'outer:`).
fn char_literal_end(chars: &[char], index: usize) -> Option<usize> {
    match chars.get(index + 1)? {
        '\\' => {
            // The escaped character is skipped, so `'\''` closes at the third quote. The longest
            // escape, `\u{10FFFF}`, fits well within the window.
            (index + 3..(index + 14).min(chars.len()))
                .take_while(|&at| chars[at] != '\n')
                .find(|&at| chars[at] == '\'')
        }
        '\n' => None,
        _ => (chars.get(index + 2) == Some(&'\'')).then_some(index + 2),
    }
}

/// Start offsets of `word` in `line` as a whole identifier.
fn word_positions<'a>(line: &'a str, word: &'a str) -> impl Iterator<Item = usize> + 'a {
    line.match_indices(word).filter_map(move |(at, _)| {
        let before_ok = line[..at]
            .chars()
            .next_back()
            .is_none_or(|c| !is_ident_char(c));
        let after_ok = line[at + word.len()..]
            .chars()
            .next()
            .is_none_or(|c| !is_ident_char(c));
        (before_ok && after_ok).then_some(at)
    })
}

/// Whether `line` carries the attribute `name`, directly (`#[name]`, `#[name = ".."]`) or
/// through `#[cfg_attr(.., name)]`.
fn has_attribute(line: &str, name: &str) -> bool {
    line.match_indices('#').any(|(at, _)| {
        let rest = line[at + 1..].trim_start();
        let rest = rest.strip_prefix('!').unwrap_or(rest).trim_start();
        let Some(inside) = rest.strip_prefix('[') else {
            return false;
        };
        let inside = inside.trim_start();
        let ident_len = inside
            .find(|c: char| !is_ident_char(c))
            .unwrap_or(inside.len());
        match &inside[..ident_len] {
            ident if ident == name => true,
            "cfg_attr" => word_positions(&inside[ident_len..], name).next().is_some(),
            _ => false,
        }
    })
}

/// Whether `line` holds `allow(..)` listing `unsafe_code`.
fn allows_unsafe_code(line: &str) -> bool {
    word_positions(line, "allow").any(|at| {
        let rest = line[at + "allow".len()..].trim_start();
        let Some(list) = rest.strip_prefix('(') else {
            return false;
        };
        let end = list.find(')').unwrap_or(list.len());
        word_positions(&list[..end], "unsafe_code").next().is_some()
    })
}

/// Whether the attribute on line `index` is attached to a `mod sys` declaration: the rest of the
/// line after the attribute, or the next code line that is not blank and not another attribute.
fn applies_to_mod_sys(code_lines: &[&str], index: usize) -> bool {
    let line = code_lines[index];
    let after_attribute = line.rfind(']').map_or("", |at| &line[at + 1..]);
    if !after_attribute.trim().is_empty() {
        return declares_mod_sys(after_attribute);
    }
    code_lines[index + 1..]
        .iter()
        .map(|line| line.trim())
        .find(|line| !line.is_empty() && !line.starts_with("#["))
        .is_some_and(declares_mod_sys)
}

/// `mod sys;`, `mod sys {`, optionally with a visibility such as `pub(crate)`.
fn declares_mod_sys(item: &str) -> bool {
    let mut rest = item.trim_start();
    if let Some(after_pub) = rest.strip_prefix("pub") {
        rest = after_pub.trim_start();
        if let Some(scope) = rest.strip_prefix('(') {
            rest = scope
                .find(')')
                .map_or("", |end| &scope[end + 1..])
                .trim_start();
        }
    }
    let Some(after_mod) = rest.strip_prefix("mod") else {
        return false;
    };
    if !after_mod.starts_with(char::is_whitespace) {
        return false;
    }
    let name = after_mod.trim_start();
    name.strip_prefix("sys")
        .is_some_and(|tail| tail.trim_start().starts_with([';', '{']))
}

fn is_sys_module(path: &Path) -> bool {
    let name = path.file_name().and_then(|name| name.to_str());
    let parent = path
        .parent()
        .and_then(Path::file_name)
        .and_then(|name| name.to_str());
    name == Some("sys.rs") || (name == Some("mod.rs") && parent == Some("sys"))
}

/// Whether line `index` opens an `unsafe { .. }` block (as opposed to `unsafe fn`, `unsafe impl`
/// and the like). The brace may start the next line.
fn opens_unsafe_block(code_lines: &[&str], index: usize) -> bool {
    let line = code_lines[index];
    word_positions(line, "unsafe").any(|at| {
        let rest = line[at + "unsafe".len()..].trim_start();
        if rest.is_empty() {
            code_lines[index + 1..]
                .iter()
                .map(|line| line.trim_start())
                .find(|line| !line.is_empty())
                .is_some_and(|line| line.starts_with('{'))
        } else {
            rest.starts_with('{')
        }
    })
}

/// Whether the comment lines directly above line `index` (no blank line in between) include one
/// starting with `// SAFETY:`. A long justification may continue over several `//` lines.
fn has_safety_comment(raw_lines: &[&str], index: usize) -> bool {
    raw_lines[..index]
        .iter()
        .rev()
        .map(|line| line.trim_start())
        .take_while(|line| line.starts_with("//"))
        .any(|line| line.starts_with("// SAFETY:"))
}

/// Module docs are required of every file under `crates/<crate>/src` except test modules
/// (`tests.rs`, `test.rs`, or anything in a `tests` directory).
fn needs_module_doc(path: &Path) -> bool {
    let parts: Vec<&str> = path
        .components()
        .filter_map(|component| match component {
            Component::Normal(part) => part.to_str(),
            _ => None,
        })
        .collect();
    let in_crate_src = parts.len() > 3 && parts[0] == "crates" && parts[2] == "src";
    let is_test = parts.iter().skip(3).any(|part| *part == "tests")
        || matches!(parts.last(), Some(&("tests.rs" | "test.rs")));
    in_crate_src && !is_test
}

/// The 0-based line at which a file fails to start with a `//!` (or `/*!`) module doc, if it
/// does. Blank lines and plain `//` comments (a licence header) may come first.
fn missing_module_doc(raw_lines: &[&str]) -> Option<usize> {
    for (index, line) in raw_lines.iter().enumerate() {
        let line = line.trim();
        if line.starts_with("//!") || line.starts_with("/*!") {
            return None;
        }
        let plain_comment = line.starts_with("//") && !line.starts_with("///");
        if !line.is_empty() && !plain_comment {
            return Some(index);
        }
    }
    Some(0)
}

/// Whether `line` calls the macro `name!` with any delimiter.
fn calls_macro(line: &str, name: &str) -> bool {
    word_positions(line, name).any(|at| {
        line[at + name.len()..]
            .trim_start()
            .strip_prefix('!')
            .is_some_and(|args| args.trim_start().starts_with(['(', '[', '{']))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // The needles are assembled with `concat!` so that not even a plain-text search of this
    // file finds them; the scanner would skip them anyway, since they sit in string literals.
    const IGNORE: &str = concat!("#[", "ignore", "]");
    const SHOULD_PANIC: &str = concat!("#[", "should_", "panic", "]");
    const ALLOW_UNSAFE: &str = concat!("#[allow(", "unsafe_", "code)]");
    const UNSAFE: &str = concat!("uns", "afe");
    const DBG: &str = concat!("db", "g!");
    const TODO: &str = concat!("to", "do!");
    const UNIMPLEMENTED: &str = concat!("unimpl", "emented!");

    /// Checks `source` as the file `path` and compares the `(line, rule)` pairs found.
    fn check(path: &str, source: &str, expected: &[(usize, Rule)]) {
        let found: Vec<(usize, Rule)> = check_source(Path::new(path), source)
            .into_iter()
            .map(|violation| (violation.line, violation.rule))
            .collect();
        assert_eq!(found, expected, "path {path}, source:\n{source}");
    }

    /// A file under `crates/*/src` that satisfies the module-doc rule.
    const LIB: &str = "crates/demo/src/lib.rs";

    #[test]
    fn banned_test_attributes() {
        check(
            LIB,
            &format!("//! Doc.\n{IGNORE}\nfn a() {{}}\n"),
            &[(2, Rule::Ignore)],
        );
        check(
            LIB,
            &format!("//! Doc.\n#[ ignore = \"slow\" ]\n{SHOULD_PANIC}\n"),
            &[(2, Rule::Ignore), (3, Rule::ShouldPanic)],
        );
        check(
            LIB,
            "//! Doc.\n#[cfg_attr(miri, ignore)]\n#[ignore_me]\n",
            &[(2, Rule::Ignore)],
        );
    }

    #[test]
    fn prose_and_literals_are_not_code() {
        let source = format!(
            "//! Mentions {IGNORE} and {DBG}(x).\n\
             /// {SHOULD_PANIC} /* {TODO}() */\n\
             const A: &str = \"{IGNORE} {UNSAFE} {{ }}\";\n\
             const B: &str = r#\"{DBG}(\"quoted\") {UNIMPLEMENTED}()\"#;\n\
             /* outer /* nested {TODO}() */ still a comment {DBG}(1) */\n\
             const C: char = '\"'; const D: char = '\\''; fn f<'a>(x: &'a str) {{}}\n\
             const E: &str = \"after the chars {DBG}(2)\";\n"
        );
        check(LIB, &source, &[]);
    }

    #[test]
    fn leftover_macros() {
        let source = format!(
            "//! Doc.\nfn a() {{ {DBG}(1); std::{TODO}(); }}\nfn b() {{ {UNIMPLEMENTED} [] }}\n\
             fn c() {{ my_{DBG}(1); {TODO}ish(); }}\n"
        );
        check(
            LIB,
            &source,
            &[(2, Rule::Dbg), (2, Rule::Todo), (3, Rule::Unimplemented)],
        );
    }

    #[test]
    fn allow_unsafe_code_only_for_sys() {
        let outside = format!("//! Doc.\n{ALLOW_UNSAFE}\nmod ffi;\n");
        check(LIB, &outside, &[(2, Rule::AllowUnsafe)]);
        let listed = format!(
            "//! Doc.\n#[allow(dead_code, {}_code)]\nfn f() {{}}\n",
            UNSAFE
        );
        check(LIB, &listed, &[(2, Rule::AllowUnsafe)]);
        let on_sys = format!("//! Doc.\n{ALLOW_UNSAFE}\n#[cfg(unix)]\npub(crate) mod sys;\n");
        check(LIB, &on_sys, &[]);
        let same_line = format!("//! Doc.\n{ALLOW_UNSAFE} mod sys {{}}\n");
        check(LIB, &same_line, &[]);
        let sysfoo = format!("//! Doc.\n{ALLOW_UNSAFE}\nmod system;\n");
        check(LIB, &sysfoo, &[(2, Rule::AllowUnsafe)]);
        let inner = format!("//! Doc.\n#![allow({}_code)]\n", UNSAFE);
        check("crates/demo/src/sys.rs", &inner, &[]);
        check("crates/demo/src/sys/mod.rs", &inner, &[]);
        check(
            "crates/demo/src/system.rs",
            &inner,
            &[(2, Rule::AllowUnsafe)],
        );
    }

    #[test]
    fn unsafe_blocks_need_a_safety_comment() {
        let bare = format!("//! Doc.\nfn f() {{\n    let x = {UNSAFE} {{ g() }};\n}}\n");
        check(LIB, &bare, &[(3, Rule::UndocumentedUnsafe)]);
        let documented = format!(
            "//! Doc.\nfn f() {{\n    // SAFETY: g has no preconditions.\n    let x = {UNSAFE} {{ g() }};\n}}\n"
        );
        check(LIB, &documented, &[]);
        let long = format!(
            "//! Doc.\n// SAFETY: the descriptor is open,\n// and owned here.\n{UNSAFE}\n{{ g() }}\n"
        );
        check(LIB, &long, &[]);
        let separated =
            format!("//! Doc.\n// SAFETY: stale.\n\n{UNSAFE} {{ g() }}\n// SAFETY: later.\n");
        check(LIB, &separated, &[(4, Rule::UndocumentedUnsafe)]);
        let not_blocks = format!(
            "//! Doc.\n{UNSAFE} fn f() {{}}\n{UNSAFE} impl Send for X {{}}\n{UNSAFE} extern \"C\" {{}}\n"
        );
        check(LIB, &not_blocks, &[]);
    }

    #[test]
    fn module_docs_under_crate_sources() {
        check(LIB, "use std::fs;\n", &[(1, Rule::ModuleDoc)]);
        check(LIB, "/// Outer doc.\nfn f() {}\n", &[(1, Rule::ModuleDoc)]);
        check(LIB, "", &[(1, Rule::ModuleDoc)]);
        check(LIB, "// Licence header.\n\n//! Doc.\n", &[]);
        check(LIB, "/*! Block doc. */\n", &[]);
        check(
            "crates/demo/src/a/b.rs",
            "#![allow(x)]\n//! Late doc.\n",
            &[(1, Rule::ModuleDoc)],
        );
        // Test modules and files outside `crates/*/src` need none.
        check("crates/demo/src/disk/tests.rs", "use super::*;\n", &[]);
        check("crates/demo/src/tests/helpers.rs", "use super::*;\n", &[]);
        check("crates/demo/tests/it/main.rs", "mod basic;\n", &[]);
        check("xtask/src/other.rs", "fn main() {}\n", &[]);
    }

    #[test]
    fn every_rule_has_a_distinct_name_and_a_reason() {
        for (index, rule) in Rule::ALL.iter().enumerate() {
            assert!(!rule.rationale().is_empty(), "{rule:?}");
            assert!(
                Rule::ALL[index + 1..]
                    .iter()
                    .all(|other| other.name() != rule.name()),
                "{rule:?}"
            );
        }
    }

    #[test]
    fn code_only_keeps_lines_and_code() {
        let source = "let a = \"x\ny\"; // c\n/* b\n */ let b = 'q';\nr#\"raw\n\"#;";
        let code = code_only(source);
        assert_eq!(code.lines().count(), source.lines().count());
        assert_eq!(
            code.lines().collect::<Vec<_>>(),
            [
                "let a = \" ",
                " \";     ",
                "    ",
                "    let b = ' ';",
                "r#\"   ",
                "\"#;"
            ]
        );
    }

    /// Runs one rule over the whole repository and lists every violation in the failure.
    fn assert_repo_obeys(rule: Rule) {
        let root = repo_root();
        let report = check_repo(&root).expect("every Rust file of the repository is readable");
        let broken: Vec<String> = report
            .violations
            .iter()
            .filter(|violation| violation.rule == rule)
            .map(ToString::to_string)
            .collect();
        assert!(
            broken.is_empty(),
            "{} violation(s) of {}:\n{}",
            broken.len(),
            rule.name(),
            broken.join("\n")
        );
    }

    #[test]
    fn the_walk_sees_the_workspace() {
        let root = repo_root();
        let files = rust_files(&root).expect("the source tree is readable");
        assert!(files.contains(&root.join("xtask/src/tidy.rs")));
        assert!(files
            .iter()
            .any(|file| file.starts_with(root.join("crates"))));
        let in_build_output = |file: &PathBuf| {
            file.strip_prefix(&root).is_ok_and(|relative| {
                relative
                    .components()
                    .any(|part| part.as_os_str() == "target")
            })
        };
        assert!(!files.iter().any(in_build_output));
    }

    #[test]
    fn repo_has_no_ignored_tests() {
        assert_repo_obeys(Rule::Ignore);
    }

    #[test]
    fn repo_has_no_should_panic_tests() {
        assert_repo_obeys(Rule::ShouldPanic);
    }

    #[test]
    fn repo_allows_unsafe_code_only_in_sys() {
        assert_repo_obeys(Rule::AllowUnsafe);
    }

    #[test]
    fn repo_documents_every_unsafe_block() {
        assert_repo_obeys(Rule::UndocumentedUnsafe);
    }

    #[test]
    fn repo_modules_have_docs() {
        assert_repo_obeys(Rule::ModuleDoc);
    }

    #[test]
    fn repo_has_no_dbg() {
        assert_repo_obeys(Rule::Dbg);
    }

    #[test]
    fn repo_has_no_todo() {
        assert_repo_obeys(Rule::Todo);
    }

    #[test]
    fn repo_has_no_unimplemented() {
        assert_repo_obeys(Rule::Unimplemented);
    }
}
