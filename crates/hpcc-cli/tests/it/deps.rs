//! Dependency files: byte-identical to the plain compiler's, on the miss and on the hit.

use std::path::Path;

use crate::ensure;
use crate::harness::{copy_tree, succeeded, text, Context, Need, Sandbox, TestResult};
use crate::Case;

/// One dependency-flag combination: its flags and the dependency file it writes (relative
/// to the project).
type DepCase = (&'static [&'static str], &'static str);

const COMBINATIONS: &[DepCase] = &[
    (&["-MD"], "out/x.d"),
    (&["-MMD"], "out/x.d"),
    (&["-MD", "-MF", "deps/x.dep"], "deps/x.dep"),
    (&["-MMD", "-MF", "deps/x.dep"], "deps/x.dep"),
    (&["-MD", "-MT", "custom-target"], "out/x.d"),
    (&["-MD", "-MT", "a", "-MT", "b c"], "out/x.d"),
    (&["-MD", "-MQ", "$(obj)/x.o"], "out/x.d"),
    (&["-MD", "-MP"], "out/x.d"),
    (
        &["-MMD", "-MP", "-MF", "deps/x.dep", "-MT", "t"],
        "deps/x.dep",
    ),
    (&["-Wp,-MD,deps/wp.d"], "deps/wp.d"),
    (&["-Wp,-MMD,deps/wp.d"], "deps/wp.d"),
];

pub fn cases() -> Vec<Case> {
    vec![
        ("deps::gcc_combinations", &[Need::Gcc], || {
            combinations("gcc", false)
        }),
        (
            "deps::gcc_combinations_absolute_paths",
            &[Need::Gcc],
            || combinations("gcc", true),
        ),
        ("deps::clang_combinations", &[Need::Clang], || {
            combinations("clang", false)
        }),
        (
            "deps::clang_combinations_absolute_paths",
            &[Need::Clang],
            || combinations("clang", true),
        ),
        ("deps::gcc_hit_with_other_object_name", &[Need::Gcc], || {
            other_object_name("gcc")
        }),
        (
            "deps::clang_hit_with_other_object_name",
            &[Need::Clang],
            || other_object_name("clang"),
        ),
        ("deps::gcc_moved_checkout", &[Need::Gcc], || {
            moved_checkout("gcc")
        }),
        ("deps::clang_moved_checkout", &[Need::Clang], || {
            moved_checkout("clang")
        }),
        ("deps::gcc_without_dash_o", &[Need::Gcc], without_dash_o),
        ("deps::gcc_long_paths_wrap", &[Need::Gcc], || {
            long_paths("gcc")
        }),
        ("deps::clang_long_paths_wrap", &[Need::Clang], || {
            long_paths("clang")
        }),
    ]
}

/// A project with a source in `src/`, headers in `include/` (user) and a system header.
fn project(sandbox: &Sandbox) {
    sandbox.write(
        "src/x.c",
        "#include <stddef.h>\n#include <stdio.h>\n#include \"local.h\"\n#include <lib.h>\nint v = L + M;\n",
    );
    sandbox.write("src/local.h", "#define L 1\n");
    sandbox.write("include/lib.h", "#include \"lib_inner.h\"\n#define M 2\n");
    sandbox.write("include/lib_inner.h", "/* inner */\n");
}

