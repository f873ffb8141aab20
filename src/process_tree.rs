//! Stops a child process together with everything it started, such as
//! `make` with its sub-makes and compilers, when kbuild gives up on it (a
//! step timeout, an interrupt). Killing only the child would leave its
//! descendants running and holding the log pipe open.

use std::collections::HashMap;

/// Kills the process `pid` and all its descendants when dropped, unless
/// `disarm` was called after the process ended by itself.
pub struct TreeGuard {
    pid: Option<u32>,
}

impl TreeGuard {
    pub fn new(pid: Option<u32>) -> TreeGuard {
        TreeGuard { pid }
    }

    /// Keeps the processes alive on drop; call it once the child has exited.
    pub fn disarm(mut self) {
        self.pid = None;
    }
}

impl Drop for TreeGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.pid {
            kill_tree(pid);
        }
    }
}

/// Sends SIGKILL to `pid` and every descendant. The scan repeats once,
/// because a parent that is not dead yet may start a new child meanwhile.
pub fn kill_tree(pid: u32) {
    for _ in 0..2 {
        let mut members = descendants(pid);
        members.insert(0, pid);
        for member in members {
            // SAFETY: kill(2) with a positive pid only sends a signal.
            unsafe { libc::kill(member as libc::pid_t, libc::SIGKILL) };
        }
    }
}

/// Returns the descendants of `root`, read from /proc.
pub fn descendants(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(parent) = parent_of(pid) {
            children.entry(parent).or_default().push(pid);
        }
    }
    let mut found = Vec::new();
    let mut queue = vec![root];
    while let Some(pid) = queue.pop() {
        for &child in children.get(&pid).map(Vec::as_slice).unwrap_or_default() {
            found.push(child);
            queue.push(child);
        }
    }
    found
}

/// Reads the parent pid from /proc/PID/stat, whose second field (the
/// command name in parentheses) may itself contain spaces and parentheses.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::time::{Duration, Instant};

    #[test]
    fn kill_tree_stops_grandchildren() {
        let mut child = Command::new("sh")
            .args(["-c", "sleep 300 & sleep 300 & wait"])
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut grandchildren = Vec::new();
        while grandchildren.len() < 2 && Instant::now() < deadline {
            grandchildren = descendants(child.id());
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(grandchildren.len(), 2, "the shell did not start two sleeps");

        kill_tree(child.id());
        child.wait().unwrap();
        for pid in grandchildren {
            let deadline = Instant::now() + Duration::from_secs(5);
            // PID 1 reaps a killed child of the reaped shell. Until then it is a
            // zombie ("Z" in its stat), which no longer runs.
            while Instant::now() < deadline {
                match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                    Ok(stat) if !stat.contains(") Z ") => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => break,
                }
            }
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            assert!(
                stat.is_empty() || stat.contains(") Z "),
                "{pid} still runs: {stat}"
            );
        }
    }

    #[test]
    fn parent_of_reads_names_with_parentheses() {
        let own = std::process::id();
        let parent = parent_of(own).expect("reading our own stat");
        assert_eq!(parent, std::os::unix::process::parent_id());
    }
}
