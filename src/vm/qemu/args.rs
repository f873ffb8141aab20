//! The files of one QEMU VM and the command line that boots it.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::verify::Accel;
use crate::vm::{VmConfig, VmState};

/// Maximum length of a unix socket path, because `sun_path` is 108 bytes including the NUL.
const MAX_SOCKET_PATH: usize = 107;

/// Paths of one VM's files, all inside the VM folder except a QMP socket
/// whose path would be too long there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmFiles {
    pub dir: PathBuf,
    /// The qcow2 overlay on the base image.
    pub disk: PathBuf,
    pub console_log: PathBuf,
    pub qmp_socket: PathBuf,
    /// Written by QEMU after it daemonizes; also how kbuild recognizes its process.
    pub pidfile: PathBuf,
    /// Locked while kbuild creates, starts, stops or deletes the VM.
    pub lock: PathBuf,
}

impl VmFiles {
    pub fn new(dir: &Path) -> VmFiles {
        VmFiles {
            dir: dir.to_path_buf(),
            disk: dir.join("disk.qcow2"),
            console_log: dir.join("console.log"),
            qmp_socket: qmp_socket_path(dir, &std::env::temp_dir()),
            pidfile: dir.join("qemu.pid"),
            lock: dir.join("vm.lock"),
        }
    }
}

/// Returns `<dir>/qmp.sock`, or a name derived from a hash of `dir` in
/// `fallback_dir` when that path is too long for a unix socket.
fn qmp_socket_path(dir: &Path, fallback_dir: &Path) -> PathBuf {
    let socket = dir.join("qmp.sock");
    if socket.as_os_str().len() <= MAX_SOCKET_PATH {
        return socket;
    }
    let digest = Sha256::digest(dir.as_os_str().as_encoded_bytes());
    let id: String = digest[..8]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    fallback_dir.join(format!("kbuild-qmp-{id}.sock"))
}

/// Builds the arguments of `qemu-system-x86_64` that boot `config`'s VM
/// detached, with SSH forwarded from `state.ssh_port` on 127.0.0.1 only.
pub fn qemu_args(config: &VmConfig, state: &VmState, accel: Accel) -> Vec<String> {
    let files = VmFiles::new(&config.dir);
    let mut args: Vec<String> = Vec::new();
    let mut push = |flag: &str, value: String| {
        args.push(flag.to_string());
        args.push(value);
    };
    push("-name", escape(&config.name));
    push("-machine", "q35".to_string());
    push("-accel", accel.name().to_string());
    if accel == Accel::Kvm {
        push("-cpu", "host".to_string());
    }
    push("-smp", config.cpus.to_string());
    push("-m", config.memory_mib.to_string());

    // The overlay disk, then the read-only cloud-init seed.
    push(
        "-drive",
        format!("file={},if=virtio,format=qcow2", escape_path(&state.disk)),
    );
    if let Some(seed) = &config.seed {
        push(
            "-drive",
            format!(
                "file={},if=virtio,format=raw,readonly=on",
                escape_path(seed)
            ),
        );
    }

    // User-mode networking; the only host listener is SSH on loopback.
    push("-netdev", netdev(config, state));
    push("-device", "virtio-net-pci,netdev=net0".to_string());
    // Guest entropy, so that early boot does not wait for the random pool.
    push("-device", "virtio-rng-pci".to_string());

    // The serial console goes to a file that survives QEMU; QMP controls the detached process.
    push(
        "-chardev",
        format!(
            "file,id=console,path={},append=on",
            escape_path(&state.console_log)
        ),
    );
    push("-serial", "chardev:console".to_string());
    push(
        "-qmp",
        format!("unix:{},server=on,wait=off", escape_path(&files.qmp_socket)),
    );
    push("-pidfile", files.pidfile.display().to_string());
    let fixed = [
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-daemonize",
    ];
    args.extend(fixed.iter().map(|arg| arg.to_string()));
    args
}

/// User networking with SSH forwarded from 127.0.0.1 only. An isolated VM
/// reaches nothing outside itself; the forward still works.
fn netdev(config: &VmConfig, state: &VmState) -> String {
    let restrict = if config.isolated_network {
        ",restrict=on"
    } else {
        ""
    };
    format!(
        "user,id=net0{restrict},hostfwd=tcp:127.0.0.1:{}-:22",
        state.ssh_port
    )
}

/// Reports whether QEMU's stderr contains the error of an SSH forward that could not bind its port.
pub fn is_port_conflict(stderr: &str) -> bool {
    stderr
        .to_ascii_lowercase()
        .contains("could not set up host forwarding rule")
}

/// Doubles commas, which QEMU's option syntax uses as separators.
fn escape(value: &str) -> String {
    value.replace(',', ",,")
}

