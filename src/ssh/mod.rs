//! SSH access to kbuild's VMs over the port that QEMU or VirtualBox forwards
//! from 127.0.0.1, built on the `ssh2` crate (libssh2).
//!
//! - `keys`: the project's ed25519 key pair, made once and reused.
//! - `known_hosts`: one known_hosts file per VM, pinned on first contact.
//! - `connect`: `wait_for_ssh` retries until the guest accepts a login, and
//!   `install_key_with_password` uses a password once to install the key.
//! - `exec`: commands with streamed output and real exit statuses, built
//!   from argument vectors that are always shell-quoted.
//! - `sftp`: uploads and downloads in chunks, renamed into place at the end.
//! - `reboot`: reboots the guest and waits for a new boot id.
//!
//! Every call blocks the calling thread, because libssh2 is a blocking C
//! library. Async callers move the `Session` (it is `Send`) into
//! `tokio::task::spawn_blocking` and await the join handle.

mod connect;
mod exec;
mod keys;
mod known_hosts;
mod reboot;
mod sftp;

use std::ffi::OsString;
use std::net::TcpStream;
use std::path::PathBuf;

pub use connect::{install_key_with_password, wait_for_ssh};
pub use exec::{command_line, shell_quote, ExecOptions, ExitStatus, Output, OutputStream};
pub use keys::{ensure_key_pair, read_public_key, KeyPair};
pub use known_hosts::{fingerprint, verify_host_key, HostKeyStatus};

/// Address, login and known_hosts file of one VM's SSH server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Address of the forwarded port: always 127.0.0.1 in kbuild.
    pub host: String,
    pub port: u16,
    /// Guest user to log in as.
    pub user: String,
    /// Private key file; the public key is the same path plus `.pub`.
    pub key: PathBuf,
    /// This VM's own known_hosts file; kbuild never reads `~/.ssh/known_hosts`.
    pub known_hosts: PathBuf,
    /// VM name, used in messages.
    pub name: String,
}

impl Target {
    /// Returns `host:port`, as messages show it.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Returns the public key file that belongs to `key`.
    pub fn public_key(&self) -> PathBuf {
        let mut path = OsString::from(self.key.as_os_str());
        path.push(".pub");
        PathBuf::from(path)
    }
}

/// An authenticated SSH connection to one VM.
///
/// Methods that run commands, move files or reboot live in `exec`, `sftp`
/// and `reboot`.
pub struct Session {
    ssh: ssh2::Session,
    /// A second handle on the session's socket, polled while a command runs
    /// in non-blocking mode.
    socket: TcpStream,
    target: Target,
}

impl Session {
    fn new(ssh: ssh2::Session, socket: TcpStream, target: Target) -> Self {
        Session {
            ssh,
            socket,
            target,
        }
    }

    /// Returns the target this session is connected to.
    pub fn target(&self) -> &Target {
        &self.target
    }
}

impl Drop for Session {
    /// Sends a disconnect message if the socket has room for it, then shuts
    /// the socket down, so that freeing a channel whose command still runs
    /// (after an `exec` timeout) cannot wait for the guest.
    fn drop(&mut self) {
        self.ssh.set_blocking(false);
        let _ = self.ssh.disconnect(
            Some(ssh2::DisconnectCode::ByApplication),
            "kbuild is done",
            None,
        );
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>() {}

    #[test]
    fn session_is_send() {
        assert_send::<Session>();
    }

    #[test]
    fn target_public_key_appends_pub() {
        let target = Target {
            host: "127.0.0.1".into(),
            port: 2222,
            user: "root".into(),
            key: PathBuf::from("/p/.kbuild/ssh/id_ed25519"),
            known_hosts: PathBuf::from("/p/.kbuild/vm/known_hosts"),
            name: "vm".into(),
        };
        assert_eq!(
            target.public_key(),
            PathBuf::from("/p/.kbuild/ssh/id_ed25519.pub")
        );
        assert_eq!(target.address(), "127.0.0.1:2222");
    }
}
