//! What every hpcc binary answers the same way: `--help` (or `-h`) prints its usage to stdout,
//! `--version` (or `-V`) prints its name and version, and both exit successfully. A binary
//! calls [`help_or_version`] before it reads its own arguments.
//!
//! The services' `check-config` commands report through a [`Checklist`]: one line per thing
//! checked, `ok: …` or `PROBLEM: …`, every problem found rather than the first.

use std::ffi::OsString;

/// Answers `--help`/`-h` or `--version`/`-V` when it is the first argument: prints `usage` or
/// `<binary> <version>` to stdout and returns `true` (the binary then exits with 0). Any other
/// argument list is the binary's own to parse: `false`.
pub fn help_or_version(binary: &str, usage: &str, args: &[OsString]) -> bool {
    match args.first().and_then(|first| first.to_str()) {
        Some("--help" | "-h") => {
            println!("{}", usage.trim_end());
            true
        }
        Some("--version" | "-V") => {
            println!("{binary} {}", env!("CARGO_PKG_VERSION"));
            true
        }
        _ => false,
    }
}

/// The lines of a `check-config` run: each check prints `ok: <what>: <finding>` or
/// `PROBLEM: <what>: <why>`, and [`Checklist::finish`] says how many problems there were.
#[derive(Debug, Default)]
pub struct Checklist {
    problems: Vec<String>,
}

impl Checklist {
    /// An empty checklist.
    pub fn new() -> Checklist {
        Checklist::default()
    }

    /// Prints the outcome of checking `what`.
    pub fn check(&mut self, what: impl Into<String>, outcome: Result<String, String>) {
        let what = what.into();
        match outcome {
            Ok(finding) => println!("ok: {what}: {finding}"),
            Err(why) => {
                println!("PROBLEM: {what}: {why}");
                self.problems.push(what);
            }
        }
    }

    /// The problems found so far, by what was checked.
    pub fn problems(&self) -> &[String] {
        &self.problems
    }

    /// `Ok` if nothing was wrong, else how many problems and where.
    pub fn finish(self) -> Result<(), String> {
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} problem(s): {}",
                self.problems.len(),
                self.problems.join("; ")
            ))
        }
    }
}

/// Counts the PEM blocks of the file `path` that `wanted` accepts (by tag: `CERTIFICATE`,
/// `PRIVATE KEY`, ...); an error when it cannot be read, is not PEM, or has none.
pub fn pem_blocks(
    path: &std::path::Path,
    what: &str,
    wanted: impl Fn(&str) -> bool,
) -> Result<String, String> {
    let text = std::fs::read(path).map_err(|error| format!("reading it: {error}"))?;
    let blocks = pem::parse_many(&text).map_err(|error| format!("not PEM: {error}"))?;
    let matching = blocks.iter().filter(|block| wanted(block.tag())).count();
    if matching == 0 {
        return Err(format!(
            "no {what} in it (blocks: {:?})",
            blocks.iter().map(pem::Pem::tag).collect::<Vec<_>>()
        ));
    }
    Ok(format!("{matching} {what} block(s)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_leading_help_or_version_is_answered() {
        let args = |words: &[&str]| words.iter().map(OsString::from).collect::<Vec<_>>();
        for asked in [&["--help"][..], &["-h"], &["--version"], &["-V", "x"]] {
            assert!(help_or_version("t", "usage: t", &args(asked)), "{asked:?}");
        }
        for other in [
            &[][..],
            &["--config", "--help"],
            &["gcc", "-V"],
            &["--helpful"],
        ] {
            assert!(!help_or_version("t", "usage: t", &args(other)), "{other:?}");
        }
    }

    #[test]
    fn a_checklist_keeps_every_problem() {
        let mut list = Checklist::new();
        list.check("a", Ok("fine".into()));
        list.check("b", Err("broken".into()));
        list.check("c", Err("gone".into()));
        assert_eq!(list.problems(), ["b", "c"]);
        assert_eq!(list.finish(), Err("2 problem(s): b; c".into()));
        assert_eq!(Checklist::new().finish(), Ok(()));
    }

    #[test]
    fn pem_blocks_are_counted_by_tag() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let file = dir.path().join("x.pem");
        let block = |tag: &str| pem::encode(&pem::Pem::new(tag, vec![1, 2, 3]));
        std::fs::write(&file, block("CERTIFICATE") + &block("CERTIFICATE")).expect("written");
        assert_eq!(
            pem_blocks(&file, "certificate", |tag| tag == "CERTIFICATE"),
            Ok("2 certificate block(s)".into())
        );
        let missing = pem_blocks(&file, "key", |tag| tag.ends_with("PRIVATE KEY"));
        assert!(missing.is_err_and(|why| why.contains("no key")));
        std::fs::write(&file, "plain text").expect("written");
        assert!(pem_blocks(&file, "certificate", |_| true).is_err());
        assert!(
            pem_blocks(&dir.path().join("absent"), "certificate", |_| true)
                .is_err_and(|why| why.contains("reading it"))
        );
    }
}
