//! Creates the kernel `.config` in the build folder: a base config, the
//! project's fragments merged on top, `olddefconfig`, certificate fixes, and
//! a check that every requested option survived.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::fingerprint::{self, ConfigInputs};
use super::fragment::{self, Lost};
use super::make::{self, Make};
use super::{certs, write_atomically};
use crate::exit::Failure;
use crate::project::{ConfigBase, Project, TemplateRef};

/// The running kernel's config, when built with `CONFIG_IKCONFIG_PROC`.
const PROC_CONFIG: &str = "/proc/config.gz";

/// The built-in fragments whose options a boot cannot do without: a direct
/// QEMU boot (`boot`) or a distribution's VM image (`vm`).
const BOOT_FRAGMENTS: &[&str] = &["boot", "vm"];

/// Where the configuration starts.
enum Base {
    /// A make target that writes `.config`, such as `tinyconfig`.
    Target(&'static str),
    /// A config file's text and where it came from.
    Text { origin: PathBuf, text: Vec<u8> },
}

/// A fragment to merge, loaded from its template.
struct Fragment {
    name: String,
    text: String,
    required: bool,
}

/// Writes `<build dir>/.config` unless its inputs are unchanged since the
/// last configure. Returns true when it configured.
pub async fn configure(project: &Project, make: &Make, log: &Path) -> anyhow::Result<bool> {
    let base = load_base(&project.build.config)?;
    let fragments = load_fragments(&project.build.fragments)?;
    let lsmod = match &project.build.lsmod {
        Some(path) => std::fs::read(path)
            .with_context(|| format!("reading lsmod output {}", path.display()))?,
        None => Vec::new(),
    };
    let fingerprint = fingerprint_of(&project.build.config, &base, &lsmod, &fragments, make);
    let build_dir = &make.build_dir;
    if build_dir.join(".config").is_file()
        && fingerprint::read(build_dir).as_deref() == Some(&fingerprint)
    {
        tracing::debug!(
            "config inputs unchanged, keeping {}/.config",
            build_dir.display()
        );
        return Ok(false);
    }
    fingerprint::remove(build_dir)?;

    crate::ui::status(
        "Configuring",
        format!(
            "{} with {}",
            describe_base(&base),
            fragment_names(&fragments)
        ),
    );
    write_base(&base, make, log).await?;
    if let Some(path) = &project.build.lsmod {
        let argument = format!("LSMOD={}", path.display());
        let command = make.command(&[argument.as_str(), "localmodconfig"]);
        make::run_logged(command, build_dir, log, "make localmodconfig").await?;
    }
    merge_fragments(project, &fragments, make, log).await?;
    run_make(make, "olddefconfig", log).await?;
    certs::fix_missing_certs(&make.tree, build_dir, log).await?;
    check_requests(&fragments, build_dir)?;
    fingerprint::store(build_dir, &fingerprint)?;
    Ok(true)
}

fn fingerprint_of(
    config: &ConfigBase,
    base: &Base,
    lsmod: &[u8],
    fragments: &[Fragment],
    make: &Make,
) -> String {
    let named: Vec<(String, String)> = fragments
        .iter()
        .map(|fragment| (fragment.name.clone(), fragment.text.clone()))
        .collect();
    let base_kind = match config {
        ConfigBase::Defconfig => "defconfig",
        ConfigBase::Tinyconfig => "tinyconfig",
        ConfigBase::Running => "running",
        ConfigBase::Guest => "guest",
        ConfigBase::File(_) => "file",
    };
    let mut base_text = match base {
        Base::Target(_) => Vec::new(),
        Base::Text { text, .. } => text.clone(),
    };
    if !lsmod.is_empty() {
        base_text.extend_from_slice(b"\n# lsmod\n");
        base_text.extend_from_slice(lsmod);
    }
    fingerprint::fingerprint(&ConfigInputs {
        base_kind,
        base_text: &base_text,
        fragments: &named,
        arch: make.arch,
        tree: &make.tree,
    })
}

fn describe_base(base: &Base) -> String {
    match base {
        Base::Target(target) => target.to_string(),
        Base::Text { origin, .. } => origin.display().to_string(),
    }
}

fn fragment_names(fragments: &[Fragment]) -> String {
    if fragments.is_empty() {
        return "no fragments".to_string();
    }
    let names: Vec<&str> = fragments
        .iter()
        .map(|fragment| fragment.name.as_str())
        .collect();
    format!("fragments {}", names.join(", "))
}

fn load_base(base: &ConfigBase) -> anyhow::Result<Base> {
    match base {
        ConfigBase::Defconfig => Ok(Base::Target("defconfig")),
        ConfigBase::Tinyconfig => Ok(Base::Target("tinyconfig")),
        ConfigBase::File(path) => {
            let text = std::fs::read(path)
                .with_context(|| format!("reading config base {}", path.display()))?;
            Ok(Base::Text {
                origin: path.clone(),
                text,
            })
        }
        ConfigBase::Running => running_config(),
        ConfigBase::Guest => Err(Failure::usage(
            "config base \"guest\" needs the VM's config; kbuild reads it when it builds \
             for the VM (`kbuild patch-and-build --in-guest` or `--on-host`)",
        )),
    }
}

/// Reads the running kernel's config from `/proc/config.gz`, or else from
/// `/boot/config-<release>`.
fn running_config() -> anyhow::Result<Base> {
    let proc_config = Path::new(PROC_CONFIG);
    if proc_config.is_file() {
        let file =
            std::fs::File::open(proc_config).with_context(|| format!("opening {PROC_CONFIG}"))?;
        let mut text = Vec::new();
        flate2::read::GzDecoder::new(file)
            .read_to_end(&mut text)
            .with_context(|| format!("decompressing {PROC_CONFIG}"))?;
        return Ok(Base::Text {
            origin: proc_config.to_path_buf(),
            text,
        });
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .context("reading the running kernel's release from /proc/sys/kernel/osrelease")?;
    let boot_config = PathBuf::from(format!("/boot/config-{}", release.trim()));
    match std::fs::read(&boot_config) {
        Ok(text) => Ok(Base::Text {
            origin: boot_config,
            text,
        }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Err(Failure::usage(format!(
            "config base \"running\": neither {PROC_CONFIG} nor {} exists; load the configs \
             module (`modprobe configs`) or set [build] config to \"defconfig\" or a file",
            boot_config.display()
        ))),
        Err(error) => Err(error).with_context(|| format!("reading {}", boot_config.display())),
    }
}

fn load_fragments(references: &[TemplateRef]) -> anyhow::Result<Vec<Fragment>> {
    references
        .iter()
        .map(|reference| {
            Ok(Fragment {
                name: crate::template::describe(reference),
                text: crate::template::load(reference, crate::template::KCONFIG_FRAGMENTS)?,
                required: matches!(reference, TemplateRef::Builtin(name)
                    if BOOT_FRAGMENTS.contains(&name.as_str())),
            })
        })
        .collect()
}

async fn write_base(base: &Base, make: &Make, log: &Path) -> anyhow::Result<()> {
    match base {
        Base::Target(target) => run_make(make, target, log).await,
        Base::Text { text, .. } => write_atomically(&make.build_dir.join(".config"), text),
    }
}

async fn run_make(make: &Make, target: &str, log: &Path) -> anyhow::Result<()> {
    let command = make.command(&[target]);
    make::run_logged(command, &make.build_dir, log, &format!("make {target}")).await
}

/// Writes each fragment to the state folder and merges them into `.config`
/// with the tree's `merge_config.sh`.
async fn merge_fragments(
    project: &Project,
    fragments: &[Fragment],
    make: &Make,
    log: &Path,
) -> anyhow::Result<()> {
    if fragments.is_empty() {
        return Ok(());
    }
    let fragment_dir = project.state_dir().join("kconfig");
    std::fs::create_dir_all(&fragment_dir)
        .with_context(|| format!("creating {}", fragment_dir.display()))?;
    let mut command = tokio::process::Command::new("sh");
    command
        .arg(make.tree.join("scripts/kconfig/merge_config.sh"))
        .arg("-m")
        .arg("-O")
        .arg(&make.build_dir)
        .arg(make.build_dir.join(".config"));
    for (index, fragment) in fragments.iter().enumerate() {
        let path = fragment_dir.join(fragment_file_name(index, &fragment.name));
        write_atomically(&path, fragment.text.as_bytes())?;
        command.arg(path);
    }
    // merge_config.sh creates its temporary files in the current folder.
    make::run_logged(command, &make.build_dir, log, "merge_config.sh").await
}

/// Names a fragment's file `NN-<name>.config`, with path separators and
/// dots of a file fragment's name replaced.
fn fragment_file_name(index: usize, name: &str) -> String {
    let stem = Path::new(name).file_stem().map_or_else(
        || name.to_string(),
        |stem| stem.to_string_lossy().into_owned(),
    );
    let safe: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{index:02}-{safe}.config")
}

/// Compares the final `.config` with every option the fragments requested.
/// A lost option of the boot fragment is an error, because the kernel would
/// not boot. Any other lost option is a warning.
fn check_requests(fragments: &[Fragment], build_dir: &Path) -> anyhow::Result<()> {
    let config_path = build_dir.join(".config");
    let config = std::fs::read_to_string(&config_path)
        .with_context(|| format!("reading {}", config_path.display()))?;
    let requests = fragment::merge_requests(fragments.iter().flat_map(|fragment| {
        fragment::parse_requests(&fragment.name, &fragment.text, fragment.required)
    }));
    let (required, optional): (Vec<Lost>, Vec<Lost>) = fragment::lost_options(&requests, &config)
        .into_iter()
        .partition(|lost| lost.request.required);

    if !optional.is_empty() {
        crate::ui::warn(format!(
            "{} requested config options did not survive olddefconfig; a dependency is \
             missing or the option does not exist in this kernel:",
            optional.len()
        ));
        for lost in &optional {
            crate::ui::detail(lost);
        }
    }
    if required.is_empty() {
        return Ok(());
    }
    Err(Failure::build(format!(
        "config options the kernel needs to boot in QEMU did not survive olddefconfig:\n  {}\n\
         a dependency of each is missing from {}; add it to a fragment or change [build] config",
        join_lost(&required),
        config_path.display()
    )))
}

fn join_lost(lost: &[Lost]) -> String {
    let lines: Vec<String> = lost.iter().map(ToString::to_string).collect();
    lines.join("\n  ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragment_file_name_of_builtin() {
        assert_eq!(fragment_file_name(0, "boot"), "00-boot.config");
    }

    #[test]
    fn fragment_file_name_of_path() {
        assert_eq!(
            fragment_file_name(3, "/home/me/extra.v2.config"),
            "03-extra_v2.config"
        );
    }

    fn fragment(name: &str, text: &str, required: bool) -> Fragment {
        Fragment {
            name: name.into(),
            text: text.into(),
            required,
        }
    }

    #[test]
    fn check_requests_lost_boot_option_fails() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".config"), "# CONFIG_TTY is not set\n").unwrap();
        let fragments = [fragment("boot", "CONFIG_TTY=y\n", true)];
        let error = check_requests(&fragments, dir.path()).unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("CONFIG_TTY: requested y, got not set"),
            "{message}"
        );
    }

    #[test]
    fn check_requests_lost_user_option_warns() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".config"), "CONFIG_TTY=y\n").unwrap();
        let fragments = [
            fragment("boot", "CONFIG_TTY=y\n", true),
            fragment("extra.config", "CONFIG_NO_SUCH_OPTION=y\n", false),
        ];
        assert!(check_requests(&fragments, dir.path()).is_ok());
    }

    #[test]
    fn check_requests_user_override_of_boot_option_not_required() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".config"), "CONFIG_KALLSYMS=y\n").unwrap();
        let fragments = [
            fragment("boot", "CONFIG_KALLSYMS=y\nCONFIG_TTY=y\n", true),
            fragment("mine.config", "# CONFIG_TTY is not set\n", false),
        ];
        assert!(check_requests(&fragments, dir.path()).is_ok());
    }
}
