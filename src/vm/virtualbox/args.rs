//! Argument lists for each VBoxManage call the backend makes.
//!
//! The spellings follow the VBoxManage reference of the VirtualBox 7.0 user
//! manual (`--nat-pf1`, `--uart-mode1`, `--audio-enabled`, the medium type
//! after the target in `clonemedium`); VirtualBox 7.1 documents the same.

use std::ffi::{OsStr, OsString};
use std::path::Path;

/// The storage controller that the VM's disks are attached to.
pub const CONTROLLER: &str = "SATA";
/// The SATA port of the system disk.
pub const DISK_PORT: u32 = 0;
/// The SATA port of the NoCloud seed.
pub const SEED_PORT: u32 = 1;
/// The name of the NAT rule that forwards SSH.
pub const FORWARD_RULE: &str = "ssh";
/// The only host address the SSH forward binds to.
pub const FORWARD_HOST_IP: &str = "127.0.0.1";
/// The guest OS type given to `createvm`: 64-bit Linux of no particular distribution.
const OS_TYPE: &str = "Linux_64";
/// The I/O base and IRQ of COM1, where the guest's serial console writes.
const COM1: [&str; 2] = ["0x3F8", "4"];

/// Builds an argument list from items of any string or path type.
macro_rules! argv {
    ($($item:expr),* $(,)?) => {
        vec![$(OsString::from(AsRef::<OsStr>::as_ref(&$item))),*]
    };
}

/// The kind of drive a medium is attached as: a hard disk, or a DVD for an ISO seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drive {
    Disk,
    Dvd,
}

impl Drive {
    /// Returns the `--type` value of `storageattach`.
    fn attach_type(self) -> &'static str {
        match self {
            Drive::Disk => "hdd",
            Drive::Dvd => "dvddrive",
        }
    }

    /// Returns the medium type word of `closemedium` and `showmediuminfo`.
    pub fn medium_type(self) -> &'static str {
        match self {
            Drive::Disk => "disk",
            Drive::Dvd => "dvd",
        }
    }

    /// Returns the `list` subcommand that shows registered media of this type.
    pub fn list_name(self) -> &'static str {
        match self {
            Drive::Disk => "hdds",
            Drive::Dvd => "dvds",
        }
    }
}

/// A `controlvm` action on a running VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    AcpiPowerButton,
    PowerOff,
    Reset,
}

impl Control {
    fn word(self) -> &'static str {
        match self {
            Control::AcpiPowerButton => "acpipowerbutton",
            Control::PowerOff => "poweroff",
            Control::Reset => "reset",
        }
    }
}

/// Creates and registers the VM, with its settings file in `<base_folder>/<name>/`.
pub fn create_vm(name: &str, base_folder: &Path) -> Vec<OsString> {
    argv![
        "createvm",
        "--name",
        name,
        "--ostype",
        OS_TYPE,
        "--basefolder",
        base_folder,
        "--register"
    ]
}

pub fn register_vm(settings_file: &Path) -> Vec<OsString> {
    argv!["registervm", settings_file]
}

/// Unregisters the VM and deletes its settings, logs and hard disk images.
pub fn unregister_vm(name: &str) -> Vec<OsString> {
    argv!["unregistervm", name, "--delete"]
}

pub fn show_vm_info(name: &str) -> Vec<OsString> {
    argv!["showvminfo", name, "--machinereadable"]
}

/// Lists registered VMs (`vms`) or media (`hdds`, `dvds`).
pub fn list(subcommand: &str) -> Vec<OsString> {
    argv!["list", subcommand]
}

/// Adds the AHCI controller with one port for the disk and one for the seed.
pub fn add_controller(name: &str) -> Vec<OsString> {
    argv![
        "storagectl",
        name,
        "--name",
        CONTROLLER,
        "--add",
        "sata",
        "--controller",
        "IntelAhci",
        "--portcount",
        "2",
    ]
}

pub fn attach(name: &str, port: u32, drive: Drive, medium: &Path) -> Vec<OsString> {
    let port = port.to_string();
    argv![
        "storageattach",
        name,
        "--storagectl",
        CONTROLLER,
        "--port",
        port,
        "--device",
        "0",
        "--type",
        drive.attach_type(),
        "--medium",
        medium,
    ]
}

