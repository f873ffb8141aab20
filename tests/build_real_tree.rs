//! Builds a real Linux 6.1 tree with tinyconfig and the boot fragment.
//!
//! The tree is `KBUILD_TEST_TREE`, or a hard-link copy of the development
//! machines' pristine tree. The build folder lives under `KBUILD_TEST_CACHE`
//! (default `/var/cache/kbuild-test`) and is kept between runs, so only the
//! first run takes the few minutes of a full build.

use std::path::{Path, PathBuf};
use std::process::Command;

use kbuild::build::{build, BuildOptions, Built};
use kbuild::project::Project;

const PRISTINE_TREE: &str = "/var/cache/kbuild-dev/linux-source-6.1";

fn cache_dir() -> PathBuf {
    std::env::var_os("KBUILD_TEST_CACHE")
        .map_or_else(|| PathBuf::from("/var/cache/kbuild-test"), PathBuf::from)
}

/// Returns the tree to build, or `None` when no tree is available here.
fn test_tree() -> Option<PathBuf> {
    if let Some(tree) = std::env::var_os("KBUILD_TEST_TREE") {
        return Some(PathBuf::from(tree));
    }
    if !Path::new(PRISTINE_TREE).join("Makefile").is_file() {
        return None;
    }
    let copy = cache_dir().join("linux-6.1");
    if !copy.join("Makefile").is_file() {
        std::fs::create_dir_all(cache_dir()).unwrap();
        let partial = cache_dir().join("linux-6.1.partial");
        let _ = std::fs::remove_dir_all(&partial);
        let status = Command::new("cp")
            .arg("-al")
            .arg(PRISTINE_TREE)
            .arg(&partial)
            .status()
            .unwrap();
        assert!(status.success(), "cp -al {PRISTINE_TREE} failed");
        std::fs::rename(&partial, &copy).unwrap();
    }
    Some(copy)
}

/// Writes a project whose build folder is `build_dir` and loads it.
fn project(name: &str, tree: &Path, build_dir: &Path) -> Project {
    let dir = cache_dir().join(format!("project-{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    let text = format!(
        "[syscall]\nname = \"kbuild_test\"\n\n[kernel]\nsource = {tree:?}\n\n\
         [build]\nconfig = \"tinyconfig\"\nccache = \"off\"\ndir = {build_dir:?}\n"
    );
    let path = dir.join("kbuild.toml");
    std::fs::write(&path, text).unwrap();
    Project::load(&path).unwrap()
}

async fn build_with_default_jobs(project: &Project, tree: &Path) -> Built {
    match build(project, tree, &BuildOptions::default()).await {
        Ok(built) => built,
        Err(error) => panic!("build failed: {error:#}"),
    }
}

/// Lists the `CONFIG_X=value` lines of the built-in boot fragment.
fn boot_options() -> Vec<&'static str> {
    let (_, text) = kbuild::template::KCONFIG_FRAGMENTS
        .iter()
        .find(|(name, _)| *name == "boot")
        .unwrap();
    text.lines()
        .filter(|line| line.starts_with("CONFIG_"))
        .collect()
}

#[tokio::test]
async fn tinyconfig_build_then_noop_rebuild() {
    let Some(tree) = test_tree() else {
        eprintln!("skipped: no kernel tree at {PRISTINE_TREE} and KBUILD_TEST_TREE unset");
        return;
    };
    let build_dir = cache_dir().join("build-tinyconfig");
    let project = project("tinyconfig", &tree, &build_dir);

    let first = build_with_default_jobs(&project, &tree).await;
    assert!(first.image.is_file(), "{} missing", first.image.display());
    assert!(
        first.release.starts_with("6.1"),
        "release {}",
        first.release
    );
    assert!(first.log.is_file(), "{} missing", first.log.display());

    let config_path = build_dir.join(".config");
    let config = std::fs::read_to_string(&config_path).unwrap();
    let lines: Vec<&str> = config.lines().collect();
    for option in boot_options() {
        assert!(
            lines.contains(&option),
            "{option} missing from {}",
            config_path.display()
        );
    }

    let modified = std::fs::metadata(&config_path).unwrap().modified().unwrap();
    let second = build_with_default_jobs(&project, &tree).await;
    assert_eq!(
        second.compiled,
        0,
        "rebuild compiled objects; see {}",
        second.log.display()
    );
    let modified_again = std::fs::metadata(&config_path).unwrap().modified().unwrap();
    assert_eq!(
        modified,
        modified_again,
        "rebuild rewrote {}",
        config_path.display()
    );
    assert_eq!(std::fs::read_to_string(&config_path).unwrap(), config);
}
