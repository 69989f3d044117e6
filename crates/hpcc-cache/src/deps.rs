//! Dependency files in the cache: stored in structured form so a hit can re-emit, byte for
//! byte, what the compiler would write for the current targets and project root.
//!
//! [`store`] writes an `S` section when [`depfile::parse_exact`] can render the compiler's file
//! again byte for byte and its targets are the ones this invocation implies: `S`, the style (`g`
//! or `c`), the `-MP` flag, and the prerequisites with the root replaced by a token, each
//! length-framed (the token holds a NUL). [`restore`] renders it for the *current* targets (`-MT`,
//! `-MQ`, or the quoted output path) and root, in the compiler's own layout ([`depfile::render`]:
//! GCC wraps at 72 columns, Clang at 75).
//!
//! Otherwise an `R` section keeps the file as written, with the targets and root it was written
//! for, and serves only an invocation with the same pair; another is a miss.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

use anyhow::{Context, Result};
use hpcc_core::args::CompileInvocation;
use hpcc_core::depfile::{self, DepFile, DepStyle};
use hpcc_core::project::RootRewriter;

/// The files a dependency list names, in order (the source first).
///
/// Paths are bytes on Unix, and a dependency file may hold names that are not UTF-8. The
/// parser works on text, so each byte of an invalid sequence is carried through it as a
/// character from the last private-use plane (which no real path uses) and turned back into
/// that byte afterwards.
pub fn parse_list(text: &[u8]) -> Result<Vec<PathBuf>> {
    let decoded = escape_bytes(text);
    let parsed = depfile::parse(&decoded).context("parsing the dependency list")?;
    Ok(parsed
        .prerequisites
        .iter()
        .map(|path| PathBuf::from(OsString::from_vec(unescape_bytes(path))))
        .collect())
}

/// First code point of the range that carries raw bytes through UTF-8 text.
const BYTE_ESCAPE_BASE: u32 = 0x10_FF00;

fn escape_bytes(mut bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    loop {
        match std::str::from_utf8(bytes) {
            Ok(valid) => {
                out.push_str(valid);
                return out;
            }
            Err(error) => {
                let (valid, rest) = bytes.split_at(error.valid_up_to());
                out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                let bad = error.error_len().unwrap_or(rest.len()).max(1);
                for &byte in &rest[..bad] {
                    out.push(char::from_u32(BYTE_ESCAPE_BASE + u32::from(byte)).unwrap_or('?'));
                }
                bytes = &rest[bad..];
            }
        }
    }
}

fn unescape_bytes(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for character in text.chars() {
        let code = u32::from(character);
        match code.checked_sub(BYTE_ESCAPE_BASE).map(u8::try_from) {
            Some(Ok(byte)) => out.push(byte),
            _ => {
                let mut buffer = [0u8; 4];
                out.extend_from_slice(character.encode_utf8(&mut buffer).as_bytes());
            }
        }
    }
    out
}

/// The targets the compiler writes for this invocation, as they appear in the file.
fn expected_targets(invocation: &CompileInvocation) -> Vec<String> {
    let Some(dep) = &invocation.dep else {
        return Vec::new();
    };
    if dep.targets.is_empty() {
        return vec![depfile::quote_target(&invocation.output.to_string_lossy())];
    }
    dep.targets
        .iter()
        .map(|(target, quoted)| {
            let text = target.to_string_lossy();
            if *quoted {
                depfile::quote_target(&text)
            } else {
                text.into_owned()
            }
        })
        .collect()
}

/// Encodes the dependency file `text` the compiler wrote, for storing.
pub fn store(
    text: &[u8],
    invocation: &CompileInvocation,
    is_clang: bool,
    rewriter: &RootRewriter,
) -> Result<Vec<u8>> {
    let style = if is_clang {
        DepStyle::Clang
    } else {
        DepStyle::Gcc
    };
    let targets = expected_targets(invocation);
    let structured = std::str::from_utf8(text)
        .ok()
        .and_then(|text| depfile::parse_exact(style, text).ok())
        .filter(|parsed| parsed.targets == targets)
        .filter(|parsed| !parsed.prerequisites.iter().any(|p| p.contains('\0')));
    let mut section = Vec::with_capacity(text.len() + 16);
    match structured {
        Some(parsed) => {
            section.push(b'S');
            section.push(match style {
                DepStyle::Gcc => b'g',
                DepStyle::Clang => b'c',
            });
            section.push(u8::from(parsed.phony));
            // Length-framed, since the rewritten root token itself contains a NUL.
            for prerequisite in &parsed.prerequisites {
                push_framed(&mut section, &rewriter.rewrite(prerequisite.as_bytes()));
            }
        }
        None => {
            section.push(b'R');
            push_framed(&mut section, targets.join("\0").as_bytes());
            push_framed(&mut section, rewriter.root().unwrap_or_default());
            section.extend_from_slice(text);
        }
    }
    Ok(section)
}

fn push_framed(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn take_framed<'a>(input: &mut &'a [u8]) -> Option<&'a [u8]> {
    let length = usize::try_from(u64::from_le_bytes(input.get(..8)?.try_into().ok()?)).ok()?;
    let bytes = input.get(8..8usize.checked_add(length)?)?;
    *input = &input[8 + length..];
    Some(bytes)
}

/// The dependency file for this invocation from a stored section, or `None` when the section
/// cannot serve it (a raw file for another target or root, or a damaged section).
pub fn restore(
    section: &[u8],
    invocation: &CompileInvocation,
    rewriter: &RootRewriter,
) -> Result<Option<Vec<u8>>> {
    let targets = expected_targets(invocation);
    match section.first() {
        Some(b'S') => {
            let (Some(&style), Some(&phony)) = (section.get(1), section.get(2)) else {
                return Ok(None);
            };
            let style = match style {
                b'g' => DepStyle::Gcc,
                b'c' => DepStyle::Clang,
                _ => return Ok(None),
            };
            let mut body = &section[3..];
            let mut prerequisites = Vec::new();
            while !body.is_empty() {
                let Some(part) = take_framed(&mut body) else {
                    return Ok(None);
                };
                let restored = rewriter.restore(part);
                let Ok(text) = std::str::from_utf8(&restored) else {
                    return Ok(None);
                };
                prerequisites.push(text.to_owned());
            }
            let dep = DepFile {
                targets,
                prerequisites,
                phony: phony == 1,
            };
            Ok(Some(depfile::render(style, &dep).into_bytes()))
        }
        Some(b'R') => {
            let mut rest = &section[1..];
            let (Some(stored_targets), Some(stored_root)) =
                (take_framed(&mut rest), take_framed(&mut rest))
            else {
                return Ok(None);
            };
            let same_targets = stored_targets == targets.join("\0").as_bytes();
            let same_root = stored_root == rewriter.root().unwrap_or_default();
            Ok((same_targets && same_root).then(|| rest.to_vec()))
        }
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_utf8_paths_survive_parsing() {
        let list = b"x.o: caf\xe9.c sub/\xff\xfe.h ok.h\n";
        let paths = parse_list(list).expect("parses");
        let bytes: Vec<Vec<u8>> = paths
            .into_iter()
            .map(|path| path.into_os_string().into_vec())
            .collect();
        assert_eq!(
            bytes,
            vec![
                b"caf\xe9.c".to_vec(),
                b"sub/\xff\xfe.h".to_vec(),
                b"ok.h".to_vec()
            ]
        );
    }
}
