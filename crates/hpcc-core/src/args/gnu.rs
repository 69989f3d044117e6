//! The GNU argument grammar, spoken by gcc, g++, cc, c++, clang and clang++.
//!
//! [`GNU_OPTIONS`] lists every option hpcc understands. Families of options that only tune code
//! generation or warnings (`-f*`, `-m*`, `-W*`, `-O*`, `-g*`) are accepted through prefix rows;
//! the options inside those families that read or write files of their own are listed
//! explicitly, so that the longest-prefix rule gives them their own role. Anything that matches
//! no row is an unknown option, and an unknown option makes the invocation not cacheable: an
//! option hpcc does not understand could change anything.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use super::spec::{lookup, ArgForm, OptSpec, Role};
use super::{
    Classification, ColorRequest, CompileInvocation, DepRequest, DepScope, Family, Language,
    NotCacheable, OutputKind, ParsedArg,
};

use ArgForm::{EqualsOrSeparate as Eq, Flag, Joined, JoinedOrSeparate as JoS, Separate as Sep};
use Role::*;

/// The GNU option table. Order does not matter: an exact spelling wins, then the longest
/// prefix among rows that take a glued value.
pub static GNU_OPTIONS: &[OptSpec] = &[
    // What to produce.
    OptSpec::new("-c", Flag, CompileOnly),
    OptSpec::new("-S", Flag, EmitAssembly),
    OptSpec::new("-E", Flag, PreprocessOnly),
    OptSpec::new("-o", JoS, Output),
    OptSpec::new("-x", JoS, Language),
    // Dependency files.
    OptSpec::new("-M", Flag, DepFlag),
    OptSpec::new("-MM", Flag, DepFlag),
    OptSpec::new("-MD", Flag, DepFlag),
    OptSpec::new("-MMD", Flag, DepFlag),
    OptSpec::new("-MP", Flag, DepFlag),
    OptSpec::new("-MG", Flag, DepFlag),
    OptSpec::new("-MF", JoS, DepFile),
    OptSpec::new("-MT", JoS, DepTarget),
    OptSpec::new("-MQ", JoS, DepTarget),
    OptSpec::new("-MJ", JoS, Uncacheable),
    // Include search and the preprocessor.
    OptSpec::new("-I", JoS, IncludeDir),
    OptSpec::new("-isystem", JoS, IncludeDir),
    OptSpec::new("-iquote", JoS, IncludeDir),
    OptSpec::new("-idirafter", JoS, IncludeDir),
    OptSpec::new("-cxx-isystem", JoS, IncludeDir),
    OptSpec::new("-F", JoS, IncludeDir),
    OptSpec::new("-iprefix", JoS, Preprocessor),
    OptSpec::new("-iwithprefix", JoS, Preprocessor),
    OptSpec::new("-iwithprefixbefore", JoS, Preprocessor),
    OptSpec::new("-isysroot", JoS, Preprocessor),
    OptSpec::new("-imultilib", JoS, Preprocessor),
    OptSpec::new("-imultiarch", JoS, Preprocessor),
    OptSpec::new("--sysroot", Eq, Preprocessor),
    OptSpec::new("-include", JoS, IncludeFile),
    OptSpec::new("-imacros", JoS, IncludeFile),
    OptSpec::new("-include-pch", Sep, Uncacheable),
    OptSpec::new("-D", JoS, Define),
    OptSpec::new("-U", JoS, Define),
    OptSpec::new("-A", JoS, Preprocessor),
    OptSpec::new("-nostdinc", Flag, Preprocessor),
    OptSpec::new("-nostdinc++", Flag, Preprocessor),
    OptSpec::new("-nostdlibinc", Flag, Preprocessor),
    OptSpec::new("-nobuiltininc", Flag, Preprocessor),
    OptSpec::new("-undef", Flag, Preprocessor),
    OptSpec::new("-trigraphs", Flag, Preprocessor),
    OptSpec::new("-traditional", Flag, Preprocessor),
    OptSpec::new("-traditional-cpp", Flag, Preprocessor),
    OptSpec::new("-P", Flag, Preprocessor),
    OptSpec::new("-C", Flag, Preprocessor),
    OptSpec::new("-CC", Flag, Preprocessor),
    OptSpec::new("-H", Flag, Preprocessor),
    OptSpec::new("-Wp,", Joined, Preprocessor),
    OptSpec::new("-Xpreprocessor", Sep, Preprocessor),
    // Code generation, diagnostics, language dialect.
    OptSpec::new("-f", Joined, Codegen),
    OptSpec::new("-m", Joined, Codegen),
    OptSpec::new("-W", Joined, Codegen),
    OptSpec::new("-O", Joined, Codegen),
    OptSpec::new("-g", Joined, Debug),
    OptSpec::new("-w", Flag, Codegen),
    OptSpec::new("-d", Joined, Codegen),
    OptSpec::new("-std=", Joined, Codegen),
    OptSpec::new("--std", Eq, Codegen),
    OptSpec::new("-ansi", Flag, Codegen),
    OptSpec::new("-pedantic", Flag, Codegen),
    OptSpec::new("-pedantic-errors", Flag, Codegen),
    OptSpec::new("-pipe", Flag, Codegen),
    OptSpec::new("-pthread", Flag, Codegen),
    OptSpec::new("-pthreads", Flag, Codegen),
    OptSpec::new("-p", Flag, Codegen),
    OptSpec::new("-pg", Flag, Codegen),
    OptSpec::new("--coverage", Flag, Codegen),
    OptSpec::new("--param", Eq, Codegen),
    OptSpec::new("-Wa,", Joined, Codegen),
    OptSpec::new("-Xassembler", Sep, Codegen),
    OptSpec::new("-Xclang", Sep, Codegen),
    OptSpec::new("-mllvm", Sep, Codegen),
    OptSpec::new("-arch", Sep, Codegen),
    OptSpec::new("-target", Sep, Codegen),
    OptSpec::new("--target", Eq, Codegen),
    OptSpec::new("-gcc-toolchain", Sep, Codegen),
    OptSpec::new("--gcc-toolchain", Eq, Codegen),
    OptSpec::new("-resource-dir", Sep, Codegen),
    OptSpec::new("-resource-dir=", Joined, Codegen),
    OptSpec::new("-stdlib=", Joined, Codegen),
    OptSpec::new("--stdlib", Eq, Codegen),
    OptSpec::new("-rtlib=", Joined, Codegen),
    OptSpec::new("--rtlib", Eq, Codegen),
    OptSpec::new("-emit-llvm", Flag, Codegen),
    OptSpec::new("-integrated-as", Flag, Codegen),
    OptSpec::new("-no-integrated-as", Flag, Codegen),
    OptSpec::new("-Qunused-arguments", Flag, Codegen),
    OptSpec::new("-no-canonical-prefixes", Flag, Codegen),
    OptSpec::new("--no-default-config", Flag, Codegen),
    OptSpec::new("-dumpbase", Sep, Codegen),
    OptSpec::new("-dumpbase-ext", Sep, Codegen),
    OptSpec::new("-dumpdir", Sep, Codegen),
    OptSpec::new("-ftest-coverage", Flag, Codegen),
    // Colour.
    OptSpec::new("-fdiagnostics-color", Flag, Color),
    OptSpec::new("-fdiagnostics-color=", Joined, Color),
    OptSpec::new("-fno-diagnostics-color", Flag, Color),
    OptSpec::new("-fcolor-diagnostics", Flag, Color),
    OptSpec::new("-fno-color-diagnostics", Flag, Color),
    // Options whose argument is a file whose content changes the output.
    OptSpec::new("-fprofile-use=", Joined, ContentInput),
    OptSpec::new("-fprofile-instr-use=", Joined, ContentInput),
    OptSpec::new("-fprofile-sample-use=", Joined, ContentInput),
    OptSpec::new("-fauto-profile=", Joined, ContentInput),
    OptSpec::new("-fprofile-list=", Joined, ContentInput),
    OptSpec::new("-fplugin=", Joined, ContentInput),
    OptSpec::new("-fsanitize-blacklist=", Joined, ContentInput),
    OptSpec::new("-fsanitize-ignorelist=", Joined, ContentInput),
    OptSpec::new("-specs=", Joined, ContentInput),
    OptSpec::new("--specs", Eq, ContentInput),
    OptSpec::new("--config", Eq, ContentInput),
    // Linking only (ignored by a `-c` compile, but hashed: they are rare with `-c`).
    OptSpec::new("-l", JoS, LinkOnly),
    OptSpec::new("-L", JoS, LinkOnly),
    OptSpec::new("-T", JoS, LinkOnly),
    OptSpec::new("-u", JoS, LinkOnly),
    OptSpec::new("-z", Sep, LinkOnly),
    OptSpec::new("-Wl,", Joined, LinkOnly),
    OptSpec::new("-Xlinker", Sep, LinkOnly),
    OptSpec::new("-framework", Sep, LinkOnly),
    OptSpec::new("-shared", Flag, LinkOnly),
    OptSpec::new("-static", Flag, LinkOnly),
    OptSpec::new("-static-pie", Flag, LinkOnly),
    OptSpec::new("-static-libgcc", Flag, LinkOnly),
    OptSpec::new("-static-libstdc++", Flag, LinkOnly),
    OptSpec::new("-shared-libgcc", Flag, LinkOnly),
    OptSpec::new("-rdynamic", Flag, LinkOnly),
    OptSpec::new("-pie", Flag, LinkOnly),
    OptSpec::new("-no-pie", Flag, LinkOnly),
    OptSpec::new("-s", Flag, LinkOnly),
    OptSpec::new("-nostdlib", Flag, LinkOnly),
    OptSpec::new("-nostartfiles", Flag, LinkOnly),
    OptSpec::new("-nodefaultlibs", Flag, LinkOnly),
    OptSpec::new("-nolibc", Flag, LinkOnly),
    OptSpec::new("-fuse-ld=", Joined, LinkOnly),
    // Not cacheable by themselves: queries, extra outputs, precompiled headers.
    OptSpec::new("-v", Flag, Uncacheable),
    OptSpec::new("-###", Flag, Uncacheable),
    OptSpec::new("--version", Flag, Uncacheable),
    OptSpec::new("--help", Joined, Uncacheable),
    OptSpec::new("--target-help", Flag, Uncacheable),
    OptSpec::new("-print-", Joined, Uncacheable),
    OptSpec::new("--print-", Joined, Uncacheable),
    OptSpec::new("-dumpversion", Flag, Uncacheable),
    OptSpec::new("-dumpfullversion", Flag, Uncacheable),
    OptSpec::new("-dumpmachine", Flag, Uncacheable),
    OptSpec::new("-dumpspecs", Flag, Uncacheable),
    OptSpec::new("-save-temps", Joined, Uncacheable),
    OptSpec::new("--save-temps", Joined, Uncacheable),
    OptSpec::new("-fsyntax-only", Flag, Uncacheable),
    OptSpec::new("-fdump-", Joined, Uncacheable),
    OptSpec::new("-fstack-usage", Flag, Uncacheable),
    OptSpec::new("-fcallgraph-info", Joined, Uncacheable),
    OptSpec::new("-fsave-optimization-record", Joined, Uncacheable),
    OptSpec::new("-ftime-trace", Joined, Uncacheable),
    OptSpec::new("-aux-info", Sep, Uncacheable),
    OptSpec::new("--serialize-diagnostics", Sep, Uncacheable),
    OptSpec::new("-fmodule", Joined, Uncacheable),
    OptSpec::new("-fcxx-modules", Flag, Uncacheable),
    OptSpec::new("-fpch-", Joined, Uncacheable),
    OptSpec::new("-fprofile-use", Flag, Uncacheable),
    OptSpec::new("-B", JoS, Uncacheable),
    OptSpec::new("--driver-mode=", Joined, Uncacheable),
];

