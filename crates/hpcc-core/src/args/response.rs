//! `@file` response-file expansion for both argument dialects.
//!
//! A word `@path` is replaced, in place, by the words read from `path`; words read from a file
//! may themselves be `@file`s, which are expanded the same way (paths are taken relative to the
//! current directory, as GCC does, not relative to the including file).
//!
//! The two dialects differ in how a file is split into words and in what happens when the file
//! cannot be opened:
//!
//! - [`Quoting::Gnu`] follows libiberty's `buildargv` (used by GCC and by Clang in GNU mode):
//!   whitespace separates words, single and double quotes group, and a backslash escapes any
//!   byte, inside quotes too. The content is raw bytes. An `@file` that cannot be opened stays a
//!   literal word, exactly as GCC leaves it (the compiler then reports the odd input itself).
//! - [`Quoting::Msvc`] follows `CommandLineToArgvW` as modern msvcrt and clang-cl apply it:
//!   only double quotes group, `""` inside quotes is a literal quote, and backslashes are literal
//!   unless they precede a quote (2n backslashes + quote give n backslashes and toggle quoting;
//!   2n+1 give n backslashes and a literal quote). The file is UTF-8 (optionally with a BOM) or
//!   UTF-16 with a BOM. A missing file is an error, because cl.exe fails on it too.
//!
//! In both dialects a NUL byte (or NUL code unit) ends the file's content, because both
//! compilers hand the buffer to C string routines.
//!
//! Expansion is bounded: nesting deeper than [`MAX_DEPTH`], more than [`MAX_FILES`] files, or
//! more than [`MAX_BYTES`] read in total is an error rather than a hang or an exhausted memory.
//! The total (not per-file) byte budget is what bounds a file that includes itself several
//! times: without it, `@self @self` nested 16 deep would expand to 2^16 copies.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Which quoting rules a response file uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quoting {
    /// GCC/Clang (libiberty `buildargv`) rules.
    Gnu,
    /// MSVC (`CommandLineToArgvW`) rules.
    Msvc,
}

/// How many response files may be nested inside one another.
pub const MAX_DEPTH: usize = 16;

/// How many bytes may be read from response files in total, over one expansion.
pub const MAX_BYTES: usize = 16 << 20;

/// How many response files one expansion may open in total.
pub const MAX_FILES: usize = 1024;

/// A response file that could not be expanded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResponseError {
    /// The file could not be opened or read.
    #[error("cannot read response file {}", .path.display())]
    Read {
        /// The response file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The `@` names a directory, which GCC and cl both reject.
    #[error("response file {} is a directory", .path.display())]
    Directory {
        /// The directory named after `@`.
        path: PathBuf,
    },
    /// Reading the file would take the total read from response files past the limit.
    #[error("response file {} takes response-file input past {limit} bytes", .path.display())]
    TooLarge {
        /// The file being read when the budget ran out.
        path: PathBuf,
        /// The total budget in bytes.
        limit: usize,
    },
    /// The file is nested too deeply (which includes a file that includes itself).
    #[error("response file {} is nested more than {limit} levels deep", .path.display())]
    TooDeep {
        /// The file that would have been one level too deep.
        path: PathBuf,
        /// The nesting limit.
        limit: usize,
    },
    /// Too many response files were opened over one expansion.
    #[error("response file {} would exceed the limit of {limit} response files", .path.display())]
    TooMany {
        /// The file that would have been one too many.
        path: PathBuf,
        /// The limit on the number of files.
        limit: usize,
    },
    /// The content is not in an encoding the dialect accepts.
    #[error("response file {} is not valid {encoding}", .path.display())]
    Decode {
        /// The response file.
        path: PathBuf,
        /// The encoding the content claimed or was expected to be in.
        encoding: &'static str,
    },
}

/// Expands every `@file` word in `args`, recursively, with the quoting rules of `quoting`.
///
/// Words that do not start with `@` are returned unchanged and in order.
pub fn expand(args: &[OsString], quoting: Quoting) -> Result<Vec<OsString>, ResponseError> {
    expand_with_limits(args, quoting, Limits::DEFAULT)
}

