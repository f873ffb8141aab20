//! The config fingerprint: a hash of everything the `.config` is made from,
//! stored in the build folder so that an unchanged config is not rewritten.

use std::path::Path;

use anyhow::Context;
use sha2::{Digest, Sha256};

/// File in the build folder that stores the fingerprint of its `.config`.
pub const FILE_NAME: &str = ".kbuild-config.sha256";

/// What a configuration is made from.
#[derive(Debug, Clone, Copy)]
pub struct ConfigInputs<'a> {
    /// `defconfig`, `tinyconfig`, `running` or `file`.
    pub base_kind: &'a str,
    /// The base config's text, empty for make targets.
    pub base_text: &'a [u8],
    /// Each fragment's name and text, in merge order.
    pub fragments: &'a [(String, String)],
    pub arch: &'a str,
    pub tree: &'a Path,
}

/// Computes the hex SHA-256 fingerprint of `inputs`.
pub fn fingerprint(inputs: &ConfigInputs) -> String {
    let mut hasher = Sha256::new();
    // Each field is length-prefixed, so moving bytes between fields changes the hash.
    let mut field = |bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    };
    field(b"kbuild config fingerprint 1");
    field(inputs.base_kind.as_bytes());
    field(inputs.base_text);
    for (name, text) in inputs.fragments {
        field(name.as_bytes());
        field(text.as_bytes());
    }
    field(inputs.arch.as_bytes());
    field(inputs.tree.as_os_str().as_encoded_bytes());
    let digest = hasher.finalize();
    digest.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Reads the stored fingerprint, or `None` when there is none.
pub fn read(build_dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(build_dir.join(FILE_NAME)).ok()?;
    Some(text.trim().to_string())
}

/// Stores `fingerprint` in the build folder, through a temporary file.
pub fn store(build_dir: &Path, fingerprint: &str) -> anyhow::Result<()> {
    super::write_atomically(
        &build_dir.join(FILE_NAME),
        format!("{fingerprint}\n").as_bytes(),
    )
}

/// Removes the stored fingerprint, so an interrupted configure reruns.
pub fn remove(build_dir: &Path) -> anyhow::Result<()> {
    let path = build_dir.join(FILE_NAME);
    match std::fs::remove_file(&path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            Err(error).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs<'a>(fragments: &'a [(String, String)], tree: &'a Path) -> ConfigInputs<'a> {
        ConfigInputs {
            base_kind: "tinyconfig",
            base_text: b"",
            fragments,
            arch: "x86_64",
            tree,
        }
    }

    fn boot(text: &str) -> Vec<(String, String)> {
        vec![("boot".to_string(), text.to_string())]
    }

    #[test]
    fn fingerprint_stable_for_same_inputs() {
        let fragments = boot("CONFIG_TTY=y\n");
        let tree = Path::new("/src/linux");
        assert_eq!(
            fingerprint(&inputs(&fragments, tree)),
            fingerprint(&inputs(&fragments, tree))
        );
    }

    #[test]
    fn fingerprint_changes_with_fragment_text() {
        let tree = Path::new("/src/linux");
        let before = boot("CONFIG_TTY=y\n");
        let after = boot("CONFIG_TTY=y\nCONFIG_PRINTK=y\n");
        assert_ne!(
            fingerprint(&inputs(&before, tree)),
            fingerprint(&inputs(&after, tree))
        );
    }

    #[test]
    fn fingerprint_changes_with_base_kind() {
        let fragments = boot("");
        let tree = Path::new("/src/linux");
        let tiny = inputs(&fragments, tree);
        let def = ConfigInputs {
            base_kind: "defconfig",
            ..tiny
        };
        assert_ne!(fingerprint(&tiny), fingerprint(&def));
    }

    #[test]
    fn fingerprint_changes_with_base_text() {
        let fragments = boot("");
        let tree = Path::new("/src/linux");
        let one = ConfigInputs {
            base_kind: "file",
            base_text: b"CONFIG_A=y\n",
            ..inputs(&fragments, tree)
        };
        let two = ConfigInputs {
            base_text: b"CONFIG_A=n\n",
            ..one
        };
        assert_ne!(fingerprint(&one), fingerprint(&two));
    }

    #[test]
    fn fingerprint_changes_with_tree() {
        let fragments = boot("");
        let one = fingerprint(&inputs(&fragments, Path::new("/src/a")));
        let two = fingerprint(&inputs(&fragments, Path::new("/src/b")));
        assert_ne!(one, two);
    }

    #[test]
    fn fingerprint_field_boundaries_matter() {
        let tree = Path::new("/t");
        let one = vec![("ab".to_string(), "c".to_string())];
        let two = vec![("a".to_string(), "bc".to_string())];
        assert_ne!(
            fingerprint(&inputs(&one, tree)),
            fingerprint(&inputs(&two, tree))
        );
    }

    #[test]
    fn stored_fingerprint_read_back() {
        let dir = tempfile::tempdir().unwrap();
        store(dir.path(), "abc").unwrap();
        assert_eq!(read(dir.path()).as_deref(), Some("abc"));
        remove(dir.path()).unwrap();
        assert_eq!(read(dir.path()), None);
    }
}
