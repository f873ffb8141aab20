//! Runs the QEMU backend against a real QEMU under TCG, with a tiny base
//! image whose boot sector halts forever: the VM runs, ignores ACPI
//! power-off, and never touches its disk.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kbuild::exit::{exit_code_of, ExitCode};
use kbuild::profile::DiskFormat;
use kbuild::verify::Accel;
use kbuild::vm::qemu::QemuVm;
use kbuild::vm::{qmp, VmConfig, VmState, VmStatus};
use sha2::{Digest, Sha256};

/// A boot sector that disables interrupts and halts: `cli; hlt; jmp $-1`.
const HALT_CODE: &[u8] = &[0xfa, 0xf4, 0xeb, 0xfd];

/// Kills the QEMU a test started, found by its pid file, if the test fails
/// before stopping it.
struct KillOnDrop(PathBuf);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let Ok(text) = std::fs::read_to_string(&self.0) else {
            return;
        };
        if let Ok(pid) = text.trim().parse::<i32>() {
            // SAFETY: kill has no memory effects; the pid is this test's QEMU.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Writes a 1 MiB raw disk whose boot sector halts.
fn write_base(dir: &Path) -> PathBuf {
    let mut disk = vec![0u8; 1024 * 1024];
    disk[..HALT_CODE.len()].copy_from_slice(HALT_CODE);
    disk[510] = 0x55;
    disk[511] = 0xaa;
    let path = dir.join("base.raw");
    std::fs::write(&path, disk).expect("writing the base image");
    path
}

/// Converts the raw base image to `format` with qemu-img.
fn convert_base(raw: &Path, format: DiskFormat) -> PathBuf {
    let path = raw.with_extension(format.qemu_img_name());
    let status = std::process::Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", format.qemu_img_name()])
        .arg(raw)
        .arg(&path)
        .status()
        .expect("running qemu-img convert");
    assert!(status.success(), "qemu-img convert to {format:?} failed");
    path
}

fn config(dir: &Path, base: &Path, format: DiskFormat) -> VmConfig {
    VmConfig {
        name: "kbuild-test".to_string(),
        dir: dir.join("vm"),
        base_image: base.to_path_buf(),
        base_format: format,
        cpus: 1,
        memory_mib: 64,
        disk_gib: 1,
        seed: None,
        accel: Some(Accel::Tcg),
        isolated_network: false,
    }
}

fn sha256(path: &Path) -> String {
    let bytes = std::fs::read(path).expect("reading the base image");
    format!("{:x}", Sha256::digest(bytes))
}

/// Returns the pids of live QEMU processes whose command line names `dir`.
fn qemu_pids(dir: &Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().into_owned();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("listing /proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let zombie = stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
        if cmdline.contains("qemu-system") && cmdline.contains(&needle) && !zombie {
            pids.push(pid);
        }
    }
    pids
}

/// Returns the local addresses (hex, as in /proc/net/tcp*) that listen on `port`.
fn listeners(port: u16) -> Vec<String> {
    let mut addresses = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state)) = (fields.get(1), fields.get(3)) else {
                continue;
            };
            let Some((address, local_port)) = local.rsplit_once(':') else {
                continue;
            };
            if *state == "0A" && u16::from_str_radix(local_port, 16) == Ok(port) {
                addresses.push(address.to_string());
            }
        }
    }
    addresses
}

#[tokio::test]
async fn lifecycle_leaves_nothing() {
    let temp = tempfile::tempdir().unwrap();
    let base = write_base(temp.path());
    let base_hash = sha256(&base);
    let vm = QemuVm::new(config(temp.path(), &base, DiskFormat::Raw));
    let _guard = KillOnDrop(vm.files().pidfile.clone());
    let vm_dir = vm.files().dir.clone();

    assert_eq!(vm.status().await.unwrap(), VmStatus::Missing);
    vm.create().await.expect("creating the VM");
    assert_eq!(vm.status().await.unwrap(), VmStatus::Stopped);

    let state = vm.start().await.expect("starting the VM");
    let pid = state.pid.expect("a pid after start");
    assert_eq!(vm.status().await.unwrap(), VmStatus::Running);
    assert_eq!(qemu_pids(&vm_dir), [pid]);

    let again = vm.start().await.expect("starting the VM again");
    assert_eq!(again.pid, Some(pid));
    assert_eq!(qemu_pids(&vm_dir), [pid]);

    assert_eq!(listeners(state.ssh_port), ["0100007F"]);
    let status = qmp::Qmp::connect(&vm.files().qmp_socket, Duration::from_secs(5))
        .await
        .expect("connecting to QMP")
        .query_status()
        .await
        .expect("query-status");
    assert_eq!(status, "running");
    vm.reset().await.expect("resetting the VM");

    // The halted guest ignores ACPI power-off, so stop must fall back to quit.
    let started = Instant::now();
    vm.stop(Duration::from_secs(4))
        .await
        .expect("stopping the VM");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(3),
        "stopped after {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(5),
        "stopped after {elapsed:?}"
    );
    assert_eq!(vm.status().await.unwrap(), VmStatus::Stopped);
    assert!(qemu_pids(&vm_dir).is_empty());
    assert!(listeners(state.ssh_port).is_empty());
    assert_eq!(VmState::load(&vm_dir).unwrap().unwrap().pid, None);

    vm.destroy().await.expect("destroying the VM");
    assert_eq!(vm.status().await.unwrap(), VmStatus::Missing);
    assert!(!vm_dir.exists(), "{} is left", vm_dir.display());
    assert_eq!(sha256(&base), base_hash);
}