/// Why an option with the `Uncacheable` role makes the whole invocation not cacheable.
fn uncacheable_reason(name: &str, word: &str) -> NotCacheable {
    match name {
        "-v" | "-###" | "--version" | "--help" | "--target-help" | "-print-" | "--print-"
        | "-dumpversion" | "-dumpfullversion" | "-dumpmachine" | "-dumpspecs" => {
            NotCacheable::Query(word.to_owned())
        }
        "-save-temps" | "--save-temps" => NotCacheable::SaveTemps,
        "-fsyntax-only" => NotCacheable::NoOutput,
        "-include-pch" | "-fpch-" => NotCacheable::PrecompiledHeader,
        "-B" => NotCacheable::UnknownOption(format!("{word} (changes which compiler tools run)")),
        "-fprofile-use" => {
            NotCacheable::UnknownOption(format!("{word} (profile found by object name)"))
        }
        "--driver-mode=" => NotCacheable::UnknownOption(word.to_owned()),
        _ => NotCacheable::ExtraOutput(word.to_owned()),
    }
}

/// Parses a GNU argv (without the compiler, response files already expanded).
pub fn parse(words: &[OsString]) -> Classification {
    match Parser::default().run(words) {
        Ok(invocation) => Classification::Compile(invocation),
        Err(reason) => Classification::NotCacheable(reason),
    }
}

