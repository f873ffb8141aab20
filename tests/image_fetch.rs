//! `kbuild::image::fetch_image` against a real HTTP server on 127.0.0.1.

#[path = "support/http_server.rs"]
mod http_server;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http_server::{refused_url, Behaviour, HttpServer};
use kbuild::exit::{exit_code_of, ExitCode};
use kbuild::image::{fetch_image, CachedImage, FetchOptions};
use kbuild::profile::{Archive, ChecksumSource, Digest, DigestAlgorithm, DiskFormat, ImageSpec};
use sha2::{Digest as _, Sha256, Sha512};

/// Pseudo-random bytes, so that a byte served twice or out of place changes the digest.
fn data(size: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..size)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn sha256_of(bytes: &[u8]) -> Digest {
    Digest {
        algorithm: DigestAlgorithm::Sha256,
        hex: sha256_hex(bytes),
    }
}

fn spec(urls: Vec<String>, checksum: ChecksumSource, archive: Archive) -> ImageSpec {
    ImageSpec {
        urls,
        checksum,
        archive,
        format: DiskFormat::Qcow2,
        file: None,
    }
}

fn options() -> FetchOptions {
    FetchOptions {
        allow_unverified: false,
        retries: 2,
        backoff: Duration::from_millis(10),
        connect_timeout: Duration::from_secs(2),
        stall_timeout: Duration::from_secs(1),
    }
}

async fn fetch(image: &ImageSpec, cache: &Path) -> anyhow::Result<CachedImage> {
    fetch_image(image, cache, &options()).await
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

/// Files under the cache's image folders, apart from lock files.
fn cached_files(cache: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, found);
            } else if !path.ends_with(".lock") {
                found.push(path);
            }
        }
    }
    let mut found = Vec::new();
    walk(&cache.join("images"), &mut found);
    found
}

const SIZE: usize = 1 << 20;

#[tokio::test]
async fn fetch_plain_verified() {
    let server = HttpServer::start();
    let body = data(SIZE);
    server.serve("/disk.qcow2", body.clone());
    let cache = tempfile::tempdir().unwrap();
    let image = spec(
        vec![server.url("/disk.qcow2")],
        ChecksumSource::Digest(sha256_of(&body)),
        Archive::None,
    );

    let cached = fetch(&image, cache.path()).await.unwrap();

    assert_eq!(read(&cached.path), body);
    assert_eq!(cached.digest, format!("sha256:{}", sha256_hex(&body)));
    assert_eq!(cached.format, DiskFormat::Qcow2);
    let mode = std::fs::metadata(&cached.path)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o444);
    assert_eq!(server.requests_for("/disk.qcow2").len(), 1);
}

#[tokio::test]
async fn fetch_resumes_after_cut() {
    let server = HttpServer::start();
    let body = data(SIZE);
    server.serve("/disk.qcow2", body.clone());
    server.behave(
        "/disk.qcow2",
        Behaviour {
            cut_after: Some(400_000),
            ..Behaviour::default()
        },
    );
    let cache = tempfile::tempdir().unwrap();
    let image = spec(
        vec![server.url("/disk.qcow2")],
        ChecksumSource::Digest(sha256_of(&body)),
        Archive::None,
    );

    let cached = fetch(&image, cache.path()).await.unwrap();

    assert_eq!(read(&cached.path), body);
    let requests = server.requests_for("/disk.qcow2");
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(requests[0].range, None);
    assert_eq!(requests[1].range.as_deref(), Some("bytes=400000-"));
    assert_eq!(requests[1].status, 206);
    let total_sent: u64 = requests.iter().map(|request| request.body_bytes).sum();
    assert_eq!(total_sent, SIZE as u64, "bytes were sent twice");
}

#[tokio::test]
async fn fetch_resumes_after_stall() {
    let server = HttpServer::start();
    let body = data(SIZE);
    server.serve("/disk.qcow2", body.clone());
    let stall = (300_000, Duration::from_secs(4));
    server.behave(
        "/disk.qcow2",
        Behaviour {
            stall_after: Some(stall),
            ..Behaviour::default()
        },
    );
    let cache = tempfile::tempdir().unwrap();
    let image = spec(
        vec![server.url("/disk.qcow2")],
        ChecksumSource::Digest(sha256_of(&body)),
        Archive::None,
    );

    let started = std::time::Instant::now();
    let cached = fetch(&image, cache.path()).await.unwrap();

    assert_eq!(read(&cached.path), body);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the stall was waited out"
    );
    let requests = server.requests_for("/disk.qcow2");
    assert_eq!(
        requests.last().unwrap().range.as_deref(),
        Some("bytes=300000-")
    );
}