#[tokio::test]
async fn destroy_stops_running_vm() {
    let temp = tempfile::tempdir().unwrap();
    let base = write_base(temp.path());
    let vm = QemuVm::new(config(temp.path(), &base, DiskFormat::Raw));
    let _guard = KillOnDrop(vm.files().pidfile.clone());
    let state = vm.start().await.expect("starting the VM");

    let started = Instant::now();
    vm.destroy().await.expect("destroying the VM");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(qemu_pids(&vm.files().dir).is_empty());
    assert!(listeners(state.ssh_port).is_empty());
    assert!(!vm.files().dir.exists());
    assert!(base.exists());
}

#[tokio::test]
async fn start_retries_taken_port() {
    let temp = tempfile::tempdir().unwrap();
    let base = write_base(temp.path());
    let vm = QemuVm::new(config(temp.path(), &base, DiskFormat::Raw));
    let _guard = KillOnDrop(vm.files().pidfile.clone());
    vm.create().await.expect("creating the VM");
    let occupied = VmState::load(&vm.files().dir).unwrap().unwrap().ssh_port;
    let _listener = TcpListener::bind(("127.0.0.1", occupied)).expect("taking the VM's port");

    let state = vm.start().await.expect("starting on another port");
    assert_ne!(state.ssh_port, occupied);
    assert_eq!(listeners(state.ssh_port), ["0100007F"]);
    assert_eq!(
        VmState::load(&vm.files().dir).unwrap().unwrap().ssh_port,
        state.ssh_port
    );
    vm.destroy().await.expect("destroying the VM");
}

#[tokio::test]
async fn killed_qemu_reads_stopped() {
    let temp = tempfile::tempdir().unwrap();
    let base = write_base(temp.path());
    let vm = QemuVm::new(config(temp.path(), &base, DiskFormat::Raw));
    let _guard = KillOnDrop(vm.files().pidfile.clone());
    let pid = vm.start().await.expect("starting the VM").pid.unwrap();

    // SAFETY: kill has no memory effects; the pid is the QEMU started above.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::write(&vm.files().pidfile, format!("{pid}\n")).unwrap();

    assert_eq!(vm.status().await.unwrap(), VmStatus::Stopped);
    assert!(!vm.files().pidfile.exists());
    assert!(!vm.files().qmp_socket.exists());
    assert_eq!(VmState::load(&vm.files().dir).unwrap().unwrap().pid, None);
    let restarted = vm.start().await.expect("starting the VM again");
    assert_ne!(restarted.pid, Some(pid));
    vm.destroy().await.expect("destroying the VM");
}

#[tokio::test]
async fn overlay_backs_each_format() {
    let temp = tempfile::tempdir().unwrap();
    let raw = write_base(temp.path());
    for format in [DiskFormat::Qcow2, DiskFormat::Vdi, DiskFormat::Vmdk] {
        let base = convert_base(&raw, format);
        let base_hash = sha256(&base);
        let vm = QemuVm::new(config(temp.path(), &base, format));
        let _guard = KillOnDrop(vm.files().pidfile.clone());
        vm.start()
            .await
            .unwrap_or_else(|error| panic!("starting on {format:?}: {error:#}"));

        let output = std::process::Command::new("qemu-img")
            .args(["info", "-U", "--output=json"])
            .arg(&vm.files().disk)
            .output()
            .expect("running qemu-img info");
        let info: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(info["backing-filename-format"], format.qemu_img_name());
        assert_eq!(info["virtual-size"], 1024 * 1024 * 1024);

        vm.destroy().await.expect("destroying the VM");
        assert_eq!(sha256(&base), base_hash, "{format:?} base changed");
    }
}

#[tokio::test]
async fn create_rejects_other_base() {
    let temp = tempfile::tempdir().unwrap();
    let raw = write_base(temp.path());
    let qcow2 = convert_base(&raw, DiskFormat::Qcow2);
    QemuVm::new(config(temp.path(), &raw, DiskFormat::Raw))
        .create()
        .await
        .expect("creating the VM");

    let error = QemuVm::new(config(temp.path(), &qcow2, DiskFormat::Qcow2))
        .create()
        .await
        .unwrap_err();
    assert!(error.to_string().contains("is based on"), "{error:#}");
}

