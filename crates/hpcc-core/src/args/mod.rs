//! Compiler argument grammars and the classification of one invocation.
//!
//! Each family (GNU: gcc and clang; MSVC: cl and clang-cl) has a spec table ([`spec::OptSpec`])
//! listing every option hpcc understands: its spelling, how it takes its argument and its
//! [`Role`]. Parsing walks argv against that table and produces either a [`CompileInvocation`]
//! (one source, one object, every option understood) or a [`NotCacheable`] reason. A reason is a
//! value, not an error: the wrapper runs the real compiler untouched and counts the reason.
//!
//! Why a table rather than a `match`: the table is data that tests can enumerate (every option is
//! parsed joined and separate, every role is exercised), and adding an option is one line.

pub mod gnu;
pub mod msvc;
pub mod response;
pub mod spec;

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

pub use spec::{ArgForm, OptSpec, Role};

/// The argument dialect a compiler speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// gcc, g++, cc, c++, clang, clang++.
    Gnu,
    /// cl.exe and clang-cl.
    Msvc,
}

impl Family {
    /// A stable lowercase name, used in cache keys and stats.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Gnu => "gnu",
            Family::Msvc => "msvc",
        }
    }
}

/// The source language of the single input, after `-x` and extension rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Language {
    /// C (`.c`, `-x c`).
    C,
    /// C++ (`.cc .cpp .cxx .c++ .C`, `-x c++`).
    Cxx,
    /// Objective-C (`.m`).
    ObjC,
    /// Objective-C++ (`.mm`).
    ObjCxx,
    /// Already-preprocessed C (`.i`).
    PreprocessedC,
    /// Already-preprocessed C++ (`.ii`).
    PreprocessedCxx,
    /// Assembly that goes through the preprocessor (`.S`, `-x assembler-with-cpp`).
    AsmWithCpp,
    /// Plain assembly (`.s`, `-x assembler`).
    Asm,
}

impl Language {
    /// The `-x` spelling GCC and Clang use for this language.
    pub fn gnu_name(self) -> &'static str {
        match self {
            Language::C => "c",
            Language::Cxx => "c++",
            Language::ObjC => "objective-c",
            Language::ObjCxx => "objective-c++",
            Language::PreprocessedC => "cpp-output",
            Language::PreprocessedCxx => "c++-cpp-output",
            Language::AsmWithCpp => "assembler-with-cpp",
            Language::Asm => "assembler",
        }
    }

    /// Parses a GNU `-x` value.
    pub fn from_gnu_name(name: &str) -> Option<Language> {
        Some(match name {
            "c" => Language::C,
            "c++" => Language::Cxx,
            "objective-c" => Language::ObjC,
            "objective-c++" => Language::ObjCxx,
            "cpp-output" => Language::PreprocessedC,
            "c++-cpp-output" => Language::PreprocessedCxx,
            "assembler-with-cpp" => Language::AsmWithCpp,
            "assembler" => Language::Asm,
            _ => return None,
        })
    }

    /// The language implied by a file extension, as GCC infers it.
    pub fn from_extension(ext: &str) -> Option<Language> {
        Some(match ext {
            "c" => Language::C,
            "cc" | "cp" | "cxx" | "cpp" | "CPP" | "c++" | "C" => Language::Cxx,
            "m" => Language::ObjC,
            "mm" | "M" => Language::ObjCxx,
            "i" => Language::PreprocessedC,
            "ii" => Language::PreprocessedCxx,
            "S" | "sx" => Language::AsmWithCpp,
            "s" => Language::Asm,
            _ => return None,
        })
    }

    /// Whether compiling this language runs the C preprocessor (and so reads headers).
    pub fn is_preprocessed_by_compiler(self) -> bool {
        !matches!(
            self,
            Language::PreprocessedC | Language::PreprocessedCxx | Language::Asm
        )
    }
}

/// What a cacheable compile writes as its main output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OutputKind {
    /// `-c` (GNU) or `/c` (MSVC): an object file.
    Object,
    /// `-S`: assembly text.
    Assembly,
}

/// How diagnostics colouring was requested on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum ColorRequest {
    /// Nothing said: the compiler decides by whether stderr is a terminal.
    #[default]
    Auto,
    /// `-fdiagnostics-color=always`, `-fcolor-diagnostics`.
    Always,
    /// `-fdiagnostics-color=never`, `-fno-color-diagnostics`.
    Never,
}

/// Which headers a requested dependency file lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DepScope {
    /// `-MD` / `-M`: every header, system ones included.
    All,
    /// `-MMD` / `-MM`: user headers only.
    UserOnly,
}

/// A dependency file the user asked the compile to write as a side effect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DepRequest {
    /// Where the file goes (`-MF`, the `-Wp,-MD,` path, or derived from the object name).
    pub path: OsString,
    /// `-MD` or `-MMD`.
    pub scope: DepScope,
    /// Explicit `-MT` / `-MQ` targets in order; `true` marks `-MQ` (Make-quoted).
    pub targets: Vec<(OsString, bool)>,
    /// `-MP`: a phony target for every header.
    pub phony: bool,
}

