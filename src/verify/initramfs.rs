//! The initramfs for a direct boot: a gzipped cpio archive in the "newc"
//! format that the kernel unpacks into its root file system.
//!
//! kbuild writes the archive itself, so creating the `dev/console` device
//! node needs no root. The kernel opens `/dev/console` for /init's stdin,
//! stdout and stderr before running it, and tinyconfig has no devtmpfs that
//! could create the node.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use flate2::write::GzEncoder;
use flate2::Compression;
use sha2::{Digest, Sha256};

use super::write_atomic;

/// Changes whenever `entries` or the archive layout changes, so that
/// initramfs files written by an older kbuild are rebuilt.
const FORMAT_VERSION: &str = "kbuild-initramfs-1";
const MAGIC: &str = "070701";
const TRAILER: &str = "TRAILER!!!";

const S_IFDIR: u32 = 0o040000;
const S_IFCHR: u32 = 0o020000;
const S_IFREG: u32 = 0o100000;

/// One archive member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path inside the archive, without a leading `/`.
    pub name: String,
    /// File type and permission bits, as in `st_mode`.
    pub mode: u32,
    /// Major and minor number of a device node.
    pub rdev: (u32, u32),
    pub data: Vec<u8>,
}

impl Entry {
    fn dir(name: &str) -> Entry {
        Entry {
            name: name.to_string(),
            mode: S_IFDIR | 0o755,
            rdev: (0, 0),
            data: Vec::new(),
        }
    }
}

/// Returns the members of the test initramfs, with `init` as /init.
pub fn entries(init: Vec<u8>) -> Vec<Entry> {
    vec![
        Entry::dir("dev"),
        Entry {
            name: "dev/console".to_string(),
            mode: S_IFCHR | 0o600,
            rdev: (5, 1),
            data: Vec::new(),
        },
        Entry::dir("proc"),
        Entry::dir("sys"),
        Entry {
            name: "init".to_string(),
            mode: S_IFREG | 0o755,
            rdev: (0, 0),
            data: init,
        },
    ]
}

/// Writes the gzipped initramfs with `init_binary` as /init to `output`.
///
/// The write is skipped when a stamp next to `output` shows that it already
/// contains this exact binary, because compressing it takes a noticeable part of
/// a short TCG boot.
pub fn write_initramfs(init_binary: &Path, output: &Path) -> anyhow::Result<()> {
    let init = std::fs::read(init_binary)
        .with_context(|| format!("reading the test program {}", init_binary.display()))?;
    let stamp_path = output.with_extension("sha256");
    let mut hasher = Sha256::new();
    hasher.update(FORMAT_VERSION.as_bytes());
    hasher.update(&init);
    let digest = format!("{:x}", hasher.finalize());
    let stamp = std::fs::read_to_string(&stamp_path).unwrap_or_default();
    if output.is_file() && stamp.trim() == digest {
        tracing::debug!("reusing {} built from the same /init", output.display());
        return Ok(());
    }

    let archive = newc_archive(&entries(init));
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder
        .write_all(&archive)
        .context("compressing the initramfs")?;
    let gzipped = encoder.finish().context("compressing the initramfs")?;
    write_atomic(output, &gzipped)?;
    write_atomic(&stamp_path, digest.as_bytes())
}

/// Serializes entries as a newc cpio archive, ending with the trailer entry.
///
/// Inode numbers count from 1, and every timestamp is 0 so that the same
/// input gives the same archive.
pub fn newc_archive(entries: &[Entry]) -> Vec<u8> {
    let mut archive = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        let nlink = if entry.mode & S_IFDIR == S_IFDIR {
            2
        } else {
            1
        };
        let ino = u32::try_from(index + 1).unwrap_or(u32::MAX);
        write_member(&mut archive, ino, nlink, entry);
    }
    let trailer = Entry {
        name: TRAILER.to_string(),
        mode: 0,
        rdev: (0, 0),
        data: Vec::new(),
    };
    write_member(&mut archive, 0, 1, &trailer);
    archive
}

fn write_member(archive: &mut Vec<u8>, ino: u32, nlink: u32, entry: &Entry) {
    // NOTE: newc stores sizes in 8 hex digits, so members are limited to
    // 4 GiB; the test program is under 1 MiB.
    let size = u32::try_from(entry.data.len()).unwrap_or(u32::MAX);
    let name_size = u32::try_from(entry.name.len() + 1).unwrap_or(u32::MAX);
    let fields = [
        ino,
        entry.mode,
        0, // uid
        0, // gid
        nlink,
        0, // mtime
        size,
        0, // major and minor of the device holding the file
        0,
        entry.rdev.0,
        entry.rdev.1,
        name_size,
        0, // checksum, unused in newc
    ];
    archive.extend_from_slice(MAGIC.as_bytes());
    for field in fields {
        archive.extend_from_slice(format!("{field:08x}").as_bytes());
    }
    archive.extend_from_slice(entry.name.as_bytes());
    archive.push(0);
    pad_to_four(archive);
    archive.extend_from_slice(&entry.data);
    pad_to_four(archive);
}

