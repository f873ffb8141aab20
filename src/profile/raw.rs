//! A profile file as serde reads it, before validation.

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProfile {
    pub name: Spanned<String>,
    #[serde(default)]
    pub description: String,
    pub image: RawImage,
    #[serde(default)]
    pub machine: RawMachine,
    pub login: RawLogin,
    pub packages: RawPackages,
    #[serde(default)]
    pub boot: RawBoot,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawImage {
    pub urls: Spanned<Vec<String>>,
    pub checksum: Option<Spanned<String>>,
    pub checksum_url: Option<Spanned<String>>,
    pub archive: Option<Spanned<String>>,
    pub format: Spanned<String>,
    pub file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMachine {
    pub backends: Option<Spanned<Vec<String>>>,
    pub cpus: Option<Spanned<u32>>,
    pub memory_mib: Option<Spanned<u32>>,
    pub disk_gib: Option<Spanned<u32>>,
    pub network: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLogin {
    pub user: Spanned<String>,
    pub method: Spanned<String>,
    pub password: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPackages {
    pub manager: Spanned<String>,
    pub build_deps: Spanned<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBoot {
    pub initramfs: Option<Spanned<String>>,
    pub bootloader: Option<Spanned<String>>,
}