#[derive(Default)]
struct Parser {
    args: Vec<ParsedArg>,
    /// Positional inputs: (index in `args`, language from `-x` in force at that point).
    inputs: Vec<(usize, Option<Option<Language>>)>,
    /// `-x` in force: `None` = none given (or `-x none`), `Some(Some(l))` = a known language,
    /// `Some(None)` = a language hpcc does not cache.
    language: Option<Option<Language>>,
    language_name: String,
    output_kind: Option<OutputKind>,
    outputs: Vec<OsString>,
    preprocess_only: bool,
    dep_only: bool,
    dep_scope: Option<DepScope>,
    dep_file: Option<OsString>,
    dep_targets: Vec<(OsString, bool)>,
    dep_phony: bool,
    split_dwarf: bool,
    coverage: bool,
    debug_info: bool,
    content_inputs: Vec<PathBuf>,
    color: ColorRequest,
    architectures: usize,
    first_uncacheable: Option<NotCacheable>,
}

impl Parser {
    fn run(mut self, words: &[OsString]) -> Result<CompileInvocation, NotCacheable> {
        let mut index = 0;
        while index < words.len() {
            let word = &words[index];
            index += 1;
            let text = word.to_str();
            let is_option = text.is_some_and(|t| t.starts_with('-') && t.len() > 1)
                || (text.is_none() && word.as_encoded_bytes().first() == Some(&b'-'));
            if !is_option {
                self.inputs.push((self.args.len(), self.language));
                self.args.push(ParsedArg {
                    role: Role::Input,
                    name: "",
                    value: Some(word.clone()),
                    words: vec![word.clone()],
                });
                continue;
            }
            let Some(text) = text else {
                return Err(NotCacheable::UnknownOption(
                    word.to_string_lossy().into_owned(),
                ));
            };
            let Some(found) = lookup(GNU_OPTIONS, text) else {
                return Err(NotCacheable::UnknownOption(text.to_owned()));
            };
            let spec = found.spec;
            let mut arg_words = vec![word.clone()];
            let value: Option<OsString> = match (spec.form, found.joined) {
                (ArgForm::Flag, _) => None,
                (_, Some(joined)) => Some(OsString::from(joined)),
                (_, None) => {
                    let Some(next) = words.get(index) else {
                        return Err(NotCacheable::MissingArgument(text.to_owned()));
                    };
                    index += 1;
                    arg_words.push(next.clone());
                    Some(next.clone())
                }
            };
            let role = self.apply(spec, text, value.as_deref())?;
            self.args.push(ParsedArg {
                role,
                name: spec.name,
                value,
                words: arg_words,
            });
        }
        self.finish()
    }