#[tokio::test]
async fn fetch_restarts_when_range_ignored() {
    let server = HttpServer::start();
    let body = data(SIZE);
    server.serve("/disk.qcow2", body.clone());
    let behaviour = Behaviour {
        ignore_range: true,
        cut_after: Some(500_000),
        ..Behaviour::default()
    };
    server.behave("/disk.qcow2", behaviour);
    let cache = tempfile::tempdir().unwrap();
    let image = spec(
        vec![server.url("/disk.qcow2")],
        ChecksumSource::Digest(sha256_of(&body)),
        Archive::None,
    );

    let cached = fetch(&image, cache.path()).await.unwrap();

    assert_eq!(read(&cached.path), body);
    let requests = server.requests_for("/disk.qcow2");
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(requests[1].range.as_deref(), Some("bytes=500000-"));
    assert_eq!(requests[1].status, 200);
    assert_eq!(requests[1].body_bytes, SIZE as u64);
}

#[tokio::test]
async fn fetch_resumes_part_from_earlier_run() {
    let server = HttpServer::start();
    let body = data(SIZE);
    server.serve("/disk.qcow2", body.clone());
    let cache = tempfile::tempdir().unwrap();
    let digest = sha256_of(&body);
    let folder = cache
        .path()
        .join(format!("images/sha256-{}/download", digest.hex));
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("disk.qcow2.part"), &body[..123_456]).unwrap();
    let image = spec(
        vec![server.url("/disk.qcow2")],
        ChecksumSource::Digest(digest),
        Archive::None,
    );

    let cached = fetch(&image, cache.path()).await.unwrap();

    assert_eq!(read(&cached.path), body);
    let requests = server.requests_for("/disk.qcow2");
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].range.as_deref(), Some("bytes=123456-"));
}

#[tokio::test]
async fn fetch_complete_part_gets_416() {
    let server = HttpServer::start();
    let body = data(SIZE);
    server.serve("/disk.qcow2", body.clone());
    let cache = tempfile::tempdir().unwrap();
    let digest = sha256_of(&body);
    let folder = cache
        .path()
        .join(format!("images/sha256-{}/download", digest.hex));
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("disk.qcow2.part"), &body).unwrap();
    let image = spec(
        vec![server.url("/disk.qcow2")],
        ChecksumSource::Digest(digest),
        Archive::None,
    );

    let cached = fetch(&image, cache.path()).await.unwrap();

    assert_eq!(read(&cached.path), body);
    let requests = server.requests_for("/disk.qcow2");
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].status, 416);
}

#[tokio::test]
async fn fetch_mirror_fallback() {
    let server = HttpServer::start();
    let body = data(SIZE);
    server.serve("/good.qcow2", body.clone());
    server.behave(
        "/broken.qcow2",
        Behaviour {
            status: Some(500),
            ..Behaviour::default()
        },
    );
    let urls = vec![
        refused_url(),
        server.url("/missing.qcow2"),
        server.url("/broken.qcow2"),
        server.url("/good.qcow2"),
    ];
    let cache = tempfile::tempdir().unwrap();
    let image = spec(
        urls,
        ChecksumSource::Digest(sha256_of(&body)),
        Archive::None,
    );

    let cached = fetch(&image, cache.path()).await.unwrap();

    assert_eq!(read(&cached.path), body);
    assert_eq!(
        server.requests_for("/missing.qcow2").len(),
        1,
        "a 404 was retried"
    );
    assert_eq!(
        server.requests_for("/broken.qcow2").len(),
        3,
        "a 500 gets 1 + 2 retries"
    );
    assert_eq!(server.requests_for("/good.qcow2").len(), 1);
}

