//! Shared set-up for tests that need a real kernel tree: Debian's
//! linux-source-6.1 tarball, unpacked once into a cache folder outside the
//! repository and reused between runs.
#![allow(dead_code)]

use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The kernel tarball the tests use; `KBUILD_TEST_TARBALL` overrides it.
pub fn tarball() -> PathBuf {
    let path = std::env::var_os("KBUILD_TEST_TARBALL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/src/linux-source-6.1.tar.xz"));
    assert!(
        path.is_file(),
        "kernel tarball {} not found: install it with `sudo scripts/install-host-tools.sh` \
         (Debian's linux-source-6.1), or set KBUILD_TEST_TARBALL",
        path.display()
    );
    path
}

/// The cache folder for unpacked trees and ccache; `KBUILD_TEST_CACHE` overrides it.
pub fn cache_dir() -> PathBuf {
    let dir = std::env::var_os("KBUILD_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(default_cache_dir);
    std::fs::create_dir_all(&dir).expect("creating the test cache folder");
    dir
}

fn default_cache_dir() -> PathBuf {
    if unsafe { libc::geteuid() } == 0 {
        PathBuf::from("/var/cache/kbuild-test")
    } else {
        let home = std::env::var_os("HOME").expect("HOME is not set");
        PathBuf::from(home).join(".cache/kbuild-test")
    }
}

/// Holds an exclusive lock on a file in the cache folder until dropped.
pub struct CacheLock(File);

pub fn lock_cache(name: &str) -> CacheLock {
    let path = cache_dir().join(format!("{name}.lock"));
    let file = File::create(&path).expect("creating the cache lock file");
    let status = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(status, 0, "locking {}", path.display());
    CacheLock(file)
}

/// Returns the pristine tree, unpacking the tarball on first use. The key is
/// the tarball's name, size and modification time, so a new package version
/// unpacks anew. Tests must never change this tree: use `work_tree`.
pub fn pristine_tree() -> PathBuf {
    let tarball = tarball();
    let metadata = std::fs::metadata(&tarball).expect("reading tarball metadata");
    let modified = metadata
        .modified()
        .expect("tarball modification time")
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time after 1970")
        .as_secs();
    let name = tarball
        .file_name()
        .unwrap()
        .to_string_lossy()
        .replace(".tar.xz", "");
    let key = format!("{name}-{}-{modified}", metadata.len());
    let tree = cache_dir().join("trees").join(&key);

    let _lock = lock_cache("trees");
    if tree.join("Makefile").is_file() {
        return tree;
    }
    let staging = cache_dir().join("trees").join(format!(".{key}.unpacking"));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).expect("creating the staging folder");
    run(Command::new("tar")
        .arg("-xf")
        .arg(&tarball)
        .arg("-C")
        .arg(&staging)
        .arg("--strip-components=1"));
    std::fs::rename(&staging, &tree).expect("moving the unpacked tree into place");
    tree
}

/// Makes a copy of the pristine tree at `dest` out of hard links: instant,
/// and safe because kbuild replaces files by rename instead of writing in place.
pub fn work_tree(dest: &Path) -> PathBuf {
    let pristine = pristine_tree();
    run(Command::new("cp").arg("-al").arg(&pristine).arg(dest));
    dest.to_path_buf()
}

