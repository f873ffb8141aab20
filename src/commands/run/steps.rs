//! The body of each step of `kbuild run`, the inputs its fingerprint
//! covers, and the cheap checks that its record still holds. Every body
//! calls the code of the step-by-step commands.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, UNIX_EPOCH};

use super::super::guest::{self as vm_guest, Mode, Staged};
use super::super::{CommandError, Phase};
use crate::build::{self, BuildOptions};
use crate::exit::{ExitCode, Failure};
use crate::guest::Guest;
use crate::image::CachedImage;
use crate::profile::Profile;
use crate::project::{ConfigBase, Project, TemplateRef};
use crate::run::record::{CheckRecord, Fingerprint, StepRecord};
use crate::run::Step;
use crate::verify::{self, Accel, DirectOptions, Verdict};
use crate::vm::project_vm::vm_dir;
use crate::vm::up::{self, UpOptions};
use crate::{source, ui};

/// File in the VM folder whose random id names one VM; `destroy` removes it
/// with the folder, so a new VM gets a new id.
const INSTANCE_FILE: &str = "run-instance";

/// Console lines kept in the report when a boot or a check fails.
pub const CONSOLE_TAIL_LINES: usize = 40;

/// The state that the steps of one run share.
pub struct Steps<'a> {
    pub project: &'a Project,
    pub direct: bool,
    pub in_guest: bool,
    pub jobs: Option<u32>,
    pub accel: Option<Accel>,
    profile: Option<Profile>,
    image: Option<CachedImage>,
    guest: Option<Guest>,
    tree_digest: Option<String>,
    /// The outputs of each step, from this run or from the records.
    produced: BTreeMap<Step, BTreeMap<String, String>>,
    /// The verify step's checks, for the report.
    pub checks: Vec<CheckRecord>,
    /// The syscall's verdict, when verify ran in this run.
    pub verdict: Option<Verdict>,
    pub console_tail: Option<String>,
}

/// The outputs of a step that finished.
pub struct Done {
    pub produced: BTreeMap<String, String>,
    pub checks: Vec<CheckRecord>,
    /// True when the step ran but a check failed (exit 1).
    pub checks_failed: bool,
}

impl Done {
    fn of(pairs: &[(&str, String)]) -> Done {
        Done {
            produced: pairs
                .iter()
                .map(|(name, value)| ((*name).to_string(), value.clone()))
                .collect(),
            checks: Vec::new(),
            checks_failed: false,
        }
    }
}