/// Builds the argv for one combination; `absolute` passes the source, `-I` and `-o` as
/// absolute paths, which is where path rewriting could go wrong.
fn argv(sandbox: &Sandbox, compiler: &str, flags: &[&str], absolute: bool) -> Vec<String> {
    let at = |relative: &str| {
        if absolute {
            sandbox.project.join(relative).display().to_string()
        } else {
            relative.to_owned()
        }
    };
    let mut args = vec![compiler.to_owned(), "-c".to_owned(), at("src/x.c")];
    args.push(format!("-I{}", at("include")));
    args.extend(["-o".to_owned(), at("out/x.o")]);
    args.extend(flags.iter().map(|flag| flag.to_string()));
    args
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// Runs `run`, then returns the dependency file's bytes and removes it and the object.
fn produce(
    sandbox: &Sandbox,
    dep_file: &str,
    what: &str,
    run: impl FnOnce() -> std::process::Output,
) -> Result<Vec<u8>, String> {
    std::fs::create_dir_all(sandbox.project.join("out")).ctx("out dir")?;
    std::fs::create_dir_all(sandbox.project.join("deps")).ctx("deps dir")?;
    succeeded(&run(), what)?;
    let path = sandbox.project.join(dep_file);
    let bytes = std::fs::read(&path).ctx(&format!("{what}: reading {dep_file}"))?;
    std::fs::remove_file(&path).ctx("removing the dep file")?;
    let _ = std::fs::remove_file(sandbox.project.join("out/x.o"));
    Ok(bytes)
}

fn combinations(compiler: &str, absolute: bool) -> TestResult {
    for (flags, dep_file) in COMBINATIONS {
        let sandbox = Sandbox::new();
        project(&sandbox);
        let args = argv(&sandbox, compiler, flags, absolute);
        let plain = produce(&sandbox, dep_file, "plain", || {
            sandbox.plain_compiler(&strs(&args))
        })?;
        for round in ["miss", "hit"] {
            let ours = produce(&sandbox, dep_file, round, || sandbox.hpcc(&strs(&args)))?;
            ensure!(
                ours == plain,
                "{flags:?} {round}: dependency file differs\n--- hpcc:\n{}--- plain:\n{}",
                text(&ours),
                text(&plain)
            );
        }
        ensure!(
            sandbox.counts() == (1, 0, 1),
            "{flags:?}: expected a miss then a hit: {:?}",
            sandbox.counts()
        );
    }
    Ok(())
}

/// A hit for another object name writes that name as the target.
fn other_object_name(compiler: &str) -> TestResult {
    let sandbox = Sandbox::new();
    project(&sandbox);
    std::fs::create_dir_all(sandbox.project.join("out")).ctx("out dir")?;
    let compile = |object: &str| {
        vec![
            compiler.to_owned(),
            "-c".to_owned(),
            "src/x.c".to_owned(),
            "-Iinclude".to_owned(),
            "-MD".to_owned(),
            "-o".to_owned(),
            object.to_owned(),
        ]
    };
    succeeded(&sandbox.hpcc(&strs(&compile("out/one.o"))), "first")?;
    succeeded(&sandbox.hpcc(&strs(&compile("out/two.o"))), "second")?;
    let ours = sandbox.read("out/two.d");
    std::fs::remove_file(sandbox.project.join("out/two.d")).ctx("rm")?;
    succeeded(
        &sandbox.plain_compiler(&strs(&compile("out/two.o"))),
        "plain",
    )?;
    let plain = sandbox.read("out/two.d");
    ensure!(
        ours == plain,
        "dependency file differs\n--- hpcc:\n{}--- plain:\n{}",
        text(&ours),
        text(&plain)
    );
    let (direct, _, misses) = sandbox.counts();
    ensure!(direct + misses == 2, "counts {:?}", sandbox.counts());
    Ok(())
}

/// In a second checkout at another path, the hit's dependency file names that checkout's
/// paths, exactly as the plain compiler would there.
fn moved_checkout(compiler: &str) -> TestResult {
    let sandbox = Sandbox::new();
    project(&sandbox);
    let moved = sandbox.base.join("elsewhere/project");
    copy_tree(&sandbox.project, &moved);
    let args_in = |root: &Path| {
        vec![
            compiler.to_owned(),
            "-c".to_owned(),
            root.join("src/x.c").display().to_string(),
            format!("-I{}", root.join("include").display()),
            "-MD".to_owned(),
            "-MF".to_owned(),
            root.join("x.d").display().to_string(),
            "-o".to_owned(),
            root.join("x.o").display().to_string(),
        ]
    };
    succeeded(
        &sandbox.hpcc(&strs(&args_in(&sandbox.project))),
        "first checkout",
    )?;
    succeeded(
        &sandbox.hpcc_in(&moved, &strs(&args_in(&moved))),
        "moved checkout",
    )?;
    ensure!(
        sandbox.counts() == (1, 0, 1),
        "the moved checkout should hit: {:?}",
        sandbox.counts()
    );
    let ours = std::fs::read(moved.join("x.d")).ctx("reading x.d")?;
    succeeded(
        &sandbox.plain_compiler_in(&moved, &strs(&args_in(&moved))),
        "plain",
    )?;
    let plain = std::fs::read(moved.join("x.d")).ctx("reading x.d")?;
    ensure!(
        ours == plain,
        "dependency file differs\n--- hpcc:\n{}--- plain:\n{}",
        text(&ours),
        text(&plain)
    );
    ensure!(
        !text(&ours).contains(&sandbox.project.display().to_string()),
        "the moved checkout's dependency file names the first checkout"
    );
    Ok(())
}

/// `-c src/x.c -MD` without `-o` writes `x.d` (and `x.o`) in the current directory.
fn without_dash_o() -> TestResult {
    let sandbox = Sandbox::new();
    project(&sandbox);
    let args = ["gcc", "-c", "src/x.c", "-Iinclude", "-MD"];
    succeeded(&sandbox.plain_compiler(&args), "plain")?;
    let plain = sandbox.read("x.d");
    for round in ["miss", "hit"] {
        std::fs::remove_file(sandbox.project.join("x.d")).ctx("rm x.d")?;
        succeeded(&sandbox.hpcc(&args), round)?;
        ensure!(sandbox.read("x.d") == plain, "{round}: x.d differs");
    }
    ensure!(
        sandbox.counts() == (1, 0, 1),
        "counts {:?}",
        sandbox.counts()
    );
    Ok(())
}

/// Long paths make the compiler wrap dependency lines; the wrapping must match too.
fn long_paths(compiler: &str) -> TestResult {
    let sandbox = Sandbox::new();
    let deep = "a-rather-long-directory-name/another-quite-long-directory-name/and-one-more";
    sandbox.write(
        &format!("{deep}/src.c"),
        "#include \"header-with-a-long-name-number-one.h\"\n#include \"header-with-a-long-name-number-two.h\"\nint q;\n",
    );
    sandbox.write(
        &format!("{deep}/header-with-a-long-name-number-one.h"),
        "\n",
    );
    sandbox.write(
        &format!("{deep}/header-with-a-long-name-number-two.h"),
        "\n",
    );
    let source = format!("{deep}/src.c");
    let args = [
        compiler, "-c", &source, "-MD", "-MF", "long.d", "-o", "long.o",
    ];
    succeeded(&sandbox.plain_compiler(&args), "plain")?;
    let plain = sandbox.read("long.d");
    for round in ["miss", "hit"] {
        std::fs::remove_file(sandbox.project.join("long.d")).ctx("rm")?;
        succeeded(&sandbox.hpcc(&args), round)?;
        let ours = sandbox.read("long.d");
        ensure!(
            ours == plain,
            "{round}: differs\n--- hpcc:\n{}--- plain:\n{}",
            text(&ours),
            text(&plain)
        );
    }
    Ok(())
}
