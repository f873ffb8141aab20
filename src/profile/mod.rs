//! VM profiles (`profiles/*.toml`): which image to download, how to boot it,
//! how to log in, and which packages a kernel build needs in that guest.
//! Every field is documented in docs/profiles.md.

mod raw;
mod validate;

use std::path::{Path, PathBuf};

use crate::exit::Failure;

/// Profiles shipped with kbuild, selectable by name.
pub const BUILTIN: &[(&str, &str)] = &[
    ("debian-12", include_str!("../../profiles/debian-12.toml")),
    (
        "ubuntu-24.04",
        include_str!("../../profiles/ubuntu-24.04.toml"),
    ),
    ("fedora-41", include_str!("../../profiles/fedora-41.toml")),
    ("arch", include_str!("../../profiles/arch.toml")),
    (
        "arch-virtualbox",
        include_str!("../../profiles/arch-virtualbox.toml"),
    ),
];

/// A validated profile.
#[derive(Debug, Clone)]
pub struct Profile {
    pub name: String,
    pub description: String,
    /// Origin of the profile: `builtin:NAME` or a file path, for messages.
    pub origin: String,
    pub image: ImageSpec,
    pub machine: MachineSpec,
    pub login: LoginSpec,
    pub packages: PackageSpec,
    pub boot: BootSpec,
}

/// The image to download and how to read it.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// The same file at each URL, tried in order.
    pub urls: Vec<String>,
    pub checksum: ChecksumSource,
    pub archive: Archive,
    pub format: DiskFormat,
    /// Name of the disk image inside an archive; `None` takes the only disk image found.
    pub file: Option<String>,
}

/// Source of the expected digest of the download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChecksumSource {
    Digest(Digest),
    /// A sums file (`SHA256SUMS`, `SHA512SUMS`, Fedora's `CHECKSUM`), matched by exact file name.
    SumsUrl(String),
    /// No checksum: downloads are refused unless the user passes `--allow-unverified`.
    None,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    pub algorithm: DigestAlgorithm,
    /// Lowercase hex.
    pub hex: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestAlgorithm {
    Sha256,
    Sha512,
}

impl DigestAlgorithm {
    pub fn name(self) -> &'static str {
        match self {
            DigestAlgorithm::Sha256 => "sha256",
            DigestAlgorithm::Sha512 => "sha512",
        }
    }

    /// Hex digits in a digest of this algorithm.
    pub fn hex_len(self) -> usize {
        match self {
            DigestAlgorithm::Sha256 => 64,
            DigestAlgorithm::Sha512 => 128,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Archive {
    None,
    Zip,
    SevenZip,
    Xz,
    Gzip,
    Tar,
    /// A VirtualBox appliance: a tar with an .ovf and its disks.
    Ova,
}

impl Archive {
    pub const CHOICES: &'static str = "\"none\", \"zip\", \"7z\", \"xz\", \"gz\", \"tar\", \"ova\"";

    /// Guesses the archive type from a file name.
    pub fn from_file_name(name: &str) -> Archive {
        let name = name.to_ascii_lowercase();
        if name.ends_with(".zip") {
            Archive::Zip
        } else if name.ends_with(".7z") {
            Archive::SevenZip
        } else if name.ends_with(".xz") {
            Archive::Xz
        } else if name.ends_with(".gz") {
            Archive::Gzip
        } else if name.ends_with(".tar") {
            Archive::Tar
        } else if name.ends_with(".ova") {
            Archive::Ova
        } else {
            Archive::None
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    Qcow2,
    Vdi,
    Vmdk,
    Raw,
}

impl DiskFormat {
    pub const CHOICES: &'static str = "\"qcow2\", \"vdi\", \"vmdk\", \"raw\"";

    /// The name `qemu-img -f/-O` uses.
    pub fn qemu_img_name(self) -> &'static str {
        match self {
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Vdi => "vdi",
            DiskFormat::Vmdk => "vmdk",
            DiskFormat::Raw => "raw",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Qemu,
    VirtualBox,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Qemu => "qemu",
            Backend::VirtualBox => "virtualbox",
        }
    }
}

#[derive(Debug, Clone)]
pub struct MachineSpec {
    /// Backends in order of preference.
    pub backends: Vec<Backend>,
    pub cpus: u32,
    pub memory_mib: u32,
    /// Size the VM's disk is grown to, at least the image's own size.
    pub disk_gib: u32,
    /// QEMU only: true cuts the guest off every network but the SSH forward.
    pub isolated_network: bool,
}

#[derive(Debug, Clone)]
pub struct LoginSpec {
    pub user: String,
    pub method: LoginMethod,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginMethod {
    /// A NoCloud seed (`cidata`) installs kbuild's key; for cloud images.
    CloudInit,
    /// Log in once with this password to install kbuild's key, then use the key.
    Password(String),
}

#[derive(Debug, Clone)]
pub struct PackageSpec {
    pub manager: PackageManager,
    pub build_deps: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackageManager {
    Apt,
    Dnf,
    Pacman,
    Zypper,
}

/// Tools the guest uses to install a kernel; read by the in-guest install step.
#[derive(Debug, Clone)]
pub struct BootSpec {
    pub initramfs: InitramfsTool,
    pub bootloader: BootloaderTool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitramfsTool {
    UpdateInitramfs,
    Mkinitcpio,
    Dracut,
    KernelInstall,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootloaderTool {
    UpdateGrub,
    GrubMkconfig,
}

impl Profile {
    /// Loads a profile by built-in name, or from a path (anything with a `/` or a `.toml` suffix).
    pub fn load(selector: &str, base_dir: &Path) -> anyhow::Result<Profile> {
        if let Some((name, text)) = BUILTIN.iter().find(|(name, _)| *name == selector) {
            let origin = format!("builtin:{name}");
            return validate::parse(&origin, Path::new(&origin), text);
        }
        if selector.contains('/') || selector.ends_with(".toml") {
            let path: PathBuf = base_dir.join(selector);
            let text = std::fs::read_to_string(&path).map_err(|error| {
                Failure::usage(format!("cannot read profile {}: {error}", path.display()))
            })?;
            return validate::parse(&path.display().to_string(), &path, &text);
        }
        let names: Vec<&str> = BUILTIN.iter().map(|(name, _)| *name).collect();
        Err(Failure::usage(format!(
            "unknown profile {selector:?}; use one of {}, or a path to a profile file",
            names.join(", ")
        )))
    }
}
