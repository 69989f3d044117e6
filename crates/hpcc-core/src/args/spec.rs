//! The shape of an option-table row and the lookup shared by both grammars.

/// How an option takes its argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgForm {
    /// No argument: the word must equal the spelling (`-c`).
    Flag,
    /// The argument is glued on (`-Wl,--foo`, `-std=c11`, `-O2`); an empty remainder is allowed.
    Joined,
    /// The argument is the next word (`-include foo.h`, `-Xlinker x`).
    Separate,
    /// Glued on or the next word (`-Ifoo`, `-I foo`, `-o x`).
    JoinedOrSeparate,
    /// Either `--opt=value` or `--opt value` (`--sysroot`, `--param`); the table spells `--opt`.
    EqualsOrSeparate,
}

/// What an option means to the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// A positional input file (a source, or an object/library for the linker).
    Input,
    /// The output path (`-o`, `/Fo`).
    Output,
    /// Compile to an object and stop (`-c`, `/c`).
    CompileOnly,
    /// Compile to assembly and stop (`-S`).
    EmitAssembly,
    /// Preprocess only (`-E`, `/E`, `/P`): not cacheable.
    PreprocessOnly,
    /// `-x`: sets the language of the following inputs.
    Language,
    /// A dependency-generation switch (`-MD`, `-MMD`, `-MP`, `-M`, `-MM`, `-MG`).
    DepFlag,
    /// The dependency file path (`-MF`).
    DepFile,
    /// A dependency target (`-MT`, `-MQ`).
    DepTarget,
    /// An include search directory (`-I`, `-isystem`, `-iquote`, `-idirafter`, `/I`).
    IncludeDir,
    /// A file included before the source (`-include`, `-imacros`, `/FI`).
    IncludeFile,
    /// A macro definition or removal (`-D`, `-U`, `/D`, `/U`).
    Define,
    /// Any other option that only affects preprocessing (`-nostdinc`, `-Wp,`, `--sysroot`).
    Preprocessor,
    /// An option that affects code generation or diagnostics (`-O2`, `-f...`, `-W...`, `-g`).
    Codegen,
    /// A debug-information option (`-g`, `/Z7`, `/Zi`).
    Debug,
    /// An option the linker alone uses (`-l`, `-L`, `-Wl,`); harmless with `-c`.
    LinkOnly,
    /// An option whose argument is a file whose content changes the output.
    ContentInput,
    /// A diagnostics-colour switch.
    Color,
    /// An option that makes the invocation not cacheable by itself (queries, `-save-temps`).
    Uncacheable,
    /// An MSVC output or listing option that hpcc parses but does not restore yet (`/Fd`).
    AuxOutput,
    /// `/showIncludes`: include list on stdout.
    ShowIncludes,
}

/// One row of a family's option table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptSpec {
    /// The spelling, including its leading `-`, `--` or `/`.
    pub name: &'static str,
    /// How the argument is attached.
    pub form: ArgForm,
    /// What the option means to the cache.
    pub role: Role,
}

impl OptSpec {
    /// Shorthand used by the tables.
    pub const fn new(name: &'static str, form: ArgForm, role: Role) -> OptSpec {
        OptSpec { name, form, role }
    }
}

/// The result of matching one argv word against a table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Match<'w> {
    /// The matching row.
    pub spec: &'static OptSpec,
    /// The glued-on value, if the word carries one (`-Ifoo` gives `Some("foo")`).
    pub joined: Option<&'w str>,
}

/// Finds the row for `word`: an exact spelling wins; otherwise the longest spelling that is a
/// prefix of `word` among the rows that accept a glued value.
///
/// `case_insensitive` serves MSVC, whose options are matched without regard to case for the
/// letters after `/` or `-` only where the table says so; callers normalise before calling.
pub fn lookup<'w>(table: &'static [OptSpec], word: &'w str) -> Option<Match<'w>> {
    let mut best: Option<Match<'w>> = None;
    for spec in table {
        if word == spec.name {
            // An exact hit on a value-taking option means the value is (or may be) separate.
            let joined = match spec.form {
                ArgForm::Joined => Some(""),
                _ => None,
            };
            return Some(Match { spec, joined });
        }
        let Some(rest) = word.strip_prefix(spec.name) else {
            continue;
        };
        let value = match spec.form {
            ArgForm::Flag | ArgForm::Separate => continue,
            ArgForm::Joined | ArgForm::JoinedOrSeparate => rest,
            ArgForm::EqualsOrSeparate => match rest.strip_prefix('=') {
                Some(value) => value,
                None => continue,
            },
        };
        let longer = best.is_none_or(|current| current.spec.name.len() < spec.name.len());
        if longer {
            best = Some(Match {
                spec,
                joined: Some(value),
            });
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    static TABLE: &[OptSpec] = &[
        OptSpec::new("-I", ArgForm::JoinedOrSeparate, Role::IncludeDir),
        OptSpec::new("-include", ArgForm::Separate, Role::IncludeFile),
        OptSpec::new("-i", ArgForm::Joined, Role::Preprocessor),
        OptSpec::new("--sysroot", ArgForm::EqualsOrSeparate, Role::Preprocessor),
        OptSpec::new("-c", ArgForm::Flag, Role::CompileOnly),
    ];

    fn check(word: &str, expected: Option<(&str, Option<&str>)>) {
        let got = lookup(TABLE, word).map(|m| (m.spec.name, m.joined));
        assert_eq!(got, expected, "word {word:?}");
    }

    #[test]
    fn exact_beats_prefix_and_longest_prefix_wins() {
        check("-include", Some(("-include", None)));
        check("-Ifoo", Some(("-I", Some("foo"))));
        check("-I", Some(("-I", None)));
        check("-iquote", Some(("-i", Some("quote"))));
        check("--sysroot=/x", Some(("--sysroot", Some("/x"))));
        check("--sysroot", Some(("--sysroot", None)));
        check("--sysrootx", None);
        check("-c", Some(("-c", None)));
        check("-cx", None);
    }
}
