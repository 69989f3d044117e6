//! The agent binary a runtime is given, checked before any session starts: it runs as PID 1
//! inside the image, whose libc is not the host's, so it must be statically linked (a
//! dynamic one works only while host and image happen to share a libc), and it must be built
//! for this machine's architecture. A worker given anything else refuses to start, saying
//! which and how to build the right one.

use std::path::Path;

use object::read::elf::{ElfFile64, FileHeader, ProgramHeader};
use object::{Architecture, Object};

/// How to build the agent as it must be.
pub const BUILD_HINT: &str = "build it with RUSTFLAGS='-C target-feature=+crt-static' cargo build \
     --release -p hpcc-agent --target x86_64-unknown-linux-gnu";

/// Why `path` cannot serve as the agent, or `Ok` when it is a static ELF executable of this
/// machine's architecture.
pub fn check(path: &Path) -> Result<(), String> {
    let data =
        std::fs::read(path).map_err(|error| format!("agent binary {}: {error}", path.display()))?;
    let elf = ElfFile64::<object::Endianness>::parse(&*data).map_err(|error| {
        format!(
            "agent binary {} is not a 64-bit ELF executable ({error}); {BUILD_HINT}",
            path.display()
        )
    })?;
    let expected = match std::env::consts::ARCH {
        "x86_64" => Architecture::X86_64,
        "aarch64" => Architecture::Aarch64,
        other => {
            return Err(format!(
                "no agent architecture known for this machine ({other})"
            ))
        }
    };
    if elf.architecture() != expected {
        return Err(format!(
            "agent binary {} is built for {:?}, this machine is {expected:?}; {BUILD_HINT}",
            path.display(),
            elf.architecture()
        ));
    }
    let endian = elf.endian();
    let headers = elf
        .elf_header()
        .program_headers(endian, &*data)
        .map_err(|error| format!("agent binary {}: {error}", path.display()))?;
    for header in headers {
        if header.p_type(endian) == object::elf::PT_INTERP {
            let interpreter = header
                .data(endian, &*data)
                .ok()
                .map(|bytes| {
                    String::from_utf8_lossy(bytes)
                        .trim_end_matches('\0')
                        .to_owned()
                })
                .unwrap_or_default();
            return Err(format!(
                "agent binary {} is dynamically linked (interpreter {interpreter}): it runs \
                 inside images whose libc is not this machine's, so it must be static; \
                 {BUILD_HINT}",
                path.display()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_binaries_pass_and_others_say_why() {
        // Debian's ldconfig is static-pie, its coreutils dynamic: both are always there.
        check(Path::new("/sbin/ldconfig")).expect("a static-pie executable");
        let dynamic = check(Path::new("/bin/true")).expect_err("dynamic");
        assert!(
            dynamic.contains("dynamically linked") && dynamic.contains("ld-linux"),
            "{dynamic}"
        );
        assert!(dynamic.contains("crt-static"), "{dynamic}");
        let dir = tempfile::tempdir().expect("temp dir");
        let script = dir.path().join("agent.sh");
        std::fs::write(&script, "#!/bin/sh\n").expect("written");
        let error = check(&script).expect_err("a script");
        assert!(error.contains("not a 64-bit ELF"), "{error}");
        let error = check(&dir.path().join("missing")).expect_err("missing");
        assert!(error.contains("missing"), "{error}");
    }
}
