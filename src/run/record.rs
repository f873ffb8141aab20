//! The record of each step of `kbuild run`: its outputs and the fingerprint
//! of its inputs, kept in `.kbuild/run/<mode>.json` so that a later run can skip
//! the steps that are still valid.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Step;

/// Format version of the record file; a file of another version counts as empty.
const FORMAT_VERSION: u32 = 1;

/// Whether a step finished its work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Passed,
    Failed,
}

/// One check of the verify step, as the report and the record keep it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckRecord {
    pub name: String,
    /// `pass`, `fail` or `skip`.
    pub status: String,
    pub detail: String,
}

/// The record of one step's last run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub fingerprint: String,
    pub outcome: Outcome,
    /// RFC 3339 time the step ended.
    pub finished_at: String,
    pub duration_s: f64,
    /// The step's outputs by name: paths, versions, numbers.
    pub produced: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<CheckRecord>,
}

/// All step records of one mode of one project.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Records {
    version: u32,
    steps: BTreeMap<String, StepRecord>,
}

impl Records {
    /// Returns the record file of a mode: `vm.json` or `direct.json`.
    pub fn path(state_dir: &Path, direct: bool) -> PathBuf {
        let name = if direct { "direct.json" } else { "vm.json" };
        state_dir.join("run").join(name)
    }

    /// Reads the records; a missing file or one of another format is empty.
    pub fn load(path: &Path) -> anyhow::Result<Records> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Records::empty())
            }
            Err(error) => {
                return Err(error).with_context(|| {
                    format!(
                        "reading run records {}; remove it, and the next run starts over",
                        path.display()
                    )
                })
            }
        };
        match serde_json::from_str::<Records>(&text) {
            Ok(records) if records.version == FORMAT_VERSION => Ok(records),
            Ok(records) => {
                crate::ui::warn(format!(
                    "run records {} have format {} (this kbuild writes {FORMAT_VERSION}); \
                     every step runs again",
                    path.display(),
                    records.version
                ));
                Ok(Records::empty())
            }
            Err(error) => {
                crate::ui::warn(format!(
                    "run records {} are damaged ({error}); every step runs again",
                    path.display()
                ));
                Ok(Records::empty())
            }
        }
    }

    pub fn empty() -> Records {
        Records {
            version: FORMAT_VERSION,
            steps: BTreeMap::new(),
        }
    }

    pub fn get(&self, step: Step) -> Option<&StepRecord> {
        self.steps.get(step.name())
    }

    pub fn set(&mut self, step: Step, record: StepRecord) {
        self.steps.insert(step.name().to_string(), record);
    }

    /// Writes the records through a temporary file and a rename.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let text = serde_json::to_string_pretty(self).context("serializing the run records")?;
        crate::build::write_atomically(path, text.as_bytes())
    }
}

/// Builds a step's fingerprint from named inputs, in the order given.
pub struct Fingerprint {
    hasher: Sha256,
}

impl Fingerprint {
    /// Starts a fingerprint for `step`, which covers kbuild's version, so
    /// that a new kbuild reruns every step once.
    pub fn new(step: Step) -> Fingerprint {
        let mut fingerprint = Fingerprint {
            hasher: Sha256::new(),
        };
        fingerprint.add("kbuild", env!("CARGO_PKG_VERSION"));
        fingerprint.add("step", step.name());
        fingerprint
    }

    /// Adds one input; the name keeps equal values of different inputs apart.
    pub fn add(&mut self, name: &str, value: impl AsRef<[u8]>) -> &mut Fingerprint {
        let value = value.as_ref();
        for part in [name.as_bytes(), value] {
            self.hasher.update((part.len() as u64).to_le_bytes());
            self.hasher.update(part);
        }
        self
    }

    /// Adds the contents of a file, or a marker when it does not exist.
    pub fn add_file(&mut self, name: &str, path: &Path) -> &mut Fingerprint {
        match std::fs::read(path) {
            Ok(bytes) => self.add(name, bytes),
            Err(_) => self.add(name, format!("missing {}", path.display())),
        }
    }

    /// Adds an earlier step's record: its fingerprint and what it produced,
    /// except its log file, whose name changes with every run of the step.
    pub fn add_record(&mut self, step: Step, record: Option<&StepRecord>) -> &mut Fingerprint {
        match record {
            Some(record) => {
                let mut produced = record.produced.clone();
                produced.remove("log");
                let produced = serde_json::to_string(&produced).unwrap_or_default();
                self.add(step.name(), &record.fingerprint);
                self.add(step.name(), produced)
            }
            None => self.add(step.name(), "no record"),
        }
    }

    pub fn finish(&self) -> String {
        let digest = self.hasher.clone().finalize();
        digest.iter().map(|byte| format!("{byte:02x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(fingerprint: &str) -> StepRecord {
        StepRecord {
            fingerprint: fingerprint.to_string(),
            outcome: Outcome::Passed,
            finished_at: "2026-12-04T00:00:00Z".to_string(),
            duration_s: 1.5,
            produced: BTreeMap::from([("release".to_string(), "6.1.0".to_string())]),
            checks: Vec::new(),
        }
    }

    #[test]
    fn fingerprint_depends_on_names_values_and_earlier_records() {
        let base = Fingerprint::new(Step::Build).add("config", "tiny").finish();
        assert_eq!(
            base,
            Fingerprint::new(Step::Build).add("config", "tiny").finish()
        );
        assert_ne!(
            base,
            Fingerprint::new(Step::Build)
                .add("config", "tinyx")
                .finish()
        );
        assert_ne!(
            base,
            Fingerprint::new(Step::Build).add("confi", "gtiny").finish()
        );
        assert_ne!(
            base,
            Fingerprint::new(Step::Patch).add("config", "tiny").finish()
        );
        let mut changed = record("a");
        changed.produced.insert("release".into(), "6.1.1".into());
        let with = |r: &StepRecord| {
            Fingerprint::new(Step::Install)
                .add_record(Step::Build, Some(r))
                .finish()
        };
        assert_ne!(with(&record("a")), with(&changed));
        assert_ne!(with(&record("a")), with(&record("b")));
    }

    #[test]
    fn records_survive_a_save_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = Records::path(dir.path(), false);
        let mut records = Records::load(&path).unwrap();
        assert!(records.get(Step::Build).is_none());
        records.set(Step::Build, record("abc"));
        records.save(&path).unwrap();
        let loaded = Records::load(&path).unwrap();
        assert_eq!(loaded.get(Step::Build), Some(&record("abc")));
    }

    #[test]
    fn records_damaged_file_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = Records::path(dir.path(), true);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "{ not json").unwrap();
        assert!(Records::load(&path).unwrap().get(Step::Verify).is_none());
    }
}
