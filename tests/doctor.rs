//! `kbuild doctor` as a user runs it: the built binary, its JSON output and
//! its exit code, on this host and with PATH cut down to a few programs.
//! Each run gets its own home and working folder. The cache folder is shared
//! between tests, so the KVM probe's verdict, cached per host boot, costs
//! its deadline of a few seconds only once.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// The checks whose absence makes doctor exit 69.
const REQUIRED: [&str; 10] = [
    "qemu", "gcc", "make", "flex", "bison", "bc", "perl", "libelf", "openssl", "ld",
];

/// Every check doctor runs without a project, in its output order.
const NAMES: [&str; 18] = [
    "qemu",
    "qemu-img",
    "kvm",
    "virtualbox",
    "disk-cache",
    "gcc",
    "make",
    "ld",
    "flex",
    "bison",
    "bc",
    "perl",
    "cpio",
    "xz",
    "libelf",
    "openssl",
    "ccache",
    "ssh",
];

/// A private home, working folder and bin folder for one doctor run.
struct Sandbox {
    root: tempfile::TempDir,
    cache: PathBuf,
}

impl Sandbox {
    /// Creates a sandbox that uses the cache folder shared by these tests.
    fn new() -> Sandbox {
        let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("doctor-cache");
        Sandbox::with_cache(cache)
    }

    /// Creates a sandbox with a cache folder of its own, for a run whose
    /// KVM probe verdict must not reach other tests.
    fn with_private_cache() -> Sandbox {
        let mut sandbox = Sandbox::with_cache(PathBuf::new());
        sandbox.cache = sandbox.path("cache");
        sandbox
    }

    fn with_cache(cache: PathBuf) -> Sandbox {
        let root = tempfile::tempdir().expect("creating a temporary folder");
        for dir in ["home", "cache", "work", "bin"] {
            std::fs::create_dir(root.path().join(dir)).expect("creating a sandbox folder");
        }
        Sandbox { root, cache }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    /// Runs kbuild with `args` in the work folder, with `path` as PATH.
    fn kbuild(&self, args: &[&str], path: &OsString) -> Output {
        Command::new(env!("CARGO_BIN_EXE_kbuild"))
            .args(args)
            .current_dir(self.path("work"))
            .env("PATH", path)
            .env("HOME", self.path("home"))
            .env("KBUILD_CACHE_DIR", &self.cache)
            .env_remove("XDG_CACHE_HOME")
            .env_remove("KBUILD_VBOXMANAGE")
            .output()
            .expect("running kbuild")
    }

    /// Runs `kbuild doctor --json` and parses what it printed.
    fn doctor_json(&self, path: &OsString) -> (Output, Value) {
        let output = self.kbuild(&["doctor", "--json"], path);
        let value = serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
            panic!(
                "doctor printed invalid JSON ({error}):\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )
        });
        (output, value)
    }

    /// Puts an executable script named `name` into the sandbox's bin folder.
    fn script(&self, name: &str, text: &str) {
        let path = self.path("bin").join(name);
        std::fs::write(&path, text).expect("writing a script");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .expect("making the script executable");
    }

    /// Links a host program into the sandbox's bin folder.
    fn link(&self, program: &str) {
        let target = kbuild::host::find_program(program)
            .unwrap_or_else(|| panic!("{program} not found on this host's PATH"));
        std::os::unix::fs::symlink(target, self.path("bin").join(program))
            .expect("linking a program");
    }

    fn bin_only(&self) -> OsString {
        self.path("bin").into_os_string()
    }

    fn bin_then_host(&self) -> OsString {
        let host = std::env::var_os("PATH").unwrap_or_default();
        let dirs = std::iter::once(self.path("bin")).chain(std::env::split_paths(&host));
        std::env::join_paths(dirs).expect("joining PATH")
    }
}

fn host_path() -> OsString {
    std::env::var_os("PATH").unwrap_or_default()
}

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .expect("checks is an array")
        .iter()
        .find(|check| check["name"] == name)
        .unwrap_or_else(|| panic!("no check named {name} in {report:#}"))
}

fn names(report: &Value) -> Vec<&str> {
    report["checks"]
        .as_array()
        .expect("checks is an array")
        .iter()
        .map(|check| check["name"].as_str().expect("name is a string"))
        .collect()
}