    /// Records what one option means; returns the role to store (it can differ from the table's,
    /// e.g. `-Wp,-MD,file` becomes a dependency-file argument).
    fn apply(
        &mut self,
        spec: &OptSpec,
        word: &str,
        value: Option<&OsStr>,
    ) -> Result<Role, NotCacheable> {
        let value_text = value.map(OsStr::to_string_lossy);
        let value_str = value_text.as_deref().unwrap_or("");
        match spec.role {
            Role::CompileOnly => self.output_kind = Some(OutputKind::Object),
            Role::EmitAssembly if self.output_kind.is_none() => {
                self.output_kind = Some(OutputKind::Assembly);
            }
            Role::PreprocessOnly => self.preprocess_only = true,
            Role::Output => self.outputs.push(value.unwrap_or_default().to_owned()),
            Role::Language => {
                self.language_name = value_str.to_owned();
                self.language = match value_str {
                    "none" => None,
                    name if name.ends_with("-header") => {
                        return Err(NotCacheable::PrecompiledHeader)
                    }
                    name => Some(Language::from_gnu_name(name)),
                };
            }
            Role::DepFlag => match spec.name {
                "-M" | "-MM" => self.dep_only = true,
                "-MD" => self.dep_scope = Some(DepScope::All),
                "-MMD" if self.dep_scope != Some(DepScope::All) => {
                    self.dep_scope = Some(DepScope::UserOnly);
                }
                "-MP" => self.dep_phony = true,
                _ => {}
            },
            Role::DepFile => self.dep_file = value.map(OsStr::to_owned),
            Role::DepTarget => self
                .dep_targets
                .push((value.unwrap_or_default().to_owned(), spec.name == "-MQ")),
            Role::Preprocessor if spec.name == "-Wp," => return self.apply_wp(word, value_str),
            Role::Debug => {
                // The last -g option decides; "-gsplit-dwarf=single" keeps debug info in the object.
                match value_str {
                    "0" => self.debug_info = false,
                    "split-dwarf" | "split-dwarf=split" => {
                        self.split_dwarf = true;
                        self.debug_info = true;
                    }
                    "split-dwarf=single" | "no-split-dwarf" => self.split_dwarf = false,
                    _ => self.debug_info = true,
                }
            }
            Role::Codegen => match spec.name {
                "--coverage" | "-ftest-coverage" => self.coverage = true,
                "-arch" => self.architectures += 1,
                "-Xclang" | "-mllvm" | "-Xassembler" => {}
                _ => {}
            },
            Role::Color => {
                self.color = match (spec.name, value_str) {
                    ("-fdiagnostics-color" | "-fcolor-diagnostics", _) => ColorRequest::Always,
                    ("-fno-diagnostics-color" | "-fno-color-diagnostics", _) => ColorRequest::Never,
                    (_, "always") => ColorRequest::Always,
                    (_, "never") => ColorRequest::Never,
                    (_, "auto") => ColorRequest::Auto,
                    _ => return Err(NotCacheable::UnknownOption(word.to_owned())),
                }
            }
            Role::ContentInput => {
                if value_str.is_empty() {
                    return Err(NotCacheable::MissingArgument(word.to_owned()));
                }
                self.content_inputs
                    .push(PathBuf::from(value.unwrap_or_default()));
            }
            Role::Uncacheable if self.first_uncacheable.is_none() => {
                self.first_uncacheable = Some(uncacheable_reason(spec.name, word));
            }
            _ => {}
        }
        Ok(spec.role)
    }

