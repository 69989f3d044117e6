//! Direct mode must not be fooled: edited and shadowing headers, time macros, split DWARF,
//! coverage notes and profile data.

use std::path::Path;
use std::time::SystemTime;

use crate::ensure;
use crate::harness::{contains, copy_tree, succeeded, text, Context, Need, Sandbox, TestResult};
use crate::Case;

pub fn cases() -> Vec<Case> {
    vec![
        (
            "correctness::gcc_edit_same_size_and_mtime",
            &[Need::Gcc],
            || same_size_and_mtime("gcc"),
        ),
        (
            "correctness::clang_edit_same_size_and_mtime",
            &[Need::Clang],
            || same_size_and_mtime("clang"),
        ),
        (
            "correctness::gcc_shadow_earlier_include_dir",
            &[Need::Gcc],
            || shadow_earlier_dir("gcc"),
        ),
        (
            "correctness::clang_shadow_earlier_include_dir",
            &[Need::Clang],
            || shadow_earlier_dir("clang"),
        ),
        (
            "correctness::gcc_shadow_beside_source",
            &[Need::Gcc],
            || shadow_beside_source("gcc"),
        ),
        (
            "correctness::clang_shadow_beside_source",
            &[Need::Clang],
            || shadow_beside_source("clang"),
        ),
        (
            "correctness::gcc_shadow_in_new_directory",
            &[Need::Gcc],
            || shadow_in_new_directory("gcc"),
        ),
        (
            "correctness::gcc_shadow_system_header",
            &[Need::Gcc],
            shadow_system_header,
        ),
        ("correctness::gcc_time_macros", &[Need::Gcc], || {
            time_macros("gcc", true)
        }),
        ("correctness::clang_time_macros", &[Need::Clang], || {
            time_macros("clang", false)
        }),
        (
            "correctness::gcc_time_macro_in_header",
            &[Need::Gcc],
            time_macro_in_header,
        ),
        ("correctness::gcc_incbin_direct", &[Need::Gcc], || {
            incbin("direct")
        }),
        ("correctness::gcc_incbin_preprocessor", &[Need::Gcc], || {
            incbin("preprocessor")
        }),
        ("correctness::gcc_split_dwarf", &[Need::Gcc], || {
            split_dwarf("gcc")
        }),
        ("correctness::clang_split_dwarf", &[Need::Clang], || {
            split_dwarf("clang")
        }),
        ("correctness::gcc_coverage_notes", &[Need::Gcc], || {
            coverage_notes("gcc", "--coverage")
        }),
        ("correctness::gcc_test_coverage_notes", &[Need::Gcc], || {
            coverage_notes("gcc", "-ftest-coverage")
        }),
        (
            "correctness::gcc_profile_use_content_in_key",
            &[Need::Gcc],
            profile_use,
        ),
        (
            "correctness::gcc_compiler_change_misses",
            &[Need::Gcc, Need::Clang],
            compiler_change,
        ),
        (
            "correctness::clang_driver_name_in_key",
            &[Need::Clang],
            driver_name,
        ),
        (
            "correctness::repointed_compiler_symlink",
            &[Need::Gcc, Need::Clang],
            repointed_symlink,
        ),
        (
            "correctness::preprocessor_mode_output_altering_flags",
            &[Need::Gcc],
            preprocessor_flags,
        ),
    ]
}

/// Sets a file's mtime.
fn set_mtime(path: &Path, time: SystemTime) -> TestResult {
    std::fs::File::options()
        .write(true)
        .open(path)
        .ctx("opening for mtime")?
        .set_modified(time)
        .ctx("setting mtime")
}

