//! NoCloud seed images: a small FAT volume labelled `CIDATA` whose
//! `meta-data` and `user-data` files tell cloud-init in the guest which user
//! to create and which SSH key to install.

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};

/// Size of the seed image. FAT12 needs some room for its tables; the files
/// themselves take a few hundred bytes.
const SEED_BYTES: u64 = 1024 * 1024;

/// The volume label cloud-init's NoCloud source looks for (it accepts
/// `cidata` and `CIDATA`), padded to the 11 bytes of a FAT label.
const LABEL: [u8; 11] = *b"CIDATA     ";

/// Writes a NoCloud seed image to `path` that creates `user` with sudo
/// rights and `public_key` as its only SSH login, and names the guest
/// `hostname`. The file is written through a temporary file and a rename.
pub fn write_seed(path: &Path, user: &str, public_key: &str, hostname: &str) -> anyhow::Result<()> {
    check_user(user)?;
    check_hostname(hostname)?;
    let public_key = check_public_key(public_key)?;
    let user_data = user_data(user, public_key);
    let meta_data = meta_data(hostname, &user_data);

    let dir = path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut file = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    let temporary = file.path().to_path_buf();
    format_seed(file.as_file_mut(), &meta_data, &user_data)
        .with_context(|| format!("writing the seed image {}", temporary.display()))?;
    file.persist(path)
        .with_context(|| format!("renaming {} to {}", temporary.display(), path.display()))?;
    Ok(())
}

/// Formats `disk` as FAT with the `CIDATA` label and writes both files.
fn format_seed(disk: &mut std::fs::File, meta_data: &str, user_data: &str) -> anyhow::Result<()> {
    disk.set_len(SEED_BYTES).context("sizing the image")?;
    disk.seek(SeekFrom::Start(0))
        .context("seeking to the start")?;
    let options = fatfs::FormatVolumeOptions::new().volume_label(LABEL);
    fatfs::format_volume(&mut *disk, options).context("formatting FAT")?;
    disk.seek(SeekFrom::Start(0))
        .context("seeking to the start")?;

    {
        let filesystem = fatfs::FileSystem::new(&mut *disk, fatfs::FsOptions::new())
            .context("opening the FAT")?;
        write_files(
            &filesystem,
            &[("meta-data", meta_data), ("user-data", user_data)],
        )?;
        filesystem.unmount().context("unmounting the FAT")?;
    }
    disk.sync_all().context("syncing the image")
}

fn write_files<T: fatfs::ReadWriteSeek>(
    filesystem: &fatfs::FileSystem<T>,
    files: &[(&str, &str)],
) -> anyhow::Result<()> {
    let root = filesystem.root_dir();
    for (name, text) in files {
        let mut file = root
            .create_file(name)
            .with_context(|| format!("creating {name}"))?;
        file.truncate()
            .with_context(|| format!("truncating {name}"))?;
        file.write_all(text.as_bytes())
            .with_context(|| format!("writing {name}"))?;
        file.flush().with_context(|| format!("flushing {name}"))?;
    }
    Ok(())
}

/// Renders `#cloud-config` user data. Strings are written as JSON strings,
/// which YAML reads as double-quoted scalars.
fn user_data(user: &str, public_key: &str) -> String {
    let quote = |text: &str| serde_json::Value::from(text).to_string();
    let lines = [
        "#cloud-config".to_string(),
        "users:".to_string(),
        format!("  - name: {}", quote(user)),
        format!("    sudo: {}", quote("ALL=(ALL) NOPASSWD:ALL")),
        "    shell: /bin/bash".to_string(),
        "    lock_passwd: true".to_string(),
        "    ssh_authorized_keys:".to_string(),
        format!("      - {}", quote(public_key)),
        "ssh_pwauth: false".to_string(),
    ];
    lines.join("\n") + "\n"
}

/// Renders meta data. The instance id changes with the user data, so that
/// cloud-init applies a changed key on the next boot of the same disk.
fn meta_data(hostname: &str, user_data: &str) -> String {
    let digest = Sha256::digest(user_data.as_bytes());
    let id: String = digest[..6]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!("instance-id: kbuild-{id}\nlocal-hostname: {hostname}\n")
}

/// Checks that `user` is a POSIX-style user name: a lowercase letter or `_`,
/// then lowercase letters, digits, `_` or `-`, at most 32 characters.
fn check_user(user: &str) -> anyhow::Result<()> {
    let mut chars = user.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let rest_ok =
        chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if !first_ok || !rest_ok || user.len() > 32 {
        bail!("invalid guest user name {user:?}; use lowercase letters, digits, `_` and `-`");
    }
    Ok(())
}

