//! What every hpcc binary answers the same way: `--help` (or `-h`) prints its usage to stdout,
//! `--version` (or `-V`) prints its name and version, and both exit successfully. A binary
//! calls [`help_or_version`] before it reads its own arguments.

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
}
