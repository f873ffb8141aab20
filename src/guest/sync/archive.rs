//! The gzip-compressed tar that carries one sync's files to the guest,
//! streamed from the tree one file at a time.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use flate2::write::GzEncoder;
use flate2::Compression;
use tar::{EntryType, Header};

use super::manifest::{entry_of, Entry, Files};

/// Archive member that lists the paths a delta deletes, NUL-separated.
pub(super) const DELETED_LIST: &str = ".kbuild-sync-deleted";

/// Length of the link name field in a tar header.
const LINK_NAME_BYTES: usize = 100;

type Archive<'a> = tar::Builder<GzEncoder<BufWriter<&'a mut File>>>;

/// Writes `paths` of `tree` into `output` as a tar.gz, preceded by the list
/// of `deleted` paths when that is `Some`.
///
/// Each sent path's entry in `files` is replaced with the metadata read when
/// the file was opened, so the record matches the bytes that went out.
pub(super) fn write_archive(
    tree: &Path,
    files: &mut Files,
    paths: &[String],
    deleted: Option<&[String]>,
    output: &mut File,
) -> anyhow::Result<()> {
    let writer = BufWriter::with_capacity(1 << 20, output);
    let mut archive = tar::Builder::new(GzEncoder::new(writer, Compression::fast()));
    if let Some(deleted) = deleted {
        append_deleted_list(&mut archive, deleted).context("archiving the deleted list")?;
    }
    for path in paths {
        let entry = append_path(&mut archive, tree, path)
            .with_context(|| format!("archiving {}", tree.join(path).display()))?;
        files.insert(path.clone(), entry);
    }
    let context = "finishing the sync archive";
    let encoder = archive.into_inner().context(context)?;
    let mut writer = encoder.finish().context(context)?;
    writer.flush().context(context)?;
    Ok(())
}

fn append_deleted_list(archive: &mut Archive, deleted: &[String]) -> io::Result<()> {
    let mut data = Vec::new();
    for path in deleted {
        data.extend_from_slice(path.as_bytes());
        data.push(0);
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let mut header = new_header(EntryType::Regular, 0o644, now.as_secs());
    header.set_size(data.len() as u64);
    archive.append_data(&mut header, DELETED_LIST, data.as_slice())
}

/// Appends the file or symlink at `path` and returns its entry as archived.
fn append_path(archive: &mut Archive, tree: &Path, path: &str) -> anyhow::Result<Entry> {
    let full = tree.join(path);
    let metadata = fs::symlink_metadata(&full).context(CHANGED_HINT)?;
    if metadata.file_type().is_symlink() {
        let entry = entry_of(&full, &metadata)?;
        append_symlink(archive, path, &entry)?;
        return Ok(entry);
    }
    // O_NOFOLLOW keeps a file that became a symlink since the lstat from being followed.
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&full)
        .context(CHANGED_HINT)?;
    let metadata = file.metadata()?;
    anyhow::ensure!(metadata.file_type().is_file(), "{CHANGED_HINT}");
    let entry = entry_of(&full, &metadata)?;
    let mode = if entry.executable { 0o755 } else { 0o644 };
    let mut header = new_header(EntryType::Regular, mode, mtime_seconds(&entry));
    header.set_size(entry.size);
    let reader = ExactReader {
        file,
        remaining: entry.size,
    };
    archive.append_data(&mut header, path, reader)?;
    Ok(entry)
}

const CHANGED_HINT: &str = "the file changed while kbuild was archiving it; run the command again";

fn append_symlink(archive: &mut Archive, path: &str, entry: &Entry) -> io::Result<()> {
    let target = entry.link.as_deref().unwrap_or_default().as_bytes();
    let mut header = new_header(EntryType::Symlink, 0o777, mtime_seconds(entry));
    header.set_size(0);
    // The tar crate's own link name setter normalizes the target as a path
    // (`a//b` becomes `a/b`), so the bytes are written as they are.
    if target.len() > LINK_NAME_BYTES {
        append_long_link_name(archive, target)?;
    }
    header.set_link_name_literal(&target[..target.len().min(LINK_NAME_BYTES)])?;
    archive.append_data(&mut header, path, io::empty())
}

