//! Dependency files in the cache: stored in structured form so a hit can re-emit, byte for
//! byte, what the compiler would write for the current target and project root.
//!
//! Section layout: `S` + style + phony flag + the prerequisites (root replaced by a token),
//! each length-framed; or, when the compiler's file could not be reproduced from its parsed form,
//! `R` + the target text + the root it was written for + the file as written, usable only by an
//! invocation with the same target and root.

use std::path::PathBuf;

use anyhow::{Context, Result};
use hpcc_core::args::CompileInvocation;
use hpcc_core::depfile::{self, DepFile, DepStyle};
use hpcc_core::project::RootRewriter;

/// The files a dependency list names, in order (the source first).
pub fn parse_list(text: &[u8]) -> Result<Vec<PathBuf>> {
    let text = std::str::from_utf8(text).context("dependency list is not UTF-8")?;
    let parsed = depfile::parse(text).context("parsing the dependency list")?;
    Ok(parsed
        .prerequisites
        .into_iter()
        .map(PathBuf::from)
        .collect())
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