/// Compiles `args` through hpcc and checks the object equals what a compile with an empty
/// cache makes now, so a stale hit is caught whatever the counters say.
fn compile_matches_fresh(sandbox: &Sandbox, args: &[&str], object: &str, what: &str) -> TestResult {
    succeeded(&sandbox.hpcc(args), what)?;
    let ours = sandbox.read(object);
    let plain_args: Vec<String> = args
        .iter()
        .map(|arg| {
            if *arg == object {
                format!("plain-{object}")
            } else {
                arg.to_string()
            }
        })
        .collect();
    let plain_args: Vec<&str> = plain_args.iter().map(String::as_str).collect();
    // The plain compile runs without the injected prefix map, so compare through hpcc with
    // caching impossible instead: a fresh hpcc cache in the same project.
    let fresh = Sandbox::new();
    let mut command = fresh.hpcc_command(&plain_args);
    command.current_dir(&sandbox.project);
    succeeded(&command.output().ctx("running hpcc")?, "fresh compile")?;
    let expected = sandbox.read(&format!("plain-{object}"));
    ensure!(
        ours == expected,
        "{what}: stale object (differs from a fresh compile)"
    );
    Ok(())
}

fn same_size_and_mtime(compiler: &str) -> TestResult {
    let sandbox = Sandbox::new();
    sandbox.write("s.c", "#include \"s.h\"\nint v = S;\n");
    let header = sandbox.write("s.h", "#define S 1\n");
    let mtime = std::fs::metadata(&header)
        .ctx("stat")?
        .modified()
        .ctx("mtime")?;
    let args = [compiler, "-c", "s.c", "-o", "s.o"];
    succeeded(&sandbox.hpcc(&args), "miss")?;
    succeeded(&sandbox.hpcc(&args), "hit")?;
    let old = sandbox.read("s.o");
    std::fs::write(&header, "#define S 2\n").ctx("editing the header")?;
    set_mtime(&header, mtime)?;
    let after = std::fs::metadata(&header).ctx("stat")?;
    ensure!(
        after.len() == 12 && after.modified().ctx("mtime")? == mtime,
        "test setup: size and mtime should be unchanged"
    );
    compile_matches_fresh(&sandbox, &args, "s.o", "after the edit")?;
    ensure!(sandbox.read("s.o") != old, "the edit gave the old object");
    ensure!(
        sandbox.counts() == (1, 0, 2),
        "expected a second miss: {:?}",
        sandbox.counts()
    );
    Ok(())
}

/// `<x.h>` found in the second `-I` directory; then an `x.h` appears in the first.
fn shadow_earlier_dir(compiler: &str) -> TestResult {
    let sandbox = Sandbox::new();
    sandbox.write("a.c", "#include <x.h>\nint v = X;\n");
    sandbox.write("inc2/x.h", "#define X 2\n");
    std::fs::create_dir_all(sandbox.project.join("inc1")).ctx("inc1")?;
    let args = [compiler, "-Iinc1", "-Iinc2", "-c", "a.c", "-o", "a.o"];
    succeeded(&sandbox.hpcc(&args), "miss")?;
    succeeded(&sandbox.hpcc(&args), "hit")?;
    sandbox.write("inc1/x.h", "#define X 1\n");
    crate::harness::settle();
    compile_matches_fresh(&sandbox, &args, "a.o", "after shadowing")?;
    ensure!(
        sandbox.counts() == (1, 0, 2),
        "the shadowing header must miss: {:?}",
        sandbox.counts()
    );
    succeeded(&sandbox.hpcc(&args), "hit after shadowing")?;
    ensure!(
        sandbox.counts() == (2, 0, 2),
        "the new layout should hit again: {:?}",
        sandbox.counts()
    );
    Ok(())
}

/// `"x.h"` found through `-Iinc`; then an `x.h` appears beside the source, which the
/// compiler searches first (ccache 4.7 returns a stale object here).
fn shadow_beside_source(compiler: &str) -> TestResult {
    let sandbox = Sandbox::new();
    sandbox.write("src/a.c", "#include \"x.h\"\nint v = X;\n");
    sandbox.write("inc/x.h", "#define X 2\n");
    let args = [compiler, "-Iinc", "-c", "src/a.c", "-o", "a.o"];
    succeeded(&sandbox.hpcc(&args), "miss")?;
    succeeded(&sandbox.hpcc(&args), "hit")?;
    sandbox.write("src/x.h", "#define X 1\n");
    compile_matches_fresh(&sandbox, &args, "a.o", "after shadowing")?;
    ensure!(
        sandbox.counts() == (1, 0, 2),
        "the shadowing header must miss: {:?}",
        sandbox.counts()
    );
    Ok(())
}

