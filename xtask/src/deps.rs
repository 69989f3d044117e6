//! The architecture rules a machine can check: which crate may depend on which (the map in
//! `ARCHITECTURE.md`), and one integration-test binary per crate (`tests/it/main.rs`).
//!
//! Dependencies are read from each crate's `Cargo.toml` `[dependencies]` table (normal
//! dependencies only: tests may use anything). A rule names a crate and what it must never
//! depend on, with the reason; a known exception that a planned change removes is listed in
//! [`EXCEPTIONS`] with that plan, so it stays visible until it is gone.

use std::fmt;
use std::path::Path;

/// A crate and the crates it must not depend on, with why.
pub struct Rule {
    /// The crate.
    pub krate: &'static str,
    /// Dependencies it must not have.
    pub forbidden: &'static [&'static str],
    /// Why.
    pub why: &'static str,
}

/// The dependency rules.
pub const RULES: &[Rule] = &[
    Rule {
        krate: "hpcc-core",
        forbidden: &["tokio", "tonic", "opendal", "hpcc-*"],
        why: "the shared, synchronous base: every other crate depends on it",
    },
    Rule {
        krate: "hpcc-proto",
        forbidden: &["hpcc-*"],
        why: "generated messages only",
    },
    Rule {
        krate: "hpcc-store",
        forbidden: &[
            "hpcc-cli",
            "hpcc-daemon",
            "hpcc-scheduler",
            "hpcc-worker",
            "hpcc-runtime",
        ],
        why: "storage knows nothing of who uses it",
    },
    Rule {
        krate: "hpcc-cli",
        forbidden: &[
            "tokio",
            "tonic",
            "opendal",
            "hpcc-daemon",
            "hpcc-runtime",
            "hpcc-worker",
            "hpcc-scheduler",
        ],
        why: "the wrapper starts in a few hundred microseconds: no async runtime, no services",
    },
    Rule {
        krate: "hpcc-cache",
        forbidden: &[
            "tokio",
            "tonic",
            "opendal",
            "hpcc-cli",
            "hpcc-daemon",
            "hpcc-runtime",
            "hpcc-worker",
            "hpcc-scheduler",
        ],
        why:
            "the synchronous cache engine both the wrapper and the daemon link: no async runtime, \
              and it knows neither of its users",
    },
    Rule {
        krate: "hpcc-daemon",
        forbidden: &["hpcc-cli", "hpcc-scheduler", "hpcc-worker", "hpcc-runtime"],
        why: "the daemon and the wrapper share a cache library, not each other",
    },
    Rule {
        krate: "hpcc-auth",
        forbidden: &[
            "hpcc-daemon",
            "hpcc-scheduler",
            "hpcc-worker",
            "hpcc-runtime",
            "tokio",
        ],
        why: "token checks without I/O, shared by the scheduler and the worker",
    },
    Rule {
        krate: "hpcc-scheduler",
        forbidden: &["hpcc-worker", "hpcc-daemon", "hpcc-runtime", "hpcc-store"],
        why: "route-only: it never sees a compile, and never imports the worker",
    },
    Rule {
        krate: "hpcc-worker",
        forbidden: &["hpcc-scheduler", "hpcc-daemon", "hpcc-cli"],
        why: "the worker and the scheduler meet only through hpcc-auth and the protocol",
    },
    Rule {
        krate: "hpcc-runtime",
        forbidden: &["hpcc-store", "hpcc-scheduler", "hpcc-worker", "hpcc-daemon"],
        why: "isolation knows nothing of caches or tenants' policies",
    },
    Rule {
        krate: "hpcc-image",
        forbidden: &[
            "hpcc-daemon",
            "hpcc-scheduler",
            "hpcc-worker",
            "hpcc-runtime",
        ],
        why: "images are verified data; their users come above",
    },
    Rule {
        krate: "hpcc-agent",
        forbidden: &[
            "tonic",
            "hpcc-store",
            "hpcc-runtime",
            "hpcc-worker",
            "hpcc-auth",
        ],
        why: "PID 1 in the guest: static, small, speaking only agent frames",
    },
];

/// Dependencies the rules forbid that a planned change removes, and the plan.
pub const EXCEPTIONS: &[(&str, &str, &str)] = &[];

/// A broken rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    /// The crate.
    pub krate: String,
    /// The dependency it must not have, or the file that should not be there.
    pub what: String,
    /// Why.
    pub why: String,
}

impl fmt::Display for Broken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} ({})", self.krate, self.what, self.why)
    }
}

/// The names in the `[dependencies]` table of a `Cargo.toml`, optional ones left out.
///
/// An optional dependency is linked only by the crates that turn its feature on, so it is not
/// what a rule protects: hpcc-core's `async` feature brings tokio to the agent and the
/// runtime, which have it anyway, and the wrapper never turns it on.
pub fn dependencies(manifest: &str) -> Result<Vec<String>, String> {
    let table: toml::Table = toml::from_str(manifest).map_err(|error| error.to_string())?;
    Ok(table
        .get("dependencies")
        .and_then(toml::Value::as_table)
        .map(|dependencies| {
            dependencies
                .iter()
                .filter(|(_, spec)| {
                    spec.get("optional").and_then(toml::Value::as_bool) != Some(true)
                })
                .map(|(name, _)| name.clone())
                .collect()
        })
        .unwrap_or_default())
}