    /// `-Wp,` passes options straight to the preprocessor. `-Wp,-MD,file` and `-Wp,-MMD,file`
    /// (the Linux kernel's spelling) request a dependency file; any other dependency option
    /// smuggled this way is too unusual to reproduce.
    fn apply_wp(&mut self, word: &str, value: &str) -> Result<Role, NotCacheable> {
        let mut parts = value.split(',');
        let first = parts.next().unwrap_or("");
        match first {
            "-MD" | "-MMD" => {
                let path: Vec<&str> = parts.collect();
                if path.len() != 1 || path[0].is_empty() {
                    return Err(NotCacheable::UnknownOption(word.to_owned()));
                }
                self.dep_scope = Some(if first == "-MD" {
                    DepScope::All
                } else {
                    DepScope::UserOnly
                });
                self.dep_file = Some(OsString::from(path[0]));
                Ok(Role::DepFile)
            }
            other if other.starts_with("-M") => Err(NotCacheable::UnknownOption(word.to_owned())),
            _ => Ok(Role::Preprocessor),
        }
    }

    fn finish(self) -> Result<CompileInvocation, NotCacheable> {
        if let Some(reason) = self.first_uncacheable {
            return Err(reason);
        }
        if self.preprocess_only {
            return Err(NotCacheable::Preprocessing);
        }
        if self.dep_only && self.dep_scope.is_none() {
            return Err(NotCacheable::DependenciesOnly);
        }
        let Some(output_kind) = self.output_kind else {
            return Err(NotCacheable::Linking);
        };
        let (source_index, language) = match self.inputs.as_slice() {
            [] => return Err(NotCacheable::NoSource),
            [single] => *single,
            _ => return Err(NotCacheable::MultipleSources),
        };
        let source = self.args[source_index].value.clone().unwrap_or_default();
        if source == "-" {
            return Err(NotCacheable::StdinSource);
        }
        let explicit_language = language.is_some();
        let language = match language {
            Some(Some(language)) => language,
            Some(None) => return Err(NotCacheable::UnsupportedLanguage(self.language_name)),
            None => {
                let extension = Path::new(&source)
                    .extension()
                    .map(|ext| ext.to_string_lossy().into_owned())
                    .unwrap_or_default();
                match Language::from_extension(&extension) {
                    Some(language) => language,
                    None if is_header_extension(&extension) => {
                        return Err(NotCacheable::PrecompiledHeader)
                    }
                    None => {
                        return Err(NotCacheable::UnsupportedLanguage(format!(
                            "input {}",
                            source.to_string_lossy()
                        )))
                    }
                }
            }
        };
        if self.architectures > 1 {
            return Err(NotCacheable::MultipleArchitectures);
        }
        let (output, explicit_output) = match self.outputs.as_slice() {
            [] => (default_output(&source, output_kind), false),
            [single] => (single.clone(), true),
            _ => return Err(NotCacheable::MultipleOutputs),
        };
        if output == "-" {
            return Err(NotCacheable::OutputToStdout);
        }
        if Path::new(&output).starts_with("/dev") {
            return Err(NotCacheable::OutputNotAFile);
        }
        let dep = self.dep_scope.map(|scope| DepRequest {
            path: self
                .dep_file
                .clone()
                .unwrap_or_else(|| default_dep_path(&output, explicit_output)),
            scope,
            targets: self.dep_targets.clone(),
            phony: self.dep_phony,
        });
        Ok(CompileInvocation {
            family: Family::Gnu,
            language,
            explicit_language,
            source,
            output,
            explicit_output,
            output_kind,
            args: self.args,
            dep,
            split_dwarf: self.split_dwarf,
            coverage: self.coverage,
            debug_info: self.debug_info,
            content_inputs: self.content_inputs,
            color: self.color,
        })
    }
}