/// Appends a GNU `././@LongLink` member of type `K`, which GNU tar and
/// busybox take as the link name of the member after it.
fn append_long_link_name(archive: &mut Archive, target: &[u8]) -> io::Result<()> {
    let mut header = new_header(EntryType::GNULongLink, 0o644, 0);
    let name = b"././@LongLink";
    header.as_old_mut().name[..name.len()].copy_from_slice(name);
    header.set_size(target.len() as u64 + 1);
    header.set_cksum();
    archive.append(&header, target.chain(&[0u8][..]))
}

fn new_header(entry_type: EntryType, mode: u32, mtime: u64) -> Header {
    let mut header = Header::new_gnu();
    header.set_entry_type(entry_type);
    header.set_mode(mode);
    header.set_mtime(mtime);
    header.set_uid(0);
    header.set_gid(0);
    header
}

fn mtime_seconds(entry: &Entry) -> u64 {
    u64::try_from(entry.mtime_ns.div_euclid(1_000_000_000)).unwrap_or(0)
}

/// Reads exactly `remaining` bytes of a file and fails if it ends sooner,
/// because the tar header already contains the size.
struct ExactReader {
    file: File,
    remaining: u64,
}

impl Read for ExactReader {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let limit = buffer
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let count = self.file.read(&mut buffer[..limit])?;
        if count == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file shrank while kbuild was archiving it; run the command again",
            ));
        }
        self.remaining -= count as u64;
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::GzDecoder;
    use std::os::unix::fs::symlink;

    struct Member {
        path: String,
        kind: EntryType,
        data: Vec<u8>,
        link: Option<Vec<u8>>,
    }

    fn read_back(archive: &Path) -> Vec<Member> {
        let file = File::open(archive).unwrap();
        let mut reader = tar::Archive::new(GzDecoder::new(file));
        let mut members = Vec::new();
        for member in reader.entries().unwrap() {
            let mut member = member.unwrap();
            let path = member.path().unwrap().to_string_lossy().into_owned();
            let kind = member.header().entry_type();
            let link = member.link_name_bytes().map(|bytes| bytes.into_owned());
            let mut data = Vec::new();
            member.read_to_end(&mut data).unwrap();
            members.push(Member {
                path,
                kind,
                data,
                link,
            });
        }
        members
    }

    #[test]
    fn archive_keeps_long_link_target() {
        let tree = tempfile::tempdir().unwrap();
        let target = format!("{}//kept", "../x".repeat(40));
        symlink(&target, tree.path().join("link")).unwrap();
        let mut files = Files::new();
        let output = tree.path().join("out.tar.gz");
        let mut file = File::create(&output).unwrap();
        let paths = ["link".to_string()];
        write_archive(tree.path(), &mut files, &paths, None, &mut file).unwrap();
        let members = read_back(&output);
        assert_eq!(members.len(), 1);
        assert_eq!(members[0].kind, EntryType::Symlink);
        assert_eq!(members[0].link.as_deref(), Some(target.as_bytes()));
    }

    #[test]
    fn archive_lists_deleted_first() {
        let tree = tempfile::tempdir().unwrap();
        fs::write(tree.path().join("a"), "alpha").unwrap();
        let mut files = Files::new();
        let output = tree.path().join("out.tar.gz");
        let mut file = File::create(&output).unwrap();
        let deleted = ["gone one".to_string(), "dir/gone".to_string()];
        let paths = ["a".to_string()];
        write_archive(tree.path(), &mut files, &paths, Some(&deleted), &mut file).unwrap();
        let members = read_back(&output);
        assert_eq!(members[0].path, DELETED_LIST);
        assert_eq!(members[0].data, b"gone one\0dir/gone\0");
        assert_eq!(members[1].path, "a");
        assert_eq!(members[1].data, b"alpha");
        assert_eq!(files["a"].size, 5);
    }

    #[test]
    fn archive_rejects_vanished_file() {
        let tree = tempfile::tempdir().unwrap();
        let mut files = Files::new();
        let mut file = tempfile::tempfile().unwrap();
        let paths = ["missing".to_string()];
        let error = write_archive(tree.path(), &mut files, &paths, None, &mut file).unwrap_err();
        let message = format!("{error:#}");
        assert!(message.contains("run the command again"), "{message}");
    }
}
