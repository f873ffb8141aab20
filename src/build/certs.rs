//! Certificate options that name files this machine does not have.
//!
//! Distribution configs point `CONFIG_SYSTEM_TRUSTED_KEYS` and
//! `CONFIG_SYSTEM_REVOCATION_KEYS` at their own certificates (Debian:
//! `debian/certs/debian-uefi-certs.pem`), which are not in a kernel.org tree,
//! so make stops with `No rule to make target`. kbuild clears such options
//! before the build.

use std::path::Path;

use anyhow::Context;

use super::fragment::parse_config;
use super::make;

/// The value kbuild generates a module signing key for by itself.
pub const DEFAULT_MODULE_SIG_KEY: &str = "certs/signing_key.pem";

/// A certificate option to rewrite, and the file it named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFix {
    /// Symbol name with its `CONFIG_` prefix.
    pub option: &'static str,
    /// The missing file, as the config names it.
    pub missing_file: String,
    /// The value the option gets instead.
    pub replacement: &'static str,
}

/// Options that name a certificate file, with the value each gets when that
/// file is missing.
const CERT_OPTIONS: &[(&str, &str)] = &[
    ("CONFIG_SYSTEM_TRUSTED_KEYS", ""),
    ("CONFIG_SYSTEM_REVOCATION_KEYS", ""),
    ("CONFIG_MODULE_SIG_KEY", DEFAULT_MODULE_SIG_KEY),
];

/// Lists the certificate options of `config` whose file exists neither as an
/// absolute path nor relative to `tree` or `build_dir`, the two folders kbuild
/// looks in.
pub fn missing_cert_files(config: &str, tree: &Path, build_dir: &Path) -> Vec<CertFix> {
    let values = parse_config(config);
    let mut fixes = Vec::new();
    for (option, replacement) in CERT_OPTIONS {
        let Some(Some(value)) = values.get(option) else {
            continue;
        };
        let file = unquote(value);
        let generated_by_kbuild = *option == "CONFIG_MODULE_SIG_KEY"
            && (file == DEFAULT_MODULE_SIG_KEY || file.starts_with("pkcs11:"));
        if file.is_empty() || generated_by_kbuild || exists(file, tree, build_dir) {
            continue;
        }
        fixes.push(CertFix {
            option,
            missing_file: file.to_string(),
            replacement,
        });
    }
    fixes
}

fn unquote(value: &str) -> &str {
    value
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
        .unwrap_or(value)
}

fn exists(file: &str, tree: &Path, build_dir: &Path) -> bool {
    let path = Path::new(file);
    if path.is_absolute() {
        return path.exists();
    }
    tree.join(path).exists() || build_dir.join(path).exists()
}

