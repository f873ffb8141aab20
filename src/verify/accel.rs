//! Chooses between KVM and TCG by booting a probe guest.
//!
//! `/dev/kvm` can exist and open fine while KVM guests still run far too
//! slowly to boot a kernel, as happens under some nested virtualization. So
//! the probe boots a real guest: a boot sector that spins through a loop and
//! then reports through QEMU's `isa-debug-exit` device. KVM counts as working
//! only when QEMU exits with the status that device produces within the
//! deadline. The verdict is cached per host boot, so the probe runs once.

use std::ffi::OsString;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::io::AsyncReadExt;

use super::{write_atomic, Accel};
use crate::ui;

const KVM_DEVICE: &str = "/dev/kvm";
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";
const CACHE_FILE: &str = "accel-probe";
const PROBE_DEADLINE: Duration = Duration::from_secs(5);

/// The value the probe writes to the `isa-debug-exit` port.
const PROBE_VALUE: u8 = 0x31;

/// QEMU's exit status after the guest writes `PROBE_VALUE`: `(value << 1) | 1`.
const PROBE_EXIT_STATUS: i32 = ((PROBE_VALUE as i32) << 1) | 1;

/// Real-mode code of the probe's boot sector, loaded by the BIOS at 0x7c00.
///
/// The 2^26-iteration loop takes about 0.2 s under TCG (QEMU 10.0.2) on a
/// 2-core x86_64 cloud VM. On the same VM, KVM needed about 6 s for 2^23
/// iterations, so a deadline of a few seconds separates a working KVM from a
/// crawling one. Without the loop, that KVM passed the probe, yet a kernel
/// booted with it printed nothing in 20 s.
#[rustfmt::skip]
const PROBE_CODE: &[u8] = &[
    0x66, 0xb9, 0x00, 0x00, 0x00, 0x04, // mov ecx, 0x04000000
    0x66, 0x49,                         // dec ecx
    0x75, 0xfc,                         // jnz to the dec
    0xb0, PROBE_VALUE,                  // mov al, PROBE_VALUE
    0xe6, 0xf4,                         // out 0xf4, al
    0xf4,                               // hlt
    0xeb, 0xfd,                         // jmp to the hlt
];

/// Outcome of one probe boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// The guest ran to the end within the deadline.
    Works,
    /// The guest failed or stalled, for the reason in the text. Cached per boot.
    Fails(String),
    /// The probe could not run at all, for example QEMU is missing. Not cached.
    Unavailable(String),
}

/// Returns the accelerator to use: the override, else KVM if a probe guest
/// runs within the deadline, else TCG (with a warning saying why).
pub async fn choose_accel(requested: Option<Accel>, qemu: &str) -> Accel {
    if requested == Some(Accel::Kvm) {
        if let Err(reason) = kvm_verdict(qemu).await {
            ui::warn(format!(
                "booting with KVM as requested, but KVM looks unusable ({reason}); \
                 if the boot times out, use --accel tcg"
            ));
        }
        return Accel::Kvm;
    }
    if let Some(accel) = requested {
        return accel;
    }
    match kvm_verdict(qemu).await {
        Ok(()) => Accel::Kvm,
        Err(reason) => {
            ui::warn(format!(
                "KVM is unusable ({reason}); booting with TCG, which is slower"
            ));
            Accel::Tcg
        }
    }
}

/// Checks the KVM device, then returns the cached probe verdict for this
/// boot or runs the probe. The error is the reason KVM is unusable.
pub(crate) async fn kvm_verdict(qemu: &str) -> Result<(), String> {
    check_device(Path::new(KVM_DEVICE))?;
    let boot_id = std::fs::read_to_string(BOOT_ID).ok();
    let cache = cache_dir_from(|name| std::env::var_os(name)).map(|dir| dir.join(CACHE_FILE));
    let key = boot_id.map(|id| format!("{} {qemu}", id.trim()));

    if let (Some(cache), Some(key)) = (&cache, &key) {
        if let Some(cached) = load_cached(cache, key) {
            tracing::debug!("KVM probe verdict from {}: {cached:?}", cache.display());
            return cached.map_err(|reason| {
                format!("{reason}; cached for this boot in {}", cache.display())
            });
        }
    }

    let probe = run_probe(qemu, Accel::Kvm, PROBE_DEADLINE).await;
    tracing::debug!("KVM probe: {probe:?}");
    let verdict = match probe {
        Probe::Works => Ok(()),
        Probe::Fails(reason) => Err(reason),
        Probe::Unavailable(reason) => return Err(reason),
    };
    if let (Some(cache), Some(key)) = (&cache, &key) {
        if let Err(error) = store_cached(cache, key, &verdict) {
            tracing::warn!("cannot cache the KVM probe verdict: {error:#}");
        }
    }
    verdict
}

