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

#[path = "support/test_vm.rs"]
mod test_vm;

use std::process::Command;

use support::Kbuild;
use test_vm::{profile_text, qemu_processes, serve_image, text, VmGuard};

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
    let server = serve_image(work.path());

    let project_dir = work.path().join("project");
    std::fs::create_dir_all(&project_dir).unwrap();
    std::fs::write(
        project_dir.join("test-profile.toml"),
        profile_text(&server, 6, 1024),
    )
    .unwrap();
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