#[tokio::test]
async fn start_failure_quotes_stderr() {
    let temp = tempfile::tempdir().unwrap();
    let base = write_base(temp.path());
    let mut config = config(temp.path(), &base, DiskFormat::Raw);
    config.seed = Some(temp.path().join("missing-seed.img"));
    let vm = QemuVm::new(config);
    let _guard = KillOnDrop(vm.files().pidfile.clone());

    let error = vm.start().await.unwrap_err();
    assert_eq!(
        exit_code_of(&error, ExitCode::Usage),
        ExitCode::Infrastructure
    );
    assert!(error.to_string().contains("missing-seed.img"), "{error:#}");
    assert!(error.to_string().contains("console log:"), "{error:#}");
    assert!(qemu_pids(&vm.files().dir).is_empty());
    vm.destroy().await.expect("destroying the VM");
}

#[tokio::test]
async fn missing_base_is_infrastructure() {
    let temp = tempfile::tempdir().unwrap();
    let vm = QemuVm::new(config(
        temp.path(),
        &temp.path().join("absent.raw"),
        DiskFormat::Raw,
    ));
    let error = vm.create().await.unwrap_err();
    assert_eq!(
        exit_code_of(&error, ExitCode::Usage),
        ExitCode::Infrastructure
    );
    assert!(error.to_string().contains("absent.raw"), "{error:#}");
}

/// Returns the Debian test image: `KBUILD_TEST_IMAGE`, else the newest
/// image that scripts/build-test-image.sh cached.
fn debian_image() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("KBUILD_TEST_IMAGE") {
        return Some(PathBuf::from(path));
    }
    let cache = Path::new("/var/cache/kbuild-test/images");
    let mut images: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(cache)
        .ok()?
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            name.starts_with("debian-12-kbuild-test-") && name.ends_with(".qcow2")
        })
        .filter_map(|path| Some((path.metadata().ok()?.modified().ok()?, path)))
        .collect();
    images.sort();
    images.pop().map(|(_, path)| path)
}

/// Generates an ed25519 key pair without a passphrase and returns the
/// private key's path and the public key line.
fn generate_key(dir: &Path) -> (PathBuf, String) {
    let key = dir.join("id_ed25519");
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .expect("running ssh-keygen");
    assert!(status.success(), "ssh-keygen failed");
    let public =
        std::fs::read_to_string(key.with_extension("pub")).expect("reading the public key");
    (key, public)
}

/// Runs `true` in the guest over SSH; returns whether it succeeded.
fn ssh_true(key: &Path, port: u16) -> bool {
    std::process::Command::new("ssh")
        .args(["-p", &port.to_string(), "-i"])
        .arg(key)
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ])
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=5",
            "-o",
            "LogLevel=ERROR",
        ])
        .args(["debian@127.0.0.1", "true"])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

#[tokio::test]
#[ignore = "boots the Debian test image; takes minutes under TCG"]
async fn debian_seed_allows_ssh() {
    let Some(image) = debian_image() else {
        panic!("no Debian test image; run scripts/build-test-image.sh or set KBUILD_TEST_IMAGE");
    };
    let temp = tempfile::tempdir().unwrap();
    let (key, public_key) = generate_key(temp.path());
    let mut config = config(temp.path(), &image, DiskFormat::Qcow2);
    config.cpus = 2;
    config.memory_mib = 1024;
    config.disk_gib = 4;
    config.accel = None;
    let seed = config.dir.join("seed.img");
    kbuild::vm::seed::write_seed(&seed, "debian", &public_key, "kbuild-test").unwrap();
    config.seed = Some(seed);
    let vm = QemuVm::new(config);
    let _guard = KillOnDrop(vm.files().pidfile.clone());

    let started = Instant::now();
    let state = vm.start().await.expect("starting the Debian VM");
    let deadline = started + Duration::from_secs(900);
    while !ssh_true(&key, state.ssh_port) {
        assert!(
            Instant::now() < deadline,
            "no SSH login:\n{}",
            vm.console_tail(40)
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    eprintln!("boot to SSH: {:.1}s", started.elapsed().as_secs_f64());

    // A real guest powers off on ACPI, long before the fallback would start.
    let stopping = Instant::now();
    vm.stop(Duration::from_secs(120))
        .await
        .expect("stopping the Debian VM");
    let stop_time = stopping.elapsed();
    eprintln!("ACPI power-off: {:.1}s", stop_time.as_secs_f64());
    assert!(
        stop_time < Duration::from_secs(90),
        "power-off took {stop_time:?}"
    );
    vm.destroy().await.expect("destroying the Debian VM");
    assert!(!vm.files().dir.exists());
}

#[tokio::test]
async fn concurrent_starts_share_qemu() {
    let temp = tempfile::tempdir().unwrap();
    let base = write_base(temp.path());
    let first = QemuVm::new(config(temp.path(), &base, DiskFormat::Raw));
    let second = QemuVm::new(config(temp.path(), &base, DiskFormat::Raw));
    let _guard = KillOnDrop(first.files().pidfile.clone());

    let (one, two) = tokio::join!(first.start(), second.start());
    let one = one.expect("starting from the first handle");
    let two = two.expect("starting from the second handle");
    assert_eq!(one.pid, two.pid);
    assert_eq!(qemu_pids(&first.files().dir).len(), 1);
    assert_eq!(first.status().await.unwrap(), VmStatus::Running);
    first.destroy().await.expect("destroying the VM");
}