fn is_header_extension(extension: &str) -> bool {
    matches!(extension, "h" | "hh" | "hpp" | "hxx" | "h++" | "H" | "tcc")
}

/// The object name GCC derives when there is no `-o`: the source's file name, in the current
/// directory, with its extension replaced.
fn default_output(source: &OsStr, kind: OutputKind) -> OsString {
    let stem = Path::new(source)
        .file_stem()
        .map(OsStr::to_owned)
        .unwrap_or_default();
    let mut name = stem;
    name.push(match kind {
        OutputKind::Object => ".o",
        OutputKind::Assembly => ".s",
    });
    name
}

/// The dependency file GCC derives for `-MD` without `-MF`: the `-o` path with its suffix
/// replaced by `.d`, or (without `-o`) the object name with `.d`.
fn default_dep_path(output: &OsStr, _explicit_output: bool) -> OsString {
    PathBuf::from(output).with_extension("d").into_os_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn argv(line: &str) -> Vec<OsString> {
        line.split_whitespace().map(OsString::from).collect()
    }

    fn compile(line: &str) -> CompileInvocation {
        match parse(&argv(line)) {
            Classification::Compile(invocation) => invocation,
            Classification::NotCacheable(reason) => panic!("{line:?}: not cacheable: {reason}"),
        }
    }

    /// `expected` is the reason's stats name, or "ok" for a cacheable compile.
    fn check(line: &str, expected: &str) {
        let got = match parse(&argv(line)) {
            Classification::Compile(_) => "ok",
            Classification::NotCacheable(reason) => reason.as_str(),
        };
        assert_eq!(got, expected, "argv {line:?}");
    }

    #[test]
    fn classification_table() {
        let cases = [
            ("-c x.c", "ok"),
            ("-c x.c -o x.o", "ok"),
            ("-c -ox.o x.c", "ok"),
            ("-S x.c", "ok"),
            (
                "-c x.cpp -std=c++17 -O2 -g -Wall -Werror=format -fPIC -march=native",
                "ok",
            ),
            (
                "-c x.c -I inc -Iinc2 -isystem sys -iquote q -idirafter after -DA=1 -D B -UC",
                "ok",
            ),
            (
                "-c x.c -include pre.h -imacros m.h --sysroot=/s --sysroot /s -nostdinc",
                "ok",
            ),
            ("-c x.c -MD -MF x.d -MT x.o -MQ $x -MP", "ok"),
            ("-c x.c -Wp,-MD,.x.d", "ok"),
            ("-c x.c -Wp,-MMD,.x.d -Wp,-D_FORTIFY_SOURCE=2", "ok"),
            ("-c x.c -gsplit-dwarf --coverage -fprofile-use=p.gcda", "ok"),
            ("-c x.c -x c", "ok"),
            ("-x c++ -c x.c", "ok"),
            ("-c x.c -lm -L/lib -Wl,-O1 -pthread", "ok"),
            (
                "-c x.c -fdiagnostics-color=always -fno-color-diagnostics",
                "ok",
            ),
            ("-c x.S", "ok"),
            ("-c x.s", "ok"),
            ("-c x.i", "ok"),
            ("-c x.m", "ok"),
            ("x.c", "linking"),
            ("x.o y.o -o prog", "linking"),
            ("-E x.c", "preprocessing"),
            ("-E -c x.c", "preprocessing"),
            ("-M x.c", "dependencies_only"),
            ("-MM -c x.c", "dependencies_only"),
            ("-c x.c y.c", "multiple_sources"),
            ("-c", "no_source"),
            ("-c -", "stdin_source"),
            ("-c -x c -", "stdin_source"),
            ("-c x.c -o -", "output_to_stdout"),
            ("-c x.c -o /dev/null", "output_not_a_file"),
            ("-c x.c -o a.o -o b.o", "multiple_outputs"),
            ("-c x.c -save-temps", "save_temps"),
            ("-c x.c -save-temps=obj", "save_temps"),
            ("-c x.c --frobnicate", "unknown_option"),
            ("-c x.c -Wp,-MT,foo", "unknown_option"),
            ("-c x.c -B/opt/bin", "unknown_option"),
            ("-c x.c -o", "missing_argument"),
            ("-c x.c -I", "missing_argument"),
            ("-c x.c -fprofile-use=", "missing_argument"),
            ("-c x.f90", "unsupported_language"),
            ("-c -x ada x.adb", "unsupported_language"),
            ("-c x.h", "precompiled_header"),
            ("-c -x c-header x.h", "precompiled_header"),
            ("-c x.c -include-pch x.pch", "precompiled_header"),
            ("-c x.c -fstack-usage", "extra_output"),
            ("-c x.c -fdump-tree-all", "extra_output"),
            ("-c x.c -MJ cdb.json", "extra_output"),
            ("--version", "query"),
            ("-v -c x.c", "query"),
            ("-print-prog-name=cc1", "query"),
            ("-dumpmachine", "query"),
            ("-c x.c -fsyntax-only", "no_output"),
            ("-c x.c -arch x86_64 -arch arm64", "multiple_architectures"),
            ("-c x.c -fdiagnostics-color=sometimes", "unknown_option"),
        ];
        for (line, expected) in cases {
            check(line, expected);
        }
    }

    #[test]
    fn joined_and_separate_forms_agree() {
        for (joined, separate) in [
            ("-Iinc", "-I inc"),
            ("-DX=1", "-D X=1"),
            ("-oout.o", "-o out.o"),
            ("-MFx.d", "-MF x.d"),
            ("-includepre.h", "-include pre.h"),
            ("-isystemsys", "-isystem sys"),
            ("--sysroot=/s", "--sysroot /s"),
            (
                "--param=max-inline-insns-single=10",
                "--param max-inline-insns-single=10",
            ),
        ] {
            let a = compile(&format!("-c x.c {joined}"));
            let b = compile(&format!("-c x.c {separate}"));
            let last = |inv: &CompileInvocation| {
                let arg = inv.args.last().cloned().expect("an option was parsed");
                (arg.role, arg.name, arg.value)
            };
            assert_eq!(last(&a), last(&b), "{joined} vs {separate}");
        }
    }

    #[test]
    fn outputs_and_dependency_files_are_derived_like_gcc() {
        let inv = compile("-c src/x.c");
        assert_eq!(inv.output, "x.o");
        assert!(!inv.explicit_output);
        assert_eq!(compile("-S src/x.c").output, "x.s");
        let inv = compile("-c src/x.c -o obj/x.o -MD");
        let dep = inv.dep.expect("-MD requests a dependency file");
        assert_eq!(dep.path, "obj/x.d");
        assert_eq!(dep.scope, DepScope::All);
        let inv = compile("-c x.c -MMD -MF deps/x.d -MT a -MQ b -MP");
        let dep = inv.dep.expect("-MMD requests a dependency file");
        assert_eq!(dep.path, "deps/x.d");
        assert_eq!(dep.scope, DepScope::UserOnly);
        assert_eq!(dep.targets, vec![("a".into(), false), ("b".into(), true)]);
        assert!(dep.phony);
        let inv = compile("-c x.c -Wp,-MMD,.x.o.d");
        assert_eq!(inv.dep.map(|d| d.path), Some(".x.o.d".into()));
        assert_eq!(compile("-c x.c -MF x.d").dep, None);
    }

    #[test]
    fn flags_and_inputs_are_recorded() {
        let inv = compile("-c x.c -gsplit-dwarf -fprofile-use=prof.gcda -fplugin=p.so");
        assert!(inv.split_dwarf && inv.debug_info);
        assert_eq!(
            inv.content_inputs,
            vec![PathBuf::from("prof.gcda"), PathBuf::from("p.so")]
        );
        assert!(!compile("-c x.c -gsplit-dwarf -gsplit-dwarf=single").split_dwarf);
        assert!(!compile("-c x.c -g -g0").debug_info);
        assert!(compile("-c x.c --coverage").coverage);
        assert!(compile("-c x.c -ftest-coverage").coverage);
        assert_eq!(
            compile("-c x.c -fdiagnostics-color").color,
            ColorRequest::Always
        );
        assert_eq!(
            compile("-c x.c -fno-diagnostics-color").color,
            ColorRequest::Never
        );
        assert_eq!(compile("-c x.c").color, ColorRequest::Auto);
        let inv = compile("-x c++ -c x.c");
        assert_eq!((inv.language, inv.explicit_language), (Language::Cxx, true));
        assert_eq!(compile("-c x.cc").language, Language::Cxx);
        assert_eq!(compile("-c x.S").language, Language::AsmWithCpp);
    }

    #[test]
    fn key_args_leave_out_paths_the_cache_reproduces() {
        let inv = compile("-c x.c -o out.o -MD -MF x.d -MT t -O2");
        let names: Vec<&str> = inv.key_args().map(|arg| arg.name).collect();
        assert_eq!(names, vec!["-c", "-MD", "-O"]);
        let pre = inv.preprocessor_words();
        assert_eq!(pre, argv("x.c -O2"));
        assert_eq!(
            inv.original_words(),
            argv("-c x.c -o out.o -MD -MF x.d -MT t -O2")
        );
    }

    proptest! {
        #[test]
        fn parsing_arbitrary_argv_never_panics(words in proptest::collection::vec(
            prop_oneof![
                "[-/]?[a-zA-Z=,.+#$-]{0,12}",
                Just("-o".to_owned()), Just("-c".to_owned()), Just("-MF".to_owned()),
                Just("-x".to_owned()), Just("-Wp,-MD,".to_owned()), Just("x.c".to_owned()),
                ".*",
            ], 0..12)) {
            let argv: Vec<OsString> = words.into_iter().map(OsString::from).collect();
            let _ = parse(&argv);
        }

        #[test]
        fn a_cacheable_compile_round_trips_its_words(extra in proptest::collection::vec(
            prop_oneof![
                Just("-O2"), Just("-g"), Just("-Wall"), Just("-DX=1"), Just("-Iinc"),
                Just("-MD"), Just("-fPIC"), Just("-std=c11"),
            ], 0..6)) {
            let mut argv = vec![OsString::from("-c"), OsString::from("x.c")];
            argv.extend(extra.iter().map(OsString::from));
            match parse(&argv) {
                Classification::Compile(inv) => prop_assert_eq!(inv.original_words(), argv),
                Classification::NotCacheable(reason) => prop_assert!(false, "{}", reason),
            }
        }
    }
}
