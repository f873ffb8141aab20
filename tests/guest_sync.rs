//! The kernel tree sync against a real OpenSSH server on 127.0.0.1: the
//! first run sends the whole tree, later runs only what changed, and a
//! wiped or half-updated guest copy gets the whole tree again.
//! Needs root and openssh-server; see tests/support/sshd.rs.

#[path = "support/sshd.rs"]
mod sshd;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use kbuild::exit::{exit_code_of, ExitCode};
use kbuild::guest::sync::{sync_tree, SyncReport, SyncTarget};
use kbuild::ssh::{ensure_key_pair, read_public_key, wait_for_ssh, Session, Target};
use sha2::{Digest, Sha256};
use sshd::Sshd;

/// A server, a session to it, and host folders for the tree and kbuild's state.
struct Fixture {
    session: Session,
    /// A tmpfs in the server's home folder, unmounted before that folder is removed.
    _tmpfs: Option<Tmpfs>,
    host: tempfile::TempDir,
    remote_dir: String,
    sshd: Sshd,
}

impl Fixture {
    fn start() -> Fixture {
        Fixture::with_server(Sshd::start(), "kernel tree's \"copy\"", None)
    }

    /// Connects to `sshd` and aims the sync at `folder` in its home folder.
    fn with_server(sshd: Sshd, folder: &str, tmpfs: Option<Tmpfs>) -> Fixture {
        let host = tempfile::tempdir().unwrap();
        let pair = ensure_key_pair(&host.path().join("keys")).unwrap();
        let target = Target {
            host: "127.0.0.1".into(),
            port: sshd.port,
            user: sshd::USER.into(),
            key: pair.private_key,
            known_hosts: host.path().join("known_hosts"),
            name: "test-vm".into(),
        };
        let public_key = read_public_key(&target.public_key()).unwrap();
        sshd.authorize(&format!("{public_key}\n"));
        let deadline = Instant::now() + Duration::from_secs(10);
        let session = wait_for_ssh(&target, deadline, String::new)
            .unwrap_or_else(|error| panic!("{error:#}\n{}", sshd.log()));
        let remote_dir = format!("{}/{folder}", sshd.home().display());
        fs::create_dir_all(host.path().join("tree")).unwrap();
        Fixture {
            session,
            _tmpfs: tmpfs,
            host,
            remote_dir,
            sshd,
        }
    }

    fn tree(&self) -> PathBuf {
        self.host.path().join("tree")
    }

    fn state(&self) -> PathBuf {
        self.host.path().join("state")
    }

    fn sync(&self) -> anyhow::Result<SyncReport> {
        let tree = self.tree();
        let state = self.state();
        let target = SyncTarget {
            tree: &tree,
            remote_dir: &self.remote_dir,
            state_dir: &state,
        };
        sync_tree(&self.session, &target, &self.host.path().join("sync.log"))
    }

    fn sync_ok(&self) -> SyncReport {
        self.sync()
            .unwrap_or_else(|error| panic!("{error:#}\n{}", self.sshd.log()))
    }
}

