//! Downloads one disk image with `kbuild::image::fetch_image` and prints the
//! time and rate, for throughput and memory benchmarks:
//!
//! ```text
//! cargo run --release --example download -- URL sha256:HEX CACHE_DIR
//! ```
//!
//! Pass `none` instead of the digest to download without verification.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use kbuild::image::{fetch_image, FetchOptions};
use kbuild::profile::{Archive, ChecksumSource, Digest, DigestAlgorithm, DiskFormat, ImageSpec};

fn checksum(text: &str) -> anyhow::Result<ChecksumSource> {
    if text == "none" {
        return Ok(ChecksumSource::None);
    }
    let (algorithm, hex) = text
        .split_once(':')
        .context("write the digest as sha256:HEX")?;
    let algorithm = match algorithm {
        "sha256" => DigestAlgorithm::Sha256,
        "sha512" => DigestAlgorithm::Sha512,
        other => bail!("unsupported digest algorithm {other:?}; use sha256 or sha512"),
    };
    let hex = hex.to_ascii_lowercase();
    Ok(ChecksumSource::Digest(Digest { algorithm, hex }))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let [url, digest, cache_dir] = arguments.as_slice() else {
        bail!("usage: download URL sha256:HEX|none CACHE_DIR");
    };
    let checksum = checksum(digest)?;
    let options = FetchOptions {
        allow_unverified: checksum == ChecksumSource::None,
        ..FetchOptions::default()
    };
    let image = ImageSpec {
        urls: vec![url.clone()],
        checksum,
        archive: Archive::None,
        format: DiskFormat::Raw,
        file: None,
    };
    let started = Instant::now();
    let cached = fetch_image(&image, &PathBuf::from(cache_dir), &options).await?;
    let seconds = started.elapsed().as_secs_f64();
    let size = std::fs::metadata(&cached.path)
        .with_context(|| format!("reading {}", cached.path.display()))?
        .len();
    kbuild::ui::result(format!(
        "{} {} bytes in {seconds:.2} s, {:.0} MiB/s",
        cached.path.display(),
        size,
        size as f64 / seconds / (1024.0 * 1024.0)
    ));
    Ok(())
}