/// Empties a port, so the medium in it can be closed.
pub fn detach(name: &str, port: u32) -> Vec<OsString> {
    let port = port.to_string();
    argv![
        "storageattach",
        name,
        "--storagectl",
        CONTROLLER,
        "--port",
        port,
        "--device",
        "0",
        "--medium",
        "none",
    ]
}

/// Copies a VDI or VMDK image to a new VDI with a new UUID.
pub fn clone_disk(base: &Path, target: &Path) -> Vec<OsString> {
    argv!["clonemedium", base, target, "disk", "--format", "VDI"]
}

/// Converts a raw image (a raw base or a FAT seed) to a new VDI.
pub fn convert_raw(raw: &Path, target: &Path) -> Vec<OsString> {
    argv!["convertfromraw", raw, target, "--format", "VDI"]
}

pub fn show_medium_info(disk: &Path) -> Vec<OsString> {
    argv!["showmediuminfo", "disk", disk]
}

/// Grows a VDI to `mebibytes` (VirtualBox's "MB" are MiB).
pub fn resize_disk(disk: &Path, mebibytes: u64) -> Vec<OsString> {
    let size = mebibytes.to_string();
    argv!["modifymedium", "disk", disk, "--resize", size]
}

/// Removes a medium from the media registry, deleting its file when `delete` is set.
pub fn close_medium(drive: Drive, medium: &Path, delete: bool) -> Vec<OsString> {
    let mut args = argv!["closemedium", drive.medium_type(), medium];
    if delete {
        args.push("--delete".into());
    }
    args
}

/// Sets memory, CPUs, NAT networking, the serial console file and boot order.
pub fn modify_hardware(name: &str, cpus: u32, memory_mib: u32, console: &Path) -> Vec<OsString> {
    let cpus = cpus.to_string();
    let memory = memory_mib.to_string();
    argv![
        "modifyvm",
        name,
        "--memory",
        memory,
        "--cpus",
        cpus,
        // VirtualBox needs the I/O APIC for more than one CPU.
        "--ioapic",
        "on",
        "--acpi",
        "on",
        "--rtc-use-utc",
        "on",
        "--graphicscontroller",
        "vmsvga",
        "--audio-enabled",
        "off",
        "--boot1",
        "disk",
        "--boot2",
        "none",
        "--boot3",
        "none",
        "--boot4",
        "none",
        "--nic1",
        "nat",
        "--uart1",
        COM1[0],
        COM1[1],
        "--uart-mode1",
        "file",
        console,
    ]
}

/// Returns the NAT rule that forwards 127.0.0.1:`port` to the guest's port 22.
pub fn forward_rule(port: u16) -> String {
    format!("{FORWARD_RULE},tcp,{FORWARD_HOST_IP},{port},,22")
}

/// Adds the SSH forward; a running VM takes it through `controlvm`, because
/// `modifyvm` fails while a VM runs.
pub fn add_forward(name: &str, port: u16, running: bool) -> Vec<OsString> {
    let rule = forward_rule(port);
    if running {
        argv!["controlvm", name, "natpf1", rule]
    } else {
        argv!["modifyvm", name, "--nat-pf1", rule]
    }
}

pub fn delete_forward(name: &str, running: bool) -> Vec<OsString> {
    if running {
        argv!["controlvm", name, "natpf1", "delete", FORWARD_RULE]
    } else {
        argv!["modifyvm", name, "--nat-pf1", "delete", FORWARD_RULE]
    }
}

pub fn start_vm(name: &str) -> Vec<OsString> {
    argv!["startvm", name, "--type", "headless"]
}

