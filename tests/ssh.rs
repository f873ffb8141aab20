//! The SSH layer against a real OpenSSH server on 127.0.0.1: key and
//! password logins, host key pinning, commands, quoting, SFTP and waiting.
//! Needs root and openssh-server; see tests/support/sshd.rs.

#[path = "support/sshd.rs"]
mod sshd;

use std::fs;
use std::io::Read;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use kbuild::exit::{exit_code_of, ExitCode};
use kbuild::ssh::{
    ensure_key_pair, install_key_with_password, read_public_key, wait_for_ssh, ExecOptions,
    ExitStatus, OutputStream, Session, Target,
};
use sha2::{Digest, Sha256};
use sshd::Sshd;

/// A client folder with the project's key pair and the VM's known_hosts.
struct Client {
    dir: tempfile::TempDir,
    target: Target,
}

impl Client {
    fn new(port: u16) -> Client {
        let dir = tempfile::tempdir().unwrap();
        let pair = ensure_key_pair(&dir.path().join("keys")).unwrap();
        let target = Target {
            host: "127.0.0.1".into(),
            port,
            user: sshd::USER.into(),
            key: pair.private_key,
            known_hosts: dir.path().join("vm/known_hosts"),
            name: "test-vm".into(),
        };
        Client { dir, target }
    }

    fn public_key(&self) -> String {
        read_public_key(&self.target.public_key()).unwrap()
    }

    fn connect(&self) -> anyhow::Result<Session> {
        wait_for_ssh(&self.target, in_seconds(10), || "console tail".to_string())
    }
}

/// Starts a server that accepts the client's key.
fn server_and_client() -> (Sshd, Client) {
    let sshd = Sshd::start();
    let client = Client::new(sshd.port);
    sshd.authorize(&format!("{}\n", client.public_key()));
    (sshd, client)
}

fn in_seconds(seconds: u64) -> Instant {
    Instant::now() + Duration::from_secs(seconds)
}

fn sha256_file(path: &Path) -> Vec<u8> {
    let mut file = fs::File::open(path).unwrap();
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let count = file.read(&mut buffer).unwrap();
        if count == 0 {
            return hasher.finalize().to_vec();
        }
        hasher.update(&buffer[..count]);
    }
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn key_login_runs_command() {
    let (sshd, client) = server_and_client();
    let session = client
        .connect()
        .unwrap_or_else(|error| panic!("{error:#}\n{}", sshd.log()));
    let output = session.exec_capture(&["id", "-un"]).unwrap();
    assert_eq!(output.stdout, format!("{}\n", sshd::USER));
    assert!(output.status.success());
    let pinned = fs::read_to_string(&client.target.known_hosts).unwrap();
    assert!(
        pinned.starts_with(&format!("[127.0.0.1]:{} ssh-ed25519 ", sshd.port)),
        "{pinned}"
    );
}

