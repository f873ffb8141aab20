//! Builds a real Linux 6.1 tree with tinyconfig and the boot fragment.
//!
//! The tree is a hard-link copy of Debian's linux-source-6.1, unpacked once
//! into the test cache (see tests/support). The build folder is kept between
//! runs too, so only the first run takes the few minutes of a full build.

use std::path::Path;

use kbuild::build::{build, BuildOptions, Built};
use kbuild::project::Project;

mod support;

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
    let project = support::plain_project();
    let tree = project.kernel.source.clone();
    let build_dir = project.build.dir.clone();

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