#[tokio::test]
async fn fetch_every_mirror_404() {
    let server = HttpServer::start();
    let urls = vec![server.url("/a.qcow2"), server.url("/b.qcow2")];
    let cache = tempfile::tempdir().unwrap();
    let image = spec(
        urls.clone(),
        ChecksumSource::Digest(sha256_of(b"x")),
        Archive::None,
    );

    let error = fetch(&image, cache.path()).await.unwrap_err();

    let message = format!("{error:#}");
    assert_eq!(
        exit_code_of(&error, ExitCode::Usage),
        ExitCode::Infrastructure
    );
    for url in &urls {
        assert!(
            message.contains(&format!("{url}: HTTP 404 Not Found from {url}")),
            "{message}"
        );
    }
}

#[tokio::test]
async fn fetch_checksum_mismatch() {
    let server = HttpServer::start();
    let body = data(SIZE);
    server.serve("/disk.qcow2", body.clone());
    let cache = tempfile::tempdir().unwrap();
    let expected = sha256_of(b"another file");
    let url = server.url("/disk.qcow2");
    let image = spec(
        vec![url.clone()],
        ChecksumSource::Digest(expected.clone()),
        Archive::None,
    );

    let error = fetch(&image, cache.path()).await.unwrap_err();

    let message = format!("{error:#}");
    assert!(
        message.contains(&format!("sha256:{}", expected.hex)),
        "{message}"
    );
    assert!(
        message.contains(&format!("sha256:{}", sha256_hex(&body))),
        "{message}"
    );
    assert!(message.contains(&url), "{message}");
    assert_eq!(cached_files(cache.path()), Vec::<PathBuf>::new());
}

#[tokio::test]
async fn fetch_sums_gnu_sha512() {
    let server = HttpServer::start();
    let body = data(SIZE);
    server.serve("/images/debian.qcow2", body.clone());
    let sums = format!(
        "{}  debian.qcow2.json\n{}  debian.qcow2\n",
        hex(&Sha512::digest(b"json")),
        hex(&Sha512::digest(&body))
    );
    server.serve("/images/SHA512SUMS", sums.into_bytes());
    let cache = tempfile::tempdir().unwrap();
    let checksum = ChecksumSource::SumsUrl(server.url("/images/SHA512SUMS"));
    let image = spec(
        vec![server.url("/images/debian.qcow2")],
        checksum,
        Archive::None,
    );

    let cached = fetch(&image, cache.path()).await.unwrap();

    assert_eq!(read(&cached.path), body);
    assert_eq!(cached.digest, format!("sha256:{}", sha256_hex(&body)));
    assert!(cached
        .cache_dir
        .ends_with(format!("sha512-{}", hex(&Sha512::digest(&body)))));
}

#[tokio::test]
async fn fetch_sums_bsd_signed() {
    let server = HttpServer::start();
    let body = data(SIZE);
    server.serve("/Fedora-Cloud.qcow2", body.clone());
    let sums = format!(
        "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n\
         # Fedora-Cloud.qcow2: {SIZE} bytes\nSHA256 (Fedora-Cloud.qcow2) = {}\n\
         -----BEGIN PGP SIGNATURE-----\n\niQIzBAEBCAAdFiEE\n-----END PGP SIGNATURE-----\n",
        sha256_hex(&body)
    );
    server.serve("/CHECKSUM", sums.into_bytes());
    let cache = tempfile::tempdir().unwrap();
    let checksum = ChecksumSource::SumsUrl(server.url("/CHECKSUM"));
    let image = spec(
        vec![server.url("/Fedora-Cloud.qcow2")],
        checksum,
        Archive::None,
    );

    let cached = fetch(&image, cache.path()).await.unwrap();

    assert_eq!(read(&cached.path), body);
}

#[tokio::test]
async fn fetch_sums_without_name() {
    let server = HttpServer::start();
    let sums = format!("{}  other.qcow2\n", sha256_hex(b"other"));
    server.serve("/SHA256SUMS", sums.into_bytes());
    let cache = tempfile::tempdir().unwrap();
    let checksum = ChecksumSource::SumsUrl(server.url("/SHA256SUMS"));
    let image = spec(vec![server.url("/disk.qcow2")], checksum, Archive::None);

    let error = fetch(&image, cache.path()).await.unwrap_err();

    let message = format!("{error:#}");
    assert!(message.contains("disk.qcow2"), "{message}");
    assert!(message.contains("only other.qcow2"), "{message}");
    assert!(
        server.requests_for("/disk.qcow2").is_empty(),
        "the image was downloaded"
    );
}

