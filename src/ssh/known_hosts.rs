//! Host key pinning with one known_hosts file per VM.
//!
//! The file belongs to one VM, so any key in it pins that VM whatever host
//! pattern its line carries: the forwarded port may change between boots
//! while the guest's host key stays. Lines are written in OpenSSH format
//! (`[127.0.0.1]:2222 ssh-ed25519 AAAA...`), so `ssh -o UserKnownHostsFile=`
//! can use the same file.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::Context;
use ssh_key::known_hosts::KnownHosts;
use ssh_key::{HashAlg, PublicKey};

use crate::exit::Failure;

/// Outcome of a successful host key check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKeyStatus {
    /// The file had no key yet, and now pins the one offered.
    Pinned,
    /// The offered key is the one the file pins.
    Known,
}

/// Returns the SHA256 fingerprint of a host key blob (SSH wire format) as
/// `ssh-keygen -l` prints it, such as `SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s`.
pub fn fingerprint(key_blob: &[u8]) -> anyhow::Result<String> {
    let key = PublicKey::from_bytes(key_blob).context("parsing the host key sent by the server")?;
    Ok(key.fingerprint(HashAlg::Sha256).to_string())
}

/// Checks the host key that `address` (`host:port`) offered for VM `vm`
/// against the VM's known_hosts file at `path`, and pins it if the file has
/// no key yet.
///
/// A key that differs from the pinned one fails with both fingerprints and
/// the fix. Only `path` is read or written, never `~/.ssh/known_hosts`.
pub fn verify_host_key(
    path: &Path,
    vm: &str,
    address: &str,
    key_blob: &[u8],
) -> anyhow::Result<HostKeyStatus> {
    let offered = PublicKey::from_bytes(key_blob).map_err(|error| {
        Failure::infrastructure(format!(
            "VM {vm} at {address} sent a host key that kbuild cannot parse: {error}"
        ))
    })?;
    let pinned = read_pinned_keys(path)?;
    if pinned.is_empty() {
        pin(path, address, &offered)?;
        tracing::debug!(
            vm,
            fingerprint = %offered.fingerprint(HashAlg::Sha256),
            path = %path.display(),
            "pinned host key"
        );
        return Ok(HostKeyStatus::Pinned);
    }
    if pinned
        .iter()
        .any(|key| key.key_data() == offered.key_data())
    {
        return Ok(HostKeyStatus::Known);
    }
    Err(changed_key_error(path, vm, address, &pinned[0], &offered))
}

fn changed_key_error(
    path: &Path,
    vm: &str,
    address: &str,
    pinned: &PublicKey,
    offered: &PublicKey,
) -> anyhow::Error {
    Failure::infrastructure(format!(
        "host key of VM {vm} changed: {path} pins {old_type} {old}, but {address} offered \
         {new_type} {new}. If the VM was rebuilt, run `kbuild destroy` to recreate it, or remove \
         {path}; otherwise another program may be answering on {address}",
        path = path.display(),
        old_type = pinned.algorithm(),
        old = pinned.fingerprint(HashAlg::Sha256),
        new_type = offered.algorithm(),
        new = offered.fingerprint(HashAlg::Sha256),
    ))
}

/// Reads the keys pinned in `path`; a missing file pins nothing.
fn read_pinned_keys(path: &Path) -> anyhow::Result<Vec<PublicKey>> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => {
            return Err(error)
                .with_context(|| format!("reading known_hosts file {}", path.display()))
        }
    };
    KnownHosts::new(&text)
        .map(|entry| entry.map(|entry| entry.public_key().clone()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| {
            Failure::infrastructure(format!(
                "invalid known_hosts file {}: {error}; remove it to pin the VM's host key again",
                path.display()
            ))
        })
}

