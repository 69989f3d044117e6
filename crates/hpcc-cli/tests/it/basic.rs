//! Miss then hit for gcc, g++ and clang: the restored outputs, warnings and key sensitivity.

use crate::ensure;
use crate::harness::{contains, succeeded, text, Context, Need, Sandbox, TestResult};
use crate::Case;

pub fn cases() -> Vec<Case> {
    vec![
        ("basic::gcc_miss_then_hit", &[Need::Gcc], || {
            miss_then_hit("gcc", "x.c", C_SOURCE)
        }),
        ("basic::gxx_miss_then_hit", &[Need::Gcc], || {
            miss_then_hit("g++", "x.cc", CXX_SOURCE)
        }),
        ("basic::clang_miss_then_hit", &[Need::Clang], || {
            miss_then_hit("clang", "x.c", C_SOURCE)
        }),
        ("basic::clangxx_miss_then_hit", &[Need::Clang], || {
            miss_then_hit("clang++", "x.cc", CXX_SOURCE)
        }),
        ("basic::gcc_unmarked_equals_plain", &[Need::Gcc], || {
            unmarked_equals_plain("gcc")
        }),
        ("basic::clang_unmarked_equals_plain", &[Need::Clang], || {
            unmarked_equals_plain("clang")
        }),
        ("basic::gcc_without_dash_o", &[Need::Gcc], || {
            without_dash_o("gcc")
        }),
        ("basic::gcc_assembly_output", &[Need::Gcc], assembly_output),
        ("basic::gcc_warnings_replayed", &[Need::Gcc], || {
            warnings_replayed("gcc", &[])
        }),
        ("basic::gcc_colored_warnings_replayed", &[Need::Gcc], || {
            warnings_replayed("gcc", &["-fdiagnostics-color=always"])
        }),
        ("basic::clang_warnings_replayed", &[Need::Clang], || {
            warnings_replayed("clang", &[])
        }),
        (
            "basic::clang_colored_warnings_replayed",
            &[Need::Clang],
            || warnings_replayed("clang", &["-fcolor-diagnostics"]),
        ),
        ("basic::gcc_key_follows_flags", &[Need::Gcc], || {
            key_follows_flags("gcc")
        }),
        ("basic::clang_key_follows_flags", &[Need::Clang], || {
            key_follows_flags("clang")
        }),
        ("basic::gcc_include_kinds", &[Need::Gcc], || {
            include_kinds("gcc")
        }),
        ("basic::clang_include_kinds", &[Need::Clang], || {
            include_kinds("clang")
        }),
        (
            "basic::gcc_language_override",
            &[Need::Gcc],
            language_override,
        ),
        (
            "basic::gcc_preprocessor_mode",
            &[Need::Gcc],
            preprocessor_mode,
        ),
    ]
}

const C_SOURCE: &str =
    "#include <stdio.h>\n#include \"x.h\"\nint answer(void) { printf(\"%d\\n\", X); return X; }\n";
const CXX_SOURCE: &str =
    "#include <vector>\n#include \"x.h\"\nint answer() { std::vector<int> v{X}; return v[0]; }\n";

/// Compiles through hpcc twice and checks: a miss, then a direct hit; the restored object is
/// byte-identical to the one the miss produced; a third compile of changed source misses.
fn miss_then_hit(compiler: &str, source: &str, text_of_source: &str) -> TestResult {
    let sandbox = Sandbox::new();
    sandbox.write(source, text_of_source);
    sandbox.write("x.h", "#define X 42\n");
    let args = [compiler, "-O2", "-g", "-c", source, "-o", "x.o"];
    succeeded(&sandbox.hpcc(&args), "first compile")?;
    ensure!(
        sandbox.counts() == (0, 0, 1),
        "expected one miss: {:?}",
        sandbox.counts()
    );
    let first = sandbox.read("x.o");
    std::fs::remove_file(sandbox.project.join("x.o")).ctx("removing x.o")?;
    succeeded(&sandbox.hpcc(&args), "second compile")?;
    ensure!(
        sandbox.counts() == (1, 0, 1),
        "expected a direct hit: {:?}",
        sandbox.counts()
    );
    ensure!(sandbox.read("x.o") == first, "restored object differs");
    sandbox.write("x.h", "#define X 43\n");
    succeeded(&sandbox.hpcc(&args), "compile after edit")?;
    ensure!(
        sandbox.counts() == (1, 0, 2),
        "an edited header must miss: {:?}",
        sandbox.counts()
    );
    ensure!(
        sandbox.read("x.o") != first,
        "edited header gave old object"
    );
    Ok(())
}

