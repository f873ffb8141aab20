//! Versions of the tools a run used, for the report: on the host, and in
//! the guest for a VM run.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

use crate::guest::Guest;

/// Host programs whose first `--version` line goes into the report.
const HOST_TOOLS: &[(&str, &str)] = &[
    ("qemu", "qemu-system-x86_64"),
    ("gcc", "gcc"),
    ("make", "make"),
    ("ld", "ld"),
    ("ccache", "ccache"),
];

/// Shell script run in the guest; prints `name=value` lines.
const GUEST_SCRIPT: &str = "echo \"kernel=$(uname -r)\"; \
    if [ -r /etc/os-release ]; then . /etc/os-release; echo \"distribution=$PRETTY_NAME\"; fi; \
    if command -v gcc >/dev/null; then echo \"gcc=$(gcc --version | head -n 1)\"; fi; \
    if command -v make >/dev/null; then echo \"make=$(make --version | head -n 1)\"; fi";

/// Returns the host's tool versions; a missing tool reads "not found".
pub fn host() -> BTreeMap<String, String> {
    let mut versions = BTreeMap::new();
    versions.insert("kbuild".to_string(), env!("CARGO_PKG_VERSION").to_string());
    for (name, program) in HOST_TOOLS {
        let version = Command::new(program)
            .arg("--version")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|output| output.status.success())
            .and_then(|output| {
                String::from_utf8_lossy(&output.stdout)
                    .lines()
                    .next()
                    .map(str::to_string)
            })
            .unwrap_or_else(|| "not found".to_string());
        versions.insert((*name).to_string(), version);
    }
    versions
}

/// Returns the guest's kernel, distribution and compiler versions.
pub fn guest(guest: &Guest) -> anyhow::Result<BTreeMap<String, String>> {
    let output = guest.capture(&["sh", "-c", GUEST_SCRIPT])?;
    Ok(parse_pairs(&output))
}

fn parse_pairs(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| (name.to_string(), value.trim().to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_keep_equals_signs_in_values() {
        let pairs = parse_pairs("kernel=6.1.0\ngcc=gcc (Debian 12.2.0-14) 12.2.0\nx=a=b\nnoise\n");
        assert_eq!(pairs["kernel"], "6.1.0");
        assert_eq!(pairs["gcc"], "gcc (Debian 12.2.0-14) 12.2.0");
        assert_eq!(pairs["x"], "a=b");
        assert_eq!(pairs.len(), 3);
    }

    #[test]
    fn host_lists_every_tool() {
        let versions = host();
        for (name, _) in HOST_TOOLS {
            assert!(versions.contains_key(*name), "{name}");
        }
    }
}
