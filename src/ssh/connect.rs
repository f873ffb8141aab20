//! Connecting to a guest: one attempt (TCP, handshake, host key, login),
//! the retry loop that waits for a booting guest, and the one-time password
//! login that installs kbuild's public key.

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::{keys, known_hosts, Session, Target};
use crate::exit::Failure;

/// Pause after the first failed attempt; it doubles up to `MAX_DELAY`.
const FIRST_DELAY: Duration = Duration::from_millis(250);
const MAX_DELAY: Duration = Duration::from_secs(2);

/// Maximum time one attempt waits for TCP, the server's banner and the key
/// exchange. QEMU's user network accepts a connection before it reaches
/// the guest, and a guest that is not up yet may leave it silent.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Maximum time a blocking libssh2 call on an open session waits for the guest
/// before failing; commands run by `exec` are not bound by it.
pub(super) const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// Host key algorithms in order of preference, so the same guest always
/// offers the same key type to compare with the pinned one.
const HOST_KEY_ALGORITHMS: &str = "ssh-ed25519,ecdsa-sha2-nistp256,ecdsa-sha2-nistp384,\
                                   ecdsa-sha2-nistp521,rsa-sha2-512,rsa-sha2-256,ssh-rsa";

/// libssh2 error codes (`LIBSSH2_ERROR_*` in libssh2.h) that mean the
/// server will never agree with this client, however often it is asked.
const KEX_FAILURE: i32 = -5;
const METHOD_NONE: i32 = -17;
const ALGO_UNSUPPORTED: i32 = -51;

/// libssh2's code for a key file it cannot read or parse (`LIBSSH2_ERROR_FILE`).
const FILE_ERROR: i32 = -16;

/// libssh2 error codes for a connection that dropped or stalled.
const TRANSPORT_ERRORS: &[i32] = &[
    -2,  // LIBSSH2_ERROR_BANNER_RECV
    -7,  // LIBSSH2_ERROR_SOCKET_SEND
    -9,  // LIBSSH2_ERROR_TIMEOUT
    -13, // LIBSSH2_ERROR_SOCKET_DISCONNECT
    -30, // LIBSSH2_ERROR_SOCKET_TIMEOUT
    -43, // LIBSSH2_ERROR_SOCKET_RECV
];

/// Login method of an attempt. The password is never logged or shown.
enum Auth<'a> {
    Key,
    Password(&'a str),
}

/// Why an attempt failed: the guest is not ready yet, or retrying cannot help.
enum AttemptError {
    NotReady(String),
    Final(anyhow::Error),
}

/// Connects to `target` and logs in with its key, retrying until `deadline`.
///
/// Refused or reset connections, a server that closes the connection or
/// stays silent before its banner, and other dropped handshakes count as
/// "not ready yet": the pause between attempts starts at 0.25 s and doubles
/// up to 2 s. A rejected key or a changed host key fails at once. At the
/// deadline the error names `host:port`, the last error seen and the text
/// `console_tail` returns, which is called only then.
pub fn wait_for_ssh(
    target: &Target,
    deadline: Instant,
    console_tail: impl Fn() -> String,
) -> anyhow::Result<Session> {
    wait_with(target, &Auth::Key, deadline, &console_tail)
}

/// Logs in once with `password`, appends the public key of `target.key` to
/// the guest user's `~/.ssh/authorized_keys` (making `~/.ssh` 0700 and the
/// file 0600), then returns a session opened with the key alone.
///
/// Waits for the guest like `wait_for_ssh`. Installing a key that is
/// already there leaves the file as it was.
pub fn install_key_with_password(
    target: &Target,
    password: &str,
    deadline: Instant,
    console_tail: impl Fn() -> String,
) -> anyhow::Result<Session> {
    let public_key = keys::read_public_key(&target.public_key())?;
    let session = wait_with(target, &Auth::Password(password), deadline, &console_tail)?;
    session.exec_checked(&["sh", "-c", INSTALL_KEY_SCRIPT, "sh", &public_key])?;
    drop(session);
    tracing::debug!(vm = %target.name, "installed the public key in the guest");
    wait_with(target, &Auth::Key, deadline, &console_tail)
}

/// Appends the key in `$1` to `~/.ssh/authorized_keys` unless it is there,
/// adding a newline first if the file does not end with one.
const INSTALL_KEY_SCRIPT: &str = r#"set -e
umask 077
mkdir -p "$HOME/.ssh"
chmod 700 "$HOME/.ssh"
file="$HOME/.ssh/authorized_keys"
touch "$file"
chmod 600 "$file"
if ! grep -qxF -- "$1" "$file"; then
  if [ -s "$file" ] && [ -n "$(tail -c 1 "$file")" ]; then printf '\n' >>"$file"; fi
  printf '%s\n' "$1" >>"$file"