/// The bounds on one expansion; tests shrink them.
#[derive(Clone, Copy, Debug)]
struct Limits {
    max_depth: usize,
    max_bytes: usize,
    max_files: usize,
}

impl Limits {
    const DEFAULT: Limits = Limits {
        max_depth: MAX_DEPTH,
        max_bytes: MAX_BYTES,
        max_files: MAX_FILES,
    };
}

fn expand_with_limits(
    args: &[OsString],
    quoting: Quoting,
    limits: Limits,
) -> Result<Vec<OsString>, ResponseError> {
    // The common case has no response file at all: skip the expander and its allocations.
    if !args.iter().any(|word| response_path(word).is_some()) {
        return Ok(args.to_vec());
    }
    let mut expander = Expander {
        quoting,
        limits,
        bytes_read: 0,
        files_opened: 0,
    };
    let mut expanded = Vec::with_capacity(args.len());
    expander.expand_words(args.to_vec(), 0, &mut expanded)?;
    Ok(expanded)
}

/// The running totals of one expansion.
struct Expander {
    quoting: Quoting,
    limits: Limits,
    bytes_read: usize,
    files_opened: usize,
}

impl Expander {
    /// Appends `words` to `out`, replacing each `@file` (read at nesting `depth`) by its words.
    fn expand_words(
        &mut self,
        words: Vec<OsString>,
        depth: usize,
        out: &mut Vec<OsString>,
    ) -> Result<(), ResponseError> {
        for word in words {
            let Some(path) = response_path(&word) else {
                out.push(word);
                continue;
            };
            match self.read(Path::new(path), depth)? {
                Some(inner) => self.expand_words(inner, depth + 1, out)?,
                None => out.push(word),
            }
        }
        Ok(())
    }

