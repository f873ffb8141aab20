//! VM disk images: download, verification, cache, unpacking and conversion.
//!
//! `fetch_image` turns a profile's `[image]` into a pristine, read-only disk
//! image in the cache. The download is verified against the profile's
//! checksum before anything uses it, resumes where an earlier attempt or run
//! stopped, and falls back to the next mirror. The cache layout is described
//! in `cache.rs`.

mod cache;
mod checksum;
mod convert;
mod download;
mod entries;
mod expected;
mod part_file;
mod progress;
mod response;
mod unpack;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

pub use convert::{convert, convert_cached};
pub use unpack::DISK_EXTENSIONS;

use cache::ImageDir;
use checksum::Digests;
use download::Downloader;
use unpack::UnpackError;

use crate::exit::Failure;
use crate::profile::{Archive, Digest, DiskFormat, ImageSpec};
use crate::ui;

/// Download settings for `fetch_image`.
#[derive(Clone, Debug)]
pub struct FetchOptions {
    /// Accept an image whose profile has no checksum, after a warning.
    pub allow_unverified: bool,
    /// Further attempts on one URL after a failure that may pass, such as a
    /// 503 or a cut connection, before the next URL is tried.
    pub retries: u32,
    /// Wait before the first retry. It doubles with each further retry, up to 30 s.
    pub backoff: Duration,
    /// Maximum time to establish a connection.
    pub connect_timeout: Duration,
    /// Maximum time without receiving a byte before an attempt fails. There is
    /// no limit on a whole download, because images are large.
    pub stall_timeout: Duration,
}

impl Default for FetchOptions {
    fn default() -> FetchOptions {
        FetchOptions {
            allow_unverified: false,
            retries: 3,
            backoff: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(30),
            stall_timeout: Duration::from_secs(60),
        }
    }
}

/// A pristine disk image in the cache. Its file is read-only, so boot a copy or an overlay.
#[derive(Clone, Debug)]
pub struct CachedImage {
    pub path: PathBuf,
    pub format: DiskFormat,
    /// `sha256:HEX` of the download (the archive, for an image in an archive).
    pub digest: String,
    /// The image's folder in the cache, which also keeps converted copies.
    pub cache_dir: PathBuf,
}

/// Downloads (or reuses), verifies, unpacks and returns the pristine cached
/// disk image for the profile, with its format.
///
/// Never returns a file that failed verification. Two runs that fetch the
/// same image at once share one download: the second waits for the first.
pub async fn fetch_image(
    image: &ImageSpec,
    cache_dir: &Path,
    options: &FetchOptions,
) -> anyhow::Result<CachedImage> {
    let first_url = image
        .urls
        .first()
        .ok_or_else(|| Failure::usage("the profile's [image] table has no urls"))?;
    let name = expected::download_name(first_url);
    let downloader = Downloader::new(options)?;
    let expected = expected::expected_digest(image, &name, cache_dir, &downloader, options).await?;
    let key = expected::cache_key(expected.as_ref(), first_url);
    let dir = ImageDir::create(cache_dir, &key)?;
    let _lock = cache::lock(&dir).await?;
    let fetch = Fetch {
        image,
        name,
        expected,
        dir,
        downloader,
    };
    fetch.run().await
}

/// One `fetch_image` call, once the cache folder is locked.
struct Fetch<'a> {
    image: &'a ImageSpec,
    name: String,
    expected: Option<Digest>,
    dir: ImageDir,
    downloader: Downloader,
}