/// Writes a one-line known_hosts file through a temporary file and a rename.
fn pin(path: &Path, address: &str, key: &PublicKey) -> anyhow::Result<()> {
    let mut key = key.clone();
    key.set_comment("");
    let key_text = key.to_openssh().context("encoding the host key")?;
    let line = format!("{} {}\n", host_pattern(address), key_text.trim_end());

    let dir = path.parent().filter(|dir| !dir.as_os_str().is_empty());
    let dir = dir.unwrap_or(Path::new("."));
    fs::create_dir_all(dir).with_context(|| format!("creating folder {}", dir.display()))?;
    let mut file = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    file.as_file()
        .set_permissions(fs::Permissions::from_mode(0o600))
        .with_context(|| format!("setting mode 0600 on a temporary file in {}", dir.display()))?;
    file.write_all(line.as_bytes())
        .and_then(|()| file.as_file().sync_all())
        .with_context(|| format!("writing a temporary file in {}", dir.display()))?;
    file.persist(path)
        .with_context(|| format!("renaming a temporary file to {}", path.display()))?;
    Ok(())
}

/// Formats `host:port` the way OpenSSH writes it in known_hosts: the bare
/// host for port 22, `[host]:port` otherwise.
fn host_pattern(address: &str) -> String {
    match address.rsplit_once(':') {
        Some((host, "22")) => host.to_string(),
        Some((host, port)) => format!("[{host}]:{port}"),
        None => address.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ssh_key::rand_core::OsRng;
    use ssh_key::{Algorithm, PrivateKey};

    fn random_host_key() -> PublicKey {
        PrivateKey::random(&mut OsRng, Algorithm::Ed25519)
            .unwrap()
            .public_key()
            .clone()
    }

    fn blob(key: &PublicKey) -> Vec<u8> {
        key.to_bytes().unwrap()
    }

    #[test]
    fn verify_pins_then_knows() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("vm/known_hosts");
        let key = random_host_key();
        let first = verify_host_key(&path, "vm1", "127.0.0.1:2222", &blob(&key)).unwrap();
        assert_eq!(first, HostKeyStatus::Pinned);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("[127.0.0.1]:2222 ssh-ed25519 "), "{text}");
        let second = verify_host_key(&path, "vm1", "127.0.0.1:2223", &blob(&key)).unwrap();
        assert_eq!(second, HostKeyStatus::Known);
    }

    #[test]
    fn verify_rejects_changed_key() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("known_hosts");
        let old = random_host_key();
        let new = random_host_key();
        verify_host_key(&path, "vm1", "127.0.0.1:2222", &blob(&old)).unwrap();
        let error = verify_host_key(&path, "vm1", "127.0.0.1:2222", &blob(&new)).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("VM vm1"), "{message}");
        assert!(
            message.contains(&fingerprint(&blob(&old)).unwrap()),
            "{message}"
        );
        assert!(
            message.contains(&fingerprint(&blob(&new)).unwrap()),
            "{message}"
        );
        assert!(message.contains("kbuild destroy"), "{message}");
        assert!(message.contains(&path.display().to_string()), "{message}");
        let code = crate::exit::exit_code_of(&error, crate::exit::ExitCode::Usage);
        assert_eq!(code, crate::exit::ExitCode::Infrastructure);
    }

    #[test]
    fn verify_rejects_invalid_file() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("known_hosts");
        fs::write(&path, "[127.0.0.1]:2222 ssh-ed25519 not-base64\n").unwrap();
        let key = random_host_key();
        let error = verify_host_key(&path, "vm1", "127.0.0.1:2222", &blob(&key)).unwrap_err();
        assert!(
            error.to_string().contains("invalid known_hosts file"),
            "{error}"
        );
    }

    #[test]
    fn fingerprint_has_sha256_prefix() {
        let key = random_host_key();
        let text = fingerprint(&blob(&key)).unwrap();
        assert!(text.starts_with("SHA256:"), "{text}");
        assert_eq!(text.len(), "SHA256:".len() + 43);
    }

    #[test]
    fn host_pattern_brackets_ports() {
        assert_eq!(host_pattern("127.0.0.1:2222"), "[127.0.0.1]:2222");
        assert_eq!(host_pattern("127.0.0.1:22"), "127.0.0.1");
    }
}
