//! The guest's initramfs: `/init` (the static agent), `/dev/console`, and the kernel modules
//! the guest kernel lacks, as a `newc` cpio archive (the format the kernel unpacks; written
//! here rather than by shelling out to `cpio`).

use std::io;
use std::path::{Path, PathBuf};

/// Builds the initramfs of `guest` and writes it under its state directory with a name no
/// other runtime uses (several runtimes may live in one process; a QEMU reading a file that
/// another is rewriting would boot a truncated `/init`), complete before it is visible.
/// The runtime that owns the file removes it when dropped.
pub fn write(guest: &super::GuestConfig, prefix: &str) -> Result<PathBuf, String> {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    crate::agent_binary::check(&guest.agent_binary)?;
    let archive = build(&guest.agent_binary, &guest.modules)
        .map_err(|error| format!("building the initramfs: {error}"))?;
    std::fs::create_dir_all(&guest.state_dir)
        .map_err(|error| format!("{}: {error}", guest.state_dir.display()))?;
    let number = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = format!("initramfs-{prefix}-{}-{number}.cpio", std::process::id());
    let path = guest.state_dir.join(&name);
    let partial = guest.state_dir.join(format!(".{name}.partial"));
    std::fs::write(&partial, archive)
        .and_then(|()| std::fs::rename(&partial, &path))
        .map_err(|error| {
            let _ = std::fs::remove_file(&partial);
            format!("{}: {error}", path.display())
        })?;
    Ok(path)
}

/// The archive's entries, in order.
enum Entry {
    Dir(&'static str),
    CharDevice(&'static str, u32, u32),
    File {
        name: String,
        mode: u32,
        data: Vec<u8>,
    },
}

/// Builds the initramfs: `agent` as `/init`, each of `modules` (in load order) under
/// `/hpcc/modules/` with a sortable prefix.
pub fn build(agent: &Path, modules: &[PathBuf]) -> io::Result<Vec<u8>> {
    let read = |path: &Path| {
        std::fs::read(path)
            .map_err(|error| io::Error::new(error.kind(), format!("{}: {error}", path.display())))
    };
    let mut entries = vec![
        Entry::Dir("dev"),
        Entry::CharDevice("dev/console", 5, 1),
        Entry::Dir("hpcc"),
        Entry::Dir("hpcc/modules"),
        Entry::File {
            name: "init".into(),
            mode: 0o100_755,
            data: read(agent)?,
        },
    ];
    for (index, module) in modules.iter().enumerate() {
        let base = module
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".ko"))
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{}: a kernel module must be a .ko file", module.display()),
                )
            })?;
        entries.push(Entry::File {
            name: format!("hpcc/modules/{index:02}-{base}"),
            mode: 0o100_644,
            data: read(module)?,
        });
    }
    let mut out = Vec::new();
    for (number, entry) in entries.iter().enumerate() {
        let inode = u32::try_from(number + 1).unwrap_or(u32::MAX);
        match entry {
            Entry::Dir(name) => write_entry(&mut out, inode, name, 0o040_755, (0, 0), &[])?,
            Entry::CharDevice(name, major, minor) => {
                write_entry(&mut out, inode, name, 0o020_600, (*major, *minor), &[])?;
            }
            Entry::File { name, mode, data } => {
                write_entry(&mut out, inode, name, *mode, (0, 0), data)?;
            }
        }
    }
    write_entry(&mut out, 0, "TRAILER!!!", 0, (0, 0), &[])?;
    Ok(out)
}

fn write_entry(
    out: &mut Vec<u8>,
    inode: u32,
    name: &str,
    mode: u32,
    rdev: (u32, u32),
    data: &[u8],
) -> io::Result<()> {
    let too_big = || io::Error::new(io::ErrorKind::InvalidInput, format!("{name}: too large"));
    let size = u32::try_from(data.len()).map_err(|_| too_big())?;
    let name_size = u32::try_from(name.len() + 1).map_err(|_| too_big())?;
    let links = if mode & 0o170_000 == 0o040_000 { 2 } else { 1 };
    let fields = [
        inode, mode, 0, 0, links, 0, size, 0, 0, rdev.0, rdev.1, name_size, 0,
    ];
    out.extend_from_slice(b"070701");
    for field in fields {
        out.extend_from_slice(format!("{field:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad(out);
    out.extend_from_slice(data);
    pad(out);
    Ok(())
}

fn pad(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads a newc archive back: (name, mode, rdev major, rdev minor, data).
    fn parse(mut bytes: &[u8]) -> Vec<(String, u32, u32, u32, Vec<u8>)> {
        let mut entries = Vec::new();
        let start = bytes.as_ptr() as usize;
        let align = |bytes: &mut &[u8]| {
            while !(bytes.as_ptr() as usize - start).is_multiple_of(4) {
                *bytes = &bytes[1..];
            }
        };
        loop {
            assert_eq!(&bytes[..6], b"070701");
            let field = |index: usize| {
                let text = std::str::from_utf8(&bytes[6 + index * 8..14 + index * 8]).unwrap();
                u32::from_str_radix(text, 16).unwrap()
            };
            let (mode, size, major, minor, name_size) =
                (field(1), field(6), field(9), field(10), field(11));
            bytes = &bytes[110..];
            let name = String::from_utf8(bytes[..name_size as usize - 1].to_vec()).unwrap();
            bytes = &bytes[name_size as usize..];
            align(&mut bytes);
            let data = bytes[..size as usize].to_vec();
            bytes = &bytes[size as usize..];
            align(&mut bytes);
            if name == "TRAILER!!!" {
                assert!(bytes.is_empty());
                return entries;
            }
            entries.push((name, mode, major, minor, data));
        }
    }

    #[test]
    fn holds_the_agent_console_and_modules_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("agent");
        std::fs::write(&agent, b"\x7fELF agent").unwrap();
        let first = dir.path().join("virtio_ring.ko");
        let second = dir.path().join("virtio.ko");
        std::fs::write(&first, b"ring").unwrap();
        std::fs::write(&second, b"virtio!").unwrap();
        let archive = build(&agent, &[first, second]).unwrap();
        let entries = parse(&archive);
        let names: Vec<&str> = entries.iter().map(|entry| entry.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "dev",
                "dev/console",
                "hpcc",
                "hpcc/modules",
                "init",
                "hpcc/modules/00-virtio_ring.ko",
                "hpcc/modules/01-virtio.ko"
            ]
        );
        assert_eq!(entries[1].1, 0o020_600);
        assert_eq!((entries[1].2, entries[1].3), (5, 1));
        assert_eq!(entries[4].1, 0o100_755);
        assert_eq!(entries[4].4, b"\x7fELF agent");
        assert_eq!(entries[6].4, b"virtio!");
    }

    #[test]
    fn bad_inputs_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("agent");
        let error = build(&agent, &[]).err().unwrap();
        assert!(error.to_string().contains("agent"), "{error}");
        std::fs::write(&agent, b"a").unwrap();
        let error = build(&agent, &[dir.path().join("vmlinuz")]).err().unwrap();
        assert!(error.to_string().contains("vmlinuz"), "{error}");
    }
}