#[tokio::test]
async fn fetch_unverified_rejected() {
    let server = HttpServer::start();
    server.serve("/disk.qcow2", data(SIZE));
    let cache = tempfile::tempdir().unwrap();
    let image = spec(
        vec![server.url("/disk.qcow2")],
        ChecksumSource::None,
        Archive::None,
    );

    let error = fetch(&image, cache.path()).await.unwrap_err();

    assert_eq!(
        exit_code_of(&error, ExitCode::Infrastructure),
        ExitCode::Usage
    );
    let message = error.to_string();
    assert!(message.contains("--allow-unverified"), "{message}");
    assert!(message.contains("checksum"), "{message}");
    assert!(server.log().is_empty(), "a request was made");
}

#[tokio::test]
async fn fetch_unverified_allowed() {
    let server = HttpServer::start();
    let body = data(SIZE);
    server.serve("/disk.qcow2", body.clone());
    let cache = tempfile::tempdir().unwrap();
    let image = spec(
        vec![server.url("/disk.qcow2")],
        ChecksumSource::None,
        Archive::None,
    );
    let options = FetchOptions {
        allow_unverified: true,
        ..options()
    };

    let cached = fetch_image(&image, cache.path(), &options).await.unwrap();
    let again = fetch_image(&image, cache.path(), &options).await.unwrap();

    assert_eq!(read(&cached.path), body);
    assert_eq!(cached.digest, format!("sha256:{}", sha256_hex(&body)));
    assert_eq!(again.path, cached.path);
    assert_eq!(server.requests_for("/disk.qcow2").len(), 1);
}

#[tokio::test]
async fn fetch_cache_reuse_without_requests() {
    let server = HttpServer::start();
    let body = data(SIZE);
    server.serve("/disk.qcow2", body.clone());
    server.serve(
        "/SHA256SUMS",
        format!("{}  disk.qcow2\n", sha256_hex(&body)).into_bytes(),
    );
    let cache = tempfile::tempdir().unwrap();
    let checksum = ChecksumSource::SumsUrl(server.url("/SHA256SUMS"));
    let image = spec(vec![server.url("/disk.qcow2")], checksum, Archive::None);
    let first = fetch(&image, cache.path()).await.unwrap();
    server.clear_log();

    let second = fetch(&image, cache.path()).await.unwrap();

    assert_eq!(second.path, first.path);
    assert_eq!(second.digest, first.digest);
    assert!(server.log().is_empty(), "requests: {:?}", server.log());
}

#[tokio::test]
async fn fetch_corrupted_cache_refetched() {
    let server = HttpServer::start();
    let body = data(SIZE);
    server.serve("/disk.qcow2", body.clone());
    let cache = tempfile::tempdir().unwrap();
    let image = spec(
        vec![server.url("/disk.qcow2")],
        ChecksumSource::Digest(sha256_of(&body)),
        Archive::None,
    );
    let first = fetch(&image, cache.path()).await.unwrap();
    std::fs::set_permissions(&first.path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(&first.path)
        .unwrap();
    file.write_all(b"bit rot").unwrap();
    drop(file);
    server.clear_log();

    let second = fetch(&image, cache.path()).await.unwrap();

    assert_eq!(read(&second.path), body);
    assert_eq!(server.requests_for("/disk.qcow2").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_concurrent_one_download() {
    let server = HttpServer::start();
    let body = data(SIZE);
    server.serve("/disk.qcow2", body.clone());
    let slow = Some((64 * 1024, Duration::from_millis(20)));
    server.behave(
        "/disk.qcow2",
        Behaviour {
            slow,
            ..Behaviour::default()
        },
    );
    let cache = tempfile::tempdir().unwrap();
    let image = spec(
        vec![server.url("/disk.qcow2")],
        ChecksumSource::Digest(sha256_of(&body)),
        Archive::None,
    );

    let (first, second) = tokio::join!(
        tokio::spawn({
            let (image, cache) = (image.clone(), cache.path().to_path_buf());
            async move { fetch(&image, &cache).await }
        }),
        tokio::spawn({
            let (image, cache) = (image.clone(), cache.path().to_path_buf());
            async move { fetch(&image, &cache).await }
        }),
    );

    let (first, second) = (first.unwrap().unwrap(), second.unwrap().unwrap());
    assert_eq!(first.path, second.path);
    assert_eq!(read(&first.path), body);
    assert_eq!(server.requests_for("/disk.qcow2").len(), 1);
}

fn zip_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, data) in files {
        writer
            .start_file(*name, zip::write::SimpleFileOptions::default())
            .unwrap();
        writer.write_all(data).unwrap();
    }
    writer.finish().unwrap().into_inner()
}

#[tokio::test]
async fn fetch_zip_unpacked_and_reused() {
    let server = HttpServer::start();
    let disk = data(SIZE);
    let zip = zip_of(&[("vm/readme.txt", b"hello"), ("vm/box.qcow2", &disk)]);
    server.serve("/box.zip", zip.clone());
    let cache = tempfile::tempdir().unwrap();
    let image = spec(
        vec![server.url("/box.zip")],
        ChecksumSource::Digest(sha256_of(&zip)),
        Archive::Zip,
    );

    let cached = fetch(&image, cache.path()).await.unwrap();
    server.clear_log();
    let again = fetch(&image, cache.path()).await.unwrap();

    assert_eq!(read(&cached.path), disk);
    assert!(cached.path.ends_with("disk.qcow2"));
    assert_eq!(cached.digest, format!("sha256:{}", sha256_hex(&zip)));
    let mode = std::fs::metadata(&cached.path)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o444);
    assert_eq!(again.path, cached.path);
    assert!(server.log().is_empty(), "requests: {:?}", server.log());
    assert!(!cached.cache_dir.join("unpack.tmp").exists());
}