impl<'a> Steps<'a> {
    pub fn new(project: &'a Project, direct: bool, in_guest: bool) -> Steps<'a> {
        Steps {
            project,
            direct,
            in_guest,
            jobs: None,
            accel: None,
            profile: None,
            image: None,
            guest: None,
            tree_digest: None,
            produced: BTreeMap::new(),
            checks: Vec::new(),
            verdict: None,
            console_tail: None,
        }
    }

    /// Takes a step's output from its record, for the steps after it.
    pub fn remember(&mut self, step: Step, record: &StepRecord) {
        self.produced.insert(step, record.produced.clone());
        if step == Step::Verify {
            self.checks = record.checks.clone();
        }
    }

    /// Returns a value a step produced, or a usage error that names the step to run.
    pub fn value(&self, step: Step, name: &str) -> Result<String, CommandError> {
        self.produced
            .get(&step)
            .and_then(|values| values.get(name))
            .cloned()
            .ok_or_else(|| {
                let direct = if self.direct { " --direct" } else { "" };
                Failure::usage(format!(
                    "step {step} has no record of its {name}; run `kbuild run{direct} --from {step}`"
                ))
            })
            .phase(ExitCode::Usage)
    }

    /// Returns the syscall number the patch step recorded.
    fn syscall_number(&self) -> Result<u32, CommandError> {
        let text = self.value(Step::Patch, "number")?;
        text.parse()
            .map_err(|_| {
                let direct = if self.direct { " --direct" } else { "" };
                Failure::usage(format!(
                    "the patch record has syscall number {text:?}, not a number; run \
                     `kbuild run{direct} --from patch`"
                ))
            })
            .phase(ExitCode::Usage)
    }

    /// Returns a produced value that may be missing, such as the kernel release.
    pub fn optional(&self, step: Step, name: &str) -> Option<String> {
        self.produced.get(&step)?.get(name).cloned()
    }

    fn profile(&mut self) -> Result<&Profile, CommandError> {
        if self.profile.is_none() {
            let profile = Profile::load(&self.project.vm.profile, &self.project.dir)
                .phase(ExitCode::Usage)?;
            self.profile = Some(profile);
        }
        Ok(self.profile.as_ref().expect("loaded above"))
    }

    /// Returns the open guest, connecting on first use.
    pub async fn guest(&mut self) -> Result<&mut Guest, CommandError> {
        if self.guest.is_none() {
            let guest = Guest::open(self.project)
                .await
                .phase(ExitCode::Infrastructure)?;
            self.guest = Some(guest);
        }
        Ok(self.guest.as_mut().expect("opened above"))
    }

    /// Returns the guest if one was opened, for the report's versions.
    pub fn open_guest(&self) -> Option<&Guest> {
        self.guest.as_ref()
    }

    fn build_mode(&self) -> Mode {
        match (self.direct, self.in_guest) {
            (true, _) => Mode::Host,
            (false, true) => Mode::InGuest,
            (false, false) => Mode::OnHost,
        }
    }

    /// Adds the step's own inputs (not the earlier steps') to `fingerprint`.
    /// `--accel` and `--jobs` are not inputs: they change how a step runs,
    /// not what it makes, so a run with other values skips the same steps.
    pub fn add_inputs(
        &mut self,
        step: Step,
        fingerprint: &mut Fingerprint,
    ) -> Result<(), CommandError> {
        let project = self.project;
        match step {
            Step::Image => {
                let image = format!("{:?}", self.profile()?.image);
                fingerprint.add("image", image);
            }
            Step::Vm | Step::Deps => {
                let profile = format!("{:?}", self.profile()?);
                fingerprint.add("profile", profile);
            }
            Step::Source => {
                fingerprint.add("kernel", format!("{:?}", project.kernel));
            }
            Step::Patch => {
                fingerprint.add("syscall", format!("{:?}", project.syscall));
                add_template(fingerprint, &project.syscall.template);
            }
            Step::Build => {
                fingerprint.add("build", format!("{:?}", project.build));
                fingerprint.add("mode", format!("{:?}", self.build_mode()));
                add_config(fingerprint, &project.build.config, &project.build.fragments);
                if !self.direct {
                    fingerprint.add("vm", format!("{:?}", project.vm));
                    add_config(fingerprint, &project.vm.config, &project.vm.fragments);
                    let guest_config = crate::guest::state_dir(project).join("guest.config");
                    fingerprint.add_file("guest config", &guest_config);
                }
            }
            Step::Install | Step::Reboot => {}
            Step::Verify => {
                fingerprint.add("test", format!("{:?}", project.test));
            }
        }
        Ok(())
    }

    /// Checks that what a step produced is still there. Called only when
    /// the record passed and its fingerprint matches.
    pub async fn still_holds(&mut self, step: Step, record: &StepRecord) -> Option<String> {
        let get = |name: &str| record.produced.get(name).cloned().unwrap_or_default();
        match step {
            Step::Image => (!Path::new(&get("image")).is_file())
                .then(|| format!("the cached image {} is gone", get("image"))),
            Step::Vm => {
                let instance = read_instance(self.project);
                if instance.as_deref() != Some(get("instance").as_str()) {
                    return Some("the VM was destroyed or replaced".to_string());
                }
                match vm_guest::vm_runs(self.project).await {
                    Ok(true) => {}
                    _ => return Some("the VM is not running".to_string()),
                }
                match self.guest().await {
                    Ok(_) => None,
                    Err(error) => Some(format!("the VM does not answer: {:#}", error.error)),
                }
            }
            Step::Deps | Step::Verify => None,
            Step::Source => (!Path::new(&get("tree")).is_dir())
                .then(|| format!("the kernel tree {} is gone", get("tree"))),
            Step::Patch => {
                let tree = self.optional(Step::Source, "tree").unwrap_or_default();
                self.patch_holds(&tree, &get("tree_digest"))
            }
            Step::Build => {
                let image = get("image");
                if image.is_empty() {
                    return None;
                }
                (modified(Path::new(&image)) != get("image_mtime"))
                    .then(|| format!("the kernel image {image} changed or is gone"))
            }
            Step::Install => match crate::guest::install::load(self.project) {
                Ok(Some(installed)) if installed.release == get("release") => None,
                _ => Some("the install record changed".to_string()),
            },
            Step::Reboot => {
                let release = get("release");
                let guest = match self.guest().await {
                    Ok(guest) => guest,
                    Err(_) => return Some("the VM does not answer".to_string()),
                };
                let boot_id = tokio::task::block_in_place(|| guest.session.boot_id()).ok();
                let running = guest.capture(&["uname", "-r"]).ok();
                let same_boot = boot_id.as_deref() == Some(get("boot_id").as_str());
                let same_kernel = running.as_deref().map(str::trim) == Some(release.as_str());
                (!(same_boot && same_kernel))
                    .then(|| format!("the VM no longer runs linux {release} in the same boot"))
            }
        }
    }

    fn patch_holds(&mut self, tree: &str, recorded: &str) -> Option<String> {
        match self.current_tree_digest(tree) {
            Ok(digest) if digest == recorded => None,
            Ok(_) => Some("files in the kernel tree changed".to_string()),
            Err(error) => Some(format!("the kernel tree cannot be read: {error:#}")),
        }
    }

    fn current_tree_digest(&mut self, tree: &str) -> anyhow::Result<String> {
        if let Some(digest) = &self.tree_digest {
            return Ok(digest.clone());
        }
        let digest = tree_digest(self.project, Path::new(tree))?;
        self.tree_digest = Some(digest.clone());
        Ok(digest)
    }

    /// Runs one step.
    pub async fn run(&mut self, step: Step, timeout: Duration) -> Result<Done, CommandError> {
        match step {
            Step::Image => self.image().await,
            Step::Vm => self.vm().await,
            Step::Deps => self.deps().await,
            Step::Source => self.source().await,
            Step::Patch => self.patch(),
            Step::Build => self.build().await,
            Step::Install => self.install().await,
            Step::Reboot => self.reboot(timeout).await,
            Step::Verify if self.direct => self.verify_direct().await,
            Step::Verify => self.verify_in_vm().await,
        }
    }

    async fn image(&mut self) -> Result<Done, CommandError> {
        let profile = self.profile()?.clone();
        let image = up::fetch(&profile, false)
            .await
            .phase(ExitCode::Infrastructure)?;
        let done = Done::of(&[
            ("image", image.path.display().to_string()),
            ("digest", image.digest.clone()),
        ]);
        self.image = Some(image);
        Ok(done)
    }

    async fn vm(&mut self) -> Result<Done, CommandError> {
        let profile = self.profile()?.clone();
        let image = match self.image.take() {
            Some(image) => image,
            None => up::fetch(&profile, false)
                .await
                .phase(ExitCode::Infrastructure)?,
        };
        let options = UpOptions {
            allow_unverified: false,
            accel: self.accel,
            boot_timeout: up::DEFAULT_BOOT_TIMEOUT,
        };
        let booted = up::boot(self.project, &profile, &image, &options)
            .await
            .phase(ExitCode::Infrastructure)?;
        let instance = instance_id(self.project).phase(ExitCode::Infrastructure)?;
        self.guest = None;
        // Only what stays the same while the VM does: the steps after this
        // one hash it, so the SSH port of this boot must not be here.
        Ok(Done::of(&[
            ("vm", booted.vm.name.clone()),
            ("backend", booted.vm.machine.backend().name().to_string()),
            ("instance", instance),
            (
                "console_log",
                booted.state.console_log.display().to_string(),
            ),
        ]))
    }

    async fn deps(&mut self) -> Result<Done, CommandError> {
        let profile = self.profile()?.clone();
        let project = self.project;
        let guest = self.guest().await?;
        let provisioned =
            up::provision_vm(project, &profile, &guest.session).phase(ExitCode::Infrastructure)?;
        if !provisioned.installed.is_empty() {
            ui::status(
                "Installed",
                format!(
                    "{} packages: {}",
                    provisioned.installed.len(),
                    provisioned.installed.join(" ")
                ),
            );
        }
        // Not the installed packages: a rerun installs none, and the
        // steps after this one hash what it produced.
        Ok(Done::of(&[
            ("cpus", provisioned.resources.cpus.to_string()),
            (
                "memory_mib",
                (provisioned.resources.memory_kib / 1024).to_string(),
            ),
            (
                "log",
                project
                    .log_dir()
                    .join("provision.log")
                    .display()
                    .to_string(),
            ),
        ]))
    }

    async fn source(&mut self) -> Result<Done, CommandError> {
        let tree = source::kernel_tree(self.project)
            .await
            .phase(ExitCode::Usage)?;
        let version = kernel_version(&tree).unwrap_or_else(|| "unknown".to_string());
        ui::status(
            "Found",
            format!("linux {version} source in {}", tree.display()),
        );
        Ok(Done::of(&[
            ("tree", tree.display().to_string()),
            ("version", version),
        ]))
    }

    fn patch(&mut self) -> Result<Done, CommandError> {
        let tree = PathBuf::from(self.value(Step::Source, "tree")?);
        let number = super::super::patch::apply(self.project, &tree)?;
        let digest = tree_digest(self.project, &tree).phase(ExitCode::Infrastructure)?;
        self.tree_digest = Some(digest.clone());
        let diff = self.project.state_dir().join("patch").join("applied.diff");
        Ok(Done::of(&[
            ("number", number.to_string()),
            ("tree_digest", digest),
            ("diff", diff.display().to_string()),
        ]))
    }

    async fn build(&mut self) -> Result<Done, CommandError> {
        let project = self.project;
        let tree = PathBuf::from(self.value(Step::Source, "tree")?);
        let options = BuildOptions { jobs: self.jobs };
        let with_template =
            |error: anyhow::Error| super::super::build::point_at_template(project, error);
        if self.direct {
            let built = build::build(project, &tree, &options)
                .await
                .map_err(with_template)
                .phase(ExitCode::BuildFailed)?;
            return Ok(Done::of(&[
                ("release", built.release),
                ("image", built.image.display().to_string()),
                ("image_mtime", modified(&built.image)),
                ("log", built.log.display().to_string()),
            ]));
        }
        let mode = self.build_mode();
        let guest = self.guest().await?;
        let staged = vm_guest::build_staged(project, &tree, guest, &options, mode)
            .await
            .map_err(|error| error.map(with_template))?;
        let image = match mode {
            Mode::OnHost => project
                .build
                .vm_dir()
                .join(project.kernel.arch.kernel_image()),
            _ => PathBuf::new(),
        };
        let image_text = if image.as_os_str().is_empty() {
            String::new()
        } else {
            image.display().to_string()
        };
        Ok(Done::of(&[
            ("release", staged.release),
            ("built_on", staged.built_on.to_string()),
            (
                "image_mtime",
                if image_text.is_empty() {
                    String::new()
                } else {
                    modified(&image)
                },
            ),
            ("image", image_text),
            ("log", staged.log.display().to_string()),
        ]))
    }

    async fn install(&mut self) -> Result<Done, CommandError> {
        let staged = Staged {
            release: self.value(Step::Build, "release")?,
            log: PathBuf::from(self.value(Step::Build, "log")?),
            built_on: if self.value(Step::Build, "built_on")? == "guest" {
                "guest"
            } else {
                "host"
            },
        };
        let number = self.syscall_number()?;
        let project = self.project;
        let guest = self.guest().await?;
        let log = vm_guest::install_staged(project, guest, &staged, number)?;
        let installed = vm_guest::installed_record(project)?;
        Ok(Done::of(&[
            ("release", installed.release),
            ("entry", installed.entry),
            ("fallback", installed.fallback),
            ("log", log.display().to_string()),
        ]))
    }

    async fn reboot(&mut self, timeout: Duration) -> Result<Done, CommandError> {
        let project = self.project;
        let installed = vm_guest::installed_record(project)?;
        let guest = self.guest().await?;
        let requested = vm_guest::reboot_if_needed(project, guest, &installed, timeout).await?;
        match requested {
            Some(started) => ui::status(
                "Rebooted",
                format!(
                    "into linux {} in {}",
                    installed.release,
                    ui::seconds(started.elapsed())
                ),
            ),
            None => ui::status(
                "Running",
                format!("linux {} already, since the install", installed.release),
            ),
        }
        let boot_id = tokio::task::block_in_place(|| guest.session.boot_id())
            .phase(ExitCode::Infrastructure)?;
        Ok(Done::of(&[
            ("release", installed.release),
            ("boot_id", boot_id),
            ("console_log", guest.console_log().display().to_string()),
        ]))
    }

    async fn verify_in_vm(&mut self) -> Result<Done, CommandError> {
        let project = self.project;
        let installed = vm_guest::installed_record(project)?;
        let guest = self.guest().await?;
        let checks = vm_guest::run_checks(project, guest, &installed)?;
        let records: Vec<CheckRecord> = checks
            .checks
            .iter()
            .map(|check| CheckRecord {
                name: check.name.to_string(),
                status: state_word(check.state).to_string(),
                detail: check.detail.clone(),
            })
            .collect();
        let failed = !checks.passed();
        if failed {
            self.console_tail = Some(tail_of(&guest.console_log()));
        }
        self.verdict = Some(checks.verdict.clone());
        self.checks = records.clone();
        let mut done = Done::of(&verdict_values(&checks.verdict));
        done.checks = records;
        done.checks_failed = failed;
        Ok(done)
    }

    async fn verify_direct(&mut self) -> Result<Done, CommandError> {
        let project = self.project;
        let image = PathBuf::from(self.value(Step::Build, "image")?);
        let number = self.syscall_number()?;
        let options = DirectOptions {
            accel: self.accel,
            timeout: None,
        };
        ui::status("Booting", format!("{} with QEMU", image.display()));
        let started = Instant::now();
        let report = verify::verify_direct(project, &image, number, &options)
            .await
            .phase(ExitCode::Infrastructure)?;

        let release = report
            .release
            .clone()
            .unwrap_or_else(|| "unknown".to_string());
        let name = &project.syscall.name;
        let boot = CheckRecord {
            name: "boot".to_string(),
            status: "pass".to_string(),
            detail: format!(
                "linux {release} reached /init with {} in {}",
                report.accel,
                ui::seconds(started.elapsed())
            ),
        };
        let syscall = match &report.verdict {
            Verdict::Passed { actual } => CheckRecord {
                name: "syscall".to_string(),
                status: "pass".to_string(),
                detail: format!("{name} (nr {number}) returned {actual}"),
            },
            Verdict::Failed { reason, .. } => CheckRecord {
                name: "syscall".to_string(),
                status: "fail".to_string(),
                detail: reason.clone(),
            },
        };

        let failed = syscall.status == "fail";
        for check in [&boot, &syscall] {
            ui::result(format!(
                "{} {:<10} {}",
                check.status.to_uppercase(),
                check.name,
                check.detail
            ));
        }
        if failed {
            self.console_tail = Some(tail_of(&report.console_log));
        }
        self.verdict = Some(report.verdict.clone());
        self.checks = vec![boot, syscall];

        let mut values = verdict_values(&report.verdict);
        values.push(("release", release));
        values.push(("console_log", report.console_log.display().to_string()));
        values.push(("accel", report.accel.to_string()));
        let mut done = Done::of(&values);
        done.checks = self.checks.clone();
        done.checks_failed = failed;
        Ok(done)
    }
}

fn state_word(state: crate::guest::check::State) -> &'static str {
    use crate::guest::check::State;
    match state {
        State::Pass => "pass",
        State::Fail => "fail",
        State::Skip => "skip",
    }
}

