//! The MSVC (cl.exe, clang-cl) argument grammar: the option table and the classification of one
//! invocation.
//!
//! cl accepts every option with either a `/` or a `-` prefix; hpcc looks a word up in its `/`
//! spelling first and, only when that fails, as written, which is how clang-cl's dash-only
//! options (`-Xclang`, `-f...`, `-m...`, `--target=`) are found. Option names are case-sensitive
//! (`/FI` forces an include, `/Fi` names the preprocessed output), so no case folding happens.
//!
//! [`parse_invocation`] builds the full [`CompileInvocation`]. [`parse`] is what
//! [`super::classify`] uses today: running an MSVC compile through the cache is a later
//! milestone, so a compile it would serve is reported as [`NotCacheable::MsvcExecution`].
//!
//! Known gaps, all of which err towards "not cacheable" or a wrong-but-harmless guess, never a
//! wrong cache hit: an ANSI-code-page response file is refused upstream; a `/Fo` naming an
//! existing directory *without* a trailing separator is taken as a file name (cl checks the
//! file system, which this pure parser does not).

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;

use super::spec::{lookup, ArgForm, OptSpec, Role};
use super::{
    lossy, Classification, ColorRequest, CompileInvocation, Family, Language, NotCacheable,
    OutputKind, ParsedArg,
};

use ArgForm::{EqualsOrSeparate, Flag, Joined, JoinedOrSeparate, Separate};