/// The earlier include directory does not even exist at first.
fn shadow_in_new_directory(compiler: &str) -> TestResult {
    let sandbox = Sandbox::new();
    sandbox.write("a.c", "#include <sub/x.h>\nint v = X;\n");
    sandbox.write("inc2/sub/x.h", "#define X 2\n");
    let args = [compiler, "-Iinc1", "-Iinc2", "-c", "a.c", "-o", "a.o"];
    succeeded(&sandbox.hpcc(&args), "miss")?;
    succeeded(&sandbox.hpcc(&args), "hit")?;
    sandbox.write("inc1/sub/x.h", "#define X 1\n");
    compile_matches_fresh(&sandbox, &args, "a.o", "after shadowing")?;
    ensure!(
        sandbox.counts() == (1, 0, 2),
        "the shadowing header must miss: {:?}",
        sandbox.counts()
    );
    Ok(())
}

/// A project header shadowing a system header through `-I`.
fn shadow_system_header() -> TestResult {
    let sandbox = Sandbox::new();
    sandbox.write("a.c", "#include <stddef.h>\nsize_t n = sizeof(size_t);\n");
    std::fs::create_dir_all(sandbox.project.join("inc")).ctx("inc")?;
    let args = ["gcc", "-Iinc", "-c", "a.c", "-o", "a.o"];
    succeeded(&sandbox.hpcc(&args), "miss")?;
    succeeded(&sandbox.hpcc(&args), "hit")?;
    sandbox.write("inc/stddef.h", "typedef unsigned short size_t;\n");
    compile_matches_fresh(&sandbox, &args, "a.o", "after shadowing")?;
    ensure!(
        sandbox.counts() == (1, 0, 2),
        "the shadowing header must miss: {:?}",
        sandbox.counts()
    );
    Ok(())
}

/// `__TIME__` is never served stale: without SOURCE_DATE_EPOCH the compile is not cached;
/// with it, the epoch is part of the key if the compiler honours it (GCC), and the compile is
/// still not cached if it may not (Clang before 16 ignores it).
fn time_macros(compiler: &str, honours_epoch: bool) -> TestResult {
    let sandbox = Sandbox::new();
    sandbox.write("t.c", "const char *when = __DATE__ \" \" __TIME__;\n");
    let args = [compiler, "-c", "t.c", "-o", "t.o"];
    for round in 0..2 {
        succeeded(&sandbox.hpcc(&args), &format!("round {round}"))?;
    }
    let (direct, preprocessor, _) = sandbox.counts();
    ensure!(
        direct + preprocessor == 0,
        "a __TIME__ compile was served from the cache: {:?}",
        sandbox.counts()
    );
    ensure!(
        sandbox.uncacheable("time_macros") == 2,
        "expected two time_macros: {}",
        sandbox.stats()
    );
    let with_epoch = |epoch: &str| -> Result<Vec<u8>, String> {
        let mut command = sandbox.hpcc_command(&args);
        command.env("SOURCE_DATE_EPOCH", epoch);
        succeeded(&command.output().ctx("running hpcc")?, "with epoch")?;
        Ok(sandbox.read("t.o"))
    };
    let first = with_epoch("1000000000")?;
    let again = with_epoch("1000000000")?;
    let (direct, _, _) = sandbox.counts();
    if !honours_epoch {
        ensure!(direct == 0, "served from the cache: {:?}", sandbox.counts());
        return Ok(());
    }
    ensure!(direct == 1, "same epoch should hit: {:?}", sandbox.counts());
    ensure!(again == first, "same epoch, different object");
    let other = with_epoch("1500000000")?;
    ensure!(other != first, "another epoch must not reuse the object");
    Ok(())
}