fn verdict_values(verdict: &Verdict) -> Vec<(&'static str, String)> {
    match verdict {
        Verdict::Passed { actual } => {
            vec![("verdict", "pass".into()), ("actual", actual.to_string())]
        }
        Verdict::Failed {
            actual, errno_name, ..
        } => {
            let mut values = vec![("verdict", "fail".to_string())];
            if let Some(actual) = actual {
                values.push(("actual", actual.to_string()));
            }
            if let Some(errno) = errno_name {
                values.push(("errno", errno.clone()));
            }
            values
        }
    }
}

fn add_template(fingerprint: &mut Fingerprint, template: &TemplateRef) {
    match template {
        TemplateRef::Builtin(name) => fingerprint.add("template", name),
        TemplateRef::File(path) => fingerprint.add_file("template", path),
    };
}

fn add_config(fingerprint: &mut Fingerprint, base: &ConfigBase, fragments: &[TemplateRef]) {
    if let ConfigBase::File(path) = base {
        fingerprint.add_file("config file", path);
    }
    for fragment in fragments {
        add_template(fingerprint, fragment);
    }
}

/// Returns the tree's digest without the project's build folders.
fn tree_digest(project: &Project, tree: &Path) -> anyhow::Result<String> {
    let absolute = |path: &Path| std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let tree = absolute(tree);
    let skip = [
        absolute(&project.build.dir),
        absolute(&project.build.vm_dir()),
        absolute(&project.state_dir()),
    ];
    tokio::task::block_in_place(|| crate::guest::sync::tree_digest(&tree, &skip))
}