/// Every cl.exe / clang-cl option hpcc understands, in its `/` spelling (cl options) or its `-`
/// spelling (clang-cl options that only exist with a dash).
///
/// A `Joined` row whose name is a short prefix (`/O`, `/W`, `/G`) stands for a family of
/// switches that all only affect code generation or diagnostics; a longer, exact row beats it
/// (`/Gm`, which writes an `.idb` file, is singled out that way).
pub static MSVC_OPTIONS: &[OptSpec] = &[
    // Compile, preprocess, link.
    OptSpec::new("/c", Flag, Role::CompileOnly),
    OptSpec::new("/E", Flag, Role::PreprocessOnly),
    OptSpec::new("/EP", Flag, Role::PreprocessOnly),
    OptSpec::new("/P", Flag, Role::PreprocessOnly),
    OptSpec::new("/link", Flag, Role::LinkOnly),
    // Sources and languages.
    OptSpec::new("/Tc", JoinedOrSeparate, Role::Input),
    OptSpec::new("/Tp", JoinedOrSeparate, Role::Input),
    OptSpec::new("/TC", Flag, Role::Language),
    OptSpec::new("/TP", Flag, Role::Language),
    // Output files. The `:` spellings (newer cl, clang-cl) also accept a separate value.
    OptSpec::new("/Fo", Joined, Role::Output),
    OptSpec::new("/Fo:", JoinedOrSeparate, Role::Output),
    OptSpec::new("/Fd", Joined, Role::AuxOutput),
    OptSpec::new("/Fd:", JoinedOrSeparate, Role::AuxOutput),
    OptSpec::new("/Fp", Joined, Role::AuxOutput),
    OptSpec::new("/Fp:", JoinedOrSeparate, Role::AuxOutput),
    OptSpec::new("/Fi", Joined, Role::AuxOutput),
    OptSpec::new("/Fi:", JoinedOrSeparate, Role::AuxOutput),
    OptSpec::new("/Fe", Joined, Role::LinkOnly),
    OptSpec::new("/Fe:", JoinedOrSeparate, Role::LinkOnly),
    OptSpec::new("/Fm", Joined, Role::LinkOnly),
    OptSpec::new("/Fm:", JoinedOrSeparate, Role::LinkOnly),
    // Listings, browse information and other files hpcc would not restore.
    OptSpec::new("/Fa", Joined, Role::Uncacheable),
    OptSpec::new("/Fa:", JoinedOrSeparate, Role::Uncacheable),
    OptSpec::new("/FA", Joined, Role::Uncacheable),
    OptSpec::new("/FR", Joined, Role::Uncacheable),
    OptSpec::new("/Fr", Joined, Role::Uncacheable),
    OptSpec::new("/Fx", Flag, Role::Uncacheable),
    OptSpec::new("/Gm", Flag, Role::Uncacheable),
    OptSpec::new("/doc", Joined, Role::Uncacheable),
    OptSpec::new("/analyze", Joined, Role::Uncacheable),
    OptSpec::new("/analyze-", Flag, Role::Codegen),
    OptSpec::new("/sourceDependencies", Separate, Role::Uncacheable),
    OptSpec::new(
        "/sourceDependencies:directives",
        Separate,
        Role::Uncacheable,
    ),
    OptSpec::new("/sourceDependencies-", Flag, Role::Codegen),
    // Precompiled headers.
    OptSpec::new("/Yc", Joined, Role::Uncacheable),
    OptSpec::new("/Yu", Joined, Role::Uncacheable),
    OptSpec::new("/Y-", Flag, Role::Codegen),
    // Queries.
    OptSpec::new("/?", Flag, Role::Uncacheable),
    OptSpec::new("/help", Flag, Role::Uncacheable),
    OptSpec::new("--help", Flag, Role::Uncacheable),
    OptSpec::new("--version", Flag, Role::Uncacheable),
    OptSpec::new("-###", Flag, Role::Uncacheable),
    OptSpec::new("-v", Flag, Role::Uncacheable),
    // Debug information.
    OptSpec::new("/Z7", Flag, Role::Debug),
    OptSpec::new("/Zi", Flag, Role::Debug),
    OptSpec::new("/ZI", Flag, Role::Debug),
    OptSpec::new("/Zo", Joined, Role::Debug),
    OptSpec::new("/Zf", Flag, Role::Debug),
    OptSpec::new("/ZH:", Joined, Role::Debug),
    OptSpec::new("/FS", Flag, Role::Debug),
    OptSpec::new("-g", Joined, Role::Debug),
    // Preprocessor.
    OptSpec::new("/showIncludes", Flag, Role::ShowIncludes),
    OptSpec::new("/showIncludes:user", Flag, Role::ShowIncludes),
    OptSpec::new("/FI", JoinedOrSeparate, Role::IncludeFile),
    OptSpec::new("/I", JoinedOrSeparate, Role::IncludeDir),
    OptSpec::new("/AI", JoinedOrSeparate, Role::IncludeDir),
    OptSpec::new("/external:I", JoinedOrSeparate, Role::IncludeDir),
    OptSpec::new("/imsvc", JoinedOrSeparate, Role::IncludeDir),
    OptSpec::new("/D", JoinedOrSeparate, Role::Define),
    OptSpec::new("/U", JoinedOrSeparate, Role::Define),
    OptSpec::new("/u", Flag, Role::Define),
    OptSpec::new("/X", Flag, Role::Preprocessor),
    OptSpec::new("/C", Flag, Role::Preprocessor),
    OptSpec::new("/external:env:", Joined, Role::Preprocessor),
    OptSpec::new("/external:anglebrackets", Flag, Role::Preprocessor),
    OptSpec::new("/winsysroot", JoinedOrSeparate, Role::Preprocessor),
    OptSpec::new("/vctoolsdir", JoinedOrSeparate, Role::Preprocessor),
    OptSpec::new("/winsdkdir", JoinedOrSeparate, Role::Preprocessor),
    // Code generation, language mode and diagnostics.
    OptSpec::new("/O", Joined, Role::Codegen),
    OptSpec::new("/W", Joined, Role::Codegen),
    OptSpec::new("/w", Joined, Role::Codegen),
    OptSpec::new("/EH", Joined, Role::Codegen),
    OptSpec::new("/MD", Flag, Role::Codegen),
    OptSpec::new("/MDd", Flag, Role::Codegen),
    OptSpec::new("/MT", Flag, Role::Codegen),
    OptSpec::new("/MTd", Flag, Role::Codegen),
    OptSpec::new("/LD", Flag, Role::Codegen),
    OptSpec::new("/LDd", Flag, Role::Codegen),
    OptSpec::new("/MP", Joined, Role::Codegen),
    OptSpec::new("/G", Joined, Role::Codegen),
    OptSpec::new("/guard:", Joined, Role::Codegen),
    OptSpec::new("/std:", Joined, Role::Codegen),
    OptSpec::new("/Zc:", Joined, Role::Codegen),
    OptSpec::new("/Zp", Joined, Role::Codegen),
    OptSpec::new("/Zm", Joined, Role::Codegen),
    OptSpec::new("/Zl", Flag, Role::Codegen),
    OptSpec::new("/Za", Flag, Role::Codegen),
    OptSpec::new("/Ze", Flag, Role::Codegen),
    OptSpec::new("/arch:", Joined, Role::Codegen),
    OptSpec::new("/fp:", Joined, Role::Codegen),
    OptSpec::new("/favor:", Joined, Role::Codegen),
    OptSpec::new("/fsanitize=", Joined, Role::Codegen),
    OptSpec::new("/Q", Joined, Role::Codegen),
    OptSpec::new("/RTC", Joined, Role::Codegen),
    OptSpec::new("/J", Flag, Role::Codegen),
    OptSpec::new("/vd", Joined, Role::Codegen),
    OptSpec::new("/vm", Joined, Role::Codegen),
    OptSpec::new("/volatile:", Joined, Role::Codegen),
    OptSpec::new("/nologo", Flag, Role::Codegen),
    OptSpec::new("/utf-8", Flag, Role::Codegen),
    OptSpec::new("/source-charset:", Joined, Role::Codegen),
    OptSpec::new("/execution-charset:", Joined, Role::Codegen),
    OptSpec::new("/validate-charset", Joined, Role::Codegen),
    OptSpec::new("/bigobj", Flag, Role::Codegen),
    OptSpec::new("/permissive", Joined, Role::Codegen),
    OptSpec::new("/sdl", Joined, Role::Codegen),
    OptSpec::new("/openmp", Joined, Role::Codegen),
    OptSpec::new("/kernel", Joined, Role::Codegen),
    OptSpec::new("/hotpatch", Flag, Role::Codegen),
    OptSpec::new("/Brepro", Joined, Role::Codegen),
    OptSpec::new("/await", Joined, Role::Codegen),
    OptSpec::new("/constexpr:", Joined, Role::Codegen),
    OptSpec::new("/experimental:", Joined, Role::Codegen),
    OptSpec::new("/options:strict", Flag, Role::Codegen),
    OptSpec::new("/external:W", Joined, Role::Codegen),
    OptSpec::new("/external:templates", Joined, Role::Codegen),
    OptSpec::new("/diagnostics:", Joined, Role::Codegen),
    OptSpec::new("/errorReport:", Joined, Role::Codegen),
    OptSpec::new("/FC", Flag, Role::Codegen),
    OptSpec::new("/d1", Joined, Role::Codegen),
    OptSpec::new("/d2", Joined, Role::Codegen),
    // clang-cl: pass-through to clang, and clang's own dash options.
    OptSpec::new("/clang:", Joined, Role::Codegen),
    OptSpec::new("-Xclang", Separate, Role::Codegen),
    OptSpec::new("--target", EqualsOrSeparate, Role::Codegen),
    OptSpec::new("-target", Separate, Role::Codegen),
    OptSpec::new("-m", Joined, Role::Codegen),
    OptSpec::new("-f", Joined, Role::Codegen),
    OptSpec::new("-fcolor-diagnostics", Flag, Role::Color),
    OptSpec::new("-fno-color-diagnostics", Flag, Role::Color),
    OptSpec::new("-fdiagnostics-color", Joined, Role::Color),
    OptSpec::new("-fno-diagnostics-color", Flag, Role::Color),
    OptSpec::new("-fprofile-instr-use=", Joined, Role::ContentInput),
    OptSpec::new("-fprofile-use=", Joined, Role::ContentInput),
    OptSpec::new("-fprofile-sample-use=", Joined, Role::ContentInput),
    OptSpec::new("-fsanitize-blacklist=", Joined, Role::ContentInput),
    OptSpec::new("-fsanitize-ignorelist=", Joined, Role::ContentInput),
];

/// Classifies an MSVC argv (response files already expanded).
///
/// A compile the cache could serve is reported as [`NotCacheable::MsvcExecution`] until MSVC
/// execution through the cache lands; use [`parse_invocation`] for the full verdict.
pub fn parse(args: &[OsString]) -> Classification {
    match parse_invocation(args) {
        Classification::Compile(_) => Classification::NotCacheable(NotCacheable::MsvcExecution),
        not_cacheable => not_cacheable,
    }
}