/// Runs a set-up command and panics with its output if it fails.
pub fn run(command: &mut Command) {
    let output = command.output().expect("starting a set-up command");
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Returns a hard-link copy of the pristine tree at `cache_dir()/NAME`, made
/// once and kept between runs. Builds that reuse it stay incremental.
pub fn cached_tree(name: &str) -> PathBuf {
    let pristine = pristine_tree();
    let copy = cache_dir().join(name);
    let _lock = lock_cache("trees");
    if !copy.join("Makefile").is_file() {
        let partial = cache_dir().join(format!("{name}.partial"));
        let _ = std::fs::remove_dir_all(&partial);
        run(Command::new("cp").arg("-al").arg(&pristine).arg(&partial));
        std::fs::rename(&partial, &copy).expect("moving the tree copy into place");
    }
    copy
}

/// Writes the project of the cached, unpatched tinyconfig kernel and loads it.
pub fn plain_project() -> kbuild::project::Project {
    let tree = cached_tree("linux-6.1");
    let build_dir = cache_dir().join("build-tinyconfig");
    let dir = cache_dir().join("project-tinyconfig");
    std::fs::create_dir_all(&dir).expect("creating the project folder");
    let text = format!(
        "[syscall]\nname = \"kbuild_test\"\n\n[kernel]\nsource = {tree:?}\n\n\
         [build]\nconfig = \"tinyconfig\"\nccache = \"off\"\ndir = {build_dir:?}\n"
    );
    let path = dir.join("kbuild.toml");
    std::fs::write(&path, text).expect("writing kbuild.toml");
    kbuild::project::Project::load(&path).expect("loading kbuild.toml")
}

/// Builds (or finds up to date) the unpatched tinyconfig kernel and returns
/// its bzImage. The first run takes a few minutes; later runs are no-op builds.
pub async fn plain_kernel() -> PathBuf {
    let project = plain_project();
    let _lock = lock_cache("plain-kernel");
    let options = kbuild::build::BuildOptions::default();
    match kbuild::build::build(&project, &project.kernel.source, &options).await {
        Ok(built) => built.image,
        Err(error) => panic!("building the plain kernel failed: {error:#}"),
    }
}

/// Runs the kbuild binary on one project with a test's own home and cache
/// folders, as CI does, and echoes each run's output for failing tests.
pub struct Kbuild {
    pub project: PathBuf,
    pub home: PathBuf,
}

impl Kbuild {
    pub fn run(&self, args: &[&str]) -> Output {
        self.run_with_env(args, &[])
    }

    /// Runs kbuild with extra environment variables, such as a PATH.
    pub fn run_with_env(&self, args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> Output {
        let output = Command::new(env!("CARGO_BIN_EXE_kbuild"))
            .envs(env.iter().copied())
            .arg("--project")
            .arg(&self.project)
            .args(args)
            .env("CI", "true")
            .env("HOME", &self.home)
            .env("KBUILD_CACHE_DIR", self.home.join("cache"))
            .env("CCACHE_DIR", cache_dir().join("ccache"))
            // Each run's tree and build folder are new temporary folders, so
            // ccache must hash paths relative to them to hit its cache.
            .env(
                "CCACHE_BASEDIR",
                self.project.parent().expect("project folder"),
            )
            .output()
            .expect("starting kbuild");
        eprintln!(
            "$ kbuild {}\nexit: {:?}\n--- stdout\n{}--- stderr\n{}",
            args.join(" "),
            output.status.code(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }
}

/// Checks a `kbuild run` JSON report against docs/run-report.schema.json and
/// reads the JUnit file with junitparser (tests/support/check_reports.py),
/// then returns the report and the JUnit summary. Needs Debian's
/// python3-jsonschema and python3-junitparser, which .ci/run installs.
pub fn check_reports(report: &Path, junit: &Path) -> (serde_json::Value, serde_json::Value) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = Command::new("/usr/bin/python3")
        .arg(root.join("tests/support/check_reports.py"))
        .arg(root.join("docs/run-report.schema.json"))
        .arg(report)
        .arg(junit)
        .output()
        .expect("starting /usr/bin/python3 (apt-get install python3)");
    assert!(
        output.status.success(),
        "the reports do not pass their checks:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary = serde_json::from_slice(&output.stdout).expect("summary JSON");
    let text = std::fs::read_to_string(report).expect("reading the JSON report");
    (serde_json::from_str(&text).expect("report JSON"), summary)
}

/// Returns the status of each step in a report, as `name=status` in order.
pub fn step_statuses(report: &serde_json::Value) -> Vec<String> {
    report["steps"]
        .as_array()
        .expect("steps array")
        .iter()
        .map(|step| {
            format!(
                "{}={}",
                step["name"].as_str().unwrap(),
                step["status"].as_str().unwrap()
            )
        })
        .collect()
}
