//! The VirtualBox backend against the VBoxManage stand-in in
//! tests/fixtures/vboxmanage, which checks each call's syntax against the
//! VirtualBox 7.0 manual and keeps VirtualBox-like state. It is not
//! VirtualBox: these tests show that the backend's calls are well-formed and
//! handle leftovers, not that a guest boots.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use kbuild::exit::{exit_code_of, ExitCode};
use kbuild::profile::DiskFormat;
use kbuild::vm::virtualbox::{VBoxManage, VirtualBoxVm, PROGRAM_VARIABLE};
use kbuild::vm::{VmConfig, VmStatus};

const NAME: &str = "kbuild-test";

/// One stand-in with its own state folder, reached through a wrapper script
/// that sets the stand-in's environment, so tests can run in parallel.
struct StandIn {
    root: tempfile::TempDir,
    wrapper: PathBuf,
}

impl StandIn {
    fn new(env: &[(&str, &str)]) -> StandIn {
        let root = tempfile::tempdir().expect("creating a temporary folder");
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vboxmanage/VBoxManage");
        let mut text = String::from("#!/bin/sh\n");
        text += &format!(
            "export VBOX_STANDIN_STATE='{}'\n",
            root.path().join("state").display()
        );
        for (key, value) in env {
            text += &format!("export {key}='{value}'\n");
        }
        text += &format!("exec {} '{}' \"$@\"\n", python(), script.display());
        let wrapper = root.path().join("VBoxManage");
        std::fs::write(&wrapper, text).expect("writing the wrapper script");
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))
            .expect("making the wrapper executable");
        let stand_in = StandIn { root, wrapper };
        let raw = stand_in.path("base.raw");
        std::fs::File::create(&raw)
            .and_then(|file| file.set_len(2 << 30))
            .expect("writing a sparse raw image");
        stand_in.ok(&[
            "convertfromraw",
            path_str(&raw),
            path_str(&stand_in.path("base.vdi")),
        ]);
        stand_in
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    fn vm_dir(&self) -> PathBuf {
        self.path("vm")
    }

    fn config(&self) -> VmConfig {
        VmConfig {
            name: NAME.to_string(),
            dir: self.vm_dir(),
            base_image: self.path("base.vdi"),
            base_format: DiskFormat::Vdi,
            cpus: 2,
            memory_mib: 1024,
            disk_gib: 4,
            seed: None,
            accel: None,
            isolated_network: false,
        }
    }

    fn vm(&self, config: VmConfig) -> VirtualBoxVm {
        VirtualBoxVm::with_vboxmanage(config, VBoxManage::new(self.wrapper.clone()))
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(&self.wrapper)
            .args(args)
            .output()
            .expect("running the stand-in")
    }

    /// Runs the stand-in directly and returns stdout; the call must succeed.
    fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{args:?} failed: {stderr}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Returns every call the stand-in received, oldest first.
    fn calls(&self) -> Vec<Vec<String>> {
        let log = std::fs::read_to_string(self.path("state/calls.log")).unwrap_or_default();
        log.lines()
            .map(|line| line.split('\t').map(unescape).collect())
            .collect()
    }

    fn count(&self, command: &str) -> usize {
        self.calls()
            .iter()
            .filter(|call| call[0] == command)
            .count()
    }

    fn vm_info(&self) -> String {
        self.ok(&["showvminfo", NAME, "--machinereadable"])
    }
}

/// Returns the system Python when there is one: a version manager's `python3`
/// shim can add a few hundred milliseconds to each of the many calls.
fn python() -> &'static str {
    if Path::new("/usr/bin/python3").is_file() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

