//! The `.part` file a download streams into, hashed as it grows.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::checksum::{Digests, Hashers};
use crate::profile::DigestAlgorithm;

/// Read size when hashing what an earlier run left in the file.
const READ_BUFFER: usize = 1 << 20;

/// A partial download and the running digests of the bytes it contains.
///
/// The hashers always cover exactly the first `len` bytes of the file, so a
/// resumed download needs no second pass over the data.
pub(crate) struct PartFile {
    path: PathBuf,
    file: File,
    len: u64,
    hashers: Hashers,
}

impl PartFile {
    /// Opens or creates `path` and hashes the bytes an earlier run left in it.
    pub fn open(path: &Path, extra: Option<DigestAlgorithm>) -> anyhow::Result<PartFile> {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        let mut hashers = Hashers::new(extra);
        let mut buffer = vec![0u8; READ_BUFFER];
        let mut len = 0u64;
        loop {
            let count = file
                .read(&mut buffer)
                .with_context(|| format!("reading {}", path.display()))?;
            if count == 0 {
                break;
            }
            hashers.update(&buffer[..count]);
            len += count as u64;
        }
        Ok(PartFile {
            path: path.to_path_buf(),
            file,
            len,
            hashers,
        })
    }

    /// Bytes in the file.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Empties the file, for a server that sends the whole file again.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        let file = &mut self.file;
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)).map(drop))
            .with_context(|| format!("truncating {}", self.path.display()))?;
        self.len = 0;
        self.hashers.reset();
        Ok(())
    }

    pub fn append(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        // Network chunks are large (about 270 KiB on average in a 1 GiB download
        // from 127.0.0.1), so writing each one directly beats copying it into a buffer.
        self.file
            .write_all(bytes)
            .with_context(|| format!("writing {}", self.path.display()))?;
        self.hashers.update(bytes);
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Closes the file and returns the digests of its whole content.
    pub fn finish(self) -> Digests {
        self.hashers.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::checksum::hash_file;

    #[test]
    fn part_resume_hashes_existing_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.part");
        std::fs::write(&path, b"hello ").unwrap();
        let mut part = PartFile::open(&path, None).unwrap();
        assert_eq!(part.len(), 6);
        part.append(b"world").unwrap();
        let digests = part.finish();
        assert_eq!(std::fs::read(&path).unwrap(), b"hello world");
        assert_eq!(digests, hash_file(&path, None).unwrap());
    }

    #[test]
    fn part_restart_truncates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.part");
        std::fs::write(&path, b"stale bytes").unwrap();
        let mut part = PartFile::open(&path, Some(DigestAlgorithm::Sha512)).unwrap();
        part.restart().unwrap();
        part.append(b"new").unwrap();
        let digests = part.finish();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert_eq!(
            digests,
            hash_file(&path, Some(DigestAlgorithm::Sha512)).unwrap()
        );
    }
}
