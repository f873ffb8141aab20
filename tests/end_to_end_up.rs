//! `kbuild up`, `status`, `ssh`, `down` and `destroy` end to end: a real
//! Debian 12 image built from Debian packages (scripts/build-test-image.sh,
//! cached), served gzip-compressed with a sums file from an HTTP server on
//! 127.0.0.1, booted with QEMU under TCG, reached over SSH, provisioned.
//!
//! The guest's network is isolated (QEMU's restrict=on): its only package
//! source is a local repository inside the image, so the install step runs
//! real apt without reaching any other host.

mod support;

#[path = "support/http_server.rs"]
mod http_server;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use http_server::HttpServer;
use sha2::{Digest, Sha256};
use support::Kbuild;

const IMAGE: &str = "debian-12-kbuild-test.qcow2";

/// Builds the test image (or takes it from the cache) into `dir`.
fn test_image(dir: &Path) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-test-image.sh");
    let _lock = support::lock_cache("image");
    support::run(Command::new("bash").arg(&script).arg(dir));
    dir.join(IMAGE)
}

/// Writes `image.gz` and a GNU-style SHA256SUMS next to it.
fn compress(image: &Path, dir: &Path) -> (PathBuf, PathBuf) {
    let gz = dir.join(format!("{IMAGE}.gz"));
    let output = Command::new("gzip")
        .args(["-1", "-c"])
        .arg(image)
        .output()
        .unwrap();
    assert!(output.status.success(), "gzip failed");
    std::fs::write(&gz, &output.stdout).unwrap();
    let digest: String = Sha256::digest(&output.stdout)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let sums = dir.join("SHA256SUMS");
    let mut file = std::fs::File::create(&sums).unwrap();
    writeln!(file, "{digest}  {IMAGE}.gz").unwrap();
    (gz, sums)
}

fn profile_text(server: &HttpServer) -> String {
    format!(
        r#"name = "debian-12-test"
description = "kbuild's local Debian 12 test image"

[image]
urls = ["{image}"]
checksum_url = "{sums}"
archive = "gz"
format = "qcow2"

[machine]
backends = ["qemu"]
cpus = 2
memory_mib = 1024
disk_gib = 6
network = "isolated"

[login]
user = "debian"
method = "cloud-init"

[packages]
manager = "apt"
build_deps = ["kmod", "sudo", "bc"]
"#,
        image = server.url(&format!("/{IMAGE}.gz")),
        sums = server.url("/SHA256SUMS"),
    )
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Process ids of QEMU processes whose command line names `dir`.
fn qemu_processes(dir: &Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = status.split_whitespace().nth(2) == Some("Z");
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            !zombie && text(&cmdline).contains(&needle) && text(&cmdline).contains("qemu-system")
        })
        .collect()
}

/// Kills the QEMU processes of a VM folder when dropped, so a failed test
/// leaves no VM running.
struct VmGuard(PathBuf);

impl Drop for VmGuard {
    fn drop(&mut self) {
        for pid in qemu_processes(&self.0) {
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

fn port_listens(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

fn ssh_port(status_stdout: &str) -> u16 {
    let after = status_stdout
        .split("127.0.0.1:")
        .nth(1)
        .expect("no SSH address in status");
    after
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn up_ssh_down_destroy_on_debian_12() {
    let work = tempfile::tempdir_in(support::cache_dir()).unwrap();
    let image = test_image(&work.path().join("image"));
    let (gz, sums) = compress(&image, work.path());
    let server = HttpServer::start();
    server.serve_file(&format!("/{IMAGE}.gz"), gz);
    server.serve_file("/SHA256SUMS", sums);

    let project_dir = work.path().join("project");
    std::fs::create_dir_all(&project_dir).unwrap();
    std::fs::write(project_dir.join("test-profile.toml"), profile_text(&server)).unwrap();
    let init = Command::new(env!("CARGO_BIN_EXE_kbuild"))
        .args(["init", "--dir"])
        .arg(&project_dir)
        .args(["--source", "linux"])
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", text(&init.stderr));
    let project = project_dir.join("kbuild.toml");
    let project_text = std::fs::read_to_string(&project).unwrap();
    std::fs::write(
        &project,
        project_text.replace("profile = \"debian-12\"", "profile = \"test-profile.toml\""),
    )
    .unwrap();
    let home = work.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let kbuild = Kbuild { project, home };
    let vm_dir = project_dir.join(".kbuild/vm");
    let _guard = VmGuard(vm_dir.clone());

    let up = kbuild.run(&["up", "--accel", "tcg"]);
    assert_eq!(up.status.code(), Some(0), "first up failed");
    assert!(
        text(&up.stderr).contains("Installing 1 packages: bc"),
        "bc not installed"
    );
    assert!(text(&up.stderr).contains("Ready"), "no Ready line");

    server.clear_log();
    let again = kbuild.run(&["up", "--accel", "tcg"]);
    assert_eq!(again.status.code(), Some(0), "second up failed");
    assert!(
        text(&again.stderr).contains("running"),
        "second up did not find the VM"
    );
    assert!(
        text(&again.stderr).contains("all 3 build dependencies"),
        "second up reinstalled"
    );
    assert!(server.log().is_empty(), "second up downloaded again");

    let status = kbuild.run(&["status"]);
    assert_eq!(status.status.code(), Some(0));
    assert!(
        text(&status.stdout).contains("running"),
        "status not running"
    );
    let port = ssh_port(&text(&status.stdout));

    let bc = kbuild.run(&["ssh", "--", "sh", "-c", "echo 6*7 | bc"]);
    assert_eq!(bc.status.code(), Some(0), "bc over ssh failed");
    assert_eq!(text(&bc.stdout).trim(), "42");
    let code = kbuild.run(&["ssh", "--", "sh", "-c", "exit 7"]);
    assert_eq!(
        code.status.code(),
        Some(7),
        "remote exit code not passed through"
    );

    assert_eq!(qemu_processes(&vm_dir).len(), 1, "expected one QEMU");
    let down = kbuild.run(&["down"]);
    assert_eq!(down.status.code(), Some(0), "down failed");
    assert!(
        qemu_processes(&vm_dir).is_empty(),
        "QEMU still runs after down"
    );
    assert!(!port_listens(port), "SSH port still listens after down");
    let stopped = kbuild.run(&["status"]);
    assert!(
        text(&stopped.stdout).contains("stopped"),
        "status after down"
    );

    let destroy = kbuild.run(&["destroy"]);
    assert_eq!(destroy.status.code(), Some(0), "destroy failed");
    assert!(!vm_dir.exists(), "VM folder left behind");
    assert!(qemu_processes(&vm_dir).is_empty(), "QEMU left behind");
    let none = kbuild.run(&["status"]);
    assert!(text(&none.stdout).contains("no VM"), "status after destroy");
}