/// The macro hides in a header, where only the recorded include can reveal it.
fn time_macro_in_header() -> TestResult {
    let sandbox = Sandbox::new();
    sandbox.write("t.c", "#include \"stamp.h\"\nconst char *s = STAMP;\n");
    sandbox.write("stamp.h", "#define STAMP __TIME__\n");
    let args = ["gcc", "-c", "t.c", "-o", "t.o"];
    for round in 0..2 {
        succeeded(&sandbox.hpcc(&args), &format!("round {round}"))?;
    }
    let (direct, preprocessor, _) = sandbox.counts();
    ensure!(
        direct + preprocessor == 0,
        "a __TIME__ compile was served from the cache: {:?}",
        sandbox.counts()
    );
    Ok(())
}

/// `.incbin` in inline assembly reads a file that no dependency list names: such compiles are
/// never cached, so editing the blob always shows in the object.
fn incbin(mode: &str) -> TestResult {
    let sandbox = Sandbox::new();
    sandbox.write(
        "embed.h",
        "__asm__(\".section .rodata\\n.incbin \\\"blob.bin\\\"\\n.previous\");\n",
    );
    sandbox.write("t.c", "#include \"embed.h\"\nint x;\n");
    let args = ["gcc", "-c", "t.c", "-o", "t.o"];
    let compile = |what: &str| -> Result<Vec<u8>, String> {
        let mut command = sandbox.hpcc_command(&args);
        command.env("HPCC_MODE", mode);
        succeeded(&command.output().ctx("running hpcc")?, what)?;
        Ok(sandbox.read("t.o"))
    };
    sandbox.write("blob.bin", "hpcc-blob-one");
    crate::harness::settle();
    compile("first compile")?;
    let object = compile("second compile")?;
    ensure!(
        contains(&object, b"hpcc-blob-one"),
        "the object does not embed the blob"
    );
    sandbox.write("blob.bin", "hpcc-blob-two");
    crate::harness::settle();
    let object = compile("after editing the blob")?;
    ensure!(
        contains(&object, b"hpcc-blob-two"),
        "stale object: the edited blob is not in it"
    );
    let (direct, preprocessor, _) = sandbox.counts();
    ensure!(
        direct + preprocessor == 0,
        "an .incbin compile was served from the cache: {:?}",
        sandbox.counts()
    );
    ensure!(
        sandbox.uncacheable("incbin") == 3,
        "expected three incbin refusals: {}",
        sandbox.stats()
    );
    Ok(())
}

/// `-gsplit-dwarf`: the `.dwo` is restored on a hit, identical to the miss's.
fn split_dwarf(compiler: &str) -> TestResult {
    let sandbox = Sandbox::new();
    sandbox.write("d.c", "int f(int a) { return a + 1; }\n");
    let args = [compiler, "-g", "-gsplit-dwarf", "-c", "d.c", "-o", "d.o"];
    succeeded(&sandbox.hpcc(&args), "miss")?;
    let object = sandbox.read("d.o");
    let dwo = sandbox.read("d.dwo");
    ensure!(!dwo.is_empty(), "no .dwo written");
    for name in ["d.o", "d.dwo"] {
        std::fs::remove_file(sandbox.project.join(name)).ctx("rm")?;
    }
    succeeded(&sandbox.hpcc(&args), "hit")?;
    ensure!(
        sandbox.counts() == (1, 0, 1),
        "counts {:?}",
        sandbox.counts()
    );
    ensure!(sandbox.read("d.o") == object, "object differs on the hit");
    ensure!(sandbox.read("d.dwo") == dwo, ".dwo differs on the hit");
    ensure!(contains(&object, b"d.dwo"), "the object should name d.dwo");
    // Another object name means another .dwo name inside the object.
    let renamed = [compiler, "-g", "-gsplit-dwarf", "-c", "d.c", "-o", "e.o"];
    succeeded(&sandbox.hpcc(&renamed), "renamed")?;
    ensure!(sandbox.project.join("e.dwo").is_file(), "e.dwo not written");
    ensure!(
        contains(&sandbox.read("e.o"), b"e.dwo"),
        "e.o names the wrong .dwo"
    );
    Ok(())
}