#[tokio::test]
async fn fetch_corrupted_disk_unpacked_again() {
    let server = HttpServer::start();
    let disk = data(SIZE);
    let zip = zip_of(&[("box.qcow2", &disk)]);
    server.serve("/box.zip", zip.clone());
    let cache = tempfile::tempdir().unwrap();
    let image = spec(
        vec![server.url("/box.zip")],
        ChecksumSource::Digest(sha256_of(&zip)),
        Archive::Zip,
    );
    let cached = fetch(&image, cache.path()).await.unwrap();
    std::fs::remove_file(&cached.path).unwrap();
    std::fs::write(&cached.path, b"damaged disk").unwrap();
    server.clear_log();

    let again = fetch(&image, cache.path()).await.unwrap();

    assert_eq!(read(&again.path), disk);
    assert!(
        server.log().is_empty(),
        "the intact download was fetched again"
    );
}

#[tokio::test]
async fn fetch_truncated_archive_refetched() {
    let server = HttpServer::start();
    let zip = zip_of(&[("box.qcow2", &data(SIZE))]);
    server.serve("/box.zip", zip.clone());
    server.serve_once("/box.zip", zip[..zip.len() / 2].to_vec());
    let cache = tempfile::tempdir().unwrap();
    let image = spec(
        vec![server.url("/box.zip")],
        ChecksumSource::None,
        Archive::Zip,
    );
    let options = FetchOptions {
        allow_unverified: true,
        ..options()
    };

    let cached = fetch_image(&image, cache.path(), &options).await.unwrap();

    assert_eq!(read(&cached.path), data(SIZE));
    assert_eq!(cached.digest, format!("sha256:{}", sha256_hex(&zip)));
    assert_eq!(server.requests_for("/box.zip").len(), 2);
}

#[tokio::test]
async fn fetch_truncated_archive_twice_fails() {
    let server = HttpServer::start();
    let zip = zip_of(&[("box.qcow2", &data(SIZE))]);
    let truncated = zip[..zip.len() / 2].to_vec();
    server.serve("/box.zip", truncated.clone());
    let cache = tempfile::tempdir().unwrap();
    let url = server.url("/box.zip");
    let image = spec(
        vec![url.clone()],
        ChecksumSource::Digest(sha256_of(&truncated)),
        Archive::Zip,
    );

    let error = fetch(&image, cache.path()).await.unwrap_err();

    let message = format!("{error:#}");
    assert!(message.contains("damaged too"), "{message}");
    assert!(message.contains(&url), "{message}");
    assert_eq!(server.requests_for("/box.zip").len(), 2);
}
