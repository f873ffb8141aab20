//! The expected digest of a download, and the file name it is known by.

use std::path::{Path, PathBuf};

use anyhow::Context;
use sha2::{Digest as _, Sha256};

use super::cache::ImageDir;
use super::checksum::find_in_sums;
use super::download::Downloader;
use super::FetchOptions;
use crate::exit::Failure;
use crate::profile::{ChecksumSource, Digest, ImageSpec};
use crate::ui;

/// Maximum size of a sums file. Real ones are a few KiB.
const MAX_SUMS_BYTES: usize = 4 << 20;

/// Returns the file name a URL downloads to, which sums files are matched against.
///
/// This is the last path segment, percent-decoded. For a SourceForge-style
/// `.../NAME/download` URL it is the segment before `download`, because that
/// is the name the file is published under. kbuild decides the name from the
/// URL alone, without a request, so a cached image is found offline. A name
/// that cannot be a file name becomes `image`.
pub(crate) fn download_name(url: &str) -> String {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let after_scheme = path.split_once("://").map_or(path, |(_, rest)| rest);
    let mut segments: Vec<&str> = after_scheme
        .split('/')
        .skip(1)
        .filter(|segment| !segment.is_empty())
        .collect();
    if segments.len() >= 2 && segments.last() == Some(&"download") {
        segments.pop();
    }
    let name = segments
        .last()
        .map(|segment| percent_decode(segment))
        .unwrap_or_default();
    let invalid = name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']);
    if invalid {
        "image".to_string()
    } else {
        name
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let hex = bytes
            .get(index + 1..index + 3)
            .and_then(|pair| std::str::from_utf8(pair).ok());
        let value = hex.and_then(|pair| u8::from_str_radix(pair, 16).ok());
        match (bytes[index], value) {
            (b'%', Some(value)) => {
                decoded.push(value);
                index += 3;
            }
            (byte, _) => {
                decoded.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

/// Returns the cache key of an image: its expected digest, or the SHA-256 of
/// its first URL when it has none.
pub(crate) fn cache_key(expected: Option<&Digest>, first_url: &str) -> String {
    match expected {
        Some(digest) => format!("{}-{}", digest.algorithm.name(), digest.hex),
        None => format!("url-{}", sha256_hex(first_url)),
    }
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Returns the digest the download must have, or `None` for an unverified download.
///
/// An image without a checksum is rejected unless `allow_unverified` is set.
pub(crate) async fn expected_digest(
    image: &ImageSpec,
    name: &str,
    cache_dir: &Path,
    downloader: &Downloader,
    options: &FetchOptions,
) -> anyhow::Result<Option<Digest>> {
    let first_url = image.urls.first().map(String::as_str).unwrap_or_default();
    match &image.checksum {
        ChecksumSource::Digest(digest) => Ok(Some(digest.clone())),
        ChecksumSource::SumsUrl(sums_url) => {
            digest_from_sums(sums_url, name, cache_dir, downloader)
                .await
                .map(Some)
        }
        ChecksumSource::None if options.allow_unverified => {
            ui::warn(format!(
                "the profile has no checksum for {first_url}; because of --allow-unverified, \
                 kbuild uses the download WITHOUT verifying it"
            ));
            Ok(None)
        }
        ChecksumSource::None => Err(Failure::usage(format!(
            "the profile has no checksum for {first_url}, so kbuild cannot verify the download; \
             add `checksum = \"sha256:HEX\"` or `checksum_url` to the profile's [image] table, \
             or pass --allow-unverified to use the image unverified"
        ))),
    }
}

/// Looks `name` up in the sums file at `sums_url`.
///
/// The sums file is kept in the cache. The kept copy is used only when the
/// digest it gives already has a download in the cache, so a cached image is
/// reused without any request. Before each new download the sums file is
/// fetched again, in case a URL that moves with releases now has new sums.
async fn digest_from_sums(
    sums_url: &str,
    name: &str,
    cache_dir: &Path,
    downloader: &Downloader,
) -> anyhow::Result<Digest> {
    let saved = saved_sums_path(cache_dir, sums_url);
    if let Ok(text) = std::fs::read_to_string(&saved) {
        if let Ok(digest) = find_in_sums(&text, name, sums_url) {
            let root = cache_dir.join("images").join(cache_key(Some(&digest), ""));
            if (ImageDir { root }).download(name).exists() {
                return Ok(digest);
            }
        }
    }
    ui::status("Fetching", sums_url);
    let text = downloader
        .fetch_text(sums_url, MAX_SUMS_BYTES)
        .await
        .map_err(|error| {
            Failure::infrastructure(format!(
                "downloading the sums file {sums_url} failed: {error:#}; \
             check the network connection and the profile's checksum_url"
            ))
        })?;
    save_sums(&saved, &text)?;
    find_in_sums(&text, name, sums_url)
}

fn saved_sums_path(cache_dir: &Path, sums_url: &str) -> PathBuf {
    cache_dir
        .join("images")
        .join("sums")
        .join(format!("{}.txt", sha256_hex(sums_url)))
}

fn save_sums(path: &Path, text: &str) -> anyhow::Result<()> {
    let folder = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(folder).with_context(|| format!("creating {}", folder.display()))?;
    let temporary = path.with_extension(format!("{}.tmp", std::process::id()));
    std::fs::write(&temporary, text).with_context(|| format!("writing {}", temporary.display()))?;
    std::fs::rename(&temporary, path)
        .with_context(|| format!("renaming {} to {}", temporary.display(), path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_last_segment() {
        let url = "https://cloud.debian.org/images/debian-12-genericcloud-amd64.qcow2";
        assert_eq!(download_name(url), "debian-12-genericcloud-amd64.qcow2");
    }

    #[test]
    fn name_sourceforge_download() {
        let url = "https://sourceforge.net/projects/osboxes/files/v/vb/64bit.7z/download";
        assert_eq!(download_name(url), "64bit.7z");
    }

    #[test]
    fn name_query_and_percent() {
        assert_eq!(download_name("http://h/a%20b.img?x=1#top"), "a b.img");
    }

    #[test]
    fn name_invalid_falls_back() {
        assert_eq!(download_name("http://h/"), "image");
        assert_eq!(download_name("http://h/a%2Fb"), "image");
        assert_eq!(download_name("http://h/.."), "image");
    }

    #[test]
    fn key_digest_and_url() {
        let digest = Digest {
            algorithm: crate::profile::DigestAlgorithm::Sha512,
            hex: "ab".repeat(64),
        };
        assert_eq!(
            cache_key(Some(&digest), "u"),
            format!("sha512-{}", "ab".repeat(64))
        );
        assert!(cache_key(None, "http://h/x").starts_with("url-"));
        assert_ne!(cache_key(None, "http://h/x"), cache_key(None, "http://h/y"));
    }
}
