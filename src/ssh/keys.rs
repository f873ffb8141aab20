//! The project's SSH key pair: an ed25519 key in OpenSSH format, made once
//! per project folder and reused after that.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use ssh_key::rand_core::OsRng;
use ssh_key::{Algorithm, LineEnding, PrivateKey, PublicKey};

use crate::exit::Failure;

/// File name of the private key; the public key adds `.pub`.
pub const PRIVATE_KEY_NAME: &str = "id_ed25519";

/// Comment written into new keys, shown in the guest's authorized_keys.
const KEY_COMMENT: &str = "kbuild";

/// Paths of the key pair that `ensure_key_pair` made or found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPair {
    pub private_key: PathBuf,
    pub public_key: PathBuf,
}

/// Makes the ed25519 key pair in `dir`, or reuses the one already there.
///
/// `dir` is created with mode 0700 and both files with mode 0600. An existing
/// private key must be readable, unencrypted and closed to group and others,
/// as OpenSSH requires. Otherwise this fails with the fix in the message.
/// A missing or stale public key is rewritten from the private key.
pub fn ensure_key_pair(dir: &Path) -> anyhow::Result<KeyPair> {
    create_private_dir(dir)?;
    let pair = KeyPair {
        private_key: dir.join(PRIVATE_KEY_NAME),
        public_key: dir.join(format!("{PRIVATE_KEY_NAME}.pub")),
    };

    let private_key = if pair.private_key.exists() {
        load_private_key(&pair.private_key)?
    } else {
        let mut key = PrivateKey::random(&mut OsRng, Algorithm::Ed25519)
            .context("generating an ed25519 key pair")?;
        key.set_comment(KEY_COMMENT);
        let pem = key
            .to_openssh(LineEnding::LF)
            .context("encoding the private key in OpenSSH format")?;
        write_private_file(&pair.private_key, pem.as_bytes())?;
        tracing::debug!(path = %pair.private_key.display(), "generated ssh key pair");
        key
    };

    let expected = private_key.public_key();
    let current = fs::read_to_string(&pair.public_key)
        .ok()
        .and_then(|text| PublicKey::from_openssh(text.trim()).ok());
    if current.as_ref().map(PublicKey::key_data) != Some(expected.key_data()) {
        let line = expected
            .to_openssh()
            .context("encoding the public key in OpenSSH format")?;
        write_private_file(&pair.public_key, format!("{line}\n").as_bytes())?;
    }
    Ok(pair)
}

/// Reads a public key file and returns its single OpenSSH line, such as
/// `ssh-ed25519 AAAA... kbuild`.
pub fn read_public_key(path: &Path) -> anyhow::Result<String> {
    let text = fs::read_to_string(path)
        .with_context(|| format!("reading public key {}", path.display()))?;
    let key = PublicKey::from_openssh(text.trim()).map_err(|error| {
        Failure::usage(format!(
            "invalid public key {}: {error}; delete it and run kbuild again to rewrite it",
            path.display()
        ))
    })?;
    key.to_openssh()
        .with_context(|| format!("encoding public key {}", path.display()))
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating key folder {}", dir.display()))
}

/// Reads and checks an existing private key. The key text is never part of
/// an error message.
fn load_private_key(path: &Path) -> anyhow::Result<PrivateKey> {
    let metadata =
        fs::metadata(path).with_context(|| format!("reading metadata of {}", path.display()))?;
    if !metadata.is_file() {
        return Err(Failure::usage(format!(
            "private key {} is not a regular file; remove it so kbuild makes a new key pair",
            path.display()
        )));
    }
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(Failure::usage(format!(
            "private key {} has mode {mode:04o}, open to group or others; \
             run `chmod 600 {}` and try again",
            path.display(),
            path.display()
        )));
    }
    let pem = fs::read(path).map_err(|error| {
        Failure::usage(format!(
            "cannot read private key {}: {error}; fix its owner and permissions \
             (`chmod 600`), or remove it so kbuild makes a new key pair",
            path.display()
        ))
    })?;
    let pem = SecretBytes(pem);
    let key = PrivateKey::from_openssh(&pem.0).map_err(|error| {
        Failure::usage(format!(
            "invalid private key {}: {error}; remove it and its .pub file so kbuild makes a new key pair",
            path.display()
        ))
    })?;
    if key.is_encrypted() {
        return Err(Failure::usage(format!(
            "private key {} is encrypted with a passphrase, which kbuild cannot use; \
             remove it and its .pub file so kbuild makes a new key pair",
            path.display()
        )));
    }
    Ok(key)
}