/// Classifies an MSVC argv (response files already expanded, the compiler itself excluded) and,
/// for a single-source `/c` compile, builds its [`CompileInvocation`].
pub fn parse_invocation(args: &[OsString]) -> Classification {
    match Walk::run(args).and_then(Walk::finish) {
        Ok(invocation) => Classification::Compile(invocation),
        Err(reason) => Classification::NotCacheable(reason),
    }
}

/// Finds the row for an option word, trying its `/` spelling first and then the word as written.
fn lookup_option(word: &str) -> Option<(&'static OptSpec, Option<&str>)> {
    if let Some(rest) = word.strip_prefix('-') {
        let slash = format!("/{rest}");
        if let Some(found) = lookup(MSVC_OPTIONS, &slash) {
            // The joined value is the same tail of both spellings: they differ in the first byte
            // only, so the value's length locates it in `word`.
            let joined = found.joined.map(|value| &word[word.len() - value.len()..]);
            return Some((found.spec, joined));
        }
    }
    lookup(MSVC_OPTIONS, word).map(|found| (found.spec, found.joined))
}

/// A source named on the command line, before the `/TC` / `/TP` and extension rules apply.
struct SourceWord {
    path: OsString,
    /// Set by `/Tc` and `/Tp`, which fix the language of their one file.
    language: Option<Language>,
}

/// The state gathered by one pass over argv.
#[derive(Default)]
struct Walk {
    args: Vec<ParsedArg>,
    compile_only: bool,
    preprocess_only: bool,
    /// `/TC` or `/TP`, whichever came last: the language of every positional input.
    all_inputs_language: Option<Language>,
    inputs: Vec<SourceWord>,
    /// The last `/Fo` value.
    output: Option<OsString>,
    debug_info: bool,
    content_inputs: Vec<PathBuf>,
    color: ColorRequest,
}

impl Walk {
    /// Walks argv once, recording every word; stops at the first word that settles the verdict
    /// by itself (an unknown or uncacheable option, a missing argument).
    fn run(args: &[OsString]) -> Result<Walk, NotCacheable> {
        let mut walk = Walk::default();
        let mut words = args.iter();
        // After `--` every word is a file; after `/link` every word belongs to the linker.
        let mut only_inputs = false;
        while let Some(word) = words.next() {
            let Some(text) = word.to_str() else {
                // Options are ASCII; a word that is not Unicode can only be a path, unless it
                // looks like an option, which hpcc cannot then match safely.
                if !only_inputs && starts_like_option(&lossy(word)) {
                    return Err(NotCacheable::UnknownOption(lossy(word).into_owned()));
                }
                walk.push_input(word, None, "", vec![word.clone()]);
                continue;
            };
            if only_inputs || !starts_like_option(text) {
                if text.starts_with('@') {
                    return Err(NotCacheable::ResponseFile(format!(
                        "unexpanded response file {text}"
                    )));
                }
                walk.push_input(word, None, "", vec![word.clone()]);
                continue;
            }
            if text == "--" {
                only_inputs = true;
                walk.push(Role::Codegen, "--", None, vec![word.clone()]);
                continue;
            }
            let Some((spec, joined)) = lookup_option(text) else {
                // clang-cl reads an unknown `/` word as a path (`/home/me/a.c` on Linux); cl
                // options never contain a second `/`, so that shape is taken as a file.
                if text
                    .strip_prefix('/')
                    .is_some_and(|rest| rest.contains('/'))
                {
                    walk.push_input(word, None, "", vec![word.clone()]);
                    continue;
                }
                return Err(NotCacheable::UnknownOption(text.to_string()));
            };
            let mut consumed = vec![word.clone()];
            let value = match (spec.form, joined) {
                (Flag, _) => None,
                (_, Some(joined)) => Some(OsString::from(joined)),
                (_, None) => {
                    let Some(next) = words.next() else {
                        return Err(NotCacheable::MissingArgument(text.to_string()));
                    };
                    consumed.push(next.clone());
                    Some(next.clone())
                }
            };
            if spec.name == "/link" {
                walk.push(spec.role, spec.name, None, consumed);
                for linker_word in words.by_ref() {
                    walk.push(
                        Role::LinkOnly,
                        "/link",
                        Some(linker_word.clone()),
                        vec![linker_word.clone()],
                    );
                }
                break;
            }
            walk.apply(spec, text, value, consumed)?;
        }
        Ok(walk)
    }

    /// Records one matched option and its effect on the verdict.
    fn apply(
        &mut self,
        spec: &'static OptSpec,
        word: &str,
        value: Option<OsString>,
        words: Vec<OsString>,
    ) -> Result<(), NotCacheable> {
        let value_text = value.as_deref().map(lossy).unwrap_or_default();
        match spec.role {
            Role::Uncacheable => return Err(uncacheable_reason(spec.name, word)),
            Role::CompileOnly => self.compile_only = true,
            Role::PreprocessOnly => self.preprocess_only = true,
            Role::Language => {
                self.all_inputs_language = Some(match spec.name {
                    "/TC" => Language::C,
                    _ => Language::Cxx,
                });
            }
            Role::Input => {
                let language = match spec.name {
                    "/Tc" => Language::C,
                    _ => Language::Cxx,
                };
                let path = value.unwrap_or_default();
                self.push_input(&path, Some(language), spec.name, words);
                return Ok(());
            }
            Role::Output => {
                if value_text.is_empty() {
                    return Err(NotCacheable::MissingArgument(word.to_string()));
                }
                self.output = value.clone();
            }
            Role::Debug if produces_debug_info(spec.name, &value_text) => {
                self.debug_info = true;
            }
            Role::ContentInput => {
                if let Some(path) = &value {
                    self.content_inputs.push(PathBuf::from(path));
                }
            }
            Role::Color => self.color = color_request(spec.name, &value_text),
            Role::Codegen if matches!(spec.name, "/clang:" | "-Xclang") => {
                if let Some(reason) = clang_passthrough_hazard(&value_text) {
                    return Err(reason);
                }
            }
            _ => {}
        }
        self.push(spec.role, spec.name, value, words);
        Ok(())
    }

    fn push(
        &mut self,
        role: Role,
        name: &'static str,
        value: Option<OsString>,
        words: Vec<OsString>,
    ) {
        self.args.push(ParsedArg {
            role,
            name,
            value,
            words,
        });
    }

    /// Records a file: positional (`name` is `""`) or from `/Tc` / `/Tp`.
    fn push_input(
        &mut self,
        path: &OsStr,
        language: Option<Language>,
        name: &'static str,
        words: Vec<OsString>,
    ) {
        self.inputs.push(SourceWord {
            path: path.to_os_string(),
            language,
        });
        self.push(Role::Input, name, Some(path.to_os_string()), words);
    }

