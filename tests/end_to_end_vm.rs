//! The VM path end to end on Debian's real linux-source-6.1 and the Debian 12
//! test image under TCG. `patch-and-build --on-host` builds tinyconfig plus the
//! built-in vm fragment on the host, sends the stripped modules over SFTP,
//! installs with update-initramfs and update-grub and arms grub-reboot.
//! `verify` reboots into it and runs four checks. Then a kernel that panics at
//! boot: verify must report it, reset the VM and find the old kernel again.
//!
//! The in-guest build of the same kernel takes much longer under TCG (an
//! estimate of half an hour or more on 2 cores; it was not run to the end on
//! this machine), so its test is ignored by default; run it with
//! `cargo test --test end_to_end_vm -- --ignored --nocapture`.

mod support;

#[path = "support/http_server.rs"]
mod http_server;

#[path = "support/test_vm.rs"]
mod test_vm;

use std::path::Path;

use support::Kbuild;
use test_vm::{serve_image, set_vm_section, text, vm_project};

/// A fragment whose built-in command line names an init that the
/// initramfs lacks: the kernel then tries to mount root=UUID= itself, which
/// only an initramfs can, and panics.
const PANIC_FRAGMENT: &str =
    "CONFIG_CMDLINE_BOOL=y\nCONFIG_CMDLINE=\"rdinit=/kbuild-no-such-init\"\n";

fn guest_release(kbuild: &Kbuild) -> String {
    let uname = kbuild.run(&["ssh", "--", "uname", "-r"]);
    assert_eq!(uname.status.code(), Some(0), "uname over ssh failed");
    text(&uname.stdout).trim().to_string()
}

#[test]
fn on_host_build_installs_boots_and_falls_back() {
    let work = tempfile::tempdir_in(support::cache_dir()).unwrap();
    let server = serve_image(work.path());
    let project = vm_project(work.path(), &server, 6, 1024);
    let kbuild = &project.kbuild;

    let up = kbuild.run(&["up", "--accel", "tcg"]);
    assert_eq!(up.status.code(), Some(0), "up failed");
    let distro_release = guest_release(kbuild);

    let build = kbuild.run(&["patch-and-build", "--on-host"]);
    assert_eq!(build.status.code(), Some(0), "on-host build failed");
    let stderr = text(&build.stderr);
    assert!(stderr.contains("Installed"), "no Installed line");
    assert!(
        stderr.contains("initramfs /boot/initrd.img-"),
        "no initramfs line"
    );

    let verify = kbuild.run(&["verify"]);
    assert_eq!(verify.status.code(), Some(0), "verify in the VM failed");
    let report = text(&verify.stdout);
    for check in ["PASS kernel", "PASS symbol", "PASS syscall", "PASS log"] {
        assert!(report.contains(check), "missing {check:?}");
    }
    assert!(report.contains("returned 42"), "wrong value");
    let new_release = guest_release(kbuild);
    assert_ne!(
        new_release, distro_release,
        "still on the distribution kernel"
    );

    // A second verify finds the kernel running and checks without a reboot.
    let again = kbuild.run(&["verify"]);
    assert_eq!(again.status.code(), Some(0), "second verify failed");
    assert!(
        !text(&again.stderr).contains("Rebooting"),
        "second verify rebooted"
    );

    std::fs::write(project.dir.join("panic.config"), PANIC_FRAGMENT).unwrap();
    set_vm_section(
        &project.dir,
        "config = \"tinyconfig\"\nfragments = [\"vm\", \"panic.config\"]\n",
    );
    let panic_build = kbuild.run(&["patch-and-build", "--on-host"]);
    assert_eq!(
        panic_build.status.code(),
        Some(0),
        "panic kernel build failed"
    );
    let panic_verify = kbuild.run(&["verify"]);
    assert_eq!(
        panic_verify.status.code(),
        Some(69),
        "a kernel that panics must exit 69"
    );
    let stderr = text(&panic_verify.stderr);
    assert!(stderr.contains("panicked at boot"), "panic not reported");
    assert!(
        stderr.contains(&format!("runs the old kernel {distro_release} again")),
        "fallback not reported"
    );
    assert_eq!(
        guest_release(kbuild),
        distro_release,
        "old kernel not running"
    );

    let destroy = kbuild.run(&["destroy"]);
    assert_eq!(destroy.status.code(), Some(0), "destroy failed");
}

#[test]
#[ignore = "builds a kernel inside the VM under TCG: estimated at half an hour or more on 2 cores"]
fn in_guest_build_sends_only_changes() {
    let work = tempfile::tempdir_in(support::cache_dir()).unwrap();
    let server = serve_image(work.path());
    let project = vm_project(work.path(), &server, 12, 2048);
    let kbuild = &project.kbuild;

    let up = kbuild.run(&["up", "--accel", "tcg"]);
    assert_eq!(up.status.code(), Some(0), "up failed");
    let first = kbuild.run(&["patch-and-build", "--in-guest"]);
    assert_eq!(first.status.code(), Some(0), "first in-guest build failed");

    // Edit only the syscall body: the second run sends one file. Both runs
    // come before verify, so their times are measured even if booting fails.
    let template = project.dir.join("body.c");
    let sum = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("templates/syscall/sum.c"),
    )
    .unwrap();
    std::fs::write(
        &template,
        sum.replace("long result = ", "long result = 0 + "),
    )
    .unwrap();
    let path = project.dir.join("kbuild.toml");
    let before = std::fs::read_to_string(&path).unwrap();
    let after = before.replace("template = \"sum\"", "template = \"body.c\"");
    std::fs::write(&path, after).unwrap();
    let second = kbuild.run(&["patch-and-build", "--in-guest"]);
    assert_eq!(
        second.status.code(),
        Some(0),
        "second in-guest build failed"
    );
    assert!(
        text(&second.stderr).contains("sent 1 changed and 0 deleted files"),
        "second run sent more than the body"
    );

    let verify = kbuild.run(&["verify"]);
    assert_eq!(
        verify.status.code(),
        Some(0),
        "verify after the in-guest builds failed"
    );
}