/// Checks that the KVM device exists and that this user may open it.
fn check_device(device: &Path) -> Result<(), String> {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)
    {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == ErrorKind::NotFound => {
            Err(format!("{} missing", device.display()))
        }
        Err(error) if error.kind() == ErrorKind::PermissionDenied => Err(format!(
            "no permission on {}; add your user to the kvm group",
            device.display()
        )),
        Err(error) => Err(format!("cannot open {}: {error}", device.display())),
    }
}

/// Boots the probe guest with `accel` and reports whether it ran to the end
/// within `deadline`.
pub async fn run_probe(qemu: &str, accel: Accel, deadline: Duration) -> Probe {
    let image = match write_boot_sector() {
        Ok(image) => image,
        Err(error) => {
            return Probe::Unavailable(format!("cannot write the probe image: {error:#}"))
        }
    };
    let mut command = tokio::process::Command::new(qemu);
    command
        .args(["-accel", accel.name(), "-nodefaults", "-display", "none"])
        .args(["-no-user-config", "-m", "16", "-drive"])
        .arg(format!("file={},format=raw,if=ide", image.path().display()))
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    tracing::debug!("running {command:?}");

    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => return Probe::Unavailable(format!("cannot run {qemu}: {error}")),
    };
    let mut stderr = child.stderr.take();
    let stderr_text = tokio::spawn(async move {
        let mut text = String::new();
        if let Some(stderr) = stderr.as_mut() {
            let _ = stderr.read_to_string(&mut text).await;
        }
        text
    });

    let status = match tokio::time::timeout(deadline, child.wait()).await {
        Ok(Ok(status)) => status,
        Ok(Err(error)) => return Probe::Unavailable(format!("waiting for {qemu}: {error}")),
        Err(_elapsed) => {
            if let Err(error) = child.kill().await {
                tracing::warn!("cannot kill the probe {qemu}: {error}");
            }
            let seconds = deadline.as_secs();
            return Probe::Fails(format!(
                "{} guest made no progress within {seconds} s",
                accel.name().to_uppercase()
            ));
        }
    };
    if status.code() == Some(PROBE_EXIT_STATUS) {
        return Probe::Works;
    }
    let stderr = stderr_text.await.unwrap_or_default();
    Probe::Fails(format!(
        "{qemu} -accel {} failed: {}",
        accel.name(),
        summary_line(&stderr).unwrap_or_else(|| status.to_string())
    ))
}

/// Picks the stderr line that explains a failure, skipping QEMU's warnings.
fn summary_line(stderr: &str) -> Option<String> {
    let mut lines = stderr
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty());
    let first = lines.clone().next()?;
    let explanation = lines
        .find(|line| !line.contains("warning:"))
        .unwrap_or(first);
    Some(explanation.to_string())
}

/// Writes the 512-byte probe boot sector to a temporary file.
fn write_boot_sector() -> anyhow::Result<tempfile::NamedTempFile> {
    let mut sector = [0u8; 512];
    sector[..PROBE_CODE.len()].copy_from_slice(PROBE_CODE);
    sector[510] = 0x55;
    sector[511] = 0xaa;
    let file = tempfile::Builder::new()
        .prefix("kbuild-kvm-probe")
        .suffix(".img")
        .tempfile()
        .context("creating the probe image")?;
    std::fs::write(file.path(), sector)
        .with_context(|| format!("writing {}", file.path().display()))?;
    Ok(file)
}

/// Returns kbuild's cache folder: `KBUILD_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/kbuild`, else `$HOME/.cache/kbuild`.
pub fn cache_dir_from(lookup: impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    let absolute = |name: &str| {
        lookup(name)
            .map(PathBuf::from)
            .filter(|path| path.is_absolute())
    };
    if let Some(dir) = absolute("KBUILD_CACHE_DIR") {
        return Some(dir);
    }
    if let Some(dir) = absolute("XDG_CACHE_HOME") {
        return Some(dir.join("kbuild"));
    }
    absolute("HOME").map(|home| home.join(".cache").join("kbuild"))
}