    /// Turns the gathered state into a compile, or the reason it is not one.
    fn finish(self) -> Result<CompileInvocation, NotCacheable> {
        if self.preprocess_only {
            return Err(NotCacheable::Preprocessing);
        }
        if !self.compile_only {
            return Err(NotCacheable::Linking);
        }
        let mut sources = Vec::with_capacity(1);
        for input in &self.inputs {
            if input.path == "-" {
                return Err(NotCacheable::StdinSource);
            }
            let (language, explicit) = match (input.language, self.all_inputs_language) {
                (Some(language), _) | (None, Some(language)) => (language, true),
                (None, None) => match language_from_extension(&input.path) {
                    Some(language) => (language, false),
                    // cl hands other files to the linker, which `/c` does not run: the word is
                    // ignored with a warning, and hpcc does not try to reproduce that.
                    None => {
                        return Err(NotCacheable::UnsupportedLanguage(
                            lossy(&input.path).into_owned(),
                        ))
                    }
                },
            };
            sources.push((&input.path, language, explicit));
        }
        let (source, language, explicit_language) = match sources.as_slice() {
            [] => return Err(NotCacheable::NoSource),
            [single] => *single,
            _ => return Err(NotCacheable::MultipleSources),
        };
        let output = object_path(self.output.as_deref(), source);
        Ok(CompileInvocation {
            family: Family::Msvc,
            language,
            explicit_language,
            source: source.clone(),
            output,
            explicit_output: self.output.is_some(),
            output_kind: OutputKind::Object,
            args: self.args,
            dep: None,
            split_dwarf: false,
            coverage: false,
            debug_info: self.debug_info,
            content_inputs: self.content_inputs,
            color: self.color,
        })
    }
}

/// Whether a word is spelled like an option rather than a file (`-` alone is standard input).
fn starts_like_option(text: &str) -> bool {
    (text.starts_with('/') || text.starts_with('-')) && text != "-"
}

/// The reason an `Uncacheable` row gives.
fn uncacheable_reason(name: &str, word: &str) -> NotCacheable {
    match name {
        "/Yc" | "/Yu" => NotCacheable::PrecompiledHeader,
        "/?" | "/help" | "--help" | "--version" | "-###" | "-v" => {
            NotCacheable::Query(word.to_string())
        }
        _ => NotCacheable::ExtraOutput(word.to_string()),
    }
}

/// Whether a `Debug` row turns debug information on (rather than tuning it).
fn produces_debug_info(name: &str, value: &str) -> bool {
    match name {
        "/Z7" | "/Zi" | "/ZI" => true,
        "-g" => {
            matches!(value, "" | "line-tables-only" | "line-directives-only")
                || value.starts_with("dwarf")
        }
        _ => false,
    }
}

/// The colour request of a `Color` row.
fn color_request(name: &str, value: &str) -> ColorRequest {
    match (name, value) {
        ("-fcolor-diagnostics", _) | ("-fdiagnostics-color", "" | "=always") => {
            ColorRequest::Always
        }
        ("-fdiagnostics-color", "=auto") => ColorRequest::Auto,
        _ => ColorRequest::Never,
    }
}

/// Why a clang option smuggled through `/clang:` or `-Xclang` makes the compile uncacheable,
/// if it does: it may write files or consume a precompiled header behind the table's back.
fn clang_passthrough_hazard(value: &str) -> Option<NotCacheable> {
    const PCH: &[&str] = &["-include-pch", "-emit-pch", "-building-pch-with-obj"];
    const OUTPUTS: &[&str] = &[
        "-M",
        "-E",
        "-S",
        "-o",
        "-save-temps",
        "--save-temps",
        "-dependency-file",
        "-emit-",
        "-dump",
        "-ftime-trace",
        "-fstack-usage",
        "-fdump-",
        "-fprofile-arcs",
        "--coverage",
    ];
    if PCH.iter().any(|prefix| value.starts_with(prefix)) {
        return Some(NotCacheable::PrecompiledHeader);
    }
    if OUTPUTS.iter().any(|prefix| value.starts_with(prefix)) {
        return Some(NotCacheable::ExtraOutput(value.to_string()));
    }
    None
}

/// The language cl infers from a file's extension (case-insensitively, as on Windows).
fn language_from_extension(path: &OsStr) -> Option<Language> {
    let text = path.to_str()?;
    let name = file_name(text.as_bytes());
    let dot = name.iter().rposition(|&byte| byte == b'.')?;
    let extension = std::str::from_utf8(&name[dot + 1..]).ok()?;
    match extension.to_ascii_lowercase().as_str() {
        "c" => Some(Language::C),
        "cpp" | "cc" | "cxx" | "c++" => Some(Language::Cxx),
        _ => None,
    }
}

/// The last component of a Windows or Unix path: what follows the last `\`, `/` or drive `:`.
fn file_name(path: &[u8]) -> &[u8] {
    match path
        .iter()
        .rposition(|&byte| matches!(byte, b'\\' | b'/' | b':'))
    {
        Some(separator) => &path[separator + 1..],
        None => path,
    }
}

/// The object cl writes for `source` given the last `/Fo` value, if any.
///
/// No `/Fo`: the source's stem plus `.obj`, in the current directory. A `/Fo` ending in a
/// separator is a directory that receives that same name. A `/Fo` file name without an
/// extension gets `.obj` appended, as cl does.
fn object_path(fo: Option<&OsStr>, source: &OsStr) -> OsString {
    let source_bytes = source.as_encoded_bytes();
    let source_name = file_name(source_bytes);
    let stem = match source_name.iter().rposition(|&byte| byte == b'.') {
        Some(dot) if dot > 0 => &source_name[..dot],
        _ => source_name,
    };
    // `stem` is a tail of `source` cut at ASCII bytes, so it is a valid slice of the encoding.
    let default_name = {
        let mut name = os_from_encoded(stem);
        name.push(".obj");
        name
    };
    let Some(fo) = fo else {
        return default_name;
    };
    let fo_bytes = fo.as_encoded_bytes();
    if fo_bytes.ends_with(b"\\") || fo_bytes.ends_with(b"/") {
        let mut path = fo.to_os_string();
        path.push(default_name);
        return path;
    }
    let mut path = fo.to_os_string();
    if !file_name(fo_bytes).contains(&b'.') {
        path.push(".obj");
    }
    path
}