fn unescape(field: &str) -> String {
    field
        .replace("\\t", "\t")
        .replace("\\n", "\n")
        .replace("\\\\", "\\")
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// Returns the host IPs of the NAT rules added by `calls`.
fn forward_host_ips(calls: &[Vec<String>]) -> Vec<String> {
    let mut ips = Vec::new();
    for call in calls {
        let Some(index) = call.iter().position(|a| a == "--nat-pf1" || a == "natpf1") else {
            continue;
        };
        let rule = &call[index + 1];
        if rule != "delete" {
            ips.push(rule.split(',').nth(2).unwrap_or("missing").to_string());
        }
    }
    ips
}

#[tokio::test]
async fn lifecycle_leaves_nothing_behind() {
    let stand_in = StandIn::new(&[]);
    let vm = stand_in.vm(stand_in.config());
    assert_eq!(vm.status().await.unwrap(), VmStatus::Missing);

    vm.create().await.unwrap();
    assert_eq!(vm.status().await.unwrap(), VmStatus::Stopped);
    let state = vm.start().await.unwrap();
    assert_eq!(vm.status().await.unwrap(), VmStatus::Running);
    assert_eq!(state.backend, "virtualbox");
    assert!(state.ssh_port > 0);
    assert_eq!(state.disk, stand_in.vm_dir().join("disk.vdi"));
    assert_eq!(vm.state().unwrap(), Some(state.clone()));
    assert!(
        vm.console_tail(5).contains("started"),
        "{}",
        vm.console_tail(5)
    );
    let info = stand_in.vm_info();
    assert!(
        info.contains(&format!(
            "Forwarding(0)=\"ssh,tcp,127.0.0.1,{},,22\"",
            state.ssh_port
        )),
        "{info}"
    );
    assert!(info.contains("memory=1024"), "{info}");
    assert!(info.contains("cpus=2"), "{info}");

    vm.stop(Duration::from_secs(10)).await.unwrap();
    assert_eq!(vm.status().await.unwrap(), VmStatus::Stopped);
    vm.destroy().await.unwrap();
    assert_eq!(vm.status().await.unwrap(), VmStatus::Missing);
    assert_eq!(stand_in.ok(&["list", "vms"]), "");
    assert_eq!(stand_in.ok(&["list", "hdds"]), "");
    assert!(!stand_in.vm_dir().exists());
    assert!(stand_in.path("base.vdi").is_file());
}

#[tokio::test]
async fn create_twice_reuses_everything() {
    let stand_in = StandIn::new(&[]);
    let vm = stand_in.vm(stand_in.config());
    vm.create().await.unwrap();
    let port = vm.state().unwrap().expect("state file").ssh_port;
    vm.create().await.unwrap();

    assert_eq!(stand_in.count("createvm"), 1);
    assert_eq!(stand_in.count("clonemedium"), 1);
    assert_eq!(stand_in.count("storagectl"), 1);
    assert_eq!(stand_in.count("storageattach"), 1);
    assert_eq!(vm.state().unwrap().expect("state file").ssh_port, port);
}

#[tokio::test]
async fn create_grows_disk_to_disk_gib() {
    let stand_in = StandIn::new(&[]);
    let vm = stand_in.vm(stand_in.config());
    vm.create().await.unwrap();

    let disk = stand_in.vm_dir().join("disk.vdi");
    let info = stand_in.ok(&["showmediuminfo", "disk", path_str(&disk)]);
    assert!(info.contains("Capacity:       4096 MBytes"), "{info}");
    let base = stand_in.ok(&[
        "showmediuminfo",
        "disk",
        path_str(&stand_in.path("base.vdi")),
    ]);
    assert!(base.contains("Capacity:       2048 MBytes"), "{base}");
}

#[tokio::test]
async fn create_registers_leftover_settings_file() {
    let stand_in = StandIn::new(&[]);
    let vm = stand_in.vm(stand_in.config());
    vm.create().await.unwrap();
    stand_in.ok(&["unregistervm", NAME]);
    assert_eq!(stand_in.ok(&["list", "vms"]), "");

    vm.create().await.unwrap();
    assert_eq!(stand_in.count("registervm"), 1);
    assert_eq!(stand_in.count("createvm"), 1);
    assert_eq!(stand_in.count("clonemedium"), 1);
    assert_eq!(vm.status().await.unwrap(), VmStatus::Stopped);
}

#[tokio::test]
async fn create_replaces_unreadable_settings_file() {
    let stand_in = StandIn::new(&[]);
    let settings = stand_in.vm_dir().join(NAME).join(format!("{NAME}.vbox"));
    std::fs::create_dir_all(settings.parent().unwrap()).unwrap();
    std::fs::write(&settings, "not a settings file").unwrap();
    let vm = stand_in.vm(stand_in.config());

    vm.create().await.unwrap();
    assert_eq!(stand_in.count("registervm"), 1);
    assert_eq!(stand_in.count("createvm"), 1);
    assert_eq!(vm.status().await.unwrap(), VmStatus::Stopped);
}

#[tokio::test]
async fn create_reuses_registered_vm_with_controller_and_rule() {
    let stand_in = StandIn::new(&[]);
    let dir = stand_in.vm_dir();
    stand_in.ok(&[
        "createvm",
        "--name",
        NAME,
        "--basefolder",
        path_str(&dir),
        "--register",
    ]);
    stand_in.ok(&[
        "storagectl",
        NAME,
        "--name",
        "SATA",
        "--add",
        "sata",
        "--portcount",
        "2",
    ]);
    stand_in.ok(&["modifyvm", NAME, "--nat-pf1", "ssh,tcp,,2222,,22"]);
    let vm = stand_in.vm(stand_in.config());

    vm.create().await.unwrap();
    let info = stand_in.vm_info();
    assert!(info.contains("storagecontrollername0=\"SATA\""), "{info}");
    assert!(!info.contains("storagecontrollername1"), "{info}");
    assert!(
        info.contains("Forwarding(0)=\"ssh,tcp,127.0.0.1,"),
        "{info}"
    );
    assert!(!info.contains("Forwarding(1)"), "{info}");
    assert_eq!(stand_in.count("createvm"), 1);
    let deleted = stand_in
        .calls()
        .iter()
        .any(|call| call[..] == ["modifyvm", NAME, "--nat-pf1", "delete", "ssh"]);
    assert!(deleted);
}

#[tokio::test]
async fn create_discards_registered_leftover_disk() {
    let stand_in = StandIn::new(&[]);
    let disk = stand_in.vm_dir().join("disk.vdi");
    std::fs::create_dir_all(stand_in.vm_dir()).unwrap();
    stand_in.ok(&[
        "clonemedium",
        path_str(&stand_in.path("base.vdi")),
        path_str(&disk),
        "disk",
    ]);
    let vm = stand_in.vm(stand_in.config());

    vm.create().await.unwrap();
    let closed = stand_in
        .calls()
        .iter()
        .any(|call| call[..] == ["closemedium", "disk", path_str(&disk), "--delete"]);
    assert!(closed);
    let info = stand_in.vm_info();
    assert!(
        info.contains(&format!("\"SATA-0-0\"=\"{}\"", disk.display())),
        "{info}"
    );
    let hdds = stand_in.ok(&["list", "hdds"]);
    assert_eq!(hdds.matches("Location:").count(), 1, "{hdds}");
}

#[tokio::test]
async fn create_rejects_vm_of_another_folder() {
    let stand_in = StandIn::new(&[]);
    let elsewhere = stand_in.path("elsewhere");
    stand_in.ok(&[
        "createvm",
        "--name",
        NAME,
        "--basefolder",
        path_str(&elsewhere),
        "--register",
    ]);
    let vm = stand_in.vm(stand_in.config());

    let error = vm.create().await.unwrap_err();
    assert!(
        format!("{error:#}").contains("outside kbuild's folder"),
        "{error:#}"
    );
    assert_eq!(stand_in.count("modifyvm"), 0);
    let error = vm.destroy().await.unwrap_err();
    assert!(
        format!("{error:#}").contains("outside kbuild's folder"),
        "{error:#}"
    );
    assert_eq!(stand_in.count("unregistervm"), 0);
}

#[tokio::test]
async fn running_vm_gets_rule_through_controlvm() {
    let stand_in = StandIn::new(&[]);
    let vm = stand_in.vm(stand_in.config());
    vm.start().await.unwrap();
    let started = stand_in.calls().len();
    stand_in.ok(&["controlvm", NAME, "natpf1", "delete", "ssh"]);

    let state = vm.start().await.unwrap();
    let calls = stand_in.calls()[started..].to_vec();
    assert!(calls.iter().all(|call| call[0] != "modifyvm"), "{calls:?}");
    let rule = format!("ssh,tcp,127.0.0.1,{},,22", state.ssh_port);
    assert!(calls
        .iter()
        .any(|call| call[..] == ["controlvm", NAME, "natpf1", rule.as_str()]));
    assert_eq!(stand_in.count("startvm"), 1);
}

#[tokio::test]
async fn forward_always_binds_loopback() {
    let stand_in = StandIn::new(&[]);
    let dir = stand_in.vm_dir();
    stand_in.ok(&[
        "createvm",
        "--name",
        NAME,
        "--basefolder",
        path_str(&dir),
        "--register",
    ]);
    stand_in.ok(&["modifyvm", NAME, "--nat-pf1", "ssh,tcp,,2222,,22"]);
    let first_backend_call = stand_in.calls().len();
    let vm = stand_in.vm(stand_in.config());

    vm.create().await.unwrap();
    let taken = vm.state().unwrap().expect("state file").ssh_port;
    let listener = TcpListener::bind(("127.0.0.1", taken)).expect("taking the forwarded port");
    let state = vm.start().await.unwrap();
    assert_ne!(state.ssh_port, taken);
    drop(listener);
    stand_in.ok(&["controlvm", NAME, "natpf1", "delete", "ssh"]);
    vm.start().await.unwrap();

    // The calls after the set-up: the backend's, and one rule deletion.
    let ips = forward_host_ips(&stand_in.calls()[first_backend_call..]);
    assert!(ips.len() >= 3, "{ips:?}");
    for ip in ips {
        assert_eq!(ip, "127.0.0.1");
    }
}

#[tokio::test]
async fn failing_call_shows_stderr() {
    let message = "VT-x is not available (VERR_VMX_NO_VMX)";
    let stand_in = StandIn::new(&[
        ("VBOX_STANDIN_FAIL", "startvm"),
        ("VBOX_STANDIN_FAIL_MESSAGE", message),
    ]);
    let vm = stand_in.vm(stand_in.config());

    let error = vm.start().await.unwrap_err();
    let text = format!("{error:#}");
    assert!(
        text.contains(&format!("VBoxManage: error: {message}")),
        "{text}"
    );
    assert!(
        text.contains(&format!("startvm {NAME} --type headless")),
        "{text}"
    );
    assert!(text.contains(path_str(&stand_in.wrapper)), "{text}");
    assert_eq!(
        exit_code_of(&error, ExitCode::Usage),
        ExitCode::Infrastructure
    );
}

#[tokio::test]
async fn stop_falls_back_to_poweroff() {
    let stand_in = StandIn::new(&[("VBOX_STANDIN_IGNORE_ACPI", "1")]);
    let vm = stand_in.vm(stand_in.config());
    vm.start().await.unwrap();

    let began = Instant::now();
    vm.stop(Duration::from_secs(1)).await.unwrap();
    assert!(began.elapsed() >= Duration::from_secs(1));
    assert_eq!(vm.status().await.unwrap(), VmStatus::Stopped);
    let calls = stand_in.calls();
    let position = |action: &str| {
        calls
            .iter()
            .position(|call| call[..] == ["controlvm", NAME, action])
    };
    let acpi = position("acpipowerbutton").expect("ACPI power button pressed");
    let poweroff = position("poweroff").expect("powered off");
    assert!(acpi < poweroff);
}

#[tokio::test]
async fn stop_waits_for_acpi_shutdown() {
    let stand_in = StandIn::new(&[("VBOX_STANDIN_ACPI_DELAY", "1")]);
    let vm = stand_in.vm(stand_in.config());
    vm.start().await.unwrap();

    vm.stop(Duration::from_secs(20)).await.unwrap();
    assert_eq!(vm.status().await.unwrap(), VmStatus::Stopped);
    let calls = stand_in.calls();
    assert!(calls
        .iter()
        .any(|call| call[..] == ["controlvm", NAME, "acpipowerbutton"]));
    assert!(!calls
        .iter()
        .any(|call| call[..] == ["controlvm", NAME, "poweroff"]));
}

#[tokio::test]
async fn reset_needs_running_vm() {
    let stand_in = StandIn::new(&[]);
    let vm = stand_in.vm(stand_in.config());
    vm.create().await.unwrap();
    let error = vm.reset().await.unwrap_err();
    assert!(format!("{error}").contains("not running"), "{error}");

    vm.start().await.unwrap();
    vm.reset().await.unwrap();
    assert!(
        vm.console_tail(1).contains("reset"),
        "{}",
        vm.console_tail(1)
    );
}

#[tokio::test]
async fn raw_seed_becomes_second_disk() {
    let stand_in = StandIn::new(&[]);
    let mut config = stand_in.config();
    let seed = stand_in.vm_dir().join("seed.img");
    std::fs::create_dir_all(stand_in.vm_dir()).unwrap();
    std::fs::write(&seed, vec![0u8; 1 << 20]).unwrap();
    config.seed = Some(seed.clone());
    let vm = stand_in.vm(config);

    vm.create().await.unwrap();
    let seed_disk = stand_in.vm_dir().join("seed.vdi");
    let info = stand_in.vm_info();
    assert!(
        info.contains(&format!("\"SATA-1-0\"=\"{}\"", seed_disk.display())),
        "{info}"
    );
    assert_eq!(stand_in.count("convertfromraw"), 2);

    vm.destroy().await.unwrap();
    assert_eq!(stand_in.ok(&["list", "hdds"]), "");
    assert!(!stand_in.vm_dir().exists());
}

#[tokio::test]
async fn iso_seed_is_dvd_and_kept() {
    let stand_in = StandIn::new(&[]);
    let mut config = stand_in.config();
    let seed = stand_in.path("seed.iso");
    std::fs::write(&seed, vec![1u8; 1 << 16]).unwrap();
    config.seed = Some(seed.clone());
    let vm = stand_in.vm(config);

    vm.create().await.unwrap();
    let attached = stand_in.calls().iter().any(|call| {
        call.contains(&"dvddrive".to_string())
            && call.last().map(String::as_str) == Some(path_str(&seed))
    });
    assert!(attached);
    vm.destroy().await.unwrap();
    assert_eq!(stand_in.ok(&["list", "dvds"]), "");
    assert!(seed.is_file());
}

#[tokio::test]
async fn qcow2_base_is_converted() {
    let stand_in = StandIn::new(&[]);
    let base = stand_in.path("base.qcow2");
    let status = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", path_str(&base), "64M"])
        .status()
        .expect("running qemu-img (install it with scripts/install-host-tools.sh)");
    assert!(status.success());
    let mut config = stand_in.config();
    config.base_image = base;
    config.base_format = DiskFormat::Qcow2;
    let vm = stand_in.vm(config);

    vm.create().await.unwrap();
    assert_eq!(stand_in.count("clonemedium"), 0);
    let info = stand_in.vm_info();
    let disk = stand_in.vm_dir().join("disk.vdi");
    assert!(
        info.contains(&format!("\"SATA-0-0\"=\"{}\"", disk.display())),
        "{info}"
    );
}

#[tokio::test]
async fn destroy_without_vm_succeeds() {
    let stand_in = StandIn::new(&[]);
    let vm = stand_in.vm(stand_in.config());
    vm.destroy().await.unwrap();
    assert_eq!(vm.status().await.unwrap(), VmStatus::Missing);
}

#[tokio::test]
async fn new_reads_program_variable() {
    let stand_in = StandIn::new(&[]);
    std::env::set_var(PROGRAM_VARIABLE, &stand_in.wrapper);
    let vm = VirtualBoxVm::new(stand_in.config());
    assert_eq!(vm.status().await.unwrap(), VmStatus::Missing);
    assert!(stand_in
        .calls()
        .iter()
        .any(|call| call[..] == ["list", "vms"]));
}

#[test]
fn stand_in_rejects_short_natpf_rule() {
    let stand_in = StandIn::new(&[]);
    let dir = stand_in.vm_dir();
    stand_in.ok(&[
        "createvm",
        "--name",
        NAME,
        "--basefolder",
        path_str(&dir),
        "--register",
    ]);

    let output = stand_in.run(&["modifyvm", NAME, "--nat-pf1", "ssh,tcp,127.0.0.1,2222,22"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with("VBoxManage: error: Invalid NAT rule"),
        "{stderr}"
    );
    let output = stand_in.run(&["controlvm", NAME, "natpf1", "ssh,tcp,127.0.0.1,2222,,22,x"]);
    assert_ne!(output.status.code(), Some(0));
}

#[test]
fn stand_in_rejects_unknown_option() {
    let stand_in = StandIn::new(&[]);
    let dir = stand_in.vm_dir();
    stand_in.ok(&[
        "createvm",
        "--name",
        NAME,
        "--basefolder",
        path_str(&dir),
        "--register",
    ]);

    for args in [
        &["modifyvm", NAME, "--natpf1", "ssh,tcp,127.0.0.1,2222,,22"][..],
        &[
            "createvm",
            "--name",
            "b",
            "--basefolder",
            path_str(&dir),
            "--bogus",
        ][..],
        &["storagectl", NAME, "--name", "SATA", "--add"][..],
    ] {
        let output = stand_in.run(args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.starts_with("VBoxManage: error: "), "{stderr}");
    }
}

#[test]
fn stand_in_rejects_modifyvm_while_running() {
    let stand_in = StandIn::new(&[]);
    let dir = stand_in.vm_dir();
    stand_in.ok(&[
        "createvm",
        "--name",
        NAME,
        "--basefolder",
        path_str(&dir),
        "--register",
    ]);
    stand_in.ok(&["modifyvm", NAME, "--memory", "512"]);
    stand_in.ok(&["startvm", NAME, "--type", "headless"]);

    let output = stand_in.run(&["modifyvm", NAME, "--memory", "1024"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("is already locked for a session"),
        "{stderr}"
    );
    assert!(stand_in.vm_info().contains("memory=512"));
}
