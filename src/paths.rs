//! Folders kbuild keeps outside a project.

use std::path::PathBuf;

/// The user's kbuild cache: downloaded images, probe results.
///
/// `KBUILD_CACHE_DIR` overrides; otherwise `$XDG_CACHE_HOME/kbuild`, then
/// `~/.cache/kbuild`, then a folder under the system temp folder.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KBUILD_CACHE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("kbuild");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(home).join(".cache").join("kbuild");
    }
    std::env::temp_dir().join("kbuild-cache")
}
