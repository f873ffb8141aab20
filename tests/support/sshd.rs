//! A private OpenSSH server for tests, listening on 127.0.0.1 only.
//!
//! Each server runs `/usr/sbin/sshd -D -e` with its own config, host key,
//! pid file and authorized_keys file in a temporary folder. It runs inside a
//! private mount namespace (`unshare --mount --propagation private`) where a
//! temporary /etc/passwd and /etc/shadow add the test user `kbuildtest`
//! (home in the temporary folder, a random password) and a temporary /run
//! contains sshd's privilege separation folder, so no real account, password
//! or system folder changes. Needs root and Debian's openssh-server.
#![allow(dead_code)]

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The account that exists only inside the server's mount namespace.
pub const USER: &str = "kbuildtest";
pub const UID: u32 = 64123;

pub struct Sshd {
    dir: tempfile::TempDir,
    pub port: u16,
    pub password: String,
    /// Password logins are accepted while this is true; `restart` applies changes.
    pub password_auth: bool,
    child: Option<Child>,
}

impl Sshd {
    /// Starts a server on a free port and waits until it accepts connections.
    pub fn start() -> Sshd {
        let mut sshd = Sshd::prepare();
        sshd.spawn();
        sshd
    }

    /// Sets up the folder, user and host key on a free port without
    /// starting the server.
    pub fn prepare() -> Sshd {
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "the SSH tests need root: they run sshd in a private mount namespace"
        );
        assert!(
            Path::new("/usr/sbin/sshd").is_file(),
            "/usr/sbin/sshd not found: install openssh-server (scripts/install-host-tools.sh)"
        );
        let dir = tempfile::Builder::new()
            .prefix("kbuild-sshd-")
            .tempdir()
            .unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let sshd = Sshd {
            port: free_port(),
            password: random_password(),
            password_auth: true,
            child: None,
            dir,
        };
        sshd.write_accounts();
        sshd.new_host_key();
        fs::create_dir_all(sshd.path("run/sshd")).unwrap();
        fs::set_permissions(sshd.path("run"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(sshd.path("run/sshd"), fs::Permissions::from_mode(0o755)).unwrap();
        sshd.authorize("");
        sshd
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    /// Returns the test user's home folder, which the host sees too.
    pub fn home(&self) -> PathBuf {
        self.path("home")
    }

    /// Starts sshd and waits until its port accepts connections.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "sshd is already running");
        self.write_config();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("sshd.log"))
            .unwrap();
        let script = r#"mount --bind "$1" /etc/passwd && mount --bind "$2" /etc/shadow &&
mount --bind "$3" /run && exec /usr/sbin/sshd -D -e -f "$4""#;
        let child = Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                script,
                "sh",
            ])
            .arg(self.path("etc/passwd"))
            .arg(self.path("etc/shadow"))
            .arg(self.path("run"))
            .arg(self.path("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting unshare and sshd");
        self.child = Some(child);
        self.wait_until_accepting();
    }

    /// Stops sshd by its pid: SIGTERM, then wait for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let _ = child.wait();
        }
    }

    /// Stops and starts sshd on the same port, with the current config.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Replaces the host key with a new one; `restart` puts it into use.
    pub fn new_host_key(&self) {
        let key = self.path("ssh_host_ed25519_key");
        let _ = fs::remove_file(&key);
        let _ = fs::remove_file(key.with_extension("pub"));
        run(Command::new("ssh-keygen")
            .args([
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "kbuild-test-host",
                "-f",
            ])
            .arg(&key));
    }

    /// Returns the host key's fingerprint as `ssh-keygen -l` prints it.
    pub fn host_key_fingerprint(&self) -> String {
        let output = Command::new("ssh-keygen")
            .arg("-l")
            .arg("-f")
            .arg(self.path("ssh_host_ed25519_key.pub"))
            .output()
            .unwrap();
        let text = String::from_utf8(output.stdout).unwrap();
        text.split_whitespace().nth(1).unwrap().to_string()
    }

    /// Replaces the server-wide authorized_keys file with `lines`.
    pub fn authorize(&self, lines: &str) {
        let path = self.path("authorized_keys");
        fs::write(&path, lines).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    }

    /// Everything sshd logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.path("sshd.log")).unwrap_or_default()
    }

    fn write_config(&self) {
        let dir = self.dir.path().display();
        let password = if self.password_auth { "yes" } else { "no" };
        let config = format!(
            "ListenAddress 127.0.0.1\n\
             Port {port}\n\
             HostKey {dir}/ssh_host_ed25519_key\n\
             PidFile {dir}/sshd.pid\n\
             AuthorizedKeysFile {dir}/authorized_keys .ssh/authorized_keys\n\
             StrictModes no\n\
             UsePAM no\n\
             PasswordAuthentication {password}\n\
             KbdInteractiveAuthentication no\n\
             PubkeyAuthentication yes\n\
             PermitRootLogin no\n\
             AllowUsers {USER}\n\
             Subsystem sftp internal-sftp\n\
             LogLevel VERBOSE\n",
            port = self.port,
        );
        fs::write(self.path("sshd_config"), config).unwrap();
    }

    /// Writes the namespace's /etc/passwd (the real one plus the test user)
    /// and /etc/shadow (only the test user), and makes the home folder.
    fn write_accounts(&self) {
        fs::create_dir_all(self.path("etc")).unwrap();
        let home = self.home();
        fs::create_dir_all(&home).unwrap();
        std::os::unix::fs::chown(&home, Some(UID), Some(UID)).unwrap();

        let mut passwd = fs::read_to_string("/etc/passwd").unwrap();
        assert!(
            !passwd.contains(&format!("{USER}:")),
            "/etc/passwd already has {USER}"
        );
        passwd.push_str(&format!(
            "{USER}:x:{UID}:{UID}:kbuild test:{}:/bin/sh\n",
            home.display()
        ));
        fs::write(self.path("etc/passwd"), passwd).unwrap();

        let hash = password_hash(&self.password);
        let shadow = self.path("etc/shadow");
        fs::write(&shadow, format!("{USER}:{hash}:19000::::::\n")).unwrap();
        fs::set_permissions(&shadow, fs::Permissions::from_mode(0o600)).unwrap();
    }

    fn wait_until_accepting(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("sshd exited with {status}; log:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "sshd did not accept within 10 s; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Returns a port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn random_password() -> String {
    let mut bytes = [0u8; 12];
    fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut bytes)
        .unwrap();
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Hashes a password with SHA-512 crypt, passing it on stdin.
fn password_hash(password: &str) -> String {
    let mut child = Command::new("openssl")
        .args(["passwd", "-6", "-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting openssl passwd");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(password.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "openssl passwd failed");
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

fn run(command: &mut Command) {
    let output = command.output().expect("starting a set-up command");
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}