#[test]
fn json_shape_on_this_host() {
    let sandbox = Sandbox::new();
    let (output, report) = sandbox.doctor_json(&host_path());

    let host = &report["host"];
    assert!(host["distribution"].is_string() || host["distribution"].is_null());
    assert!(host["package_manager"].is_string() || host["package_manager"].is_null());
    assert!(host["install_command"].is_string() || host["install_command"].is_null());
    assert_eq!(names(&report), NAMES);

    for entry in report["checks"].as_array().unwrap() {
        let name = entry["name"].as_str().unwrap();
        let status = entry["status"].as_str().expect("status is a string");
        assert!(["ok", "warn", "missing"].contains(&status), "{entry}");
        assert_eq!(entry["required"], REQUIRED.contains(&name), "{entry}");
        assert!(
            entry["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{entry}"
        );
        assert!(
            entry["install"].is_string() || entry["install"].is_null(),
            "{entry}"
        );
        if status != "missing" {
            assert!(entry["install"].is_null(), "{entry}");
        }
    }

    let required_missing = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .any(|entry| entry["required"] == true && entry["status"] == "missing");
    assert_eq!(report["ok"], !required_missing);
    let expected_code = if required_missing { 69 } else { 0 };
    assert_eq!(output.status.code(), Some(expected_code));
}

#[test]
fn limited_path_reports_missing_tools() {
    let sandbox = Sandbox::new();
    sandbox.link("make");
    sandbox.link("perl");
    let (output, report) = sandbox.doctor_json(&sandbox.bin_only());

    assert_eq!(output.status.code(), Some(69), "{report:#}");
    assert_eq!(report["ok"], false);
    assert_eq!(check(&report, "make")["status"], "ok");
    assert_eq!(check(&report, "perl")["status"], "ok");
    for name in ["qemu", "gcc", "bc", "flex", "bison", "ld"] {
        let entry = check(&report, name);
        assert_eq!(entry["status"], "missing", "{entry}");
        assert_eq!(entry["required"], true, "{entry}");
    }
    assert_eq!(check(&report, "ssh")["status"], "missing");
    assert_eq!(check(&report, "ssh")["required"], false);

    // The install commands name packages only on a distribution family
    // that doctor recognizes.
    if report["host"]["package_manager"].is_string() {
        let install = check(&report, "bc")["install"]
            .as_str()
            .expect("bc install");
        assert!(install.ends_with(" bc"), "{install}");
        let combined = report["host"]["install_command"]
            .as_str()
            .expect("combined install command");
        assert!(combined.contains(" bc "), "{combined}");
        assert!(combined.contains("flex"), "{combined}");
        assert!(!combined.contains("make"), "{combined}");
    }
}

#[test]
fn limited_path_text_output() {
    let sandbox = Sandbox::new();
    sandbox.link("make");
    let output = sandbox.kbuild(&["doctor"], &sandbox.bin_only());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();

    assert_eq!(output.status.code(), Some(69), "{stdout}");
    assert_eq!(lines.len(), NAMES.len() + 1, "{stdout}");
    let bc = lines
        .iter()
        .find(|line| line.starts_with("missing bc "))
        .unwrap_or_else(|| panic!("no bc line in:\n{stdout}"));
    assert!(bc.contains("bc not found on PATH"), "{bc}");
    let make = lines
        .iter()
        .find(|line| line.starts_with("ok      make"))
        .unwrap_or_else(|| panic!("no make line in:\n{stdout}"));
    assert!(make.contains("GNU Make"), "{make}");
    let last = lines.last().unwrap();
    assert!(
        last.starts_with("install everything missing with: ") || last.starts_with("missing "),
        "{last}"
    );
}

#[test]
fn virtualbox_version_from_path() {
    let sandbox = Sandbox::new();
    sandbox.script(
        "VBoxManage",
        "#!/bin/sh\n[ \"$1\" = --version ] || exit 2\necho 7.0.14r161095\n",
    );
    let (_, report) = sandbox.doctor_json(&sandbox.bin_then_host());

    let entry = check(&report, "virtualbox");
    assert_ne!(entry["status"], "missing", "{entry}");
    assert_eq!(entry["required"], false);
    let detail = entry["detail"].as_str().unwrap();
    assert!(detail.contains("VirtualBox 7.0.14r161095"), "{detail}");
    let modules = std::fs::read_to_string("/proc/modules").unwrap_or_default();
    let kvm_loaded = modules
        .lines()
        .any(|line| line.starts_with("kvm_intel ") || line.starts_with("kvm_amd "));
    let expected = if kvm_loaded { "warn" } else { "ok" };
    assert_eq!(entry["status"], expected, "{entry}");
}

#[test]
fn virtualbox_broken_is_warning() {
    let sandbox = Sandbox::new();
    sandbox.script("VBoxManage", "#!/bin/sh\necho 'no vboxdrv' >&2\nexit 1\n");
    let (_, report) = sandbox.doctor_json(&sandbox.bin_then_host());

    let entry = check(&report, "virtualbox");
    assert_eq!(entry["status"], "warn", "{entry}");
    let detail = entry["detail"].as_str().unwrap();
    assert!(detail.contains("no vboxdrv"), "{detail}");
}

#[test]
fn project_adds_disk_checks() {
    let sandbox = Sandbox::new();
    let init = sandbox.kbuild(&["init"], &host_path());
    assert!(init.status.success(), "{init:?}");
    let (_, report) = sandbox.doctor_json(&host_path());

    let work = sandbox.path("work");
    let build = check(&report, "disk-build")["detail"].as_str().unwrap();
    assert!(build.contains(&path_text(&work.join("build"))), "{build}");
    let state = check(&report, "disk-state")["detail"].as_str().unwrap();
    assert!(state.contains(&path_text(&work.join(".kbuild"))), "{state}");
}

fn path_text(path: &Path) -> String {
    path.display().to_string()
}

#[test]
fn stand_in_qemu_passes_probe() {
    // The probe cache is keyed by the program name, so the stand-in's
    // verdict must stay out of the shared cache.
    let sandbox = Sandbox::with_private_cache();
    // Prints a version line like QEMU 10.0.2 for --version, and otherwise
    // exits with the status of a probe guest that ran to its end.
    sandbox.script(
        "qemu-system-x86_64",
        "#!/bin/sh\n\
         if [ \"$1\" = --version ]; then\n\
         echo 'QEMU emulator version 10.0.2'; echo 'Copyright (c) 2003-2025'; exit 0\n\
         fi\n\
         exit 99\n",
    );
    let (_, report) = sandbox.doctor_json(&sandbox.bin_then_host());

    let qemu = check(&report, "qemu");
    assert_eq!(qemu["status"], "ok", "{qemu}");
    assert_eq!(qemu["detail"], "QEMU emulator version 10.0.2");

    let kvm = check(&report, "kvm");
    let usable = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if usable {
        assert_eq!(kvm["status"], "ok", "{kvm}");
        assert!(kvm["detail"].as_str().unwrap().starts_with("KVM usable"));
    } else {
        assert_eq!(kvm["status"], "warn", "{kvm}");
        assert!(kvm["detail"].as_str().unwrap().contains("/dev/kvm"));
    }
}