fn pad_to_four(archive: &mut Vec<u8>) {
    while archive.len() % 4 != 0 {
        archive.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::process::{Command, Stdio};

    const HEADER_LEN: usize = 110;

    /// Parses a newc archive up to its trailer; the inverse of `newc_archive`.
    fn parse_newc(archive: &[u8]) -> anyhow::Result<Vec<Entry>> {
        let mut entries = Vec::new();
        let mut offset = 0;
        loop {
            let header = archive
                .get(offset..offset + HEADER_LEN)
                .with_context(|| format!("truncated cpio header at byte {offset}"))?;
            anyhow::ensure!(
                header.starts_with(MAGIC.as_bytes()),
                "bad magic at byte {offset}"
            );
            let field = |index: usize| -> anyhow::Result<u32> {
                let start = MAGIC.len() + index * 8;
                let text = std::str::from_utf8(&header[start..start + 8])?;
                Ok(u32::from_str_radix(text, 16)?)
            };
            let (mode, size, name_size) = (field(1)?, field(6)? as usize, field(11)? as usize);
            let rdev = (field(9)?, field(10)?);

            let name_start = offset + HEADER_LEN;
            let name_bytes = archive
                .get(name_start..name_start + name_size)
                .context("truncated cpio name")?;
            anyhow::ensure!(name_bytes.last() == Some(&0), "cpio name without NUL");
            let name = std::str::from_utf8(&name_bytes[..name_size - 1])?.to_string();
            let data_start = (name_start + name_size).next_multiple_of(4);
            let data = archive
                .get(data_start..data_start + size)
                .context("truncated cpio data")?
                .to_vec();
            offset = (data_start + size).next_multiple_of(4);

            if name == TRAILER {
                anyhow::ensure!(offset == archive.len(), "data after the cpio trailer");
                return Ok(entries);
            }
            entries.push(Entry {
                name,
                mode,
                rdev,
                data,
            });
        }
    }

    fn sample() -> Vec<Entry> {
        // Five bytes of data, so that padding is needed after it.
        entries(b"\x7fELF!".to_vec())
    }

    #[test]
    fn newc_round_trips() {
        let parsed = parse_newc(&newc_archive(&sample())).expect("parsing our own archive");
        assert_eq!(parsed, sample());
    }

    #[test]
    fn newc_members_are_aligned() {
        let archive = newc_archive(&sample());
        assert_eq!(archive.len() % 4, 0);
        assert!(archive.starts_with(b"070701"));
    }

    #[test]
    fn newc_header_fields_are_hex() {
        let archive = newc_archive(&entries(Vec::new()));
        let header = std::str::from_utf8(&archive[..HEADER_LEN]).unwrap();
        // ino 1, mode 040755 (0x41ed), nlink 2, namesize 4 ("dev" and NUL).
        assert_eq!(&header[6..14], "00000001");
        assert_eq!(&header[14..22], "000041ed");
        assert_eq!(&header[38..46], "00000002");
        assert_eq!(&header[94..102], "00000004");
    }

    #[test]
    fn initramfs_lists_with_cpio_tool() {
        let dir = tempfile::tempdir().expect("creating a temporary folder");
        let init = dir.path().join("init");
        std::fs::write(&init, b"#!/bin/true\n").unwrap();
        let output = dir.path().join("initramfs.cpio.gz");
        write_initramfs(&init, &output).expect("writing the initramfs");

        let mut archive = Vec::new();
        let gzipped = std::fs::File::open(&output).unwrap();
        flate2::read::GzDecoder::new(gzipped)
            .read_to_end(&mut archive)
            .expect("gunzip");
        let listing = cpio_listing(&archive);

        let line = |name: &str| {
            listing
                .lines()
                .find(|line| line.ends_with(&format!(" {name}")))
                .unwrap_or_else(|| panic!("{name} missing from:\n{listing}"))
                .to_string()
        };
        assert!(line("dev").starts_with("drwxr-xr-x"), "{listing}");
        assert!(line("dev/console").starts_with("crw-------"), "{listing}");
        assert!(line("dev/console").contains("5,   1"), "{listing}");
        assert!(line("proc").starts_with("drwxr-xr-x"), "{listing}");
        assert!(line("sys").starts_with("drwxr-xr-x"), "{listing}");
        assert!(line("init").starts_with("-rwxr-xr-x"), "{listing}");
        assert_eq!(listing.lines().count(), 5, "{listing}");
    }

    #[test]
    fn initramfs_rewritten_for_new_init() {
        let dir = tempfile::tempdir().expect("creating a temporary folder");
        let init = dir.path().join("init");
        let output = dir.path().join("initramfs.cpio.gz");
        std::fs::write(&init, b"first").unwrap();
        write_initramfs(&init, &output).expect("writing the first initramfs");
        let first = std::fs::read(&output).unwrap();
        write_initramfs(&init, &output).expect("reusing the initramfs");
        assert_eq!(std::fs::read(&output).unwrap(), first);

        std::fs::write(&init, b"second").unwrap();
        write_initramfs(&init, &output).expect("writing the second initramfs");
        let mut archive = Vec::new();
        let gzipped = std::fs::File::open(&output).unwrap();
        flate2::read::GzDecoder::new(gzipped)
            .read_to_end(&mut archive)
            .expect("gunzip");
        let entries = parse_newc(&archive).expect("parsing the archive");
        let init_entry = entries.iter().find(|entry| entry.name == "init").unwrap();
        assert_eq!(init_entry.data, b"second");
    }

    /// Runs `cpio -itv` on an archive and returns its listing.
    fn cpio_listing(archive: &[u8]) -> String {
        let mut child = Command::new("cpio")
            .arg("-itv")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting cpio (apt-get install cpio)");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(archive)
            .expect("writing to cpio");
        let output = child.wait_with_output().expect("waiting for cpio");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "cpio failed: {stderr}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}
