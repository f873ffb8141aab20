//! Checks a parsed profile and turns it into a `Profile`.

use std::ops::Range;
use std::path::Path;

use toml::Spanned;

use super::raw::{RawImage, RawLogin, RawMachine, RawProfile};
use super::*;
use crate::exit::Failure;
use crate::project::locate;

/// Parses and validates the text of a profile. `origin` names it in messages.
pub fn parse(origin: &str, path: &Path, text: &str) -> anyhow::Result<Profile> {
    let raw: RawProfile = toml::from_str(text).map_err(|error| {
        let location = error
            .span()
            .map(|span| locate(path, text, &span))
            .unwrap_or_else(|| origin.to_string());
        Failure::usage(format!("{location}: {}", error.message().trim_end()))
    })?;
    let checker = Checker { path, text };

    Ok(Profile {
        name: raw.name.get_ref().clone(),
        description: raw.description.clone(),
        origin: origin.to_string(),
        image: checker.image(&raw.image)?,
        machine: checker.machine(&raw.machine)?,
        login: checker.login(&raw.login)?,
        packages: PackageSpec {
            manager: checker.choice(
                &raw.packages.manager,
                &[
                    ("apt", PackageManager::Apt),
                    ("dnf", PackageManager::Dnf),
                    ("pacman", PackageManager::Pacman),
                    ("zypper", PackageManager::Zypper),
                ],
            )?,
            build_deps: checker.package_names(&raw.packages.build_deps)?,
        },
        boot: BootSpec {
            initramfs: match &raw.boot.initramfs {
                None => InitramfsTool::UpdateInitramfs,
                Some(value) => checker.choice(
                    value,
                    &[
                        ("update-initramfs", InitramfsTool::UpdateInitramfs),
                        ("mkinitcpio", InitramfsTool::Mkinitcpio),
                        ("dracut", InitramfsTool::Dracut),
                        ("kernel-install", InitramfsTool::KernelInstall),
                    ],
                )?,
            },
            bootloader: match &raw.boot.bootloader {
                None => BootloaderTool::UpdateGrub,
                Some(value) => checker.choice(
                    value,
                    &[
                        ("update-grub", BootloaderTool::UpdateGrub),
                        ("grub-mkconfig", BootloaderTool::GrubMkconfig),
                    ],
                )?,
            },
        },
    })
}

/// Parses `sha256:HEX` or `sha512:HEX`.
pub fn parse_digest(value: &str) -> Result<Digest, String> {
    let (algorithm, hex) = value.split_once(':').ok_or_else(|| {
        format!("checksum {value:?} has no algorithm; write sha256:HEX or sha512:HEX")
    })?;
    let algorithm = match algorithm {
        "sha256" => DigestAlgorithm::Sha256,
        "sha512" => DigestAlgorithm::Sha512,
        other => {
            return Err(format!(
                "unsupported checksum algorithm {other:?}; use sha256 or sha512"
            ))
        }
    };
    let hex = hex.to_ascii_lowercase();
    if hex.len() != algorithm.hex_len() || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!(
            "checksum {value:?} is not {} hex digits of {}",
            algorithm.hex_len(),
            algorithm.name()
        ));
    }
    Ok(Digest { algorithm, hex })
}