/// Checks that `hostname` is a single DNS label: letters, digits and `-`,
/// 1 to 63 characters, not starting or ending with `-`.
fn check_hostname(hostname: &str) -> anyhow::Result<()> {
    let valid = !hostname.is_empty()
        && hostname.len() <= 63
        && !hostname.starts_with('-')
        && !hostname.ends_with('-')
        && hostname
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-');
    if !valid {
        bail!("invalid guest hostname {hostname:?}; use letters, digits and `-` (at most 63)");
    }
    Ok(())
}

/// Checks that `key` is one OpenSSH public key line and returns it trimmed.
fn check_public_key(key: &str) -> anyhow::Result<&str> {
    let key = key.trim();
    let mut fields = key.split_whitespace();
    let kind = fields.next().unwrap_or("");
    let known_kind =
        kind.starts_with("ssh-") || kind.starts_with("ecdsa-") || kind.starts_with("sk-");
    if key.contains(['\n', '\r']) || !known_kind || fields.next().is_none() {
        bail!(
            "invalid SSH public key {:?}; pass one line in OpenSSH format, such as the \
             contents of a .pub file",
            key.chars().take(40).collect::<String>()
        );
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB5ZmM7gS0dZ1QWkZ6cQ0Wn9m4uJ6u6ZkRjH5dT0mLkY kbuild";

    fn read_file(image: &Path, name: &str) -> String {
        let mut disk = std::fs::File::open(image).unwrap();
        let filesystem = fatfs::FileSystem::new(&mut disk, fatfs::FsOptions::new()).unwrap();
        let mut text = String::new();
        let mut file = filesystem.root_dir().open_file(name).unwrap();
        file.read_to_string(&mut text).unwrap();
        text
    }

    fn seed() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seed.img");
        write_seed(&path, "debian", KEY, "kbuild-vm").expect("writing the seed");
        (dir, path)
    }

    #[test]
    fn seed_user_data_has_key() {
        let (_dir, path) = seed();
        let user_data = read_file(&path, "user-data");
        assert!(user_data.starts_with("#cloud-config\n"), "{user_data}");
        assert!(user_data.contains("- name: \"debian\"\n"), "{user_data}");
        assert!(user_data.contains(&format!("- \"{KEY}\"\n")), "{user_data}");
        assert!(
            user_data.contains("sudo: \"ALL=(ALL) NOPASSWD:ALL\"\n"),
            "{user_data}"
        );
        assert!(user_data.contains("shell: /bin/bash\n"), "{user_data}");
        assert!(user_data.contains("\nssh_pwauth: false\n"), "{user_data}");
    }

    #[test]
    fn seed_meta_data_names_host() {
        let (_dir, path) = seed();
        let meta_data = read_file(&path, "meta-data");
        assert!(meta_data.starts_with("instance-id: kbuild-"), "{meta_data}");
        assert!(
            meta_data.contains("\nlocal-hostname: kbuild-vm\n"),
            "{meta_data}"
        );
    }

    #[test]
    fn seed_label_is_cidata() {
        let (_dir, path) = seed();
        let mut disk = std::fs::File::open(&path).unwrap();
        let filesystem = fatfs::FileSystem::new(&mut disk, fatfs::FsOptions::new()).unwrap();
        assert_eq!(filesystem.volume_label(), "CIDATA");
    }

    #[test]
    fn seed_label_seen_by_blkid() {
        let (_dir, path) = seed();
        let output = std::process::Command::new("blkid")
            .args(["-p", "-s", "LABEL", "-s", "TYPE", "-o", "export"])
            .arg(&path)
            .output()
            .expect("running blkid (util-linux)");
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(text.contains("LABEL=CIDATA"), "{text}");
        assert!(text.contains("TYPE=vfat"), "{text}");
    }

    #[test]
    fn seed_instance_id_follows_key() {
        let other = KEY.replace("kbuild", "other");
        assert_ne!(
            meta_data("h", &user_data("u", KEY)),
            meta_data("h", &user_data("u", &other))
        );
    }

    #[test]
    fn seed_rejects_bad_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seed.img");
        assert!(write_seed(&path, "Debian", KEY, "vm").is_err());
        assert!(write_seed(&path, "debian", "ssh-ed25519 AAAA\nx y", "vm").is_err());
        assert!(write_seed(&path, "debian", "not-a-key", "vm").is_err());
        assert!(write_seed(&path, "debian", KEY, "bad host").is_err());
        assert!(!path.exists());
    }
}