/// `--coverage`: the `.gcno` is restored on a hit and matches the current directory: a
/// second checkout gets notes naming its own directory.
fn coverage_notes(compiler: &str, flag: &str) -> TestResult {
    let sandbox = Sandbox::new();
    sandbox.write("c.c", "int f(int a) { if (a) return 1; return 2; }\n");
    let args = [compiler, flag, "-c", "c.c", "-o", "c.o"];
    succeeded(&sandbox.hpcc(&args), "miss")?;
    let gcno = sandbox.read("c.gcno");
    std::fs::remove_file(sandbox.project.join("c.gcno")).ctx("rm")?;
    succeeded(&sandbox.hpcc(&args), "hit")?;
    ensure!(
        sandbox.counts() == (1, 0, 1),
        "counts {:?}",
        sandbox.counts()
    );
    ensure!(sandbox.read("c.gcno") == gcno, ".gcno differs on the hit");
    let moved = sandbox.base.join("second/project");
    copy_tree(&sandbox.project, &moved);
    let _ = std::fs::remove_file(moved.join("c.gcno"));
    succeeded(&sandbox.hpcc_in(&moved, &args), "moved")?;
    let moved_gcno = std::fs::read(moved.join("c.gcno")).ctx("reading moved .gcno")?;
    let moved_path = moved.display().to_string();
    ensure!(
        contains(&moved_gcno, moved_path.as_bytes()),
        "the moved checkout's .gcno does not name its directory"
    );
    ensure!(
        !contains(
            &moved_gcno,
            sandbox.project.display().to_string().as_bytes()
        ),
        "the moved checkout's .gcno names the first checkout: {}",
        text(&moved_gcno)
    );
    Ok(())
}

/// `-fprofile-use=FILE`: the profile's content is part of the key.
fn profile_use() -> TestResult {
    let sandbox = Sandbox::new();
    sandbox.write(
        "p.c",
        "int hot(int a) { return a > 5 ? a * 3 : a - 1; }\nint main(int c, char **v) { (void)v; int s = 0; for (int i = 0; i < 1000; i++) s += hot(i + c); return s & 1; }\n",
    );
    // Make real profile data: build instrumented, run, keep the .gcda.
    succeeded(
        &sandbox.plain_compiler(&["gcc", "-O2", "-fprofile-generate", "p.c", "-o", "p-gen"]),
        "instrumented build",
    )?;
    let profile = |runs: usize| -> Result<Vec<u8>, String> {
        let gcda = std::fs::read_dir(&sandbox.project)
            .ctx("listing")?
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "gcda"));
        for path in gcda.collect::<Vec<_>>() {
            std::fs::remove_file(path).ctx("rm gcda")?;
        }
        for _ in 0..runs {
            std::process::Command::new(sandbox.project.join("p-gen"))
                .current_dir(&sandbox.project)
                .status()
                .ctx("running the instrumented program")?;
        }
        let found = std::fs::read_dir(&sandbox.project)
            .ctx("listing")?
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .find(|path| path.extension().is_some_and(|ext| ext == "gcda"))
            .ok_or("no .gcda produced")?;
        std::fs::read(found).ctx("reading the .gcda")
    };
    let first_profile = profile(1)?;
    crate::harness::write_aged(&sandbox.project.join("profile.gcda"), &first_profile);
    let args = [
        "gcc",
        "-O2",
        "-fprofile-use=profile.gcda",
        "-Wno-missing-profile",
        "-c",
        "p.c",
        "-o",
        "p.o",
    ];
    succeeded(&sandbox.hpcc(&args), "miss")?;
    succeeded(&sandbox.hpcc(&args), "hit")?;
    ensure!(
        sandbox.counts() == (1, 0, 1),
        "counts {:?}",
        sandbox.counts()
    );
    let second_profile = profile(3)?;
    ensure!(
        second_profile != first_profile,
        "test setup: profiles equal"
    );
    crate::harness::write_aged(&sandbox.project.join("profile.gcda"), &second_profile);
    succeeded(&sandbox.hpcc(&args), "after the profile changed")?;
    ensure!(
        sandbox.counts() == (1, 0, 2),
        "a changed profile must miss: {:?}",
        sandbox.counts()
    );
    Ok(())
}