/// Writes a small tree: files in folders, an executable, a symlink, and
/// names with a space, a quote and a newline.
fn write_sample_tree(root: &Path) {
    fs::create_dir_all(root.join("kernel")).unwrap();
    fs::create_dir_all(root.join("scripts")).unwrap();
    fs::create_dir_all(root.join(".git")).unwrap();
    fs::write(root.join("Makefile"), "obj-y += kernel/\n").unwrap();
    fs::write(
        root.join("kernel/sys.c"),
        "long sys_x(void) { return 1; }\n",
    )
    .unwrap();
    fs::write(root.join("kernel/with space.c"), vec![b'a'; 200_000]).unwrap();
    fs::write(root.join("kernel/it's \"odd\"\nname.h"), "#define X 1\n").unwrap();
    fs::write(root.join("scripts/gen.sh"), "#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(
        root.join("scripts/gen.sh"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    fs::write(root.join(".git/HEAD"), "ref: refs/heads/main\n").unwrap();
    symlink("../kernel/sys.c", root.join("scripts/sys-link.c")).unwrap();
}

/// Content of one path as the comparison uses it: sha256 and executable bit, or symlink target.
#[derive(Debug, PartialEq, Eq)]
enum Item {
    File { sha256: Vec<u8>, executable: bool },
    Symlink(PathBuf),
}

/// Lists every file and symlink under `root`, except the top-level names in `skip`.
fn snapshot(root: &Path, skip: &[&str]) -> BTreeMap<String, Item> {
    let mut items = BTreeMap::new();
    let mut pending = vec![(root.to_path_buf(), String::new())];
    while let Some((folder, prefix)) = pending.pop() {
        for entry in fs::read_dir(&folder).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().into_string().unwrap();
            if prefix.is_empty() && skip.contains(&name.as_str()) {
                continue;
            }
            let relative = format!("{prefix}{name}");
            let metadata = entry.metadata().unwrap();
            if metadata.is_dir() {
                pending.push((entry.path(), format!("{relative}/")));
            } else if metadata.file_type().is_symlink() {
                let target = fs::read_link(entry.path()).unwrap();
                items.insert(relative, Item::Symlink(target));
            } else {
                let sha256 = Sha256::digest(fs::read(entry.path()).unwrap()).to_vec();
                let executable = metadata.mode() & 0o111 != 0;
                items.insert(relative, Item::File { sha256, executable });
            }
        }
    }
    items
}

fn assert_same_tree(fixture: &Fixture) {
    let local = snapshot(&fixture.tree(), &[".git"]);
    let remote = snapshot(Path::new(&fixture.remote_dir), &[".kbuild-sync-id"]);
    assert_eq!(remote, local);
}

fn remote_path(fixture: &Fixture, relative: &str) -> PathBuf {
    Path::new(&fixture.remote_dir).join(relative)
}

/// Replaces `path` with new content through a temporary file and a rename.
fn write_by_rename(path: &Path, content: &[u8]) {
    let temporary = path.with_extension("kbuild-test-tmp");
    fs::write(&temporary, content).unwrap();
    fs::rename(&temporary, path).unwrap();
}

#[test]
fn sync_full_then_delta() {
    let fixture = Fixture::start();
    write_sample_tree(&fixture.tree());
    let first = fixture.sync_ok();
    assert!(first.full);
    assert_eq!(first.files, 6);
    assert_eq!(first.deleted, 0);
    assert!(first.bytes_sent > 0);
    assert_same_tree(&fixture);
    assert!(!remote_path(&fixture, ".git").exists());

    // Edit one file and give it an old mtime: the guest must still see it as new.
    let edited = fixture.tree().join("kernel/sys.c");
    write_by_rename(&edited, b"long sys_x(void) { return 2; }\n");
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    fs::File::options()
        .write(true)
        .open(&edited)
        .unwrap()
        .set_modified(old)
        .unwrap();
    fs::remove_file(fixture.tree().join("kernel/with space.c")).unwrap();
    let before_delta = SystemTime::now() - Duration::from_secs(2);
    let second = fixture.sync_ok();
    assert!(!second.full);
    assert_eq!(second.files, 1);
    assert_eq!(second.deleted, 1);
    assert!(
        second.bytes_sent < first.bytes_sent,
        "{second:?} vs {first:?}"
    );
    assert_same_tree(&fixture);
    let remote_mtime = fs::metadata(remote_path(&fixture, "kernel/sys.c"))
        .unwrap()
        .modified();
    assert!(remote_mtime.unwrap() >= before_delta);

    let third = fixture.sync_ok();
    assert!(!third.full);
    assert_eq!(third.files, 0);
    assert_eq!(third.deleted, 0);
    assert_eq!(third.bytes_sent, 0);
}

/// A full sync stamps files with the time of extraction, so that a build
/// folder left from an older copy in the guest rebuilds every object.
#[test]
fn sync_full_stamps_extraction_time() {
    let fixture = Fixture::start();
    write_sample_tree(&fixture.tree());
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    fs::File::options()
        .write(true)
        .open(fixture.tree().join("Makefile"))
        .unwrap()
        .set_modified(old)
        .unwrap();
    let before = SystemTime::now() - Duration::from_secs(2);
    fixture.sync_ok();
    let remote = fs::metadata(remote_path(&fixture, "Makefile"))
        .unwrap()
        .modified()
        .unwrap();
    assert!(remote >= before);
}

#[test]
fn sync_leaves_no_archives() {
    let fixture = Fixture::start();
    write_sample_tree(&fixture.tree());
    fixture.sync_ok();
    let state: Vec<String> = fs::read_dir(fixture.state())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(state, ["sync-manifest.json"]);
    let parent = Path::new(&fixture.remote_dir).parent().unwrap();
    assert!(!parent.join(".kbuild-sync.tar.gz").exists());
}

#[test]
fn sync_after_wipe_is_full() {
    let fixture = Fixture::start();
    write_sample_tree(&fixture.tree());
    fixture.sync_ok();
    fs::remove_dir_all(&fixture.remote_dir).unwrap();
    let again = fixture.sync_ok();
    assert!(again.full);
    assert_eq!(again.files, 6);
    assert_same_tree(&fixture);
}

#[test]
fn sync_full_removes_stale_files() {
    let fixture = Fixture::start();
    write_sample_tree(&fixture.tree());
    fixture.sync_ok();
    fs::remove_file(fixture.state().join("sync-manifest.json")).unwrap();
    fs::write(remote_path(&fixture, "kernel/stale.o"), "object").unwrap();
    let again = fixture.sync_ok();
    assert!(again.full);
    assert_same_tree(&fixture);
}

#[test]
fn sync_failed_delta_retries_full() {
    let fixture = Fixture::start();
    write_sample_tree(&fixture.tree());
    fixture.sync_ok();
    let record = fs::read(fixture.state().join("sync-manifest.json")).unwrap();
    write_by_rename(&fixture.tree().join("kernel/sys.c"), b"changed\n");
    fs::write(fixture.tree().join("kernel/added.c"), "new\n").unwrap();

    // A read-only folder in the guest makes tar fail half-way.
    let kernel = remote_path(&fixture, "kernel");
    fs::set_permissions(&kernel, fs::Permissions::from_mode(0o555)).unwrap();
    let error = fixture.sync().unwrap_err();
    fs::set_permissions(&kernel, fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(
        exit_code_of(&error, ExitCode::Usage),
        ExitCode::Infrastructure
    );
    let after = fs::read(fixture.state().join("sync-manifest.json")).unwrap();
    assert!(
        after == record,
        "the sync record changed after a failed sync"
    );

    let retry = fixture.sync_ok();
    assert!(retry.full);
    assert_same_tree(&fixture);
}

#[test]
fn sync_keeps_home_folder() {
    let mut fixture = Fixture::start();
    write_sample_tree(&fixture.tree());
    fixture.remote_dir = fixture.sshd.home().display().to_string();
    // The upload goes beside the home folder, so its parent must be writable.
    let parent = fixture.sshd.home().parent().unwrap().to_path_buf();
    fs::set_permissions(&parent, fs::Permissions::from_mode(0o777)).unwrap();
    fs::write(fixture.sshd.home().join("keep.txt"), "mine").unwrap();
    let error = fixture.sync().unwrap_err();
    let message = format!("{error:#}");
    assert!(message.contains("home folder"), "{message}");
    assert!(fixture.sshd.home().join("keep.txt").exists());
}

/// Unmounts a tmpfs when dropped.
struct Tmpfs(PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn sync_small_disk_fails() {
    let sshd = Sshd::prepare();
    let small = sshd.home().join("small");
    fs::create_dir_all(&small).unwrap();
    let options = format!("size=256k,uid={0},gid={0}", sshd::UID);
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &options, "tmpfs"])
        .arg(&small)
        .status()
        .unwrap();
    assert!(status.success(), "mounting a tmpfs on {}", small.display());
    let tmpfs = Tmpfs(small);
    let mut sshd = sshd;
    sshd.spawn();
    let fixture = Fixture::with_server(sshd, "small/linux", Some(tmpfs));
    write_sample_tree(&fixture.tree());
    fs::write(fixture.tree().join("big.bin"), vec![7u8; 1 << 20]).unwrap();

    let error = fixture.sync().unwrap_err();
    let message = format!("{error:#}");
    assert_eq!(
        exit_code_of(&error, ExitCode::Usage),
        ExitCode::Infrastructure
    );
    assert!(message.contains("disk_gib"), "{message}");
    assert!(message.contains("--on-host"), "{message}");
    assert!(!fixture.state().join("sync-manifest.json").exists());
}

/// Measures the sync of the real kernel tree: the whole tree, a run with
/// nothing changed, and one file changed in a hard-linked copy.
/// Run with `cargo test --release --test guest_sync -- --ignored --nocapture`.
#[test]
#[ignore = "reads the 1.3 GB kernel tree and writes a copy of it; run by hand"]
fn sync_real_tree_timings() {
    let pristine = Path::new("/var/cache/kbuild-dev/linux-source-6.1");
    assert!(pristine.is_dir(), "{} not found", pristine.display());
    tracing_subscriber::fmt()
        .with_env_filter("kbuild::guest::sync=debug")
        .with_writer(std::io::stderr)
        .init();

    let fixture = Fixture::start();
    let copy = fixture.host.path().join("linux");
    let status = Command::new("cp")
        .arg("-al")
        .arg(pristine)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(status.success(), "cp -al failed");

    let state = fixture.state();
    let log = fixture.host.path().join("sync.log");
    let run = |tree: &Path, label: &str| {
        let target = SyncTarget {
            tree,
            remote_dir: &fixture.remote_dir,
            state_dir: &state,
        };
        let report = sync_tree(&fixture.session, &target, &log).unwrap();
        eprintln!(
            "{label}: {} files, {} deleted, {} bytes sent, {:.2} s",
            report.files,
            report.deleted,
            report.bytes_sent,
            report.elapsed.as_secs_f64()
        );
        report
    };

    assert!(run(pristine, "full sync of the pristine tree").full);
    let local = snapshot(pristine, &[".git", ".kbuild"]);
    let remote = snapshot(Path::new(&fixture.remote_dir), &[".kbuild-sync-id"]);
    assert!(local == remote, "the guest's copy differs from the tree");

    let unchanged = run(pristine, "pristine tree, nothing changed");
    assert_eq!(unchanged.bytes_sent, 0);
    let linked = run(&copy, "hard-linked copy, nothing changed");
    assert_eq!(linked.bytes_sent, 0);

    let edited = copy.join("kernel/sys.c");
    let mut text = fs::read(&edited).unwrap();
    text.extend_from_slice(b"\n/* kbuild sync test */\n");
    write_by_rename(&edited, &text);
    let delta = run(&copy, "hard-linked copy, one file changed");
    assert_eq!(delta.files, 1);
    let remote = fs::read(remote_path(&fixture, "kernel/sys.c")).unwrap();
    assert!(remote == text, "the edit did not reach the guest");
}
