//! Apply and revert on small fixture trees.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;

const TABLE_PATH: &str = "arch/x86/entry/syscalls/syscall_64.tbl";
const TABLE: &str = include_str!("../../tests/fixtures/tables/sys_gap_x32.tbl");

const NO_NEWLINE_TABLE: &str = include_str!("../../tests/fixtures/tables/no_trailing_newline.tbl");

const KERNEL_MAKEFILE: &str = "# SPDX-License-Identifier: GPL-2.0\n\
    obj-y     = fork.o exec_domain.o panic.o \\\n\
    \t    cpu.o exit.o\n\
    \n\
    obj-$(CONFIG_MODULES) += kmod.o\n";

const SYSCALLS_H: &str = "#ifndef _LINUX_SYSCALLS_H\n\
    #define _LINUX_SYSCALLS_H\n\
    asmlinkage long sys_rseq(struct rseq __user *rseq, uint32_t rseq_len,\n\
    \t\t\t int flags, uint32_t sig);\n\
    asmlinkage long sys_set_mempolicy_home_node(unsigned long start, unsigned long len,\n\
    \t\t\t\t\t    unsigned long home_node,\n\
    \t\t\t\t\t    unsigned long flags);\n\
    \n\
    long ksys_shmdt(char __user *shmaddr);\n\
    #endif\n";

const ARGS_AB: &str = r#"[{ type = "long", name = "a" }, { type = "long", name = "b" }]"#;

/// A fixture tree and a project whose `kernel.source` points at it.
struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    tree: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture::with_table(TABLE)
    }

    fn with_table(table: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let tree = root.join("linux");
        write_tree(&tree, table);
        Fixture {
            _dir: dir,
            root,
            tree,
        }
    }

    /// Writes and loads a project file with `syscall` as its [syscall] body.
    fn project(&self, syscall: &str, test_args: &str) -> Project {
        let text = format!(
            "[syscall]\n{syscall}\n\n[test]\nargs = {test_args}\n\n[kernel]\nsource = {:?}\n",
            self.tree.display().to_string()
        );
        let path = self.root.join("kbuild.toml");
        std::fs::write(&path, text).unwrap();
        Project::load(&path).unwrap()
    }

    fn add_project(&self) -> Project {
        self.project(
            &format!("name = \"kbuild_add\"\nargs = {ARGS_AB}"),
            "[20, 22]",
        )
    }

    fn read(&self, path: &str) -> String {
        std::fs::read_to_string(self.tree.join(path)).unwrap()
    }

    fn record_dir(&self) -> PathBuf {
        self.root.join(".kbuild/patch")
    }
}