/// Without a `.hpcc` marker nothing is injected: the object equals the plain compiler's, on
/// the miss and on the hit.
fn unmarked_equals_plain(compiler: &str) -> TestResult {
    let sandbox = Sandbox::plain();
    sandbox.write("x.c", C_SOURCE);
    sandbox.write("x.h", "#define X 1\n");
    succeeded(
        &sandbox.plain_compiler(&[compiler, "-g", "-c", "x.c", "-o", "plain.o"]),
        "plain compile",
    )?;
    let plain = sandbox.read("plain.o");
    for round in ["miss", "hit"] {
        succeeded(
            &sandbox.hpcc(&[compiler, "-g", "-c", "x.c", "-o", "plain.o"]),
            round,
        )?;
        ensure!(
            sandbox.read("plain.o") == plain,
            "{round}: object differs from the plain compiler's"
        );
    }
    ensure!(
        sandbox.counts() == (1, 0, 1),
        "counts {:?}",
        sandbox.counts()
    );
    Ok(())
}

/// `-c src/x.c` writes `x.o` into the current directory, on a miss and on a hit.
fn without_dash_o(compiler: &str) -> TestResult {
    let sandbox = Sandbox::new();
    sandbox.write("src/x.c", "int f(void) { return 3; }\n");
    for round in ["miss", "hit"] {
        succeeded(&sandbox.hpcc(&[compiler, "-c", "src/x.c"]), round)?;
        let object = sandbox.project.join("x.o");
        ensure!(
            object.is_file(),
            "{round}: x.o not in the current directory"
        );
        ensure!(
            !sandbox.project.join("src/x.o").exists(),
            "{round}: object written beside the source"
        );
        std::fs::remove_file(object).ctx("removing x.o")?;
    }
    ensure!(
        sandbox.counts() == (1, 0, 1),
        "counts {:?}",
        sandbox.counts()
    );
    Ok(())
}

/// `-S` output is cached like an object.
fn assembly_output() -> TestResult {
    let sandbox = Sandbox::new();
    sandbox.write("x.c", "int f(int a) { return a * 7; }\n");
    succeeded(&sandbox.hpcc(&["gcc", "-O2", "-S", "x.c"]), "miss")?;
    let first = sandbox.read("x.s");
    ensure!(contains(&first, b"f:"), "x.s has no symbol f");
    std::fs::remove_file(sandbox.project.join("x.s")).ctx("removing x.s")?;
    succeeded(&sandbox.hpcc(&["gcc", "-O2", "-S", "x.c"]), "hit")?;
    ensure!(sandbox.read("x.s") == first, "restored assembly differs");
    ensure!(
        sandbox.counts() == (1, 0, 1),
        "counts {:?}",
        sandbox.counts()
    );
    Ok(())
}

/// Warnings are printed on the hit exactly as the compiler printed them, in the same
/// sandbox layout as a plain compile.
fn warnings_replayed(compiler: &str, extra: &[&str]) -> TestResult {
    let sandbox = Sandbox::new();
    sandbox.write(
        "w.c",
        "int f(int a) { int unused; if (a = 2) return 1; return 0; }\n",
    );
    let mut args = vec![compiler, "-Wall", "-c", "w.c", "-o", "w.o"];
    args.extend_from_slice(extra);
    let plain = sandbox.plain_compiler(&args);
    succeeded(&plain, "plain compile")?;
    ensure!(!plain.stderr.is_empty(), "the source should warn");
    if !extra.is_empty() {
        ensure!(
            contains(&plain.stderr, b"\x1b["),
            "colour was asked for but the plain compiler printed none"
        );
    }
    for round in ["miss", "hit"] {
        let out = sandbox.hpcc(&args);
        succeeded(&out, round)?;
        ensure!(
            out.stderr == plain.stderr,
            "{round}: stderr differs:\n{}\n--- plain:\n{}",
            text(&out.stderr),
            text(&plain.stderr)
        );
        ensure!(out.stdout == plain.stdout, "{round}: stdout differs");
    }
    ensure!(
        sandbox.counts() == (1, 0, 1),
        "counts {:?}",
        sandbox.counts()
    );
    Ok(())
}

/// Flags that change the output change the key; repeating a flag set hits again.
fn key_follows_flags(compiler: &str) -> TestResult {
    let sandbox = Sandbox::new();
    sandbox.write(
        "k.c",
        "#ifdef V\nint v = V;\n#else\nint v = -1;\n#endif\n#ifdef U\nint u;\n#endif\n",
    );
    let variants: &[&[&str]] = &[
        &["-DV=1"],
        &["-DV=2"],
        &["-DV=2", "-UV"],
        &["-DV=2", "-O2"],
        &["-DV=2", "-DU"],
        &["-DV=2", "-g"],
    ];
    let mut objects = Vec::new();
    for (index, flags) in variants.iter().enumerate() {
        let mut args = vec![compiler, "-c", "k.c", "-o", "k.o"];
        args.extend_from_slice(flags);
        succeeded(&sandbox.hpcc(&args), &format!("variant {flags:?}"))?;
        let misses = sandbox.counts().2;
        ensure!(
            misses == index as u64 + 1,
            "{flags:?} should have missed (misses {misses})"
        );
        objects.push(sandbox.read("k.o"));
    }
    for (index, flags) in variants.iter().enumerate() {
        let mut args = vec![compiler, "-c", "k.c", "-o", "k.o"];
        args.extend_from_slice(flags);
        succeeded(&sandbox.hpcc(&args), &format!("repeat {flags:?}"))?;
        ensure!(
            sandbox.read("k.o") == objects[index],
            "{flags:?}: the hit restored another variant's object"
        );
    }
    ensure!(
        sandbox.counts() == (variants.len() as u64, 0, variants.len() as u64),
        "counts {:?}",
        sandbox.counts()
    );
    Ok(())
}