fi"#;

fn wait_with(
    target: &Target,
    auth: &Auth,
    deadline: Instant,
    console_tail: &dyn Fn() -> String,
) -> anyhow::Result<Session> {
    let started = Instant::now();
    let mut delay = FIRST_DELAY;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let remaining = deadline.saturating_duration_since(Instant::now());
        let timeout = remaining.clamp(Duration::from_secs(1), ATTEMPT_TIMEOUT);
        let reason = match attempt(target, auth, timeout) {
            Ok(session) => return Ok(session),
            Err(AttemptError::Final(error)) => return Err(error),
            Err(AttemptError::NotReady(reason)) => reason,
        };
        tracing::debug!(vm = %target.name, attempt = attempts, error = %reason, "ssh not ready");
        if Instant::now() + delay >= deadline {
            return Err(timed_out(
                target,
                started,
                attempts,
                &reason,
                &console_tail(),
            ));
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(MAX_DELAY);
    }
}

fn timed_out(
    target: &Target,
    started: Instant,
    attempts: u32,
    reason: &str,
    console: &str,
) -> anyhow::Error {
    let console = console.trim_end();
    let console = if console.is_empty() {
        "(no console output)"
    } else {
        console
    };
    Failure::infrastructure(format!(
        "timed out after {} waiting for SSH on VM {} at {} ({attempts} attempts); \
         last error: {reason}. Check that the guest boots and starts sshd. Console output:\n{console}",
        crate::ui::seconds(started.elapsed()),
        target.name,
        target.address(),
    ))
}

fn attempt(target: &Target, auth: &Auth, timeout: Duration) -> Result<Session, AttemptError> {
    let socket = connect_tcp(target, timeout)?;
    let ssh = handshake(target, &socket, timeout)?;
    let (key_blob, _) = ssh
        .host_key()
        .ok_or_else(|| AttemptError::NotReady("the server sent no host key".to_string()))?;
    known_hosts::verify_host_key(
        &target.known_hosts,
        &target.name,
        &target.address(),
        key_blob,
    )
    .map_err(AttemptError::Final)?;
    authenticate(target, &ssh, auth)?;
    ssh.set_timeout(IO_TIMEOUT.as_millis() as u32);
    Ok(Session::new(ssh, socket, target.clone()))
}

fn connect_tcp(target: &Target, timeout: Duration) -> Result<TcpStream, AttemptError> {
    let address = resolve(target).map_err(AttemptError::Final)?;
    let socket = TcpStream::connect_timeout(&address, timeout)
        .map_err(|error| AttemptError::NotReady(format!("TCP connect failed: {error}")))?;
    socket
        .set_nodelay(true)
        .map_err(|error| AttemptError::NotReady(format!("setting TCP_NODELAY failed: {error}")))?;
    Ok(socket)
}

fn resolve(target: &Target) -> anyhow::Result<SocketAddr> {
    let address = target.address();
    let mut addresses = (target.host.as_str(), target.port)
        .to_socket_addrs()
        .with_context(|| format!("resolving SSH address {address} of VM {}", target.name))?;
    addresses.next().ok_or_else(|| {
        Failure::infrastructure(format!("SSH address {address} resolves to nothing"))
    })
}

fn handshake(
    target: &Target,
    socket: &TcpStream,
    timeout: Duration,
) -> Result<ssh2::Session, AttemptError> {
    let setup = |error: anyhow::Error| {
        AttemptError::Final(
            error.context(format!("setting up an SSH session for VM {}", target.name)),
        )
    };
    let mut ssh = ssh2::Session::new().map_err(|error| setup(error.into()))?;
    ssh.set_timeout(timeout.as_millis() as u32);
    ssh.method_pref(ssh2::MethodType::HostKey, HOST_KEY_ALGORITHMS)
        .map_err(|error| setup(error.into()))?;
    let stream = socket.try_clone().map_err(|error| setup(error.into()))?;
    ssh.set_tcp_stream(stream);
    match ssh.handshake() {
        Ok(()) => Ok(ssh),
        Err(error) => Err(classify_handshake(target, error)),
    }
}