/// The same source through another compiler never shares an entry.
fn compiler_change() -> TestResult {
    let sandbox = Sandbox::new();
    sandbox.write("a.c", "int f(void) { return 1; }\n");
    succeeded(&sandbox.hpcc(&["gcc", "-c", "a.c", "-o", "a.o"]), "gcc")?;
    let gcc_object = sandbox.read("a.o");
    succeeded(&sandbox.hpcc(&["clang", "-c", "a.c", "-o", "a.o"]), "clang")?;
    ensure!(
        sandbox.counts() == (0, 0, 2),
        "clang must not hit gcc's entry: {:?}",
        sandbox.counts()
    );
    ensure!(
        sandbox.read("a.o") != gcc_object,
        "same object from both compilers"
    );
    Ok(())
}

/// `clang++` is the `clang` binary in C++ mode: the same source through each must not share.
fn driver_name() -> TestResult {
    let sandbox = Sandbox::new();
    sandbox.write("b.c", "int f(int x) { return x; }\n");
    succeeded(&sandbox.hpcc(&["clang", "-c", "b.c", "-o", "b.o"]), "clang")?;
    let out = sandbox.hpcc(&["clang++", "-c", "b.c", "-o", "b.o"]);
    succeeded(&out, "clang++")?;
    ensure!(
        sandbox.counts() == (0, 0, 2),
        "clang++ was served clang's object: {:?}",
        sandbox.counts()
    );
    ensure!(
        contains(&sandbox.read("b.o"), b"_Z1fi"),
        "clang++ object lacks the C++ symbol"
    );
    Ok(())
}

/// A compiler symlink re-pointed to another compiler (update-alternatives) is a new compiler.
fn repointed_symlink() -> TestResult {
    let sandbox = Sandbox::new();
    sandbox.write("a.c", "int f(void) { return 1; }\n");
    let bin = sandbox.base.join("bin");
    std::fs::create_dir_all(&bin).ctx("bin")?;
    let link = bin.join("cc");
    let which = |name: &str| -> Result<std::path::PathBuf, String> {
        let out = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()
            .ctx("which")?;
        Ok(std::path::PathBuf::from(text(&out.stdout).trim()))
    };
    std::os::unix::fs::symlink(which("gcc")?, &link).ctx("symlink")?;
    let cc = link.display().to_string();
    succeeded(&sandbox.hpcc(&[&cc, "-c", "a.c", "-o", "a.o"]), "as gcc")?;
    std::fs::remove_file(&link).ctx("rm link")?;
    std::os::unix::fs::symlink(which("clang")?, &link).ctx("symlink")?;
    succeeded(&sandbox.hpcc(&[&cc, "-c", "a.c", "-o", "a.o"]), "as clang")?;
    ensure!(
        sandbox.counts() == (0, 0, 2),
        "the re-pointed compiler hit the old one's entry: {:?}",
        sandbox.counts()
    );
    ensure!(
        contains(&sandbox.read("a.o"), b"clang"),
        "the object was not made by clang"
    );
    Ok(())
}

/// In preprocessor mode, options that change what `-E` prints must not make the key blind to
/// the source: `-dM` (macros only) and `-P` (no line markers).
fn preprocessor_flags() -> TestResult {
    for flag in ["-dM", "-P"] {
        let sandbox = Sandbox::new();
        sandbox.write("x.c", "int f(void) { return 1; }\n");
        crate::harness::settle();
        let run = |what: &str| -> TestResult {
            let mut command = sandbox.hpcc_command(&["gcc", "-g", flag, "-c", "x.c", "-o", "x.o"]);
            command.env("HPCC_MODE", "preprocessor");
            succeeded(&command.output().ctx("running hpcc")?, what)
        };
        run("first")?;
        let first = sandbox.read("x.o");
        sandbox.write("x.c", "\n\n\nint g(void) { return 2; }\n");
        crate::harness::settle();
        run("after edit")?;
        ensure!(
            sandbox.read("x.o") != first,
            "{flag}: the edited source got the old object"
        );
        let (direct, preprocessor, _) = sandbox.counts();
        ensure!(
            direct + preprocessor == 0,
            "{flag}: served from the cache: {:?}",
            sandbox.counts()
        );
    }
    Ok(())
}
