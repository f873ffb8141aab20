//! A kernel source given as a URL: downloaded from an HTTP server on
//! 127.0.0.1, checked against its SHA-256, cached, and unpacked once.

#[path = "support/http_server.rs"]
mod http_server;

use std::path::Path;

use http_server::HttpServer;
use sha2::{Digest, Sha256};

/// Builds a gzip tarball of a minimal tree that passes kbuild's tree check.
fn tiny_tree_tarball(dir: &Path) -> Vec<u8> {
    let tree = dir.join("linux-6.1.999");
    std::fs::create_dir_all(tree.join("kernel")).unwrap();
    std::fs::write(tree.join("Makefile"), "VERSION = 6\nPATCHLEVEL = 1\n").unwrap();
    std::fs::write(tree.join("kernel/fork.c"), "/* fork */\n").unwrap();
    let output = std::process::Command::new("tar")
        .arg("-czf")
        .arg("-")
        .arg("-C")
        .arg(dir)
        .arg("linux-6.1.999")
        .output()
        .unwrap();
    assert!(output.status.success());
    output.stdout
}

fn hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn project(dir: &Path, url: &str, sha256: &str) -> kbuild::project::Project {
    let text = format!(
        "[syscall]\nname = \"kbuild_add\"\n\n[kernel]\nsource = {url:?}\nsha256 = {sha256:?}\n"
    );
    let path = dir.join("kbuild.toml");
    std::fs::write(&path, text).unwrap();
    kbuild::project::Project::load(&path).unwrap()
}

#[tokio::test]
async fn source_url_downloads_checks_and_unpacks() {
    let dir = tempfile::tempdir().unwrap();
    // One test sets the cache folder, so no other test in this binary races on it.
    std::env::set_var("KBUILD_CACHE_DIR", dir.path().join("cache"));
    std::env::set_var("CI", "true");
    let tarball = tiny_tree_tarball(dir.path());
    let server = HttpServer::start();
    server.serve("/linux-6.1.999.tar.gz", tarball.clone());
    let url = server.url("/linux-6.1.999.tar.gz");

    let wrong = project(dir.path(), &url, &"0".repeat(64));
    let error = kbuild::source::kernel_tree(&wrong).await.unwrap_err();
    assert!(format!("{error:#}").contains("sha256"), "{error:#}");
    assert!(!dir
        .path()
        .join(".kbuild/source")
        .join("linux-6.1.999")
        .exists());

    let right = project(dir.path(), &url, &hex(&tarball));
    let tree = kbuild::source::kernel_tree(&right).await.unwrap();
    assert!(tree.join("kernel/fork.c").is_file(), "{}", tree.display());

    server.clear_log();
    let again = kbuild::source::kernel_tree(&right).await.unwrap();
    assert_eq!(again, tree);
    assert!(
        server.log().is_empty(),
        "the cached tarball was downloaded again"
    );
}