/// Finds and rewrites certificate options in `<build_dir>/.config` with the
/// tree's `scripts/config`, warning once for each option changed.
pub async fn fix_missing_certs(tree: &Path, build_dir: &Path, log: &Path) -> anyhow::Result<()> {
    let config_path = build_dir.join(".config");
    let config = std::fs::read_to_string(&config_path)
        .with_context(|| format!("reading {}", config_path.display()))?;
    let fixes = missing_cert_files(&config, tree, build_dir);
    if fixes.is_empty() {
        return Ok(());
    }

    let script = tree.join("scripts/config");
    let mut command = tokio::process::Command::new("bash");
    command.arg(&script).arg("--file").arg(&config_path);
    for fix in &fixes {
        command.args(["--set-str", fix.option, fix.replacement]);
        crate::ui::warn(format!(
            "{} names {}, which does not exist; setting it to {:?} so the build can go on",
            fix.option, fix.missing_file, fix.replacement
        ));
    }
    make::run_logged(command, build_dir, log, "scripts/config").await
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBIAN: &str = "\
CONFIG_MODULE_SIG_KEY=\"certs/signing_key.pem\"
CONFIG_SYSTEM_TRUSTED_KEYRING=y
CONFIG_SYSTEM_TRUSTED_KEYS=\"debian/certs/debian-uefi-certs.pem\"
CONFIG_SYSTEM_REVOCATION_KEYS=\"debian/certs/debian-uefi-certs.pem\"
";

    fn dirs() -> (tempfile::TempDir, tempfile::TempDir) {
        (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap())
    }

    #[test]
    fn certs_missing_debian_files_found() {
        let (tree, build) = dirs();
        let fixes = missing_cert_files(DEBIAN, tree.path(), build.path());
        let options: Vec<&str> = fixes.iter().map(|fix| fix.option).collect();
        assert_eq!(
            options,
            [
                "CONFIG_SYSTEM_TRUSTED_KEYS",
                "CONFIG_SYSTEM_REVOCATION_KEYS"
            ]
        );
        assert_eq!(fixes[0].missing_file, "debian/certs/debian-uefi-certs.pem");
        assert_eq!(fixes[0].replacement, "");
    }

    #[test]
    fn certs_file_in_tree_kept() {
        let (tree, build) = dirs();
        std::fs::create_dir_all(tree.path().join("debian/certs")).unwrap();
        std::fs::write(tree.path().join("debian/certs/debian-uefi-certs.pem"), "").unwrap();
        let fixes = missing_cert_files(DEBIAN, tree.path(), build.path());
        assert!(fixes.is_empty(), "{fixes:?}");
    }

    #[test]
    fn certs_file_in_build_dir_kept() {
        let (tree, build) = dirs();
        std::fs::create_dir_all(build.path().join("debian/certs")).unwrap();
        std::fs::write(build.path().join("debian/certs/debian-uefi-certs.pem"), "").unwrap();
        let fixes = missing_cert_files(DEBIAN, tree.path(), build.path());
        assert!(fixes.is_empty(), "{fixes:?}");
    }

    #[test]
    fn certs_empty_value_kept() {
        let (tree, build) = dirs();
        let config = "CONFIG_SYSTEM_TRUSTED_KEYS=\"\"\n";
        assert!(missing_cert_files(config, tree.path(), build.path()).is_empty());
    }

    #[test]
    fn certs_custom_signing_key_reset() {
        let (tree, build) = dirs();
        let config = "CONFIG_MODULE_SIG_KEY=\"/etc/keys/mine.pem\"\n";
        let fixes = missing_cert_files(config, tree.path(), build.path());
        assert_eq!(fixes.len(), 1);
        assert_eq!(fixes[0].replacement, DEFAULT_MODULE_SIG_KEY);
    }

    #[test]
    fn certs_pkcs11_signing_key_kept() {
        let (tree, build) = dirs();
        let config = "CONFIG_MODULE_SIG_KEY=\"pkcs11:token=kernel\"\n";
        assert!(missing_cert_files(config, tree.path(), build.path()).is_empty());
    }

    #[tokio::test]
    async fn certs_fix_rewrites_config() {
        let source = tempfile::tempdir().unwrap();
        let tree = &extract_scripts_config(source.path());
        let build = tempfile::tempdir().unwrap();
        std::fs::write(build.path().join(".config"), DEBIAN).unwrap();
        let log = build.path().join("log");
        fix_missing_certs(tree, build.path(), &log).await.unwrap();
        let config = std::fs::read_to_string(build.path().join(".config")).unwrap();
        assert!(
            config.contains("CONFIG_SYSTEM_TRUSTED_KEYS=\"\"\n"),
            "{config}"
        );
        assert!(
            config.contains("CONFIG_SYSTEM_REVOCATION_KEYS=\"\"\n"),
            "{config}"
        );
        assert!(config.contains("CONFIG_MODULE_SIG_KEY=\"certs/signing_key.pem\"\n"));
    }

    /// Extracts the kernel's `scripts/config` from Debian's linux-source-6.1
    /// tarball into `dir` and returns the tree folder around it.
    fn extract_scripts_config(dir: &Path) -> std::path::PathBuf {
        let tarball = "/usr/src/linux-source-6.1.tar.xz";
        assert!(
            Path::new(tarball).is_file(),
            "{tarball} not found; install it with scripts/install-host-tools.sh"
        );
        let status = std::process::Command::new("tar")
            .args(["-xJf", tarball, "-C"])
            .arg(dir)
            .arg("linux-source-6.1/scripts/config")
            .status()
            .unwrap();
        assert!(status.success(), "extracting scripts/config from {tarball}");
        dir.join("linux-source-6.1")
    }
}
