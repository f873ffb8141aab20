//! An exclusive lock on a VM folder, so that two kbuild processes never
//! start, stop or delete the same VM at once.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use anyhow::Context;

/// Takes an exclusive `flock` on `path`, creating the file, and waits while
/// another process has it locked. The lock lasts until the returned file is dropped.
pub async fn lock_file(path: &Path) -> anyhow::Result<File> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening the lock file {}", path.display()))?;
    let locked = tokio::task::spawn_blocking(move || {
        // SAFETY: flock only uses the descriptor, which `file` keeps open.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
            Ok(file)
        } else {
            Err(std::io::Error::last_os_error())
        }
    })
    .await
    .context("waiting for the lock task")?;
    locked.with_context(|| format!("locking {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn lock_waits_for_holder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.lock");
        let first_lock = lock_file(&path).await.unwrap();

        let waiter = tokio::spawn({
            let path = path.clone();
            async move { lock_file(&path).await.map(|_| ()) }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!waiter.is_finished());

        drop(first_lock);
        let result = tokio::time::timeout(Duration::from_secs(5), waiter).await;
        assert!(result
            .expect("lock not taken after release")
            .unwrap()
            .is_ok());
    }
}