fn matches(pattern: &str, dependency: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => dependency.starts_with(prefix),
        None => pattern == dependency,
    }
}

/// The rules `krate`, with `dependencies`, breaks.
pub fn check_crate(krate: &str, dependencies: &[String]) -> Vec<Broken> {
    let mut broken = Vec::new();
    if dependencies
        .iter()
        .any(|dependency| dependency == "hpcc-testkit")
    {
        broken.push(Broken {
            krate: krate.to_owned(),
            what: "depends on hpcc-testkit".into(),
            why: "test doubles are dev-dependencies only, never in a binary".into(),
        });
    }
    for rule in RULES.iter().filter(|rule| rule.krate == krate) {
        for dependency in dependencies {
            let excepted = EXCEPTIONS
                .iter()
                .any(|(from, to, _)| *from == krate && to == dependency);
            if !excepted
                && rule
                    .forbidden
                    .iter()
                    .any(|pattern| matches(pattern, dependency))
            {
                broken.push(Broken {
                    krate: krate.to_owned(),
                    what: format!("depends on {dependency}"),
                    why: rule.why.to_owned(),
                });
            }
        }
    }
    broken
}

/// Every rule every crate under `<root>/crates` breaks: its dependencies, and its
/// integration tests, which must be one binary, `tests/it/main.rs`.
pub fn check_repo(root: &Path) -> Result<Vec<Broken>, String> {
    let crates = root.join("crates");
    let mut broken = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(&crates)
        .map_err(|error| format!("{}: {error}", crates.display()))?
        .filter_map(Result::ok)
        .collect();
    entries.sort_by_key(std::fs::DirEntry::file_name);
    for entry in entries {
        let krate = entry.file_name().to_string_lossy().into_owned();
        let manifest_path = entry.path().join("Cargo.toml");
        let Ok(manifest) = std::fs::read_to_string(&manifest_path) else {
            continue;
        };
        let dependencies = dependencies(&manifest)
            .map_err(|error| format!("{}: {error}", manifest_path.display()))?;
        broken.extend(check_crate(&krate, &dependencies));
        let tests = entry.path().join("tests");
        if let Ok(listing) = std::fs::read_dir(&tests) {
            for test in listing.filter_map(Result::ok) {
                let name = test.file_name().to_string_lossy().into_owned();
                if name != "it" {
                    broken.push(Broken {
                        krate: krate.clone(),
                        what: format!("tests/{name}"),
                        why: "integration tests are one binary, tests/it/main.rs".into(),
                    });
                }
            }
            if !tests.join("it/main.rs").is_file() {
                broken.push(Broken {
                    krate: krate.clone(),
                    what: "tests/ without tests/it/main.rs".into(),
                    why: "integration tests are one binary, tests/it/main.rs".into(),
                });
            }
        }
    }
    Ok(broken)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_repository_keeps_its_dependency_rules() {
        let broken = check_repo(&crate::tidy::repo_root()).expect("the crates can be read");
        assert!(
            broken.is_empty(),
            "{}",
            broken
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }

    #[test]
    fn optional_dependencies_are_left_out() {
        let manifest =
            "[dependencies]\nserde = \"1\"\ntokio = { version = \"1\", optional = true }\n\
                        blake3 = { version = \"1\", optional = false }\n";
        assert_eq!(
            dependencies(manifest).expect("parses"),
            vec!["blake3".to_owned(), "serde".to_owned()]
        );
        assert!(dependencies("[dependencies\n").is_err());
    }

    #[test]
    fn rules_catch_what_they_name() {
        let deps = |names: &[&str]| {
            names
                .iter()
                .map(|name| (*name).to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            check_crate("hpcc-core", &deps(&["serde", "blake3"])),
            Vec::new()
        );
        let broken = check_crate("hpcc-core", &deps(&["tokio", "hpcc-store"]));
        assert_eq!(broken.len(), 2, "{broken:?}");
        assert!(broken[1].to_string().contains("depends on hpcc-store"));
        assert_eq!(
            check_crate("hpcc-scheduler", &deps(&["hpcc-worker"])).len(),
            1,
            "the scheduler never imports the worker"
        );
        assert_eq!(
            check_crate("hpcc-worker", &deps(&["hpcc-scheduler"])).len(),
            1,
            "nor the worker the scheduler"
        );
        assert!(check_crate("hpcc-e2e", &deps(&["hpcc-worker", "hpcc-scheduler"])).is_empty());
        assert_eq!(
            check_crate("hpcc-worker", &deps(&["hpcc-testkit"])).len(),
            1
        );
        let manifest = "[package]\nname = \"x\"\n[dependencies]\nhpcc-core.workspace = true\n\
                        tokio = { version = \"1\" }\n[dev-dependencies]\ntempfile = \"3\"\n";
        assert_eq!(
            dependencies(manifest).expect("parses"),
            deps(&["hpcc-core", "tokio"])
        );
    }
}