pub fn control(name: &str, action: Control) -> Vec<OsString> {
    argv!["controlvm", name, action.word()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(args: Vec<OsString>) -> Vec<String> {
        args.into_iter()
            .map(|arg| arg.into_string().expect("UTF-8 argument"))
            .collect()
    }

    #[test]
    fn create_vm_registers_in_folder() {
        let args = words(create_vm("kb", Path::new("/v/kb dir")));
        let expected = "createvm --name kb --ostype Linux_64 --basefolder /v/kb dir --register";
        assert_eq!(args.join(" "), expected);
        assert_eq!(args[6], "/v/kb dir");
    }

    #[test]
    fn forward_rule_binds_loopback() {
        assert_eq!(forward_rule(2222), "ssh,tcp,127.0.0.1,2222,,22");
        assert_eq!(forward_rule(2222).split(',').count(), 6);
    }

    #[test]
    fn add_forward_stopped_uses_modifyvm() {
        let args = words(add_forward("kb", 2222, false));
        assert_eq!(
            args,
            ["modifyvm", "kb", "--nat-pf1", "ssh,tcp,127.0.0.1,2222,,22"]
        );
    }

    #[test]
    fn add_forward_running_uses_controlvm() {
        let args = words(add_forward("kb", 2222, true));
        assert_eq!(
            args,
            ["controlvm", "kb", "natpf1", "ssh,tcp,127.0.0.1,2222,,22"]
        );
    }

    #[test]
    fn delete_forward_names_rule() {
        assert_eq!(
            words(delete_forward("kb", false)),
            ["modifyvm", "kb", "--nat-pf1", "delete", "ssh"]
        );
        assert_eq!(
            words(delete_forward("kb", true)),
            ["controlvm", "kb", "natpf1", "delete", "ssh"]
        );
    }

    #[test]
    fn modify_hardware_sets_console_file() {
        let args = words(modify_hardware("kb", 2, 2048, Path::new("/v/console.log")));
        let uart = args
            .iter()
            .position(|arg| arg == "--uart1")
            .expect("--uart1");
        assert_eq!(args[uart + 1..uart + 3], ["0x3F8", "4"]);
        let mode = args
            .iter()
            .position(|arg| arg == "--uart-mode1")
            .expect("--uart-mode1");
        assert_eq!(args[mode + 1..mode + 3], ["file", "/v/console.log"]);
        let memory = args
            .iter()
            .position(|arg| arg == "--memory")
            .expect("--memory");
        assert_eq!(args[memory + 1], "2048");
        let cpus = args.iter().position(|arg| arg == "--cpus").expect("--cpus");
        assert_eq!(args[cpus + 1], "2");
        assert!(args.contains(&"--audio-enabled".to_string()));
    }

    #[test]
    fn attach_disk_and_dvd() {
        let disk = words(attach(
            "kb",
            DISK_PORT,
            Drive::Disk,
            Path::new("/v/disk.vdi"),
        ));
        let expected = "storageattach kb --storagectl SATA --port 0 --device 0 --type hdd \
                        --medium /v/disk.vdi";
        assert_eq!(disk.join(" "), expected);
        let seed = words(attach(
            "kb",
            SEED_PORT,
            Drive::Dvd,
            Path::new("/v/seed.iso"),
        ));
        assert_eq!(seed[5], "1");
        assert_eq!(seed[9], "dvddrive");
    }

    #[test]
    fn detach_sets_medium_none() {
        let args = words(detach("kb", SEED_PORT));
        assert_eq!(args.last().map(String::as_str), Some("none"));
        assert!(!args.contains(&"--type".to_string()));
    }

    #[test]
    fn clone_disk_puts_type_after_target() {
        let args = words(clone_disk(
            Path::new("/c/base.vmdk"),
            Path::new("/v/disk.vdi"),
        ));
        assert_eq!(
            args,
            [
                "clonemedium",
                "/c/base.vmdk",
                "/v/disk.vdi",
                "disk",
                "--format",
                "VDI"
            ]
        );
    }

    #[test]
    fn close_medium_deletes_only_when_asked() {
        let keep = words(close_medium(Drive::Dvd, Path::new("/v/seed.iso"), false));
        assert_eq!(keep, ["closemedium", "dvd", "/v/seed.iso"]);
        let delete = words(close_medium(Drive::Disk, Path::new("/v/disk.vdi"), true));
        assert_eq!(delete, ["closemedium", "disk", "/v/disk.vdi", "--delete"]);
    }

    #[test]
    fn resize_and_control() {
        let resize = words(resize_disk(Path::new("/v/disk.vdi"), 20480));
        assert_eq!(
            resize,
            ["modifymedium", "disk", "/v/disk.vdi", "--resize", "20480"]
        );
        assert_eq!(
            words(control("kb", Control::AcpiPowerButton)),
            ["controlvm", "kb", "acpipowerbutton"]
        );
        assert_eq!(
            words(start_vm("kb")),
            ["startvm", "kb", "--type", "headless"]
        );
    }
}