fn write_tree(tree: &Path, table: &str) {
    let files = [
        ("Makefile", "VERSION = 6\nPATCHLEVEL = 1\nSUBLEVEL = 0\n"),
        (TABLE_PATH, table),
        ("kernel/Makefile", KERNEL_MAKEFILE),
        ("include/linux/syscalls.h", SYSCALLS_H),
    ];
    for (path, text) in files {
        let path = tree.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
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

fn mtimes(tree: &Path) -> Vec<std::time::SystemTime> {
    snapshot(tree)
        .keys()
        .map(|path| {
            std::fs::metadata(tree.join(path))
                .unwrap()
                .modified()
                .unwrap()
        })
        .collect()
}

/// Applies and returns the error message, checking that the tree and the
/// record folder stayed as they were.
fn rejection(fixture: &Fixture, project: &Project) -> String {
    let before = snapshot(&fixture.tree);
    let error = apply(project, &fixture.tree).unwrap_err();
    assert_eq!(
        snapshot(&fixture.tree),
        before,
        "tree changed by a rejected apply"
    );
    assert!(!fixture.record_dir().join("manifest.toml").exists());
    assert_eq!(
        crate::exit::exit_code_of(&error, crate::exit::ExitCode::Infrastructure),
        crate::exit::ExitCode::Usage
    );
    format!("{error:#}")
}

#[test]
fn apply_adds_table_line() {
    let fixture = Fixture::new();
    let applied = apply(&fixture.add_project(), &fixture.tree).unwrap();
    assert_eq!(applied.number, 451);
    assert!(applied.changed);
    let table = fixture.read(TABLE_PATH);
    assert!(
        table.contains("home_node\n451\tcommon\tkbuild_add\t\tsys_kbuild_add\n\n#"),
        "{table}"
    );
}

#[test]
fn apply_lists_files() {
    let fixture = Fixture::new();
    let applied = apply(&fixture.add_project(), &fixture.tree).unwrap();
    let expected: Vec<PathBuf> = [
        TABLE_PATH,
        "include/linux/syscalls.h",
        "kernel/Makefile",
        "kernel/kbuild_add.c",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    let mut files = applied.files.clone();
    files.sort();
    let mut expected = expected;
    expected.sort();
    assert_eq!(files, expected);
}

#[test]
fn apply_writes_body_makefile_and_prototype() {
    let fixture = Fixture::new();
    apply(&fixture.add_project(), &fixture.tree).unwrap();
    let body = fixture.read("kernel/kbuild_add.c");
    assert!(
        body.contains("SYSCALL_DEFINE2(kbuild_add, long, a, long, b)\n{"),
        "{body}"
    );
    assert!(body.contains("long result = (long)a + (long)b;"), "{body}");
    let makefile = fixture.read("kernel/Makefile");
    assert!(
        makefile.contains("cpu.o exit.o\nobj-y += kbuild_add.o\n\n"),
        "{makefile}"
    );
    let header = fixture.read("include/linux/syscalls.h");
    let prototype = "unsigned long flags);\nasmlinkage long sys_kbuild_add(long a, long b);\n";
    assert!(header.contains(prototype), "{header}");
}

#[test]
fn apply_twice_touches_nothing() {
    let fixture = Fixture::new();
    let project = fixture.add_project();
    apply(&project, &fixture.tree).unwrap();
    let record = fixture.record_dir();
    let before = (
        snapshot(&fixture.tree),
        mtimes(&fixture.tree),
        mtimes(&record),
    );
    std::thread::sleep(std::time::Duration::from_millis(20));
    let again = apply(&project, &fixture.tree).unwrap();
    assert!(!again.changed);
    assert_eq!(snapshot(&fixture.tree), before.0);
    assert_eq!(mtimes(&fixture.tree), before.1);
    assert_eq!(mtimes(&record), before.2);
}

#[test]
fn apply_changed_body_matches_fresh_apply() {
    let fixture = Fixture::new();
    apply(&fixture.add_project(), &fixture.tree).unwrap();
    let changed = "name = \"kbuild_add\"\nargs = [{ type = \"long\", name = \"x\" }]\nnumber = 600";
    let project = fixture.project(changed, "[1]");
    let applied = apply(&project, &fixture.tree).unwrap();
    assert!(applied.changed);

    let fresh = Fixture::new();
    let fresh_applied = apply(&fresh.project(changed, "[1]"), &fresh.tree).unwrap();
    assert_eq!(applied.number, 600);
    assert_eq!(snapshot(&fixture.tree), snapshot(&fresh.tree));
    let diff = std::fs::read(&applied.diff).unwrap();
    assert_eq!(diff, std::fs::read(&fresh_applied.diff).unwrap());
}

#[test]
fn apply_renamed_syscall_drops_old_body() {
    let fixture = Fixture::new();
    apply(&fixture.add_project(), &fixture.tree).unwrap();
    let project = fixture.project(
        &format!("name = \"kbuild_sum\"\nargs = {ARGS_AB}"),
        "[1, 2]",
    );
    apply(&project, &fixture.tree).unwrap();
    assert!(!fixture.tree.join("kernel/kbuild_add.c").exists());
    let fresh = Fixture::new();
    apply(
        &fresh.project(
            &format!("name = \"kbuild_sum\"\nargs = {ARGS_AB}"),
            "[1, 2]",
        ),
        &fresh.tree,
    )
    .unwrap();
    assert_eq!(snapshot(&fixture.tree), snapshot(&fresh.tree));
}

#[test]
fn apply_after_tree_reset_patches_again() {
    let fixture = Fixture::new();
    let project = fixture.add_project();
    apply(&project, &fixture.tree).unwrap();
    std::fs::remove_dir_all(&fixture.tree).unwrap();
    write_tree(&fixture.tree, TABLE);
    let applied = apply(&project, &fixture.tree).unwrap();
    assert!(applied.changed);
    assert!(fixture.tree.join("kernel/kbuild_add.c").exists());
}

#[test]
fn apply_rejects_edit_since_apply() {
    let fixture = Fixture::new();
    let project = fixture.add_project();
    apply(&project, &fixture.tree).unwrap();
    std::fs::write(fixture.tree.join("kernel/kbuild_add.c"), "edited\n").unwrap();
    let error = apply(&project, &fixture.tree).unwrap_err().to_string();
    assert!(
        error.contains("kernel/kbuild_add.c changed since kbuild wrote it"),
        "{error}"
    );
    assert_eq!(fixture.read("kernel/kbuild_add.c"), "edited\n");
}

#[test]
fn apply_keeps_hard_linked_original() {
    let fixture = Fixture::new();
    let original = fixture.root.join("original.tbl");
    std::fs::hard_link(fixture.tree.join(TABLE_PATH), &original).unwrap();
    apply(&fixture.add_project(), &fixture.tree).unwrap();
    assert_eq!(std::fs::read_to_string(&original).unwrap(), TABLE);
}

#[test]
fn apply_without_trailing_newline() {
    let fixture = Fixture::with_table(TABLE.trim_end());
    apply(&fixture.add_project(), &fixture.tree).unwrap();
    assert!(fixture.read(TABLE_PATH).ends_with("x32-specific syscalls."));
}

#[test]
fn reject_name_in_table() {
    let fixture = Fixture::new();
    let project = fixture.project("name = \"rseq\"", "[]");
    let error = rejection(&fixture, &project);
    assert!(
        error.contains("syscall_64.tbl:9: syscall rseq is already in the table"),
        "{error}"
    );
}

#[test]
fn reject_number_in_use() {
    let fixture = Fixture::new();
    let project = fixture.project(
        &format!("name = \"kbuild_add\"\nargs = {ARGS_AB}\nnumber = 1"),
        "[1, 2]",
    );
    let error = rejection(&fixture, &project);
    assert!(
        error.contains("number 1 is already used by write"),
        "{error}"
    );
}

#[test]
fn reject_number_in_x32_range() {
    let fixture = Fixture::new();
    let syscall = format!("name = \"kbuild_add\"\nargs = {ARGS_AB}\nnumber = 520");
    let error = rejection(&fixture, &fixture.project(&syscall, "[1, 2]"));
    assert!(error.contains("range 512-547"), "{error}");
}

#[test]
fn reject_unparsable_table_line() {
    let fixture = Fixture::with_table(&TABLE.replace("334\tcommon", "33x\tcommon"));
    let error = rejection(&fixture, &fixture.add_project());
    assert!(error.contains("syscall_64.tbl:9: cannot parse"), "{error}");
    assert!(error.contains("33x\\tcommon\\trseq"), "{error}");
}

#[test]
fn reject_foreign_body_file() {
    let fixture = Fixture::new();
    std::fs::write(fixture.tree.join("kernel/kbuild_add.c"), "mine\n").unwrap();
    let error = rejection(&fixture, &fixture.add_project());
    assert!(
        error.contains("kernel/kbuild_add.c already exists and kbuild did not write it"),
        "{error}"
    );
}

#[test]
fn reject_missing_top_makefile() {
    let fixture = Fixture::new();
    std::fs::remove_file(fixture.tree.join("Makefile")).unwrap();
    let error = rejection(&fixture, &fixture.add_project());
    assert!(error.contains("linux/Makefile not found"), "{error}");
    assert!(error.contains("kernel.source"), "{error}");
}

#[test]
fn reject_makefile_without_version() {
    let fixture = Fixture::new();
    std::fs::write(fixture.tree.join("Makefile"), "all:\n").unwrap();
    let error = rejection(&fixture, &fixture.add_project());
    assert!(error.contains("no VERSION and PATCHLEVEL"), "{error}");
}

#[test]
fn reject_missing_table() {
    let fixture = Fixture::new();
    std::fs::remove_file(fixture.tree.join(TABLE_PATH)).unwrap();
    let error = rejection(&fixture, &fixture.add_project());
    assert!(error.contains("syscall_64.tbl not found"), "{error}");
}

#[test]
fn reject_missing_template_value() {
    let fixture = Fixture::new();
    let project = fixture.project("name = \"kbuild_hello\"\ntemplate = \"hello\"", "[]");
    let error = rejection(&fixture, &project);
    assert!(error.contains("{{arg1}}"), "{error}");
}

#[test]
fn revert_restores_exact_bytes() {
    let fixture = Fixture::new();
    let project = fixture.add_project();
    let before = snapshot(&fixture.tree);
    apply(&project, &fixture.tree).unwrap();
    let reverted = revert(&project, &fixture.tree).unwrap();
    assert!(reverted.changed);
    assert_eq!(reverted.files.len(), 4);
    assert_eq!(snapshot(&fixture.tree), before);
    assert!(!fixture.record_dir().exists());
}

#[test]
fn revert_without_patch_changes_nothing() {
    let fixture = Fixture::new();
    let reverted = revert(&fixture.add_project(), &fixture.tree).unwrap();
    assert!(!reverted.changed);
}

#[test]
fn revert_rejects_manual_edit() {
    let fixture = Fixture::new();
    let project = fixture.add_project();
    apply(&project, &fixture.tree).unwrap();
    let edited = format!("{}// mine\n", fixture.read("kernel/Makefile"));
    std::fs::write(fixture.tree.join("kernel/Makefile"), &edited).unwrap();
    let before = snapshot(&fixture.tree);
    let error = revert(&project, &fixture.tree).unwrap_err().to_string();
    assert!(
        error.contains("kernel/Makefile changed since kbuild wrote it"),
        "{error}"
    );
    assert!(error.contains("pristine/kernel/Makefile"), "{error}");
    assert_eq!(snapshot(&fixture.tree), before);
}

/// Applies the diff of a fresh apply to a pristine tree with `patch -p1`
/// and checks that the result equals the patched tree.
fn check_diff_with_patch_tool(table: &str) {
    let fixture = Fixture::with_table(table);
    let pristine = fixture.root.join("pristine");
    write_tree(&pristine, table);
    let applied = apply(&fixture.add_project(), &fixture.tree).unwrap();
    let status = Command::new("patch")
        .args(["-p1", "--quiet", "-i"])
        .arg(&applied.diff)
        .current_dir(&pristine)
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(snapshot(&pristine), snapshot(&fixture.tree));
}

#[test]
fn diff_applies_with_patch_tool() {
    check_diff_with_patch_tool(TABLE);
}

#[test]
fn diff_applies_without_trailing_newline() {
    check_diff_with_patch_tool(NO_NEWLINE_TABLE);
}

#[test]
fn diff_uses_dev_null_for_new_file() {
    let fixture = Fixture::new();
    let applied = apply(&fixture.add_project(), &fixture.tree).unwrap();
    let diff = std::fs::read_to_string(&applied.diff).unwrap();
    assert!(
        diff.contains("--- /dev/null\n+++ b/kernel/kbuild_add.c\n"),
        "{diff}"
    );
    assert!(
        diff.contains(&format!("--- a/{TABLE_PATH}\n+++ b/{TABLE_PATH}\n")),
        "{diff}"
    );
}

#[test]
fn syscall_number_reads_tree() {
    let fixture = Fixture::new();
    let number = || syscall_number(&fixture.tree, Arch::X86_64, "kbuild_add").unwrap();
    assert_eq!(number(), None);
    apply(&fixture.add_project(), &fixture.tree).unwrap();
    assert_eq!(number(), Some(451));
}