#[test]
fn key_login_rejected_is_final() {
    let sshd = Sshd::start();
    let client = Client::new(sshd.port);
    let started = Instant::now();
    let error = wait_for_ssh(&client.target, in_seconds(20), String::new).unwrap_err();
    let message = format!("{error:#}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert!(message.contains("authorized_keys"), "{message}");
    assert!(
        message.contains(&client.target.public_key().display().to_string()),
        "{message}"
    );
    assert_eq!(
        exit_code_of(&error, ExitCode::Usage),
        ExitCode::Infrastructure
    );
}

#[test]
fn password_installs_key() {
    let mut sshd = Sshd::start();
    let client = Client::new(sshd.port);
    let session =
        install_key_with_password(&client.target, &sshd.password, in_seconds(10), String::new)
            .unwrap_or_else(|error| panic!("{error:#}\n{}", sshd.log()));
    let output = session.exec_capture(&["id", "-un"]).unwrap();
    assert_eq!(output.stdout.trim(), sshd::USER);
    drop(session);

    let ssh_dir = sshd.home().join(".ssh");
    let authorized_keys = ssh_dir.join("authorized_keys");
    assert_eq!(mode(&ssh_dir), 0o700);
    assert_eq!(mode(&authorized_keys), 0o600);

    // A second install leaves one copy of the key.
    install_key_with_password(&client.target, &sshd.password, in_seconds(10), String::new).unwrap();
    let text = fs::read_to_string(&authorized_keys).unwrap();
    assert_eq!(text, format!("{}\n", client.public_key()));

    // With password logins off, the key alone still gets in.
    sshd.password_auth = false;
    sshd.restart();
    let session = client
        .connect()
        .unwrap_or_else(|error| panic!("{error:#}\n{}", sshd.log()));
    assert!(session.exec_capture(&["true"]).unwrap().status.success());
}

#[test]
fn password_install_appends_after_unterminated_line() {
    let sshd = Sshd::start();
    let client = Client::new(sshd.port);
    let ssh_dir = sshd.home().join(".ssh");
    fs::create_dir_all(&ssh_dir).unwrap();
    let authorized_keys = ssh_dir.join("authorized_keys");
    fs::write(
        &authorized_keys,
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOther other",
    )
    .unwrap();
    std::os::unix::fs::chown(&ssh_dir, Some(sshd::UID), None).unwrap();
    std::os::unix::fs::chown(&authorized_keys, Some(sshd::UID), None).unwrap();
    install_key_with_password(&client.target, &sshd.password, in_seconds(10), String::new)
        .unwrap_or_else(|error| panic!("{error:#}\n{}", sshd.log()));
    let text = fs::read_to_string(&authorized_keys).unwrap();
    let expected = format!(
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOther other\n{}\n",
        client.public_key()
    );
    assert_eq!(text, expected);
}

#[test]
fn wrong_password_is_final() {
    let sshd = Sshd::start();
    let client = Client::new(sshd.port);
    let started = Instant::now();
    let error =
        install_key_with_password(&client.target, "wrong-pw-123", in_seconds(20), String::new)
            .unwrap_err();
    let message = format!("{error:#}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert!(message.contains("password login"), "{message}");
    assert!(!message.contains("wrong-pw-123"), "{message}");
}

#[test]
fn changed_host_key_rejected() {
    let (mut sshd, client) = server_and_client();
    let old_fingerprint = sshd.host_key_fingerprint();
    drop(
        client
            .connect()
            .unwrap_or_else(|error| panic!("{error:#}\n{}", sshd.log())),
    );

    sshd.stop();
    sshd.new_host_key();
    sshd.spawn();
    let new_fingerprint = sshd.host_key_fingerprint();
    assert_ne!(old_fingerprint, new_fingerprint);

    let started = Instant::now();
    let error = client.connect().unwrap_err();
    let message = format!("{error:#}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert!(message.contains("VM test-vm"), "{message}");
    assert!(message.contains(&old_fingerprint), "{message}");
    assert!(message.contains(&new_fingerprint), "{message}");
    assert!(message.contains("kbuild destroy"), "{message}");
    let known_hosts = client.target.known_hosts.display().to_string();
    assert!(message.contains(&known_hosts), "{message}");
}

#[test]
fn exec_exit_statuses() {
    let (_sshd, client) = server_and_client();
    let session = client.connect().unwrap();
    let cases = [
        (vec!["true"], ExitStatus::Code(0)),
        (vec!["sh", "-c", "exit 3"], ExitStatus::Code(3)),
        (vec!["sh", "-c", "exit 255"], ExitStatus::Code(255)),
        (
            vec!["sh", "-c", "kill -KILL $$"],
            ExitStatus::Signal("KILL".into()),
        ),
        (
            vec!["sh", "-c", "kill -TERM $$"],
            ExitStatus::Signal("TERM".into()),
        ),
    ];
    for (argv, expected) in cases {
        let output = session.exec_capture(&argv).unwrap();
        assert_eq!(output.status, expected, "{argv:?}");
    }
}

#[test]
fn exec_streams_lines_in_order() {
    let (_sshd, client) = server_and_client();
    let session = client.connect().unwrap();
    let script = "for i in 1 2 3; do echo out$i; sleep 0.2; echo err$i >&2; sleep 0.2; done; \
                  printf tail";
    let log = client.dir.path().join("command.log");
    let options = ExecOptions {
        log: Some(log.clone()),
        timeout: None,
    };
    let started = Instant::now();
    let mut lines = Vec::new();
    let status = session
        .exec(&["sh", "-c", script], &options, |stream, line| {
            lines.push((stream, line.to_string(), started.elapsed()))
        })
        .unwrap();
    assert!(status.success());

    use OutputStream::{Stderr, Stdout};
    let received: Vec<(OutputStream, &str)> = lines
        .iter()
        .map(|(stream, line, _)| (*stream, line.as_str()))
        .collect();
    let expected = vec![
        (Stdout, "out1"),
        (Stderr, "err1"),
        (Stdout, "out2"),
        (Stderr, "err2"),
        (Stdout, "out3"),
        (Stderr, "err3"),
        (Stdout, "tail"),
    ];
    assert_eq!(received, expected);
    // The first line arrives while the command still runs, not at its end.
    let spread = lines.last().unwrap().2 - lines[0].2;
    assert!(
        spread >= Duration::from_millis(800),
        "lines arrived within {spread:?}"
    );
    let logged = fs::read_to_string(&log).unwrap();
    assert_eq!(logged, "out1\nerr1\nout2\nerr2\nout3\nerr3\ntail\n");
}

#[test]
fn exec_timeout_fails() {
    let (_sshd, client) = server_and_client();
    let session = client.connect().unwrap();
    let options = ExecOptions {
        log: None,
        timeout: Some(Duration::from_secs(1)),
    };
    let started = Instant::now();
    let error = session
        .exec(&["sleep", "30"], &options, |_, _| {})
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert!(format!("{error:#}").contains("timed out"), "{error:#}");
    let output = session.exec_capture(&["echo", "still usable"]).unwrap();
    assert_eq!(output.stdout, "still usable\n");
    // Dropping the session must not wait for the abandoned `sleep 30`.
    drop(session);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn quoting_round_trips_through_sshd() {
    let (_sshd, client) = server_and_client();
    let session = client.connect().unwrap();
    let nasty = [
        "'; rm -rf / #",
        "$(id)",
        "`id`",
        "line one\nline two\n",
        "it's \"quoted\"",
        "''",
        "back\\slash \\n",
        "* ? [a]",
        "~root",
        "",
        "$HOME ${PATH}",
        "a;b|c&d>e<f",
        "-n",
        "é ünïcode",
    ];
    for arg in nasty {
        let output = session.exec_capture(&["printf", "%s", arg]).unwrap();
        assert_eq!(output.stdout, arg);
        assert!(output.status.success(), "{arg:?}: {}", output.stderr);
    }
}

#[test]
fn sftp_round_trip_20_mib() {
    let (sshd, client) = server_and_client();
    let session = client.connect().unwrap();
    let local = client.dir.path().join("random.bin");
    let mut random = vec![0u8; 20 << 20];
    fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut random)
        .unwrap();
    fs::write(&local, &random).unwrap();
    drop(random);
    fs::set_permissions(&local, fs::Permissions::from_mode(0o640)).unwrap();
    let remote = format!("{}/upload.bin", sshd.home().display());

    let mut sent = Vec::new();
    let started = Instant::now();
    let total = session
        .upload(&local, &remote, |bytes| sent.push(bytes))
        .unwrap();
    eprintln!("upload of 20 MiB took {:?}", started.elapsed());
    assert_eq!(total, 20 << 20);
    assert!(sent.len() > 1, "{} progress calls", sent.len());
    assert_eq!(sent.last(), Some(&total));
    assert!(sent.windows(2).all(|pair| pair[0] < pair[1]));
    assert_eq!(sha256_file(Path::new(&remote)), sha256_file(&local));
    assert_eq!(mode(Path::new(&remote)), 0o640);

    let back = client.dir.path().join("back.bin");
    let mut received = Vec::new();
    let started = Instant::now();
    let total = session
        .download(&remote, &back, |bytes| received.push(bytes))
        .unwrap();
    eprintln!("download of 20 MiB took {:?}", started.elapsed());
    assert_eq!(total, 20 << 20);
    assert!(received.len() > 1, "{} progress calls", received.len());
    assert_eq!(received.last(), Some(&total));
    assert_eq!(sha256_file(&back), sha256_file(&local));
    assert_eq!(mode(&back), 0o640);

    let leftovers: Vec<_> = fs::read_dir(sshd.home())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains("kbuild-partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn sftp_upload_replaces_file() {
    let (sshd, client) = server_and_client();
    let session = client.connect().unwrap();
    let remote = format!("{}/script.sh", sshd.home().display());
    let local = client.dir.path().join("script.sh");
    for (text, file_mode) in [
        ("#!/bin/sh\necho one\n", 0o644),
        ("#!/bin/sh\necho two\n", 0o755),
    ] {
        fs::write(&local, text).unwrap();
        fs::set_permissions(&local, fs::Permissions::from_mode(file_mode)).unwrap();
        session.upload(&local, &remote, |_| {}).unwrap();
        assert_eq!(fs::read_to_string(&remote).unwrap(), text);
        assert_eq!(mode(Path::new(&remote)), file_mode);
    }
    let output = session.exec_capture(&[remote.as_str()]).unwrap();
    assert_eq!(output.stdout, "two\n");
}

#[test]
fn wait_on_closed_port_times_out() {
    let client = Client::new(sshd::free_port());
    let started = Instant::now();
    let deadline = started + Duration::from_secs(2);
    let error = wait_for_ssh(&client.target, deadline, || {
        "Booting the kernel.".to_string()
    })
    .unwrap_err();
    let message = format!("{error:#}");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1500),
        "gave up after {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(5),
        "gave up after {elapsed:?}"
    );
    assert!(message.contains(&client.target.address()), "{message}");
    assert!(message.contains("refused"), "{message}");
    assert!(message.contains("Booting the kernel."), "{message}");
    assert_eq!(
        exit_code_of(&error, ExitCode::Usage),
        ExitCode::Infrastructure
    );
}

#[test]
fn wait_retries_dropped_handshakes() {
    // Like QEMU's user network while the guest is down: accept, then close.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = std::thread::spawn(move || {
        listener.set_nonblocking(true).unwrap();
        let stop = Instant::now() + Duration::from_secs(3);
        let mut count = 0;
        while Instant::now() < stop {
            match listener.accept() {
                Ok((stream, _)) => {
                    count += 1;
                    drop(stream);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        count
    });
    let client = Client::new(port);
    let error = wait_for_ssh(&client.target, in_seconds(2), String::new).unwrap_err();
    let message = format!("{error:#}");
    assert!(message.contains("handshake"), "{message}");
    let count = accepted.join().unwrap();
    assert!(count >= 3, "only {count} connections");
}

#[test]
fn wait_for_late_sshd() {
    let mut sshd = Sshd::prepare();
    let client = Client::new(sshd.port);
    sshd.authorize(&format!("{}\n", client.public_key()));
    let target = client.target.clone();
    let started = Instant::now();
    let waiter = std::thread::spawn(move || wait_for_ssh(&target, in_seconds(20), String::new));
    std::thread::sleep(Duration::from_secs(2));
    sshd.spawn();
    let session = waiter
        .join()
        .unwrap()
        .unwrap_or_else(|error| panic!("{error:#}"));
    let elapsed = started.elapsed();
    eprintln!("connected {elapsed:?} after the wait began");
    assert!(
        elapsed >= Duration::from_secs(2),
        "connected after {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(6),
        "connected after {elapsed:?}"
    );
    assert!(session.exec_capture(&["true"]).unwrap().status.success());
}

#[test]
fn boot_id_reads_uuid() {
    let (_sshd, client) = server_and_client();
    let session = client.connect().unwrap();
    let id = session.boot_id().unwrap();
    let host_id = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    assert_eq!(id, host_id.trim());
}