/// Why an invocation is run by the real compiler without the cache.
///
/// The `as_str` names are stable: they are the keys of the `uncacheable` table in `hpcc stats`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NotCacheable {
    /// No `-c`/`-S`: the invocation links.
    Linking,
    /// `-E`: preprocess only.
    Preprocessing,
    /// `-M`/`-MM` without `-MD`: dependencies only.
    DependenciesOnly,
    /// More than one source file.
    MultipleSources,
    /// No source file at all.
    NoSource,
    /// The source is standard input (`-`).
    StdinSource,
    /// `-o -`: the output is standard output.
    OutputToStdout,
    /// `-o /dev/null` or another non-regular output.
    OutputNotAFile,
    /// The directory an output would be written to does not exist (named here): the compiler
    /// reports it, not hpcc's temporaries beside the output.
    OutputDirMissing(String),
    /// More than one `-o`.
    MultipleOutputs,
    /// The invocation writes no output file (`-fsyntax-only`).
    NoOutput,
    /// `-save-temps`: intermediate files would not be reproduced.
    SaveTemps,
    /// An option hpcc does not know; it could change anything.
    UnknownOption(String),
    /// An option that needs an argument came last.
    MissingArgument(String),
    /// A language hpcc does not cache (CUDA, Ada, a header compile, ...).
    UnsupportedLanguage(String),
    /// An option that writes a file hpcc would not restore (`-fstack-usage`, `-fdump-*`, ...).
    ExtraOutput(String),
    /// An information query (`--version`, `-v`, `-print-*`, `-dump*`, `--help`).
    Query(String),
    /// Compiling several architectures at once (`-arch x -arch y`).
    MultipleArchitectures,
    /// A precompiled header is produced or consumed.
    PrecompiledHeader,
    /// A response file could not be read or parsed.
    ResponseFile(String),
    /// MSVC compiles are parsed and classified but not yet executed through the cache.
    MsvcExecution,
    /// Something in the environment makes the compile unreproducible (for example
    /// `DEPENDENCIES_OUTPUT`), named here.
    Environment(String),
    /// `__DATE__`, `__TIME__` or `__TIMESTAMP__` appears in an input and no fixed
    /// `SOURCE_DATE_EPOCH` pins them.
    TimeMacros,
    /// An input uses the assembler's `.incbin` directive: the file it includes is read by the
    /// assembler and appears in no dependency list, so a hit could not notice it changing.
    Incbin,
    /// The compiler failed; failures are not cached.
    CompileFailed,
    /// An input file changed while the compile ran (or within the file system's timestamp
    /// granularity before it), so the output cannot be paired with one content.
    InputChanged(String),
}

impl NotCacheable {
    /// A stable snake_case name for statistics.
    pub fn as_str(&self) -> &'static str {
        match self {
            NotCacheable::Linking => "linking",
            NotCacheable::Preprocessing => "preprocessing",
            NotCacheable::DependenciesOnly => "dependencies_only",
            NotCacheable::MultipleSources => "multiple_sources",
            NotCacheable::NoSource => "no_source",
            NotCacheable::StdinSource => "stdin_source",
            NotCacheable::OutputToStdout => "output_to_stdout",
            NotCacheable::OutputNotAFile => "output_not_a_file",
            NotCacheable::OutputDirMissing(_) => "output_dir_missing",
            NotCacheable::MultipleOutputs => "multiple_outputs",
            NotCacheable::NoOutput => "no_output",
            NotCacheable::SaveTemps => "save_temps",
            NotCacheable::UnknownOption(_) => "unknown_option",
            NotCacheable::MissingArgument(_) => "missing_argument",
            NotCacheable::UnsupportedLanguage(_) => "unsupported_language",
            NotCacheable::ExtraOutput(_) => "extra_output",
            NotCacheable::Query(_) => "query",
            NotCacheable::MultipleArchitectures => "multiple_architectures",
            NotCacheable::PrecompiledHeader => "precompiled_header",
            NotCacheable::ResponseFile(_) => "response_file",
            NotCacheable::MsvcExecution => "msvc_execution",
            NotCacheable::Environment(_) => "environment",
            NotCacheable::TimeMacros => "time_macros",
            NotCacheable::Incbin => "incbin",
            NotCacheable::CompileFailed => "compile_failed",
            NotCacheable::InputChanged(_) => "input_changed",
        }
    }
}

impl fmt::Display for NotCacheable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotCacheable::UnknownOption(o) => write!(f, "unknown option {o:?}"),
            NotCacheable::MissingArgument(o) => write!(f, "option {o:?} is missing its argument"),
            NotCacheable::UnsupportedLanguage(l) => write!(f, "unsupported language {l:?}"),
            NotCacheable::ExtraOutput(o) => write!(f, "option {o:?} writes an extra output"),
            NotCacheable::Query(o) => write!(f, "information query {o:?}"),
            NotCacheable::ResponseFile(e) => write!(f, "response file: {e}"),
            NotCacheable::Environment(v) => write!(f, "environment variable {v} is set"),
            NotCacheable::OutputDirMissing(dir) => write!(f, "output directory {dir} is missing"),
            NotCacheable::InputChanged(path) => {
                write!(f, "input {path} changed during the compile")
            }
            other => f.write_str(other.as_str()),
        }
    }
}

