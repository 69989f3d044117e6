//! Two checkouts at different absolute paths share every hit, and their objects are
//! byte-identical and free of the checkout path.

use std::path::Path;

use crate::ensure;
use crate::harness::{contains, copy_tree, succeeded, Context, Need, Sandbox, TestResult};
use crate::Case;

pub fn cases() -> Vec<Case> {
    vec![
        ("sharing::gcc_relative_paths", &[Need::Gcc], || {
            two_checkouts("gcc", "m.c", false)
        }),
        ("sharing::gcc_absolute_paths", &[Need::Gcc], || {
            two_checkouts("gcc", "m.c", true)
        }),
        ("sharing::gxx_absolute_paths", &[Need::Gcc], || {
            two_checkouts("g++", "m.cc", true)
        }),
        ("sharing::clang_relative_paths", &[Need::Clang], || {
            two_checkouts("clang", "m.c", false)
        }),
        ("sharing::clang_absolute_paths", &[Need::Clang], || {
            two_checkouts("clang", "m.c", true)
        }),
        (
            "sharing::gcc_edit_in_moved_checkout",
            &[Need::Gcc],
            edit_in_moved_checkout,
        ),
        (
            "sharing::gcc_from_subdirectory",
            &[Need::Gcc],
            from_subdirectory,
        ),
        (
            "sharing::unmarked_keeps_paths",
            &[Need::Gcc],
            unmarked_keeps_paths,
        ),
        (
            "sharing::outside_root_not_shared",
            &[Need::Gcc],
            outside_root,
        ),
    ]
}

/// Lays out a small project (source in `src/`, headers in `include/`) under `root`.
fn layout(sandbox: &Sandbox, source: &str) {
    sandbox.write(
        &format!("src/{source}"),
        "#include \"inc.h\"\n#include <stdio.h>\nconst char *where = __FILE__;\nint f(void) { printf(\"%s\\n\", where); return VALUE; }\n",
    );
    sandbox.write("include/inc.h", "#define VALUE 7\n");
}

