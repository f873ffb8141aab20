#![allow(dead_code)]
//! The Debian 12 test VM shared by the end-to-end tests. The image comes from
//! scripts/build-test-image.sh (cached) and is served gzip-compressed, with a
//! sums file, from an HTTP server on 127.0.0.1. A profile points at it, and a
//! guard kills the VM's QEMU when a test ends.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::http_server::HttpServer;
use crate::support::Kbuild;

pub const IMAGE: &str = "debian-12-kbuild-test.qcow2";

/// Builds the test image (or takes it from the cache) into `dir`.
pub fn test_image(dir: &Path) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-test-image.sh");
    let _lock = crate::support::lock_cache("image");
    crate::support::run(Command::new("bash").arg(&script).arg(dir));
    dir.join(IMAGE)
}

/// Writes `image.gz` and a GNU-style SHA256SUMS next to it.
pub fn compress(image: &Path, dir: &Path) -> (PathBuf, PathBuf) {
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

/// Returns a profile for the image that `server` serves, with `disk_gib` of
/// disk and `memory_mib` of memory.
pub fn profile_text(server: &HttpServer, disk_gib: u32, memory_mib: u32) -> String {
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
memory_mib = {memory_mib}
disk_gib = {disk_gib}
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
        disk_gib = disk_gib,
        memory_mib = memory_mib,
    )
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Process ids of QEMU processes whose command line names `dir`.
pub fn qemu_processes(dir: &Path) -> Vec<u32> {
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
pub struct VmGuard(pub PathBuf);

impl Drop for VmGuard {
    fn drop(&mut self) {
        for pid in qemu_processes(&self.0) {
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

/// Serves the test image and its sums file from a new server on 127.0.0.1.
pub fn serve_image(work: &Path) -> HttpServer {
    let image = test_image(&work.join("image"));
    let (gz, sums) = compress(&image, work);
    let server = HttpServer::start();
    server.serve_file(&format!("/{IMAGE}.gz"), gz);
    server.serve_file("/SHA256SUMS", sums);
    server
}

/// A project folder whose VM runs the test image.
pub struct VmProject {
    pub kbuild: Kbuild,
    pub dir: PathBuf,
    _guard: VmGuard,
}

/// Writes a project for `tree` whose VM is the test image, with `disk_gib` of disk.
pub fn vm_project(work: &Path, server: &HttpServer, disk_gib: u32, memory_mib: u32) -> VmProject {
    let dir = work.join("project");
    let tree = crate::support::work_tree(&work.join("linux"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("test-profile.toml"),
        profile_text(server, disk_gib, memory_mib),
    )
    .unwrap();
    let init = Command::new(env!("CARGO_BIN_EXE_kbuild"))
        .args(["init", "--name", "kbuild_add", "--dir"])
        .arg(&dir)
        .arg("--source")
        .arg(&tree)
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", text(&init.stderr));
    set_vm_section(&dir, "config = \"tinyconfig\"\n");
    let home = work.join("home");
    std::fs::create_dir_all(&home).unwrap();
    VmProject {
        kbuild: Kbuild {
            project: dir.join("kbuild.toml"),
            home,
        },
        _guard: VmGuard(dir.join(".kbuild/vm")),
        dir,
    }
}

/// Replaces the project's [vm] profile line with the test profile and `extra`.
pub fn set_vm_section(dir: &Path, extra: &str) {
    let path = dir.join("kbuild.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let start = text.find("profile = ").expect("no [vm] profile line");
    let replaced = format!("{}profile = \"test-profile.toml\"\n{extra}", &text[..start]);
    std::fs::write(&path, replaced).unwrap();
}