/// Headers reached through `-I`, `-isystem`, `-iquote` and `-include` are all tracked.
fn include_kinds(compiler: &str) -> TestResult {
    let sandbox = Sandbox::new();
    sandbox.write(
        "i.c",
        "#include <sys_h.h>\n#include \"quote_h.h\"\n#include <angle_h.h>\nint v = A + B + C + D;\n",
    );
    let headers = [
        ("isys/sys_h.h", "#define A 1\n"),
        ("iq/quote_h.h", "#define B 2\n"),
        ("inc/angle_h.h", "#define C 3\n"),
        ("forced.h", "#define D 4\n"),
    ];
    for (path, body) in headers {
        sandbox.write(path, body);
    }
    let args = [
        compiler, "-isystem", "isys", "-iquote", "iq", "-Iinc", "-include", "forced.h", "-c",
        "i.c", "-o", "i.o",
    ];
    succeeded(&sandbox.hpcc(&args), "first compile")?;
    succeeded(&sandbox.hpcc(&args), "second compile")?;
    ensure!(
        sandbox.counts() == (1, 0, 1),
        "counts {:?}",
        sandbox.counts()
    );
    for (round, (path, body)) in headers.iter().enumerate() {
        sandbox.write(path, &body.replace(char::is_numeric, "9"));
        succeeded(&sandbox.hpcc(&args), &format!("after editing {path}"))?;
        let (direct, _, misses) = sandbox.counts();
        ensure!(
            misses == round as u64 + 2 && direct == 1,
            "editing {path} should miss: {:?}",
            sandbox.counts()
        );
    }
    Ok(())
}

/// `-x c` on a file without a C extension is cached as C.
fn language_override() -> TestResult {
    let sandbox = Sandbox::new();
    sandbox.write("code.txt", "int g(void) { return 5; }\n");
    let args = ["gcc", "-x", "c", "-c", "code.txt", "-o", "code.o"];
    succeeded(&sandbox.hpcc(&args), "miss")?;
    let first = sandbox.read("code.o");
    succeeded(&sandbox.hpcc(&args), "hit")?;
    ensure!(sandbox.read("code.o") == first, "object differs");
    ensure!(
        sandbox.counts() == (1, 0, 1),
        "counts {:?}",
        sandbox.counts()
    );
    let as_cxx = ["gcc", "-x", "c++", "-c", "code.txt", "-o", "code.o"];
    succeeded(&sandbox.hpcc(&as_cxx), "as C++")?;
    ensure!(
        sandbox.counts().2 == 2,
        "another language must miss: {:?}",
        sandbox.counts()
    );
    Ok(())
}

/// `mode = "preprocessor"`: the key comes from the preprocessed text, so a comment-only edit
/// of a header still hits, and a real edit misses.
fn preprocessor_mode() -> TestResult {
    let sandbox = Sandbox::new();
    sandbox.write("p.c", "#include \"p.h\"\nint v = P;\n");
    sandbox.write("p.h", "#define P 1\n");
    crate::harness::settle();
    let run = |what: &str| -> TestResult {
        let mut command = sandbox.hpcc_command(&["gcc", "-c", "p.c", "-o", "p.o"]);
        command.env("HPCC_MODE", "preprocessor");
        succeeded(&command.output().ctx("running hpcc")?, what)
    };
    run("miss")?;
    run("hit")?;
    ensure!(
        sandbox.counts() == (0, 1, 1),
        "expected a preprocessor hit: {:?}",
        sandbox.counts()
    );
    sandbox.write("p.h", "/* a comment */\n#define P 1\n");
    crate::harness::settle();
    run("comment edit")?;
    ensure!(
        sandbox.counts() == (0, 2, 1),
        "a comment-only edit should still hit: {:?}",
        sandbox.counts()
    );
    sandbox.write("p.h", "#define P 2\n");
    run("real edit")?;
    ensure!(
        sandbox.counts() == (0, 2, 2),
        "a real edit must miss: {:?}",
        sandbox.counts()
    );
    Ok(())
}