/// Private key text, overwritten with zeros when dropped.
struct SecretBytes(Vec<u8>);

impl Drop for SecretBytes {
    fn drop(&mut self) {
        for byte in self.0.iter_mut() {
            // SAFETY: `byte` is a valid, exclusive reference into the vector.
            unsafe { std::ptr::write_volatile(byte, 0) };
        }
    }
}

/// Writes `contents` to a new temporary file of mode 0600 beside `path` and
/// renames it over `path`.
fn write_private_file(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut file = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    file.as_file()
        .set_permissions(fs::Permissions::from_mode(0o600))
        .with_context(|| format!("setting mode 0600 on a temporary file in {}", dir.display()))?;
    file.write_all(contents)
        .and_then(|()| file.as_file().sync_all())
        .with_context(|| format!("writing a temporary file in {}", dir.display()))?;
    file.persist(path)
        .with_context(|| format!("renaming a temporary file to {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(error: &anyhow::Error) -> String {
        format!("{error:#}")
    }

    #[test]
    fn key_pair_created_with_modes() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("ssh");
        let pair = ensure_key_pair(&dir).unwrap();
        let mode = |path: &Path| fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&pair.private_key), 0o600);
        assert_eq!(mode(&pair.public_key), 0o600);
        let private = fs::read_to_string(&pair.private_key).unwrap();
        assert!(private.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
        let public = read_public_key(&pair.public_key).unwrap();
        assert!(public.starts_with("ssh-ed25519 "), "{public}");
        assert!(public.ends_with(" kbuild"), "{public}");
    }

    #[test]
    fn key_pair_reused() {
        let temp = tempfile::tempdir().unwrap();
        let first = ensure_key_pair(temp.path()).unwrap();
        let before = fs::read(&first.private_key).unwrap();
        let second = ensure_key_pair(temp.path()).unwrap();
        assert_eq!(first, second);
        assert_eq!(fs::read(&second.private_key).unwrap(), before);
    }

    #[test]
    fn key_pair_rewrites_missing_public_key() {
        let temp = tempfile::tempdir().unwrap();
        let pair = ensure_key_pair(temp.path()).unwrap();
        let public = fs::read_to_string(&pair.public_key).unwrap();
        fs::remove_file(&pair.public_key).unwrap();
        ensure_key_pair(temp.path()).unwrap();
        assert_eq!(fs::read_to_string(&pair.public_key).unwrap(), public);
    }

    #[test]
    fn key_pair_rejects_open_mode() {
        let temp = tempfile::tempdir().unwrap();
        let pair = ensure_key_pair(temp.path()).unwrap();
        fs::set_permissions(&pair.private_key, fs::Permissions::from_mode(0o644)).unwrap();
        let error = ensure_key_pair(temp.path()).unwrap_err();
        assert!(message(&error).contains("mode 0644"), "{error:#}");
        assert!(message(&error).contains("chmod 600"), "{error:#}");
    }

    #[test]
    fn key_pair_rejects_unreadable_key() {
        let temp = tempfile::tempdir().unwrap();
        fs::create_dir(temp.path().join(PRIVATE_KEY_NAME)).unwrap();
        let error = ensure_key_pair(temp.path()).unwrap_err();
        assert!(message(&error).contains("not a regular file"), "{error:#}");
    }

    #[test]
    fn key_pair_rejects_garbage_key() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join(PRIVATE_KEY_NAME);
        fs::write(&path, "not a key\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let error = ensure_key_pair(temp.path()).unwrap_err();
        assert!(message(&error).contains("invalid private key"), "{error:#}");
        assert!(!message(&error).contains("not a key"), "{error:#}");
    }
}