/// Returns a file's modification time in nanoseconds, or "" when it is missing.
fn modified(path: &Path) -> String {
    std::fs::metadata(path)
        .and_then(|meta| meta.modified())
        .ok()
        .and_then(|time| time.duration_since(UNIX_EPOCH).ok())
        .map_or_else(String::new, |since| since.as_nanos().to_string())
}

/// Reads `VERSION.PATCHLEVEL.SUBLEVEL` from the tree's top Makefile.
fn kernel_version(tree: &Path) -> Option<String> {
    let makefile = std::fs::read_to_string(tree.join("Makefile")).ok()?;
    let value = |name: &str| {
        makefile.lines().find_map(|line| {
            let (key, value) = line.split_once('=')?;
            (key.trim() == name).then(|| value.trim().to_string())
        })
    };
    Some(format!(
        "{}.{}.{}{}",
        value("VERSION")?,
        value("PATCHLEVEL")?,
        value("SUBLEVEL")?,
        value("EXTRAVERSION").unwrap_or_default()
    ))
}

fn read_instance(project: &Project) -> Option<String> {
    let text = std::fs::read_to_string(vm_dir(project).join(INSTANCE_FILE)).ok()?;
    Some(text.trim().to_string())
}

/// Returns the VM's instance id, writing a new one for a new VM.
fn instance_id(project: &Project) -> anyhow::Result<String> {
    if let Some(id) = read_instance(project).filter(|id| !id.is_empty()) {
        return Ok(id);
    }
    let mut bytes = [0u8; 8];
    getrandom(&mut bytes);
    let id: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    build::write_atomically(&vm_dir(project).join(INSTANCE_FILE), id.as_bytes())?;
    Ok(id)
}

/// Fills `bytes` from the clock and the process id: an id that a later VM
/// of the same project does not repeat, not a secret.
fn getrandom(bytes: &mut [u8]) {
    use sha2::{Digest, Sha256};
    let now = std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let digest = Sha256::digest(format!("{now}-{}", std::process::id()));
    bytes.copy_from_slice(&digest[..bytes.len()]);
}

/// Returns the last console lines of a log file.
pub fn tail_of(path: &Path) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(CONSOLE_TAIL_LINES);
    lines[start..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_version_reads_the_makefile() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("Makefile"),
            "# SPDX\nVERSION = 6\nPATCHLEVEL = 1\nSUBLEVEL = 158\nEXTRAVERSION =\nNAME = x\n",
        )
        .unwrap();
        assert_eq!(kernel_version(dir.path()).as_deref(), Some("6.1.158"));
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let text: String = (0..100).map(|n| format!("line {n}\n")).collect();
        std::fs::write(&path, text).unwrap();
        let tail = tail_of(&path);
        assert!(tail.starts_with("line 60\n"), "{tail}");
        assert!(tail.ends_with("line 99"));
    }
}