/// Rebuilds an `OsString` from a slice of another one's encoded bytes cut at ASCII characters.
#[cfg(unix)]
fn os_from_encoded(bytes: &[u8]) -> OsString {
    use std::os::unix::ffi::OsStrExt;
    OsStr::from_bytes(bytes).to_os_string()
}

/// Rebuilds an `OsString` from a slice of another one's encoded bytes cut at ASCII characters.
///
/// Off Unix the encoding is WTF-8, which differs from UTF-8 only for unpaired surrogates; those
/// cannot name a real source file cl would compile, so the lossy conversion loses nothing real.
#[cfg(not(unix))]
fn os_from_encoded(bytes: &[u8]) -> OsString {
    OsString::from(String::from_utf8_lossy(bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn argv(words: &[&str]) -> Vec<OsString> {
        words.iter().map(OsString::from).collect()
    }

    /// A one-line summary of a verdict: `"Cxx a.cpp -> a.obj"` for a compile (`Cxx!` when the
    /// language was explicit, ` debug` with debug info, ` =out` when the output was given), or
    /// `"not Linking"` with the reason's debug form.
    fn summary(classification: &Classification) -> String {
        match classification {
            Classification::Compile(inv) => {
                let mut line = format!(
                    "{:?}{} {} -> {}",
                    inv.language,
                    if inv.explicit_language { "!" } else { "" },
                    inv.source.to_string_lossy(),
                    inv.output.to_string_lossy(),
                );
                if inv.explicit_output {
                    line.push_str(" =out");
                }
                if inv.debug_info {
                    line.push_str(" debug");
                }
                line
            }
            Classification::NotCacheable(reason) => format!("not {reason:?}"),
        }
    }

    fn check(words: &[&str], expected: &str) {
        let got = summary(&parse_invocation(&argv(words)));
        assert_eq!(got, expected, "argv {words:?}");
    }

    /// Checks every `ParsedArg` of a compile as `(role, name, value, word count)`.
    fn check_args(words: &[&str], expected: &[(Role, &str, Option<&str>, usize)]) {
        let Classification::Compile(inv) = parse_invocation(&argv(words)) else {
            panic!(
                "argv {words:?} is not a compile: {:?}",
                parse_invocation(&argv(words))
            );
        };
        let got: Vec<(Role, &str, Option<String>, usize)> = inv
            .args
            .iter()
            .map(|arg| {
                let value = arg.value.as_ref().map(|v| v.to_string_lossy().into_owned());
                (arg.role, arg.name, value, arg.words.len())
            })
            .collect();
        let expected: Vec<(Role, &str, Option<String>, usize)> = expected
            .iter()
            .map(|(role, name, value, count)| (*role, *name, value.map(String::from), *count))
            .collect();
        assert_eq!(got, expected, "argv {words:?}");
        assert_eq!(inv.original_words(), argv(words), "words are kept in order");
    }

    /// Each option in `/` and `-` spelling, each form, with the role and value it must get.
    #[test]
    fn options_get_their_role_and_value() {
        use Role::*;
        let cases: &[(&[&str], Role, &str, Option<&str>)] = &[
            (&["/Fofoo.obj"], Output, "/Fo", Some("foo.obj")),
            (&["/Fo:foo.obj"], Output, "/Fo:", Some("foo.obj")),
            (&["/Fo:", "foo.obj"], Output, "/Fo:", Some("foo.obj")),
            (&["/Fdx.pdb"], AuxOutput, "/Fd", Some("x.pdb")),
            (&["/Fd:", "x.pdb"], AuxOutput, "/Fd:", Some("x.pdb")),
            (&["/Fd"], AuxOutput, "/Fd", Some("")),
            (&["/Fex.exe"], LinkOnly, "/Fe", Some("x.exe")),
            (&["/Fe:", "x.exe"], LinkOnly, "/Fe:", Some("x.exe")),
            (&["/Fpx.pch"], AuxOutput, "/Fp", Some("x.pch")),
            (&["/Fp:x.pch"], AuxOutput, "/Fp:", Some("x.pch")),
            (&["/Fix.i"], AuxOutput, "/Fi", Some("x.i")),
            (&["/Fi:", "x.i"], AuxOutput, "/Fi:", Some("x.i")),
            (&["/Fmx.map"], LinkOnly, "/Fm", Some("x.map")),
            (&["/Z7"], Debug, "/Z7", None),
            (&["/Zi"], Debug, "/Zi", None),
            (&["/ZI"], Debug, "/ZI", None),
            (&["/Zo-"], Debug, "/Zo", Some("-")),
            (&["/FS"], Debug, "/FS", None),
            (&["/showIncludes"], ShowIncludes, "/showIncludes", None),
            (
                &["/showIncludes:user"],
                ShowIncludes,
                "/showIncludes:user",
                None,
            ),
            (&["/FIpch.h"], IncludeFile, "/FI", Some("pch.h")),
            (&["/FI", "pch.h"], IncludeFile, "/FI", Some("pch.h")),
            (&["/Iinc"], IncludeDir, "/I", Some("inc")),
            (&["/I", "inc dir"], IncludeDir, "/I", Some("inc dir")),
            (&["/external:Iext"], IncludeDir, "/external:I", Some("ext")),
            (
                &["/external:I", "ext"],
                IncludeDir,
                "/external:I",
                Some("ext"),
            ),
            (&["/imsvc", "sys"], IncludeDir, "/imsvc", Some("sys")),
            (&["/AIdir"], IncludeDir, "/AI", Some("dir")),
            (&["/DX=1"], Define, "/D", Some("X=1")),
            (&["/D", "X#1"], Define, "/D", Some("X#1")),
            (&["/UX"], Define, "/U", Some("X")),
            (&["/U", "X"], Define, "/U", Some("X")),
            (&["/u"], Define, "/u", None),
            (&["/X"], Preprocessor, "/X", None),
            (
                &["/external:env:INCLUDE"],
                Preprocessor,
                "/external:env:",
                Some("INCLUDE"),
            ),
            (
                &["/winsysroot", "C:\\sdk"],
                Preprocessor,
                "/winsysroot",
                Some("C:\\sdk"),
            ),
            (&["/O2"], Codegen, "/O", Some("2")),
            (&["/Ox"], Codegen, "/O", Some("x")),
            (&["/Oy-"], Codegen, "/O", Some("y-")),
            (&["/W4"], Codegen, "/W", Some("4")),
            (&["/WX"], Codegen, "/W", Some("X")),
            (&["/Wall"], Codegen, "/W", Some("all")),
            (&["/wd4996"], Codegen, "/w", Some("d4996")),
            (&["/w"], Codegen, "/w", Some("")),
            (&["/EHsc"], Codegen, "/EH", Some("sc")),
            (&["/MD"], Codegen, "/MD", None),
            (&["/MDd"], Codegen, "/MDd", None),
            (&["/MT"], Codegen, "/MT", None),
            (&["/MTd"], Codegen, "/MTd", None),
            (&["/GS-"], Codegen, "/G", Some("S-")),
            (&["/Gy"], Codegen, "/G", Some("y")),
            (&["/Gm-"], Codegen, "/G", Some("m-")),
            (&["/GL"], Codegen, "/G", Some("L")),
            (&["/guard:cf"], Codegen, "/guard:", Some("cf")),
            (&["/std:c++20"], Codegen, "/std:", Some("c++20")),
            (&["/Zc:__cplusplus"], Codegen, "/Zc:", Some("__cplusplus")),
            (&["/arch:AVX2"], Codegen, "/arch:", Some("AVX2")),
            (&["/fp:fast"], Codegen, "/fp:", Some("fast")),
            (
                &["/fsanitize=address"],
                Codegen,
                "/fsanitize=",
                Some("address"),
            ),
            (&["/Qspectre"], Codegen, "/Q", Some("spectre")),
            (&["/RTC1"], Codegen, "/RTC", Some("1")),
            (&["/nologo"], Codegen, "/nologo", None),
            (&["/utf-8"], Codegen, "/utf-8", None),
            (&["/bigobj"], Codegen, "/bigobj", None),
            (&["/permissive-"], Codegen, "/permissive", Some("-")),
            (&["/external:W0"], Codegen, "/external:W", Some("0")),
            (
                &["/external:anglebrackets"],
                Preprocessor,
                "/external:anglebrackets",
                None,
            ),
            (
                &["/diagnostics:caret"],
                Codegen,
                "/diagnostics:",
                Some("caret"),
            ),
            (&["/analyze-"], Codegen, "/analyze-", None),
            (
                &["/sourceDependencies-"],
                Codegen,
                "/sourceDependencies-",
                None,
            ),
            (&["/Y-"], Codegen, "/Y-", None),
            (&["/Brepro"], Codegen, "/Brepro", Some("")),
            (
                &["/clang:-fno-inline"],
                Codegen,
                "/clang:",
                Some("-fno-inline"),
            ),
            (
                &["-Xclang", "-fno-pch-timestamp"],
                Codegen,
                "-Xclang",
                Some("-fno-pch-timestamp"),
            ),
            (&["-m32"], Codegen, "-m", Some("32")),
            (&["-mavx2"], Codegen, "-m", Some("avx2")),
            (
                &["-fms-compatibility-version=19"],
                Codegen,
                "-f",
                Some("ms-compatibility-version=19"),
            ),
            (
                &["--target=x86_64-pc-windows-msvc"],
                Codegen,
                "--target",
                Some("x86_64-pc-windows-msvc"),
            ),
            (
                &["-target", "i686-pc-windows-msvc"],
                Codegen,
                "-target",
                Some("i686-pc-windows-msvc"),
            ),
            (
                &["-fprofile-instr-use=p.profdata"],
                ContentInput,
                "-fprofile-instr-use=",
                Some("p.profdata"),
            ),
            (&["-fcolor-diagnostics"], Color, "-fcolor-diagnostics", None),
            (
                &["-gline-tables-only"],
                Debug,
                "-g",
                Some("line-tables-only"),
            ),
            (&["--"], Codegen, "--", None),
        ];
        for (option_words, role, name, value) in cases {
            let mut spellings = vec![option_words.to_vec()];
            // The `-` spelling of every `/` option must mean the same.
            if let Some(rest) = option_words[0].strip_prefix('/') {
                let dashed = format!("-{rest}");
                let mut words = option_words.to_vec();
                words[0] = Box::leak(dashed.into_boxed_str());
                spellings.push(words);
            }
            for spelling in spellings {
                let mut words = vec!["/c"];
                words.extend(&spelling);
                words.push("a.c");
                check_args(
                    &words,
                    &[
                        (CompileOnly, "/c", None, 1),
                        (*role, name, *value, spelling.len()),
                        (Input, "", Some("a.c"), 1),
                    ],
                );
            }
        }
    }

    #[test]
    fn compiles_and_their_outputs() {
        check(&["/c", "a.c"], "C a.c -> a.obj");
        check(&["-c", "a.c"], "C a.c -> a.obj");
        check(&["a.cpp", "/c"], "Cxx a.cpp -> a.obj");
        check(&["/c", "src\\dir\\b.cc"], "Cxx src\\dir\\b.cc -> b.obj");
        check(&["/c", "src/dir/b.cxx"], "Cxx src/dir/b.cxx -> b.obj");
        check(&["/c", "C:b.c++"], "Cxx C:b.c++ -> b.obj");
        check(&["/c", "A.CPP"], "Cxx A.CPP -> A.obj");
        check(&["/c", "x.y.c"], "C x.y.c -> x.y.obj");
        check(&["/c", "a.c", "/Foout.obj"], "C a.c -> out.obj =out");
        check(&["/c", "a.c", "/Foout"], "C a.c -> out.obj =out");
        check(&["/c", "a.c", "/Foout.o"], "C a.c -> out.o =out");
        check(&["/c", "a.c", "/Fo:", "out.obj"], "C a.c -> out.obj =out");
        check(&["/c", "a.c", "-Fo:out.obj"], "C a.c -> out.obj =out");
        check(&["/c", "x\\a.c", "/Foobj\\"], "C x\\a.c -> obj\\a.obj =out");
        check(
            &["/c", "x/a.c", "/Fo:", "obj/"],
            "C x/a.c -> obj/a.obj =out",
        );
        check(
            &["/c", "a.c", "/Fo:", "obj.d\\sub"],
            "C a.c -> obj.d\\sub.obj =out",
        );
        check(
            &["/c", "a.c", "/Foa.obj", "/Fob.obj"],
            "C a.c -> b.obj =out",
        );
        check(&["/c", "a.c", "/Z7"], "C a.c -> a.obj debug");
        check(&["/c", "a.c", "-Zi"], "C a.c -> a.obj debug");
        check(&["/c", "a.c", "/ZI"], "C a.c -> a.obj debug");
        check(&["/c", "a.c", "-gline-tables-only"], "C a.c -> a.obj debug");
        check(&["/c", "a.c", "-gcodeview"], "C a.c -> a.obj");
        check(&["/c", "a.c", "/Zo"], "C a.c -> a.obj");
        check(&["/c", "/Tcfoo.txt"], "C! foo.txt -> foo.obj");
        check(&["/c", "/Tc", "foo.txt"], "C! foo.txt -> foo.obj");
        check(&["/c", "-Tpfoo.c"], "Cxx! foo.c -> foo.obj");
        check(&["/c", "/Tp", "foo"], "Cxx! foo -> foo.obj");
        check(&["/c", "/TC", "a.cpp"], "C! a.cpp -> a.obj");
        check(&["/c", "a.c", "/TP"], "Cxx! a.c -> a.obj");
        check(&["/c", "/TP", "/TC", "a.inl"], "C! a.inl -> a.obj");
        check(&["/c", "a.c", "/link", "/DEBUG", "x.lib"], "C a.c -> a.obj");
        check(&["/c", "--", "/Users/a.c"], "C /Users/a.c -> a.obj");
        check(&["/c", "/home/me/a.cpp"], "Cxx /home/me/a.cpp -> a.obj");
        check(&["/c", "/Users/a.c"], "not NoSource");
    }

    #[test]
    fn not_cacheable_reasons() {
        check(&["a.c"], "not Linking");
        check(&["a.c", "/Fe:", "a.exe"], "not Linking");
        check(&["a.c", "/link", "/c"], "not Linking");
        check(&["/c", "/E", "a.c"], "not Preprocessing");
        check(&["/c", "-EP", "a.c"], "not Preprocessing");
        check(&["/P", "a.c"], "not Preprocessing");
        check(&["/c", "a.c", "b.cpp"], "not MultipleSources");
        check(&["/c", "a.c", "/Tcb.c"], "not MultipleSources");
        check(&["/c"], "not NoSource");
        check(&["/c", "/link", "a.c"], "not NoSource");
        check(&["/c", "-"], "not StdinSource");
        check(
            &["/c", "a.c", "b.obj"],
            "not UnsupportedLanguage(\"b.obj\")",
        );
        check(&["/c", "a.ixx"], "not UnsupportedLanguage(\"a.ixx\")");
        check(&["/c", "a.c", "/bogus"], "not UnknownOption(\"/bogus\")");
        check(&["/c", "a.c", "-bogus"], "not UnknownOption(\"-bogus\")");
        check(&["/c", "a.c", "/fc"], "not UnknownOption(\"/fc\")");
        check(&["/c", "a.c", "/i", "x"], "not UnknownOption(\"/i\")");
        check(&["/c", "a.c", "/I"], "not MissingArgument(\"/I\")");
        check(&["/c", "a.c", "-FI"], "not MissingArgument(\"-FI\")");
        check(&["/c", "a.c", "/Fo:"], "not MissingArgument(\"/Fo:\")");
        check(&["/c", "a.c", "/Fo"], "not MissingArgument(\"/Fo\")");
        check(&["/c", "a.c", "/Tp"], "not MissingArgument(\"/Tp\")");
        check(
            &["/c", "a.c", "-Xclang"],
            "not MissingArgument(\"-Xclang\")",
        );
        check(&["/c", "a.c", "/Ycpch.h"], "not PrecompiledHeader");
        check(&["/c", "a.c", "/Yu"], "not PrecompiledHeader");
        check(&["/c", "a.c", "-Yupch.h"], "not PrecompiledHeader");
        check(
            &["/c", "a.c", "-Xclang", "-include-pch"],
            "not PrecompiledHeader",
        );
        check(&["/c", "a.c", "/analyze"], "not ExtraOutput(\"/analyze\")");
        check(
            &["/c", "a.c", "/analyze:log", "x"],
            "not ExtraOutput(\"/analyze:log\")",
        );
        check(
            &["/c", "a.c", "/sourceDependencies", "d.json"],
            "not ExtraOutput(\"/sourceDependencies\")",
        );
        check(
            &["/c", "a.c", "-sourceDependencies:directives", "d.json"],
            "not ExtraOutput(\"-sourceDependencies:directives\")",
        );
        check(
            &["/c", "a.c", "/Faout.asm"],
            "not ExtraOutput(\"/Faout.asm\")",
        );
        check(&["/c", "a.c", "/FAcs"], "not ExtraOutput(\"/FAcs\")");
        check(&["/c", "a.c", "/FR"], "not ExtraOutput(\"/FR\")");
        check(&["/c", "a.c", "/Gm"], "not ExtraOutput(\"/Gm\")");
        check(&["/c", "a.c", "/doc"], "not ExtraOutput(\"/doc\")");
        check(&["/c", "a.c", "/clang:-MD"], "not ExtraOutput(\"-MD\")");
        check(
            &["/c", "a.c", "-Xclang", "-emit-llvm"],
            "not ExtraOutput(\"-emit-llvm\")",
        );
        check(&["/?"], "not Query(\"/?\")");
        check(&["-help"], "not Query(\"-help\")");
        check(&["--version"], "not Query(\"--version\")");
        check(&["-###", "/c", "a.c"], "not Query(\"-###\")");
        check(
            &["/c", "@more.rsp"],
            "not ResponseFile(\"unexpanded response file @more.rsp\")",
        );
        // The first word that settles the verdict wins over later ones.
        check(&["/bogus", "/Yc"], "not UnknownOption(\"/bogus\")");
        check(&["/Yc", "/bogus"], "not PrecompiledHeader");
    }

    #[test]
    fn parse_defers_msvc_execution() {
        let compile = argv(&["/c", "a.c"]);
        assert_eq!(
            parse(&compile),
            Classification::NotCacheable(NotCacheable::MsvcExecution)
        );
        assert_eq!(
            parse(&argv(&["a.c"])),
            Classification::NotCacheable(NotCacheable::Linking)
        );
    }

    #[test]
    fn link_words_are_kept_for_the_linker() {
        check_args(
            &["/c", "a.c", "/link", "/OUT:x.exe", "b.obj"],
            &[
                (Role::CompileOnly, "/c", None, 1),
                (Role::Input, "", Some("a.c"), 1),
                (Role::LinkOnly, "/link", None, 1),
                (Role::LinkOnly, "/link", Some("/OUT:x.exe"), 1),
                (Role::LinkOnly, "/link", Some("b.obj"), 1),
            ],
        );
    }

    #[test]
    fn invocation_fields() {
        let words = argv(&[
            "/c",
            "/nologo",
            "-fdiagnostics-color=never",
            "-fprofile-use=a.prof",
            "/Tpmain.c",
            "/Fo:",
            "out\\main.obj",
        ]);
        let Classification::Compile(inv) = parse_invocation(&words) else {
            panic!("not a compile");
        };
        assert_eq!(inv.family, Family::Msvc);
        assert_eq!(inv.output_kind, OutputKind::Object);
        assert_eq!(inv.color, ColorRequest::Never);
        assert_eq!(inv.content_inputs, vec![PathBuf::from("a.prof")]);
        assert_eq!(inv.source, "main.c");
        assert_eq!(inv.output, "out\\main.obj");
        assert!(inv.dep.is_none());
        let key_names: Vec<&str> = inv.key_args().map(|arg| arg.name).collect();
        assert_eq!(
            key_names,
            ["/c", "/nologo", "-fdiagnostics-color", "-fprofile-use="]
        );
    }

    fn check_color(word: &str, expected: ColorRequest) {
        let Classification::Compile(inv) = parse_invocation(&argv(&["/c", "a.c", word])) else {
            panic!("{word} is not a compile");
        };
        assert_eq!(inv.color, expected, "{word}");
    }

    #[test]
    fn colour_requests() {
        check_color("-fcolor-diagnostics", ColorRequest::Always);
        check_color("-fdiagnostics-color", ColorRequest::Always);
        check_color("-fdiagnostics-color=always", ColorRequest::Always);
        check_color("-fdiagnostics-color=auto", ColorRequest::Auto);
        check_color("-fdiagnostics-color=never", ColorRequest::Never);
        check_color("-fno-color-diagnostics", ColorRequest::Never);
        check_color("-fno-diagnostics-color", ColorRequest::Never);
    }

    /// A word that exercises `spec` in its joined (or flag) form.
    fn sample_word(spec: &OptSpec) -> String {
        match spec.form {
            Flag | Separate => spec.name.to_string(),
            Joined | JoinedOrSeparate => format!("{}v", spec.name),
            EqualsOrSeparate => format!("{}=v", spec.name),
        }
    }

    /// Every row is reachable: its sample word (and for `/` rows the `-` spelling) finds the row
    /// itself, not a shorter or longer neighbour.
    #[test]
    fn every_row_is_reachable() {
        for spec in MSVC_OPTIONS {
            let word = sample_word(spec);
            let mut spellings = vec![word.clone()];
            if let Some(rest) = word.strip_prefix('/') {
                spellings.push(format!("-{rest}"));
            }
            for spelling in spellings {
                let found = lookup_option(&spelling).map(|(row, _)| row.name);
                assert_eq!(found, Some(spec.name), "{spelling:?}");
            }
        }
        let mut names: Vec<&str> = MSVC_OPTIONS.iter().map(|spec| spec.name).collect();
        names.sort_unstable();
        let count = names.len();
        names.dedup();
        assert_eq!(names.len(), count, "duplicate rows");
    }

    /// Every row, in every form it accepts, parses without an unknown or missing argument.
    #[test]
    fn every_row_parses_in_every_form() {
        for spec in MSVC_OPTIONS {
            let mut forms = vec![vec![sample_word(spec)]];
            if matches!(spec.form, Separate | JoinedOrSeparate | EqualsOrSeparate) {
                forms.push(vec![spec.name.to_string(), "v".to_string()]);
            }
            for form in forms {
                let mut words = vec!["/c".to_string()];
                words.extend(form.iter().cloned());
                words.push("a.c".to_string());
                let words: Vec<OsString> = words.into_iter().map(OsString::from).collect();
                let verdict = parse_invocation(&words);
                let bad = matches!(
                    verdict,
                    Classification::NotCacheable(
                        NotCacheable::UnknownOption(_) | NotCacheable::MissingArgument(_)
                    )
                );
                assert!(!bad, "{form:?}: {verdict:?}");
                if let Classification::Compile(inv) = verdict {
                    assert!(
                        inv.args.iter().any(|arg| arg.name == spec.name
                            && arg.role == spec.role
                            && arg.words.len() == form.len()),
                        "{form:?}: {:?}",
                        inv.args
                    );
                }
            }
        }
    }

    #[cfg(unix)]
    #[test]
    fn non_unicode_words() {
        use std::os::unix::ffi::OsStringExt;
        let source = OsString::from_vec(b"caf\xE9.c".to_vec());
        let words = vec![OsString::from("/c"), source.clone()];
        let Classification::NotCacheable(reason) = parse_invocation(&words) else {
            panic!("a non-unicode extension check cannot prove the language");
        };
        assert!(matches!(reason, NotCacheable::UnsupportedLanguage(_)));
        let via_tc = vec![OsString::from("/c"), OsString::from("/Tc"), source];
        let Classification::Compile(inv) = parse_invocation(&via_tc) else {
            panic!("/Tc names the language");
        };
        assert_eq!(inv.output, OsString::from_vec(b"caf\xE9.obj".to_vec()));
        let option = vec![OsString::from_vec(b"/I\xE9".to_vec())];
        assert!(matches!(
            parse_invocation(&option),
            Classification::NotCacheable(NotCacheable::UnknownOption(_))
        ));
    }

    fn word_strategy() -> impl Strategy<Value = String> {
        prop_oneof![
            ".{0,12}",
            "[/-][A-Za-z:?#+-]{0,8}",
            "[/-](Fo|Fo:|FI|I|D|Tc|Tp|Fd|Yu|link|c|E|Xclang|clang:|external:I)[a-z.]{0,4}",
            "[a-z]{1,4}\\.(c|cpp|obj|CC)",
        ]
    }

    proptest! {
        #[test]
        fn parse_never_panics(words in proptest::collection::vec(word_strategy(), 0..10)) {
            let words: Vec<OsString> = words.into_iter().map(OsString::from).collect();
            let _ = parse(&words);
            if let Classification::Compile(inv) = parse_invocation(&words) {
                prop_assert_eq!(inv.original_words(), words);
            }
        }
    }
}