fn classify_handshake(target: &Target, error: ssh2::Error) -> AttemptError {
    let ssh2::ErrorCode::Session(code) = error.code() else {
        return AttemptError::NotReady(format!("SSH handshake failed: {error}"));
    };
    if [KEX_FAILURE, METHOD_NONE, ALGO_UNSUPPORTED].contains(&code) {
        return AttemptError::Final(Failure::infrastructure(format!(
            "SSH handshake with VM {} at {} failed: {error}; the guest's sshd and libssh2 \
             share no key exchange, cipher or host key algorithm",
            target.name,
            target.address()
        )));
    }
    AttemptError::NotReady(format!("SSH handshake failed: {error}"))
}

fn authenticate(target: &Target, ssh: &ssh2::Session, auth: &Auth) -> Result<(), AttemptError> {
    let result = match auth {
        Auth::Key => ssh.userauth_pubkey_file(&target.user, None, &target.key, None),
        Auth::Password(password) => ssh.userauth_password(&target.user, password),
    };
    match result {
        Ok(()) if ssh.authenticated() => Ok(()),
        Ok(()) => Err(AttemptError::Final(auth_failed(
            target,
            auth,
            "not authenticated",
        ))),
        Err(error) if is_transport_error(&error) => {
            Err(AttemptError::NotReady(format!("SSH login failed: {error}")))
        }
        Err(error) if error.code() == ssh2::ErrorCode::Session(FILE_ERROR) => {
            Err(AttemptError::Final(Failure::usage(format!(
                "libssh2 cannot load private key {}: {}; remove it and its .pub file so \
                 kbuild makes a new key pair",
                target.key.display(),
                error.message()
            ))))
        }
        Err(error) => Err(AttemptError::Final(auth_failed(
            target,
            auth,
            error.message(),
        ))),
    }
}

fn is_transport_error(error: &ssh2::Error) -> bool {
    matches!(error.code(), ssh2::ErrorCode::Session(code) if TRANSPORT_ERRORS.contains(&code))
}

fn auth_failed(target: &Target, auth: &Auth, reason: &str) -> anyhow::Error {
    let vm = format!("VM {} at {}", target.name, target.address());
    let message = match auth {
        Auth::Key => format!(
            "SSH key login as {user} on {vm} failed ({reason}): the guest does not accept \
             {key}; its ~/.ssh/authorized_keys must contain {public}. Run `kbuild destroy` to \
             recreate the VM with this key",
            user = target.user,
            key = target.key.display(),
            public = target.public_key().display(),
        ),
        Auth::Password(_) => format!(
            "SSH password login as {} on {vm} failed ({reason}): check the guest user's password",
            target.user
        ),
    };
    Failure::infrastructure(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn target() -> Target {
        Target {
            host: "127.0.0.1".into(),
            port: 2222,
            user: "root".into(),
            key: PathBuf::from("/p/ssh/id_ed25519"),
            known_hosts: PathBuf::from("/p/vm/known_hosts"),
            name: "vm1".into(),
        }
    }

    #[test]
    fn password_failure_hides_password() {
        let error = auth_failed(&target(), &Auth::Password("s3cret-pw"), "denied");
        let message = error.to_string();
        assert!(!message.contains("s3cret-pw"), "{message}");
        assert!(message.contains("127.0.0.1:2222"), "{message}");
    }

    #[test]
    fn key_failure_names_key_and_fix() {
        let message = auth_failed(&target(), &Auth::Key, "denied").to_string();
        assert!(message.contains("/p/ssh/id_ed25519.pub"), "{message}");
        assert!(message.contains("kbuild destroy"), "{message}");
    }

    #[test]
    fn timed_out_names_address_and_console() {
        let started = Instant::now();
        let message =
            timed_out(&target(), started, 3, "connection refused", "login:\n").to_string();
        assert!(message.contains("127.0.0.1:2222"), "{message}");
        assert!(message.contains("connection refused"), "{message}");
        assert!(message.ends_with("login:"), "{message}");
    }

    #[test]
    fn handshake_eof_not_final() {
        let error = ssh2::Error::new(ssh2::ErrorCode::Session(-13), "disconnected");
        assert!(matches!(
            classify_handshake(&target(), error),
            AttemptError::NotReady(_)
        ));
    }

    #[test]
    fn handshake_kex_failure_final() {
        let error = ssh2::Error::new(ssh2::ErrorCode::Session(KEX_FAILURE), "no kex");
        assert!(matches!(
            classify_handshake(&target(), error),
            AttemptError::Final(_)
        ));
    }
}
