use super::*;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// Creates a small tree in a temporary folder: two files, a symlink, a name with
/// a space, and the names the scan skips.
fn sample_tree() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs::create_dir_all(root.join("kernel")).unwrap();
    fs::create_dir_all(root.join("empty/inner")).unwrap();
    fs::create_dir_all(root.join(".git/objects")).unwrap();
    fs::create_dir_all(root.join(".kbuild")).unwrap();
    fs::write(root.join("Makefile"), "all:\n").unwrap();
    fs::write(root.join("kernel/sys.c"), "int x;\n").unwrap();
    fs::write(root.join("kernel/a b.c"), "int y;\n").unwrap();
    fs::write(root.join(".git/HEAD"), "ref\n").unwrap();
    fs::write(root.join(".kbuild/state"), "x").unwrap();
    fs::write(root.join(".kbuild-sync-id"), "old").unwrap();
    fs::write(root.join("kernel/.kbuild-sync-id"), "nested").unwrap();
    symlink("sys.c", root.join("kernel/link")).unwrap();
    dir
}

fn record_of(files: &Files) -> Manifest {
    Manifest::new("id1".to_string(), "/home/kb/linux", files.clone())
}

/// Sets the mtime of `path` one minute later, as an edit would.
fn touch_later(path: &Path) {
    let file = File::options().write(true).open(path).unwrap();
    let later = SystemTime::now() + Duration::from_secs(60);
    file.set_modified(later).unwrap();
}

#[test]
fn scan_lists_files_and_symlinks() {
    let tree = sample_tree();
    let files = scan(tree.path()).unwrap();
    let paths: Vec<&str> = files.keys().map(String::as_str).collect();
    assert_eq!(
        paths,
        [
            "Makefile",
            "kernel/.kbuild-sync-id",
            "kernel/a b.c",
            "kernel/link",
            "kernel/sys.c"
        ]
    );
    assert_eq!(files["kernel/link"].link.as_deref(), Some("sys.c"));
    assert_eq!(files["kernel/sys.c"].size, 7);
    assert!(!files["kernel/sys.c"].executable);
}

#[test]
fn scan_reads_executable_bit() {
    let tree = sample_tree();
    let script = tree.path().join("kernel/sys.c");
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    let files = scan(tree.path()).unwrap();
    assert!(files["kernel/sys.c"].executable);
}

#[test]
fn scan_rejects_non_utf8_name() {
    use std::os::unix::ffi::OsStrExt;
    let tree = sample_tree();
    let name = std::ffi::OsStr::from_bytes(b"bad\xff");
    fs::write(tree.path().join(name), "x").unwrap();
    let error = scan(tree.path()).unwrap_err();
    assert!(format!("{error:#}").contains("not UTF-8"), "{error:#}");
}

#[test]
fn plan_without_record_is_full() {
    let tree = sample_tree();
    let files = scan(tree.path()).unwrap();
    let plan = plan(None, Some("id1"), "/home/kb/linux", &files);
    assert_eq!(plan.full, Some(FullReason::NoRecord));
    assert_eq!(plan.changed.len(), files.len());
    assert!(plan.deleted.is_empty());
}

#[test]
fn plan_guest_id_mismatch_is_full() {
    let tree = sample_tree();
    let files = scan(tree.path()).unwrap();
    let record = record_of(&files);
    let missing = plan(Some(&record), None, "/home/kb/linux", &files);
    assert_eq!(missing.full, Some(FullReason::GuestIdMissing));
    let differs = plan(Some(&record), Some("id2"), "/home/kb/linux", &files);
    assert_eq!(differs.full, Some(FullReason::GuestIdDiffers));
    let moved = plan(Some(&record), Some("id1"), "/home/kb/other", &files);
    assert_eq!(moved.full, Some(FullReason::RemoteDirChanged));
    assert_eq!(moved.changed.len(), files.len());
}

#[test]
fn plan_unchanged_is_empty() {
    let tree = sample_tree();
    let before = scan(tree.path()).unwrap();
    let after = scan(tree.path()).unwrap();
    let plan = plan(
        Some(&record_of(&before)),
        Some("id1"),
        "/home/kb/linux",
        &after,
    );
    assert!(plan.is_empty(), "{plan:?}");
}

#[test]
fn plan_finds_edit_and_delete() {
    let tree = sample_tree();
    let before = scan(tree.path()).unwrap();
    let edited = tree.path().join("kernel/a b.c");
    fs::write(&edited, "int z;\n").unwrap();
    touch_later(&edited);
    fs::remove_file(tree.path().join("Makefile")).unwrap();
    fs::write(tree.path().join("kernel/new.c"), "").unwrap();
    let after = scan(tree.path()).unwrap();
    let plan = plan(
        Some(&record_of(&before)),
        Some("id1"),
        "/home/kb/linux",
        &after,
    );
    assert_eq!(plan.full, None);
    assert_eq!(plan.changed, ["kernel/a b.c", "kernel/new.c"]);
    assert_eq!(plan.deleted, ["Makefile"]);
}

#[test]
fn plan_finds_mode_and_link_changes() {
    let tree = sample_tree();
    let before = scan(tree.path()).unwrap();
    let mut after = before.clone();
    after.get_mut("kernel/sys.c").unwrap().executable = true;
    after.get_mut("kernel/link").unwrap().link = Some("a b.c".to_string());
    let plan = plan(
        Some(&record_of(&before)),
        Some("id1"),
        "/home/kb/linux",
        &after,
    );
    assert_eq!(plan.changed, ["kernel/link", "kernel/sys.c"]);
}

#[test]
fn plan_file_replaced_by_folder() {
    let tree = sample_tree();
    let before = scan(tree.path()).unwrap();
    fs::remove_file(tree.path().join("Makefile")).unwrap();
    fs::create_dir(tree.path().join("Makefile")).unwrap();
    fs::write(tree.path().join("Makefile/inner"), "x").unwrap();
    let after = scan(tree.path()).unwrap();
    let plan = plan(
        Some(&record_of(&before)),
        Some("id1"),
        "/home/kb/linux",
        &after,
    );
    assert_eq!(plan.changed, ["Makefile/inner"]);
    assert_eq!(plan.deleted, ["Makefile"]);
}

#[test]
fn manifest_round_trips() {
    let tree = sample_tree();
    let files = scan(tree.path()).unwrap();
    let state = tempfile::tempdir().unwrap();
    let path: PathBuf = state.path().join("sync-manifest.json");
    save(&record_of(&files), &path).unwrap();
    let loaded = load(&path).unwrap().unwrap();
    assert_eq!(loaded.files, files);
    assert_eq!(loaded.sync_id, "id1");
}

#[test]
fn manifest_missing_or_invalid_is_none() {
    let state = tempfile::tempdir().unwrap();
    let path = state.path().join("sync-manifest.json");
    assert!(load(&path).unwrap().is_none());
    fs::write(&path, "{ truncated").unwrap();
    assert!(load(&path).unwrap().is_none());
}

#[test]
fn sync_id_is_random_hex() {
    let first = new_sync_id().unwrap();
    let second = new_sync_id().unwrap();
    assert_eq!(first.len(), 32);
    assert!(
        first.bytes().all(|byte| byte.is_ascii_hexdigit()),
        "{first}"
    );
    assert_ne!(first, second);
}