    /// Reads and splits one response file; `None` means "keep the `@` word literally".
    fn read(&mut self, path: &Path, depth: usize) -> Result<Option<Vec<OsString>>, ResponseError> {
        if depth >= self.limits.max_depth {
            return Err(ResponseError::TooDeep {
                path: path.to_path_buf(),
                limit: self.limits.max_depth,
            });
        }
        if self.files_opened >= self.limits.max_files {
            return Err(ResponseError::TooMany {
                path: path.to_path_buf(),
                limit: self.limits.max_files,
            });
        }
        let file = match File::open(path) {
            Ok(file) => file,
            // libiberty's expandargv skips any @file that fopen rejects, whatever the reason.
            Err(_) if self.quoting == Quoting::Gnu => return Ok(None),
            Err(source) => {
                return Err(ResponseError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        self.files_opened += 1;
        let metadata = file.metadata().map_err(|source| ResponseError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        if metadata.is_dir() {
            return Err(ResponseError::Directory {
                path: path.to_path_buf(),
            });
        }
        let remaining = self.limits.max_bytes.saturating_sub(self.bytes_read);
        // Reading one byte past the budget tells "exactly at the limit" from "over it" without
        // trusting the metadata length, which a growing file or a pipe would get wrong.
        let read_cap = u64::try_from(remaining)
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        let mut content = Vec::new();
        file.take(read_cap)
            .read_to_end(&mut content)
            .map_err(|source| ResponseError::Read {
                path: path.to_path_buf(),
                source,
            })?;
        if content.len() > remaining {
            return Err(ResponseError::TooLarge {
                path: path.to_path_buf(),
                limit: self.limits.max_bytes,
            });
        }
        self.bytes_read += content.len();
        let words = match self.quoting {
            Quoting::Gnu => split_gnu(&content)
                .into_iter()
                .map(os_from_bytes)
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| ResponseError::Decode {
                    path: path.to_path_buf(),
                    encoding: "utf-8",
                })?,
            Quoting::Msvc => {
                let text = decode_msvc(&content).map_err(|encoding| ResponseError::Decode {
                    path: path.to_path_buf(),
                    encoding,
                })?;
                split_msvc(&text).into_iter().map(OsString::from).collect()
            }
        };
        Ok(Some(words))
    }
}

/// The path of an `@path` word, or `None` for any other word.
#[cfg(unix)]
fn response_path(word: &OsStr) -> Option<&OsStr> {
    use std::os::unix::ffi::OsStrExt;
    word.as_bytes().strip_prefix(b"@").map(OsStr::from_bytes)
}

/// The path of an `@path` word, or `None` for any other word.
///
/// Off Unix a word that is not valid Unicode is never treated as a response file: Windows argv
/// is UTF-16, so only an unpaired surrogate could get here, and such a path is left alone.
#[cfg(not(unix))]
fn response_path(word: &OsStr) -> Option<&OsStr> {
    word.to_str()?.strip_prefix('@').map(OsStr::new)
}

/// Turns one GNU word's bytes into an argv word.
#[cfg(unix)]
fn os_from_bytes(bytes: Vec<u8>) -> Option<OsString> {
    use std::os::unix::ffi::OsStringExt;
    Some(OsString::from_vec(bytes))
}

/// Turns one GNU word's bytes into an argv word; off Unix the bytes must be UTF-8.
#[cfg(not(unix))]
fn os_from_bytes(bytes: Vec<u8>) -> Option<OsString> {
    String::from_utf8(bytes).ok().map(OsString::from)
}

/// Whether `byte` separates words in a GNU response file (C `isspace` in the "C" locale).
fn is_gnu_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r')
}

/// Splits a GNU response file into words, as libiberty's `buildargv` does.
///
/// A backslash escapes the next byte everywhere (also inside quotes); an unterminated quote or
/// a trailing backslash simply ends at the end of input. `''` is an empty word; a file of only
/// whitespace has no words.
fn split_gnu(content: &[u8]) -> Vec<Vec<u8>> {
    let end = content
        .iter()
        .position(|&byte| byte == 0)
        .unwrap_or(content.len());
    let mut bytes = content[..end].iter().copied().peekable();
    let mut words = Vec::new();
    loop {
        while bytes.next_if(|&byte| is_gnu_space(byte)).is_some() {}
        if bytes.peek().is_none() {
            break;
        }
        let mut word = Vec::new();
        let mut single = false;
        let mut double = false;
        while let Some(byte) = bytes.next() {
            match byte {
                b'\\' => {
                    if let Some(escaped) = bytes.next() {
                        word.push(escaped);
                    }
                }
                b'\'' if !double => single = !single,
                b'"' if !single => double = !double,
                _ if is_gnu_space(byte) && !single && !double => break,
                _ => word.push(byte),
            }
        }
        words.push(word);
    }
    words
}

/// Decodes an MSVC response file: UTF-16 with a BOM, or UTF-8 with or without one.
///
/// cl.exe reads a BOM-less file in the ANSI code page; hpcc accepts only UTF-8 there, and
/// anything else is reported as undecodable (so the compile simply is not cached).
fn decode_msvc(content: &[u8]) -> Result<String, &'static str> {
    fn utf16(body: &[u8], from_pair: fn([u8; 2]) -> u16) -> Option<String> {
        if !body.len().is_multiple_of(2) {
            return None;
        }
        let units: Vec<u16> = body
            .chunks_exact(2)
            .map(|pair| from_pair([pair[0], pair[1]]))
            .collect();
        String::from_utf16(&units).ok()
    }
    if let Some(body) = content.strip_prefix(&[0xFF, 0xFE]) {
        return utf16(body, u16::from_le_bytes).ok_or("utf-16le");
    }
    if let Some(body) = content.strip_prefix(&[0xFE, 0xFF]) {
        return utf16(body, u16::from_be_bytes).ok_or("utf-16be");
    }
    let body = content.strip_prefix(&[0xEF, 0xBB, 0xBF]).unwrap_or(content);
    String::from_utf8(body.to_vec()).map_err(|_| "utf-8")
}

/// Whether `c` separates words in an MSVC response file (line breaks count as spaces).
fn is_msvc_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

/// Splits an MSVC response file into words with `CommandLineToArgvW`'s rules for arguments
/// after the program name.
fn split_msvc(text: &str) -> Vec<String> {
    let text = text.split('\0').next().unwrap_or_default();
    let mut chars = text.chars().peekable();
    let mut words = Vec::new();
    loop {
        while chars.next_if(|&c| is_msvc_space(c)).is_some() {}
        if chars.peek().is_none() {
            break;
        }
        let mut word = String::new();
        let mut quoted = false;
        while let Some(&c) = chars.peek() {
            match c {
                '\\' => {
                    let mut backslashes = 0usize;
                    while chars.next_if_eq(&'\\').is_some() {
                        backslashes += 1;
                    }
                    if chars.peek() == Some(&'"') {
                        word.extend(std::iter::repeat_n('\\', backslashes / 2));
                        if backslashes % 2 == 1 {
                            word.push('"');
                            chars.next();
                        }
                        // With an even count the quote is left for the next turn, which toggles.
                    } else {
                        word.extend(std::iter::repeat_n('\\', backslashes));
                    }
                }
                '"' => {
                    chars.next();
                    if !quoted {
                        quoted = true;
                    } else if chars.next_if_eq(&'"').is_some() {
                        // `""` inside quotes is a literal quote, and quoting continues (msvcrt
                        // since 2008, clang-cl's tokenizer).
                        word.push('"');
                    } else {
                        quoted = false;
                    }
                }
                _ if is_msvc_space(c) && !quoted => break,
                _ => {
                    word.push(c);
                    chars.next();
                }
            }
        }
        words.push(word);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::fs;

    fn check_gnu(content: &str, expected: &[&str]) {
        let got: Vec<String> = split_gnu(content.as_bytes())
            .into_iter()
            .map(|word| String::from_utf8(word).expect("test input is utf-8"))
            .collect();
        assert_eq!(got, expected, "gnu content {content:?}");
    }

    fn check_msvc(content: &str, expected: &[&str]) {
        assert_eq!(split_msvc(content), expected, "msvc content {content:?}");
    }

    #[test]
    fn gnu_splitting() {
        check_gnu("", &[]);
        check_gnu(" \t\r\n\x0b\x0c ", &[]);
        check_gnu("a b\tc\nd\r\ne", &["a", "b", "c", "d", "e"]);
        check_gnu("  -O2   -c  ", &["-O2", "-c"]);
        check_gnu("'a b' \"c d\"", &["a b", "c d"]);
        check_gnu("'' \"\"", &["", ""]);
        check_gnu("a'b'c\"d\"e", &["abcde"]);
        check_gnu("'a\"b' \"c'd\"", &["a\"b", "c'd"]);
        check_gnu(r"a\ b c\\d \'e \q", &["a b", r"c\d", "'e", "q"]);
        check_gnu(r"'a\'b' 'c\\d'", &["a'b", r"c\d"]);
        check_gnu(r#""a\"b""#, &["a\"b"]);
        check_gnu("'unterminated quote", &["unterminated quote"]);
        check_gnu("trailing\\", &["trailing"]);
        check_gnu("a\\\nb", &["a\nb"]);
        check_gnu("-DX=\"1 2\"", &["-DX=1 2"]);
        check_gnu("a\0b c", &["a"]);
        check_gnu("é 'ü x'", &["é", "ü x"]);
    }

    #[test]
    fn msvc_splitting() {
        check_msvc("", &[]);
        check_msvc(" \t\r\n ", &[]);
        check_msvc("/c a.cpp\r\n/Fo:out.obj", &["/c", "a.cpp", "/Fo:out.obj"]);
        check_msvc(r#""a b" c"#, &["a b", "c"]);
        check_msvc(r#""""#, &[""]);
        check_msvc(r#""" x"#, &["", "x"]);
        check_msvc(r#"a"b c"d"#, &["ab cd"]);
        check_msvc("'a b'", &["'a", "b'"]);
        check_msvc(r"C:\dir\file.c", &[r"C:\dir\file.c"]);
        check_msvc(r"a\\b", &[r"a\\b"]);
        check_msvc(r#"a\"b"#, &[r#"a"b"#]);
        check_msvc(r#"a\\"b c""#, &[r"a\b c"]);
        check_msvc(r#"a\\\"b"#, &[r#"a\"b"#]);
        check_msvc(r#"a\\\\"b""#, &[r"a\\b"]);
        check_msvc(r#""dir\\" x"#, &[r"dir\", "x"]);
        check_msvc(r#""C:\Program Files\" x"#, &[r#"C:\Program Files" x"#]);
        check_msvc(r#""a""b""#, &[r#"a"b"#]);
        check_msvc(r#""a"""b" c"#, &[r#"a"b c"#]);
        check_msvc(r#"/DX=\"1\""#, &[r#"/DX="1""#]);
        check_msvc(r"trailing\", &[r"trailing\"]);
        check_msvc(r#""unterminated x"#, &["unterminated x"]);
        check_msvc("a\0b", &["a"]);
    }

    fn check_decode(content: &[u8], expected: Result<&str, &str>) {
        let got = decode_msvc(content);
        assert_eq!(
            got.as_deref().map_err(|e| *e),
            expected,
            "content {content:?}"
        );
    }

    #[test]
    fn msvc_decoding() {
        check_decode(b"/c a.c", Ok("/c a.c"));
        check_decode(b"\xEF\xBB\xBF/c", Ok("/c"));
        check_decode(b"\xFF\xFE/\0c\0", Ok("/c"));
        check_decode(b"\xFE\xFF\0/\0c", Ok("/c"));
        check_decode(b"\xFF\xFE\xe9\0", Ok("é"));
        check_decode(b"\xFF\xFE/\0c", Err("utf-16le"));
        check_decode(b"\xFF\xFE\x00\xD8", Err("utf-16le"));
        check_decode(b"\xFE\xFF\0", Err("utf-16be"));
        check_decode(b"\xC3", Err("utf-8"));
    }

    fn words(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    /// Writes `files` (name, content) into a fresh directory and returns it.
    fn fixture(files: &[(&str, &[u8])]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("create temp dir");
        for (name, content) in files {
            fs::write(dir.path().join(name), content).expect("write fixture");
        }
        dir
    }

    /// `@name` for a file inside `dir`.
    fn at(dir: &tempfile::TempDir, name: &str) -> String {
        format!("@{}", dir.path().join(name).display())
    }

    #[test]
    fn expands_in_place_and_recursively() {
        let dir = tempfile::tempdir().expect("create temp dir");
        let inner = dir.path().join("inner.rsp");
        let outer = dir.path().join("outer.rsp");
        fs::write(&inner, "-DINNER 'x y'").expect("write inner");
        fs::write(&outer, format!("-c @{} -O2", inner.display())).expect("write outer");
        let args = words(&["-g", &format!("@{}", outer.display()), "a.c"]);
        let got = expand(&args, Quoting::Gnu).expect("expands");
        assert_eq!(got, words(&["-g", "-c", "-DINNER", "x y", "-O2", "a.c"]));
    }

    #[test]
    fn msvc_expands_utf16_and_nested() {
        let dir = tempfile::tempdir().expect("create temp dir");
        let inner = dir.path().join("inner.rsp");
        let outer = dir.path().join("outer.rsp");
        fs::write(&inner, "/DINNER \"a b\"").expect("write inner");
        let text = format!("/c\r\n@\"{}\"\r\n/Zi", inner.display());
        let mut utf16 = vec![0xFF, 0xFE];
        utf16.extend(text.encode_utf16().flat_map(u16::to_le_bytes));
        fs::write(&outer, utf16).expect("write outer");
        let args = words(&[&format!("@{}", outer.display()), "x.cpp"]);
        let got = expand(&args, Quoting::Msvc).expect("expands");
        assert_eq!(got, words(&["/c", "/DINNER", "a b", "/Zi", "x.cpp"]));
    }

    #[test]
    fn no_response_file_is_unchanged() {
        let args = words(&["-c", "a.c", "-o", "a.o", "x@y"]);
        assert_eq!(expand(&args, Quoting::Gnu).expect("expands"), args);
        assert_eq!(expand(&args, Quoting::Msvc).expect("expands"), args);
    }

    #[test]
    fn empty_file_expands_to_nothing() {
        let dir = fixture(&[("empty.rsp", b""), ("blank.rsp", b" \n\t ")]);
        let args = words(&["a", &at(&dir, "empty.rsp"), &at(&dir, "blank.rsp"), "b"]);
        assert_eq!(
            expand(&args, Quoting::Gnu).expect("expands"),
            words(&["a", "b"])
        );
        assert_eq!(
            expand(&args, Quoting::Msvc).expect("expands"),
            words(&["a", "b"])
        );
    }

    #[test]
    fn gnu_keeps_a_missing_file_literally() {
        let dir = tempfile::tempdir().expect("create temp dir");
        let missing = at(&dir, "missing.rsp");
        let args = words(&["-c", &missing, "@"]);
        assert_eq!(expand(&args, Quoting::Gnu).expect("expands"), args);
    }

    /// The error variant name for a failed expansion, and that its message names the path.
    fn check_error(args: &[String], quoting: Quoting, limits: Limits, path: &str, expected: &str) {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        let error = expand_with_limits(&args, quoting, limits).expect_err("expansion must fail");
        let variant = format!("{error:?}");
        let variant = variant.split([' ', '{']).next().unwrap_or_default();
        assert_eq!(variant, expected, "{error}");
        let message = error.to_string();
        assert!(message.contains(path), "{message:?} names {path:?}");
        assert_eq!(
            message,
            message.to_lowercase().replace(&path.to_lowercase(), path)
        );
    }

    #[test]
    fn failures_are_errors_naming_the_file() {
        let dir = fixture(&[
            ("self.rsp", b""),
            ("big.rsp", b"0123456789"),
            ("bad.rsp", b"\xFF\xFEx"),
        ]);
        let self_path = dir.path().join("self.rsp");
        fs::write(&self_path, format!("a @{0} @{0}", self_path.display())).expect("write");
        let self_name = self_path.display().to_string();
        let sub = dir.path().join("subdir");
        fs::create_dir(&sub).expect("create subdir");
        let sub_name = sub.display().to_string();
        let missing = dir.path().join("missing.rsp").display().to_string();
        let big = dir.path().join("big.rsp").display().to_string();
        let bad = dir.path().join("bad.rsp").display().to_string();
        let small = Limits {
            max_depth: 4,
            max_bytes: 9,
            max_files: 3,
        };
        let default = Limits::DEFAULT;
        let at_self = at(&dir, "self.rsp");
        let at_big = at(&dir, "big.rsp");
        check_error(
            std::slice::from_ref(&at_self),
            Quoting::Gnu,
            default,
            &self_name,
            "TooDeep",
        );
        check_error(
            std::slice::from_ref(&at_self),
            Quoting::Msvc,
            default,
            &self_name,
            "TooDeep",
        );
        let many = Limits {
            max_depth: 16,
            max_bytes: MAX_BYTES,
            max_files: 3,
        };
        check_error(&[at_self], Quoting::Gnu, many, &self_name, "TooMany");
        check_error(
            std::slice::from_ref(&at_big),
            Quoting::Gnu,
            small,
            &big,
            "TooLarge",
        );
        check_error(&[at_big], Quoting::Msvc, small, &big, "TooLarge");
        check_error(
            &[format!("@{sub_name}")],
            Quoting::Gnu,
            default,
            &sub_name,
            "Directory",
        );
        check_error(
            &[format!("@{sub_name}")],
            Quoting::Msvc,
            default,
            &sub_name,
            "Directory",
        );
        check_error(
            &[format!("@{missing}")],
            Quoting::Msvc,
            default,
            &missing,
            "Read",
        );
        check_error(&[format!("@{bad}")], Quoting::Msvc, default, &bad, "Decode");
    }

    #[test]
    fn the_byte_budget_is_total_and_inclusive() {
        let dir = fixture(&[("a.rsp", b"12345"), ("b.rsp", b"6789")]);
        let limits = Limits {
            max_depth: 4,
            max_bytes: 9,
            max_files: 8,
        };
        let both = words(&[&at(&dir, "a.rsp"), &at(&dir, "b.rsp")]);
        let got = expand_with_limits(&both, Quoting::Gnu, limits).expect("exactly at the budget");
        assert_eq!(got, words(&["12345", "6789"]));
        let thrice = words(&[&at(&dir, "a.rsp"), &at(&dir, "b.rsp"), &at(&dir, "b.rsp")]);
        let error = expand_with_limits(&thrice, Quoting::Gnu, limits).expect_err("over budget");
        assert!(
            matches!(error, ResponseError::TooLarge { limit: 9, .. }),
            "{error}"
        );
    }

    #[test]
    fn nesting_up_to_the_limit_works() {
        let dir = tempfile::tempdir().expect("create temp dir");
        // f0 includes f1 includes ... f(n-1), which holds the word "leaf".
        let make_chain = |count: usize| {
            for level in 0..count {
                let path = dir.path().join(format!("f{level}"));
                let content = if level + 1 == count {
                    "leaf".to_string()
                } else {
                    format!("@{}", dir.path().join(format!("f{}", level + 1)).display())
                };
                fs::write(path, content).expect("write chain");
            }
        };
        make_chain(MAX_DEPTH);
        let args = words(&[&at(&dir, "f0")]);
        assert_eq!(
            expand(&args, Quoting::Gnu).expect("expands"),
            words(&["leaf"])
        );
        make_chain(MAX_DEPTH + 1);
        let error = expand(&args, Quoting::Gnu).expect_err("one level too deep");
        assert!(matches!(error, ResponseError::TooDeep { .. }), "{error}");
    }

    /// Quotes `word` so that `split_gnu` gives it back: every byte escaped.
    fn gnu_quote(word: &str) -> String {
        let mut quoted = String::from("''");
        for c in word.chars() {
            quoted.push('\\');
            quoted.push(c);
        }
        quoted
    }

    /// Quotes `word` the way a Windows program must for `CommandLineToArgvW` to give it back.
    fn msvc_quote(word: &str) -> String {
        let mut quoted = String::from("\"");
        let mut backslashes = 0;
        for c in word.chars() {
            match c {
                '\\' => backslashes += 1,
                '"' => {
                    quoted.extend(std::iter::repeat_n('\\', backslashes * 2 + 1));
                    quoted.push('"');
                    backslashes = 0;
                }
                _ => {
                    quoted.extend(std::iter::repeat_n('\\', backslashes));
                    quoted.push(c);
                    backslashes = 0;
                }
            }
        }
        quoted.extend(std::iter::repeat_n('\\', backslashes * 2));
        quoted.push('"');
        quoted
    }

    proptest! {
        #[test]
        fn splitting_arbitrary_content_never_panics(content in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = split_gnu(&content);
            if let Ok(text) = decode_msvc(&content) {
                let _ = split_msvc(&text);
            }
            let _ = split_msvc(&String::from_utf8_lossy(&content));
        }

        #[test]
        fn splitting_quote_heavy_text_never_panics(content in "[ \t\n\\\\\"'a@]{0,64}") {
            let _ = split_gnu(content.as_bytes());
            let _ = split_msvc(&content);
        }

        #[test]
        fn gnu_quoting_round_trips(list in proptest::collection::vec("[^\0]{0,12}", 0..8)) {
            let content: Vec<String> = list.iter().map(|word| gnu_quote(word)).collect();
            let split: Vec<Vec<u8>> = split_gnu(content.join(" \n").as_bytes());
            let expected: Vec<Vec<u8>> = list.iter().map(|word| word.as_bytes().to_vec()).collect();
            prop_assert_eq!(split, expected);
        }

        #[test]
        fn msvc_quoting_round_trips(list in proptest::collection::vec("[^\0]{0,12}", 0..8)) {
            let content: Vec<String> = list.iter().map(|word| msvc_quote(word)).collect();
            prop_assert_eq!(split_msvc(&content.join("\r\n")), list);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn expanding_arbitrary_files_never_panics(content in proptest::collection::vec(any::<u8>(), 0..256)) {
            let dir = fixture(&[("arbitrary.rsp", &content)]);
            let args = words(&[&at(&dir, "arbitrary.rsp")]);
            let _ = expand(&args, Quoting::Gnu);
            let _ = expand(&args, Quoting::Msvc);
        }
    }
}