struct Checker<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Checker<'_> {
    fn reject<T>(&self, span: &Range<usize>, message: String) -> anyhow::Result<T> {
        Err(Failure::usage(format!(
            "{}: {message}",
            locate(self.path, self.text, span)
        )))
    }

    fn choice<T: Copy>(&self, value: &Spanned<String>, choices: &[(&str, T)]) -> anyhow::Result<T> {
        if let Some((_, chosen)) = choices.iter().find(|(name, _)| name == value.get_ref()) {
            return Ok(*chosen);
        }
        let names: Vec<String> = choices
            .iter()
            .map(|(name, _)| format!("{name:?}"))
            .collect();
        self.reject(
            &value.span(),
            format!(
                "invalid value {:?}; use one of {}",
                value.get_ref(),
                names.join(", ")
            ),
        )
    }

    fn image(&self, image: &RawImage) -> anyhow::Result<ImageSpec> {
        let urls = image.urls.get_ref();
        if urls.is_empty() {
            return self.reject(
                &image.urls.span(),
                "urls is empty; give at least one URL".into(),
            );
        }
        for url in urls {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return self.reject(
                    &image.urls.span(),
                    format!("URL {url:?} is not http:// or https://"),
                );
            }
            if crate::image::has_credentials(url) {
                return self.reject(
                    &image.urls.span(),
                    format!("an image URL {}", crate::image::CREDENTIALS_IN_URL),
                );
            }
        }
        let checksum = match (&image.checksum, &image.checksum_url) {
            (Some(_), Some(url)) => {
                return self.reject(
                    &url.span(),
                    "give checksum or checksum_url, not both".into(),
                )
            }
            (Some(value), None) => match parse_digest(value.get_ref()) {
                Ok(digest) => ChecksumSource::Digest(digest),
                Err(message) => return self.reject(&value.span(), message),
            },
            (None, Some(url)) => ChecksumSource::SumsUrl(url.get_ref().clone()),
            (None, None) => ChecksumSource::None,
        };
        let archive = match &image.archive {
            Some(value) => self.choice(
                value,
                &[
                    ("none", Archive::None),
                    ("zip", Archive::Zip),
                    ("7z", Archive::SevenZip),
                    ("xz", Archive::Xz),
                    ("gz", Archive::Gzip),
                    ("tar", Archive::Tar),
                    ("ova", Archive::Ova),
                ],
            )?,
            None => Archive::from_file_name(urls[0].rsplit('/').next().unwrap_or_default()),
        };
        let format = self.choice(
            &image.format,
            &[
                ("qcow2", DiskFormat::Qcow2),
                ("vdi", DiskFormat::Vdi),
                ("vmdk", DiskFormat::Vmdk),
                ("raw", DiskFormat::Raw),
            ],
        )?;
        Ok(ImageSpec {
            urls: urls.clone(),
            checksum,
            archive,
            format,
            file: image.file.clone(),
        })
    }

    fn machine(&self, machine: &RawMachine) -> anyhow::Result<MachineSpec> {
        let backends = match &machine.backends {
            None => vec![Backend::Qemu, Backend::VirtualBox],
            Some(list) => {
                let mut backends = Vec::new();
                for name in list.get_ref() {
                    backends.push(match name.as_str() {
                        "qemu" => Backend::Qemu,
                        "virtualbox" => Backend::VirtualBox,
                        other => {
                            return self.reject(
                                &list.span(),
                                format!(
                                    "unknown backend {other:?}; use \"qemu\" or \"virtualbox\""
                                ),
                            )
                        }
                    });
                }
                backends
            }
        };
        Ok(MachineSpec {
            backends,
            cpus: self.at_least(&machine.cpus, 1, 2)?,
            memory_mib: self.at_least(&machine.memory_mib, 512, 2048)?,
            disk_gib: self.at_least(&machine.disk_gib, 4, 20)?,
            isolated_network: match &machine.network {
                None => false,
                Some(value) => self.choice(value, &[("nat", false), ("isolated", true)])?,
            },
        })
    }

    fn at_least(
        &self,
        value: &Option<Spanned<u32>>,
        minimum: u32,
        default: u32,
    ) -> anyhow::Result<u32> {
        match value {
            None => Ok(default),
            Some(value) if *value.get_ref() >= minimum => Ok(*value.get_ref()),
            Some(value) => self.reject(
                &value.span(),
                format!(
                    "value {} is below the minimum of {minimum}",
                    value.get_ref()
                ),
            ),
        }
    }

    fn login(&self, login: &RawLogin) -> anyhow::Result<LoginSpec> {
        let method = match (login.method.get_ref().as_str(), &login.password) {
            ("cloud-init", None) => LoginMethod::CloudInit,
            ("cloud-init", Some(password)) => {
                return self.reject(
                    &password.span(),
                    "password is only used with method = \"password\"".into(),
                )
            }
            ("password", Some(password)) => LoginMethod::Password(password.get_ref().clone()),
            ("password", None) => {
                return self.reject(
                    &login.method.span(),
                    "method \"password\" needs a password key (used once to install kbuild's key)"
                        .into(),
                )
            }
            (other, _) => {
                return self.reject(
                    &login.method.span(),
                    format!("invalid login method {other:?}; use \"cloud-init\" or \"password\""),
                )
            }
        };
        Ok(LoginSpec {
            user: login.user.get_ref().clone(),
            method,
        })
    }

    fn package_names(&self, names: &Spanned<Vec<String>>) -> anyhow::Result<Vec<String>> {
        let valid = |name: &str| {
            !name.is_empty()
                && !name.starts_with('-')
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-._:@/".contains(c))
        };
        if let Some(bad) = names.get_ref().iter().find(|name| !valid(name)) {
            return self.reject(&names.span(), format!("invalid package name {bad:?}"));
        }
        Ok(names.get_ref().clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_profiles_parse() {
        for (name, _) in BUILTIN {
            let profile = Profile::load(name, Path::new("/"));
            assert!(profile.is_ok(), "{name}: {}", profile.unwrap_err());
        }
    }

    #[test]
    fn builtin_profiles_pin_dated_urls() {
        for (name, _) in BUILTIN {
            let profile = Profile::load(name, Path::new("/")).unwrap();
            for url in &profile.image.urls {
                assert!(!url.contains("latest"), "{name}: {url} is not pinned");
            }
        }
    }

    #[test]
    fn digest_parses() {
        let digest = parse_digest(&format!("sha256:{}", "A".repeat(64))).unwrap();
        assert_eq!(digest.algorithm, DigestAlgorithm::Sha256);
        assert_eq!(digest.hex, "a".repeat(64));
    }

    #[test]
    fn digest_rejects_short_hex() {
        assert!(parse_digest("sha512:abcd")
            .unwrap_err()
            .contains("128 hex digits"));
    }

    #[test]
    fn unknown_profile_lists_builtins() {
        let error = Profile::load("gentoo", Path::new("/"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("debian-12"), "{error}");
    }

    #[test]
    fn bad_manager_names_line() {
        let text = include_str!("../../profiles/debian-12.toml").replace("\"apt\"", "\"yum\"");
        let error = parse("t", Path::new("p.toml"), &text)
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("p.toml:"), "{error}");
        assert!(error.contains("\"dnf\""), "{error}");
    }
}