/// Reads a cached verdict whose key matches, in the format `store_cached` writes.
fn load_cached(path: &Path, key: &str) -> Option<Result<(), String>> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut lines = text.lines();
    if lines.next()? != key {
        return None;
    }
    match lines.next()? {
        "kvm" => Some(Ok(())),
        "tcg" => Some(Err(lines.next().unwrap_or("reason unknown").to_string())),
        _ => None,
    }
}

/// Stores a verdict as three lines: the key, `kvm` or `tcg`, and the reason.
fn store_cached(path: &Path, key: &str, verdict: &Result<(), String>) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let text = match verdict {
        Ok(()) => format!("{key}\nkvm\n"),
        Err(reason) => format!("{key}\ntcg\n{}\n", reason.replace('\n', " ")),
    };
    write_atomic(path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn probe_exits_under_tcg() {
        let probe = run_probe("qemu-system-x86_64", Accel::Tcg, Duration::from_secs(20)).await;
        assert_eq!(probe, Probe::Works);
    }

    #[tokio::test]
    async fn probe_reports_missing_qemu() {
        let probe = run_probe("qemu-system-none", Accel::Tcg, PROBE_DEADLINE).await;
        assert!(matches!(probe, Probe::Unavailable(_)), "{probe:?}");
    }

    #[tokio::test]
    async fn choose_accel_keeps_override() {
        assert_eq!(
            choose_accel(Some(Accel::Tcg), "qemu-system-none").await,
            Accel::Tcg
        );
        assert_eq!(
            choose_accel(Some(Accel::Kvm), "qemu-system-none").await,
            Accel::Kvm
        );
    }

    #[test]
    fn device_missing_named() {
        let reason = check_device(Path::new("/nonexistent/kvm")).unwrap_err();
        assert_eq!(reason, "/nonexistent/kvm missing");
    }

    #[test]
    fn boot_sector_has_signature() {
        let file = write_boot_sector().expect("writing the boot sector");
        let sector = std::fs::read(file.path()).unwrap();
        assert_eq!(sector.len(), 512);
        assert_eq!(&sector[510..], &[0x55, 0xaa]);
        assert_eq!(PROBE_EXIT_STATUS, 99);
    }

    #[test]
    fn summary_skips_warnings() {
        let stderr = "qemu: warning: host doesn't support requested feature\n\
                      qemu: failed to initialize kvm: Permission denied\n";
        let line = summary_line(stderr).unwrap();
        assert_eq!(line, "qemu: failed to initialize kvm: Permission denied");
    }

    #[test]
    fn cache_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join(CACHE_FILE);
        let verdict = Err("KVM guest made no progress within 5 s".to_string());
        store_cached(&path, "boot-1 qemu", &verdict).expect("storing");
        assert_eq!(load_cached(&path, "boot-1 qemu"), Some(verdict));
        assert_eq!(load_cached(&path, "boot-2 qemu"), None);
        store_cached(&path, "boot-2 qemu", &Ok(())).expect("storing");
        assert_eq!(load_cached(&path, "boot-2 qemu"), Some(Ok(())));
    }

    #[test]
    fn cache_dir_precedence() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(key, _)| *key == name)
                    .map(|(_, value)| OsString::from(value))
            }
        };
        let all = env(&[
            ("KBUILD_CACHE_DIR", "/k"),
            ("XDG_CACHE_HOME", "/x"),
            ("HOME", "/h"),
        ]);
        assert_eq!(cache_dir_from(all), Some(PathBuf::from("/k")));
        let xdg = env(&[("XDG_CACHE_HOME", "/x"), ("HOME", "/h")]);
        assert_eq!(cache_dir_from(xdg), Some(PathBuf::from("/x/kbuild")));
        let relative_xdg = env(&[("XDG_CACHE_HOME", "x"), ("HOME", "/h")]);
        assert_eq!(
            cache_dir_from(relative_xdg),
            Some(PathBuf::from("/h/.cache/kbuild"))
        );
        assert_eq!(cache_dir_from(env(&[])), None);
    }
}