fn escape_path(path: &Path) -> String {
    escape(&path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::DiskFormat;

    fn config(seed: Option<&str>) -> VmConfig {
        VmConfig {
            name: "kbuild-demo".to_string(),
            dir: PathBuf::from("/p/.kbuild/vm"),
            base_image: PathBuf::from("/cache/base.qcow2"),
            base_format: DiskFormat::Qcow2,
            cpus: 2,
            memory_mib: 2048,
            disk_gib: 20,
            seed: seed.map(PathBuf::from),
            accel: None,
            isolated_network: false,
        }
    }

    fn state() -> VmState {
        VmState {
            backend: "qemu".to_string(),
            name: "kbuild-demo".to_string(),
            ssh_port: 40022,
            pid: None,
            disk: PathBuf::from("/p/.kbuild/vm/disk.qcow2"),
            console_log: PathBuf::from("/p/.kbuild/vm/console.log"),
        }
    }

    fn values_of(args: &[String], flag: &str) -> Vec<String> {
        args.windows(2)
            .filter(|pair| pair[0] == flag)
            .map(|pair| pair[1].clone())
            .collect()
    }

    #[test]
    fn args_forward_ssh_on_loopback() {
        let args = qemu_args(&config(None), &state(), Accel::Tcg);
        let netdev = values_of(&args, "-netdev");
        assert_eq!(netdev, ["user,id=net0,hostfwd=tcp:127.0.0.1:40022-:22"]);
    }

    #[test]
    fn args_hostfwd_only_loopback() {
        for accel in [Accel::Tcg, Accel::Kvm] {
            let args = qemu_args(&config(Some("/p/seed.img")), &state(), accel);
            for arg in args.iter().filter(|arg| arg.contains("hostfwd=")) {
                let forwards = arg.split(',').filter(|part| part.starts_with("hostfwd="));
                for forward in forwards {
                    assert!(forward.starts_with("hostfwd=tcp:127.0.0.1:"), "{forward}");
                }
            }
        }
    }

    #[test]
    fn args_tcg_has_no_host_cpu() {
        let args = qemu_args(&config(None), &state(), Accel::Tcg);
        assert_eq!(values_of(&args, "-accel"), ["tcg"]);
        assert!(values_of(&args, "-cpu").is_empty(), "{args:?}");
    }

    #[test]
    fn args_kvm_uses_host_cpu() {
        let args = qemu_args(&config(None), &state(), Accel::Kvm);
        assert_eq!(values_of(&args, "-accel"), ["kvm"]);
        assert_eq!(values_of(&args, "-cpu"), ["host"]);
    }

    #[test]
    fn args_size_machine() {
        let args = qemu_args(&config(None), &state(), Accel::Tcg);
        assert_eq!(values_of(&args, "-smp"), ["2"]);
        assert_eq!(values_of(&args, "-m"), ["2048"]);
        assert_eq!(values_of(&args, "-machine"), ["q35"]);
        assert_eq!(values_of(&args, "-name"), ["kbuild-demo"]);
    }

    #[test]
    fn args_attach_disk_and_seed() {
        let args = qemu_args(&config(Some("/p/seed.img")), &state(), Accel::Tcg);
        let drives = values_of(&args, "-drive");
        assert_eq!(
            drives[0],
            "file=/p/.kbuild/vm/disk.qcow2,if=virtio,format=qcow2"
        );
        assert_eq!(
            drives[1],
            "file=/p/seed.img,if=virtio,format=raw,readonly=on"
        );
        assert_eq!(drives.len(), 2);
    }

    #[test]
    fn args_without_seed_one_drive() {
        let args = qemu_args(&config(None), &state(), Accel::Tcg);
        assert_eq!(values_of(&args, "-drive").len(), 1);
    }

    #[test]
    fn args_detach_with_pidfile() {
        let args = qemu_args(&config(None), &state(), Accel::Tcg);
        assert!(args.contains(&"-daemonize".to_string()), "{args:?}");
        assert!(args.contains(&"-nodefaults".to_string()), "{args:?}");
        assert_eq!(values_of(&args, "-display"), ["none"]);
        assert_eq!(values_of(&args, "-pidfile"), ["/p/.kbuild/vm/qemu.pid"]);
        assert_eq!(
            values_of(&args, "-qmp"),
            ["unix:/p/.kbuild/vm/qmp.sock,server=on,wait=off"]
        );
        assert_eq!(values_of(&args, "-serial"), ["chardev:console"]);
        let chardev = values_of(&args, "-chardev");
        assert_eq!(
            chardev,
            ["file,id=console,path=/p/.kbuild/vm/console.log,append=on"]
        );
    }

    #[test]
    fn args_escape_commas() {
        let mut state = state();
        state.disk = PathBuf::from("/p/a,b/disk.qcow2");
        let args = qemu_args(&config(None), &state, Accel::Tcg);
        assert_eq!(
            values_of(&args, "-drive")[0],
            "file=/p/a,,b/disk.qcow2,if=virtio,format=qcow2"
        );
    }

    #[test]
    fn socket_path_short_stays() {
        let path = qmp_socket_path(Path::new("/p/vm"), Path::new("/tmp"));
        assert_eq!(path, PathBuf::from("/p/vm/qmp.sock"));
    }

    #[test]
    fn socket_path_long_moves() {
        let long = PathBuf::from(format!("/p/{}", "x".repeat(120)));
        let path = qmp_socket_path(&long, Path::new("/tmp"));
        assert!(path.starts_with("/tmp"), "{}", path.display());
        assert!(
            path.as_os_str().len() <= MAX_SOCKET_PATH,
            "{}",
            path.display()
        );
        let other = qmp_socket_path(&long.join("y"), Path::new("/tmp"));
        assert_ne!(path, other);
    }

    #[test]
    fn port_conflict_detected() {
        let stderr = "qemu-system-x86_64: -netdev user,id=net0,hostfwd=tcp:127.0.0.1:45678-:22: \
                      Could not set up host forwarding rule 'tcp:127.0.0.1:45678-:22'\n";
        assert!(is_port_conflict(stderr));
        assert!(!is_port_conflict(
            "qemu-system-x86_64: -drive file=x: No such file"
        ));
    }
}