fn args_for(compiler: &str, root: &Path, source: &str, absolute: bool) -> Vec<String> {
    let at = |relative: &str| {
        if absolute {
            root.join(relative).display().to_string()
        } else {
            relative.to_owned()
        }
    };
    vec![
        compiler.to_owned(),
        "-g".to_owned(),
        "-O1".to_owned(),
        format!("-I{}", at("include")),
        "-c".to_owned(),
        at(&format!("src/{source}")),
        "-o".to_owned(),
        at("m.o"),
    ]
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

fn two_checkouts(compiler: &str, source: &str, absolute: bool) -> TestResult {
    let sandbox = Sandbox::new();
    layout(&sandbox, source);
    let second = sandbox.base.join("another/place/project");
    copy_tree(&sandbox.project, &second);
    let first_args = args_for(compiler, &sandbox.project, source, absolute);
    succeeded(&sandbox.hpcc(&strs(&first_args)), "first checkout")?;
    let second_args = args_for(compiler, &second, source, absolute);
    succeeded(
        &sandbox.hpcc_in(&second, &strs(&second_args)),
        "second checkout",
    )?;
    ensure!(
        sandbox.counts() == (1, 0, 1),
        "the second checkout should hit: {:?}",
        sandbox.counts()
    );
    let one = sandbox.read("m.o");
    let two = std::fs::read(second.join("m.o")).ctx("reading the second object")?;
    ensure!(one == two, "objects differ between checkouts");
    // A fresh compile in the second checkout (empty cache) gives the same bytes.
    let fresh = Sandbox::new();
    std::fs::remove_file(second.join("m.o")).ctx("rm")?;
    succeeded(
        &fresh.hpcc_in(&second, &strs(&second_args)),
        "fresh compile",
    )?;
    let fresh_object = std::fs::read(second.join("m.o")).ctx("reading")?;
    ensure!(
        fresh_object == one,
        "a fresh compile differs from the shared object"
    );
    for checkout in [&sandbox.project, &second] {
        let path = checkout.display().to_string();
        ensure!(
            !contains(&one, path.as_bytes()),
            "the object contains the checkout path {path}"
        );
    }
    ensure!(
        !contains(&one, sandbox.base.display().to_string().as_bytes()),
        "the object contains the scratch path"
    );
    Ok(())
}

/// Compiling from a build subdirectory (as CMake and make -C do) still shares.
/// A header edited in a second checkout, keeping its size and mtime, after the second
/// checkout's headers were verified once (so they are in the machine's digest table): the next
/// compile must see the edit, and then hit on the edited content.
fn edit_in_moved_checkout() -> TestResult {
    let sandbox = Sandbox::new();
    layout(&sandbox, "m.c");
    let second = sandbox.base.join("another/place/project");
    copy_tree(&sandbox.project, &second);
    crate::harness::settle();
    let first_args = args_for("gcc", &sandbox.project, "m.c", false);
    succeeded(&sandbox.hpcc(&strs(&first_args)), "first checkout")?;
    let second_args = args_for("gcc", &second, "m.c", false);
    succeeded(&sandbox.hpcc_in(&second, &strs(&second_args)), "moved")?;
    ensure!(
        sandbox.counts() == (1, 0, 1),
        "the moved checkout should hit: {:?}",
        sandbox.counts()
    );
    let header = second.join("include/inc.h");
    let mtime = std::fs::metadata(&header)
        .ctx("stat")?
        .modified()
        .ctx("mtime")?;
    std::fs::write(&header, "#define VALUE 8\n").ctx("editing the header")?;
    std::fs::File::options()
        .write(true)
        .open(&header)
        .ctx("reopening the header")?
        .set_modified(mtime)
        .ctx("restoring the mtime")?;
    crate::harness::settle();
    succeeded(
        &sandbox.hpcc_in(&second, &strs(&second_args)),
        "after the edit",
    )?;
    ensure!(
        sandbox.counts() == (1, 0, 2),
        "the edited header must miss: {:?}",
        sandbox.counts()
    );
    let edited = std::fs::read(second.join("m.o")).ctx("reading the object")?;
    let fresh = Sandbox::new();
    std::fs::remove_file(second.join("m.o")).ctx("rm")?;
    succeeded(&fresh.hpcc_in(&second, &strs(&second_args)), "fresh")?;
    ensure!(
        std::fs::read(second.join("m.o")).ctx("reading")? == edited,
        "the object after the edit differs from a fresh compile"
    );
    succeeded(&sandbox.hpcc_in(&second, &strs(&second_args)), "again")?;
    ensure!(
        sandbox.counts() == (2, 0, 2),
        "the edited content should now hit: {:?}",
        sandbox.counts()
    );
    Ok(())
}

fn from_subdirectory() -> TestResult {
    let sandbox = Sandbox::new();
    layout(&sandbox, "m.c");
    std::fs::create_dir_all(sandbox.project.join("build")).ctx("build dir")?;
    let second = sandbox.base.join("two/project");
    copy_tree(&sandbox.project, &second);
    let args = ["gcc", "-g", "-I../include", "-c", "../src/m.c", "-o", "m.o"];
    succeeded(
        &sandbox.hpcc_in(&sandbox.project.join("build"), &args),
        "first",
    )?;
    succeeded(&sandbox.hpcc_in(&second.join("build"), &args), "second")?;
    ensure!(
        sandbox.counts() == (1, 0, 1),
        "should hit: {:?}",
        sandbox.counts()
    );
    let one = sandbox.read("build/m.o");
    let two = std::fs::read(second.join("build/m.o")).ctx("reading")?;
    ensure!(one == two, "objects differ");
    ensure!(
        !contains(&one, sandbox.base.display().to_string().as_bytes()),
        "object contains an absolute path"
    );
    Ok(())
}

/// Without a marker hpcc injects nothing: the object keeps the absolute directory, like the
/// plain compiler's, and another checkout does not share it.
fn unmarked_keeps_paths() -> TestResult {
    let sandbox = Sandbox::plain();
    layout(&sandbox, "m.c");
    let second = sandbox.base.join("two/project");
    copy_tree(&sandbox.project, &second);
    let args = ["gcc", "-g", "-Iinclude", "-c", "src/m.c", "-o", "m.o"];
    succeeded(&sandbox.hpcc(&args), "first")?;
    let object = sandbox.read("m.o");
    ensure!(
        contains(&object, sandbox.project.display().to_string().as_bytes()),
        "the unmarked object lost its directory"
    );
    succeeded(&sandbox.hpcc_in(&second, &args), "second")?;
    ensure!(
        sandbox.counts() == (0, 0, 2),
        "unmarked checkouts must not share: {:?}",
        sandbox.counts()
    );
    let two = std::fs::read(second.join("m.o")).ctx("reading")?;
    ensure!(
        contains(&two, second.display().to_string().as_bytes()),
        "the second object names the wrong directory"
    );
    Ok(())
}

/// A header outside the project root is hashed by its absolute path, so checkouts that see
/// different outside headers never share.
fn outside_root() -> TestResult {
    let sandbox = Sandbox::new();
    sandbox.write("src/o.c", "#include <outside.h>\nint v = OUT;\n");
    let outside_one = sandbox.base.join("outside-one");
    let outside_two = sandbox.base.join("outside-two");
    crate::harness::write_aged(&outside_one.join("outside.h"), b"#define OUT 1\n");
    crate::harness::write_aged(&outside_two.join("outside.h"), b"#define OUT 2\n");
    let second = sandbox.base.join("two/project");
    copy_tree(&sandbox.project, &second);
    let include_one = format!("-I{}", outside_one.display());
    let include_two = format!("-I{}", outside_two.display());
    succeeded(
        &sandbox.hpcc(&["gcc", &include_one, "-c", "src/o.c", "-o", "o.o"]),
        "first",
    )?;
    succeeded(
        &sandbox.hpcc_in(
            &second,
            &["gcc", &include_two, "-c", "src/o.c", "-o", "o.o"],
        ),
        "second",
    )?;
    ensure!(
        sandbox.counts() == (0, 0, 2),
        "different outside headers must not share: {:?}",
        sandbox.counts()
    );
    Ok(())
}
