//! Facts about the host that several steps need.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

/// Finds an executable file named `program` in the folders of `PATH`.
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .map(|metadata| metadata.is_file() && metadata.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_program_finds_sh() {
        assert!(find_program("sh").is_some());
    }

    #[test]
    fn find_program_misses_unknown() {
        assert!(find_program("kbuild-no-such-program").is_none());
    }
}