impl Fetch<'_> {
    async fn run(&self) -> anyhow::Result<CachedImage> {
        let download = self.dir.download(&self.name);
        if self.image.archive == Archive::None {
            let digests = self.obtain_download().await?;
            return Ok(self.cached(download, &digests.sha256));
        }
        let disk = self.dir.disk(self.image.format);
        if let Some(sha256) = self.reusable_disk(&disk, &download).await? {
            ui::status("Reusing", format!("{} from the cache", self.name));
            return Ok(self.cached(disk, &sha256));
        }
        let digests = self.obtain_download().await?;
        match self.unpack(&disk).await {
            Ok(()) => return Ok(self.cached(disk, &digests.sha256)),
            Err(UnpackError::Other(error)) => return Err(error),
            Err(UnpackError::Damaged(error)) => ui::warn(format!(
                "{error:#}; the download looks incomplete, so kbuild deletes it and downloads it again"
            )),
        }
        cache::remove_with_record(&download)?;
        let digests = self.obtain_download().await?;
        match self.unpack(&disk).await {
            Ok(()) => Ok(self.cached(disk, &digests.sha256)),
            Err(UnpackError::Other(error)) => Err(error),
            Err(UnpackError::Damaged(error)) => Err(Failure::infrastructure(format!(
                "{error:#}; a fresh download is damaged too, so the file at {} is probably broken",
                self.image.urls.join(", ")
            ))),
        }
    }

    fn cached(&self, path: PathBuf, download_sha256: &str) -> CachedImage {
        CachedImage {
            path,
            format: self.image.format,
            digest: format!("sha256:{download_sha256}"),
            cache_dir: self.dir.root.clone(),
        }
    }

    /// Returns the download's SHA-256 when the unpacked disk can be reused.
    async fn reusable_disk(&self, disk: &Path, download: &Path) -> anyhow::Result<Option<String>> {
        let Some(download_sha256) = cache::read_record(download) else {
            return Ok(None);
        };
        let disk = disk.to_path_buf();
        let intact = tokio::task::spawn_blocking(move || cache::reuse_recorded(&disk))
            .await
            .context("verifying the cached disk image")??;
        Ok(intact.map(|_| download_sha256))
    }

    /// Returns the digests of the verified download, downloading it if the cache has no intact copy.
    async fn obtain_download(&self) -> anyhow::Result<Digests> {
        let path = self.dir.download(&self.name);
        if path.exists() {
            if let Some(digests) = self.verify_cached(&path).await? {
                ui::status("Reusing", format!("{} from the cache", self.name));
                return Ok(digests);
            }
        }
        ui::status("Downloading", &self.image.urls[0]);
        let part = self.dir.part(&self.name);
        let extra = self.expected.as_ref().map(|digest| digest.algorithm);
        let verify = |url: &str, digests: &Digests| self.verify(url, digests);
        let digests = self
            .downloader
            .fetch(&self.image.urls, &part, extra, verify)
            .await?;
        cache::write_record(&path, &digests.sha256)?;
        cache::publish(&part, &path)?;
        Ok(digests)
    }

    fn verify(&self, url: &str, digests: &Digests) -> anyhow::Result<()> {
        match &self.expected {
            Some(expected) => checksum::check(expected, digests, url),
            None => {
                ui::warn(format!(
                    "{url} was NOT verified; its digest is {}. Once you trust this file, \
                     add `checksum = \"{}\"` to the profile's [image] table",
                    digests.sha256_label(),
                    digests.sha256_label()
                ));
                Ok(())
            }
        }
    }

    /// Re-hashes a cached download. Deletes it and returns `None` when it no longer matches.
    async fn verify_cached(&self, path: &Path) -> anyhow::Result<Option<Digests>> {
        let extra = self.expected.as_ref().map(|digest| digest.algorithm);
        let owned = path.to_path_buf();
        let digests = tokio::task::spawn_blocking(move || checksum::hash_file(&owned, extra))
            .await
            .context("verifying the cached download")??;
        let source = path.display().to_string();
        let result = match &self.expected {
            Some(expected) => checksum::check(expected, &digests, &source),
            None if cache::read_record(path).as_deref() == Some(digests.sha256.as_str()) => Ok(()),
            None => Err(anyhow::anyhow!(
                "cached {source} does not match the digest recorded when it was downloaded"
            )),
        };
        match result {
            Ok(()) => Ok(Some(digests)),
            Err(error) => {
                ui::warn(format!("{error:#}; deleting it and downloading it again"));
                cache::remove_with_record(path)?;
                Ok(None)
            }
        }
    }

    /// Unpacks the download into the disk image, recording the disk's SHA-256.
    async fn unpack(&self, disk: &Path) -> Result<(), UnpackError> {
        ui::status("Unpacking", &self.name);
        let download = self.dir.download(&self.name);
        let name = self.name.clone();
        let archive = self.image.archive;
        let file_in_archive = self.image.file.clone();
        let staging = self.dir.staging();
        let disk = disk.to_path_buf();
        let task = tokio::task::spawn_blocking(move || {
            let chosen = unpack::unpack(
                &download,
                &name,
                archive,
                file_in_archive.as_deref(),
                &staging,
            )?;
            publish_disk(&chosen, &disk).map_err(UnpackError::Other)?;
            if let Err(error) = std::fs::remove_dir_all(&staging) {
                tracing::debug!("cannot delete {}: {error}", staging.display());
            }
            Ok(())
        });
        match task.await {
            Ok(result) => result,
            Err(error) => Err(UnpackError::Other(
                anyhow::Error::new(error).context("unpacking the image"),
            )),
        }
    }
}

fn publish_disk(chosen: &Path, disk: &Path) -> anyhow::Result<()> {
    let digests = checksum::hash_file(chosen, None)?;
    cache::write_record(disk, &digests.sha256)?;
    cache::publish(chosen, disk)
}

/// The error for a URL with a user name or password: kbuild prints URLs in
/// status lines, errors and reports, so it takes none. The message does not
/// repeat the URL.
pub const CREDENTIALS_IN_URL: &str = "contains a user name or password, which kbuild would print \
     in logs and reports; serve the file without credentials, or download it yourself and give \
     its local path";

/// Returns true when an http(s) URL carries `user[:password]@` before its host.
pub fn has_credentials(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    authority.contains('@')
}

#[cfg(test)]
mod credential_tests {
    use super::has_credentials;

    #[test]
    fn has_credentials_finds_userinfo_only() {
        assert!(has_credentials("https://user:secret@host/linux.tar.xz"));
        assert!(has_credentials("http://token@127.0.0.1:8080/x"));
        assert!(!has_credentials("https://host/path/with@sign.tar.xz"));
        assert!(!has_credentials("https://host/x?mail=a@b"));
        assert!(!has_credentials("/usr/src/linux-source-6.1.tar.xz"));
    }
}