/// One argv word (or a word and its separate value) with the role the spec table gave it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedArg {
    /// What the option does; decides whether it is hashed, dropped or acted upon.
    pub role: Role,
    /// The option's canonical spelling from the spec table (`"-I"`, `"/Fo"`), or `""` for a
    /// positional input.
    pub name: &'static str,
    /// The option's value, if it takes one (joined or separate), else `None`.
    pub value: Option<OsString>,
    /// The exact argv words this came from (one, or two for a separate value).
    pub words: Vec<OsString>,
}

/// A single-source compile that the cache can serve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompileInvocation {
    /// The argument dialect.
    pub family: Family,
    /// The source language.
    pub language: Language,
    /// Whether the language came from an explicit `-x` (and so must be kept when re-running).
    pub explicit_language: bool,
    /// The source file, as written on the command line.
    pub source: OsString,
    /// The output file, as written (`-o`, `/Fo`) or as the compiler would derive it.
    pub output: OsString,
    /// Whether the output path came from the command line rather than being derived.
    pub explicit_output: bool,
    /// Object or assembly.
    pub output_kind: OutputKind,
    /// Every argument in order, each with its role (the source and output included).
    pub args: Vec<ParsedArg>,
    /// A dependency file the compile must also produce, if requested.
    pub dep: Option<DepRequest>,
    /// `-gsplit-dwarf`: a `.dwo` file is written beside the object.
    pub split_dwarf: bool,
    /// `--coverage` / `-ftest-coverage`: a `.gcno` file is written beside the object.
    pub coverage: bool,
    /// Whether any debug-info option (`-g*`) is present.
    pub debug_info: bool,
    /// Files whose *content* changes the output and so belongs in the key (profile data,
    /// plugins, spec files, sanitizer lists).
    pub content_inputs: Vec<PathBuf>,
    /// How diagnostics colouring was requested.
    pub color: ColorRequest,
}

impl CompileInvocation {
    /// The arguments that describe the compile itself: everything except the source, the output
    /// path and dependency-file plumbing (which the cache reproduces separately). This is what a
    /// key hashes, after path normalisation.
    pub fn key_args(&self) -> impl Iterator<Item = &ParsedArg> {
        self.args.iter().filter(|arg| {
            !matches!(
                arg.role,
                Role::Input | Role::Output | Role::DepFile | Role::DepTarget
            )
        })
    }

    /// The argv words to run the preprocessor alone: the original arguments without output,
    /// dependency options, `-c`/`-S`, in order. The caller appends `-E` (or `-M -MF path`).
    pub fn preprocessor_words(&self) -> Vec<OsString> {
        let mut words = Vec::with_capacity(self.args.len() * 2);
        for arg in &self.args {
            match arg.role {
                Role::Output
                | Role::DepFile
                | Role::DepTarget
                | Role::DepFlag
                | Role::CompileOnly
                | Role::EmitAssembly => {}
                _ => words.extend(arg.words.iter().cloned()),
            }
        }
        words
    }

    /// The original argv words, in order (what the compiler is run with on a miss).
    pub fn original_words(&self) -> Vec<OsString> {
        self.args
            .iter()
            .flat_map(|arg| arg.words.iter().cloned())
            .collect()
    }

    /// The `.dwo` path GCC writes for `-gsplit-dwarf`: the output with its extension replaced.
    pub fn dwo_path(&self) -> PathBuf {
        PathBuf::from(&self.output).with_extension("dwo")
    }

    /// The `.gcno` path written for `--coverage`: the output with its extension replaced.
    pub fn gcno_path(&self) -> PathBuf {
        PathBuf::from(&self.output).with_extension("gcno")
    }
}

/// The verdict on one invocation.
#[derive(Clone, Debug, PartialEq, Eq)]
// A compile is the common case and is moved once; boxing it would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub enum Classification {
    /// One source, one output, everything understood: the cache may serve it.
    Compile(CompileInvocation),
    /// Run the real compiler untouched, for this reason.
    NotCacheable(NotCacheable),
}

/// Classifies `args` (argv without the compiler itself) for `family`.
///
/// Response files are expanded first, relative to the current directory; a response file that
/// cannot be read makes the invocation not cacheable (the compiler will report it).
pub fn classify(family: Family, args: &[OsString]) -> Classification {
    let quoting = match family {
        Family::Gnu => response::Quoting::Gnu,
        Family::Msvc => response::Quoting::Msvc,
    };
    let expanded = match response::expand(args, quoting) {
        Ok(expanded) => expanded,
        Err(error) => {
            return Classification::NotCacheable(NotCacheable::ResponseFile(error.to_string()))
        }
    };
    match family {
        Family::Gnu => gnu::parse(&expanded),
        Family::Msvc => msvc::parse(&expanded),
    }
}

/// Lossy view of an argv word for messages and option matching.
pub(crate) fn lossy(word: &std::ffi::OsStr) -> std::borrow::Cow<'_, str> {
    word.to_string_lossy()
}
