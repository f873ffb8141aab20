//! Applies and reverts the syscall on the real Linux 6.1 files that kbuild
//! edits, copied into a temporary tree.
//!
//! The source is Debian's linux-source-6.1, unpacked once into the test
//! cache (see tests/support).

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use kbuild::patch::{apply, revert, syscall_number};
use kbuild::project::{Arch, Project};

const TABLE: &str = "arch/x86/entry/syscalls/syscall_64.tbl";
const FILES: &[&str] = &[
    "Makefile",
    TABLE,
    "kernel/Makefile",
    "include/linux/syscalls.h",
];

fn source_tree() -> PathBuf {
    support::pristine_tree()
}

/// Copies the files kbuild reads from `source` into `target`.
fn copy_files(source: &Path, target: &Path) {
    for file in FILES {
        let destination = target.join(file);
        std::fs::create_dir_all(destination.parent().unwrap()).unwrap();
        std::fs::copy(source.join(file), &destination).unwrap();
    }
}

/// Reads every file under `dir` by relative path.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let relative = path.strip_prefix(dir).unwrap().to_path_buf();
                files.insert(relative, std::fs::read(&path).unwrap());
            }
        }
    }
    files
}

fn load_project(root: &Path, tree: &Path) -> Project {
    let text = format!(
        "[syscall]\nname = \"kbuild_add\"\n\
         args = [{{ type = \"long\", name = \"a\" }}, {{ type = \"long\", name = \"b\" }}]\n\
         [test]\nargs = [20, 22]\nexpect = 42\n\
         [kernel]\nsource = {:?}\n",
        tree.display().to_string()
    );
    let path = root.join("kbuild.toml");
    std::fs::write(&path, text).unwrap();
    Project::load(&path).unwrap()
}

fn run_patch(diff: &Path, dir: &Path, dry_run: bool) -> std::process::Output {
    let mut command = Command::new("patch");
    command
        .args(["-p1", "--batch", "-i"])
        .arg(diff)
        .current_dir(dir);
    if dry_run {
        command.arg("--dry-run");
    }
    command.output().unwrap()
}

#[test]
fn real_tree_apply_and_revert() {
    let source = source_tree();
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("linux");
    let pristine = dir.path().join("pristine");
    copy_files(&source, &tree);
    copy_files(&source, &pristine);
    let project = load_project(dir.path(), &tree);
    let before = snapshot(&tree);

    let applied = apply(&project, &tree).unwrap();
    assert_eq!(applied.number, 451);
    let table = std::fs::read_to_string(tree.join(TABLE)).unwrap();
    let line = "\n451\tcommon\tkbuild_add\t\tsys_kbuild_add\n";
    assert!(
        table.contains(&format!("sys_set_mempolicy_home_node{line}")),
        "{table}"
    );
    assert_eq!(
        syscall_number(&tree, Arch::X86_64, "kbuild_add").unwrap(),
        Some(451)
    );

    let dry_run = run_patch(&applied.diff, &pristine, true);
    assert!(
        dry_run.status.success(),
        "{}",
        String::from_utf8_lossy(&dry_run.stdout)
    );
    let real_run = run_patch(&applied.diff, &pristine, false);
    assert!(
        real_run.status.success(),
        "{}",
        String::from_utf8_lossy(&real_run.stdout)
    );
    assert_eq!(snapshot(&pristine), snapshot(&tree));

    let reverted = revert(&project, &tree).unwrap();
    assert!(reverted.changed);
    assert_eq!(snapshot(&tree), before);
}
