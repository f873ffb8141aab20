//! The project file as serde reads it, before validation.
//!
//! Every table rejects unknown keys. Values that need checks beyond their
//! TOML type are kept `Spanned` so that errors can name their line and column.

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProject {
    pub syscall: RawSyscall,
    #[serde(default)]
    pub test: RawTest,
    pub kernel: RawKernel,
    #[serde(default)]
    pub build: RawBuild,
    #[serde(default)]
    pub vm: RawVm,
    #[serde(default)]
    pub run: RawRun,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSyscall {
    pub name: Spanned<String>,
    pub args: Option<Spanned<Vec<RawArg>>>,
    #[serde(default = "default_template")]
    pub template: Spanned<String>,
    pub number: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawArg {
    #[serde(rename = "type")]
    pub c_type: Spanned<String>,
    pub name: Spanned<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTest {
    pub args: Option<Spanned<Vec<RawTestArg>>>,
    pub expect: Option<i64>,
    pub timeout: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawTestArg {
    Int(i64),
    Str(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKernel {
    pub source: Spanned<String>,
    pub sha256: Option<Spanned<String>>,
    #[serde(default = "default_arch")]
    pub arch: Spanned<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBuild {
    pub jobs: Option<Spanned<u32>>,
    pub config: Option<Spanned<String>>,
    pub fragments: Option<Vec<Spanned<String>>>,
    pub ccache: Option<Spanned<String>>,
    pub dir: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVm {
    pub profile: Option<Spanned<String>>,
    pub config: Option<Spanned<String>>,
    pub fragments: Option<Vec<Spanned<String>>>,
    pub localmodconfig: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRun {
    /// Any TOML value, so that a string or a negative number gets kbuild's
    /// own message rather than serde's.
    pub timeouts: Option<std::collections::BTreeMap<String, Spanned<toml::Value>>>,
}

fn default_template() -> Spanned<String> {
    Spanned::new(0..0, "sum".to_string())
}

fn default_arch() -> Spanned<String> {
    Spanned::new(0..0, "x86_64".to_string())
}
