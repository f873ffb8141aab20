//! Unpacking of downloaded archives, and the choice of the disk image inside.
//!
//! Every format unpacks into a scratch folder. Regular files are written;
//! links are checked and skipped. A `.gz` or `.xz` whose inner name ends in
//! `.tar` or `.ova` (also `.tgz`, `.txz`) is unpacked as a tar on the fly.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};

pub(crate) use super::entries::UnpackError;
use super::entries::{check_link, check_size, copy_entry, damaged, destination, other};
use crate::exit::Failure;
use crate::profile::Archive;

/// File name suffixes that mark a disk image inside an archive.
pub const DISK_EXTENSIONS: &[&str] = &["qcow2", "img", "vdi", "vmdk", "raw"];

/// Names listed in an error before the rest are only counted.
const MAX_LISTED: usize = 20;

/// Unpacks `download` into `staging` and returns the path of the disk image in it.
///
/// `name` is the download's file name, used for messages and to name the
/// output of a single compressed file. `file_in_archive` is the profile's `file`.
pub(crate) fn unpack(
    download: &Path,
    name: &str,
    archive: Archive,
    file_in_archive: Option<&str>,
    staging: &Path,
) -> Result<PathBuf, UnpackError> {
    if archive == Archive::None {
        return Ok(download.to_path_buf());
    }
    if staging.exists() {
        std::fs::remove_dir_all(staging)
            .with_context(|| format!("deleting {}", staging.display()))
            .map_err(other)?;
    }
    std::fs::create_dir_all(staging)
        .with_context(|| format!("creating {}", staging.display()))
        .map_err(other)?;
    let file = File::open(download)
        .with_context(|| format!("opening {}", download.display()))
        .map_err(other)?;
    let reader = BufReader::with_capacity(1 << 20, file);
    let (files, single) = match archive {
        Archive::None => return Ok(download.to_path_buf()),
        Archive::Zip => (unzip(reader, name, staging)?, false),
        Archive::SevenZip => (un7z(download, name, staging)?, false),
        Archive::Tar | Archive::Ova => (untar(reader, name, staging)?, false),
        Archive::Gzip => {
            let decoder = flate2::read::MultiGzDecoder::new(reader);
            decompress(decoder, name, &["gz", "tgz"], staging)?
        }
        Archive::Xz => {
            let decoder = xz2::read::XzDecoder::new_multi_decoder(reader);
            decompress(decoder, name, &["xz", "txz"], staging)?
        }
    };
    let chosen = choose_disk(name, &files, file_in_archive, single).map_err(other)?;
    Ok(staging.join(chosen))
}

/// Unpacks a single compressed stream. Returns the files and whether the
/// stream held one plain file (rather than a tar).
fn decompress(
    mut decoder: impl Read,
    name: &str,
    suffixes: &[&str],
    staging: &Path,
) -> Result<(Vec<String>, bool), UnpackError> {
    let inner = inner_name(name, suffixes);
    let lower = inner.to_ascii_lowercase();
    if lower.ends_with(".tar") || lower.ends_with(".ova") {
        return Ok((untar(decoder, name, staging)?, false));
    }
    let path = destination(staging, name, &inner)?
        .ok_or_else(|| other(anyhow!("archive {name} has no usable inner file name")))?;
    copy_entry(name, &mut decoder, &path)?;
    Ok((vec![inner], true))
}

/// Strips the compression suffix: `disk.qcow2.xz` gives `disk.qcow2`, `a.tgz` gives `a.tar`.
fn inner_name(name: &str, suffixes: &[&str]) -> String {
    for suffix in suffixes {
        let Some(stem) = strip_suffix_ignore_case(name, &format!(".{suffix}")) else {
            continue;
        };
        if stem.is_empty() {
            break;
        }
        return if suffix.starts_with('t') {
            format!("{stem}.tar")
        } else {
            stem.to_string()
        };
    }
    format!("{name}.out")
}

fn strip_suffix_ignore_case<'a>(name: &'a str, suffix: &str) -> Option<&'a str> {
    let split = name.len().checked_sub(suffix.len())?;
    let (stem, tail) = (name.get(..split)?, name.get(split..)?);
    tail.eq_ignore_ascii_case(suffix).then_some(stem)
}

// NOTE: a tar cut exactly between two entries reads as a shorter valid tar,
// because tar-rs treats end of input at an entry boundary as the end. A lost
// disk image then shows up as "no disk image" rather than as damage.
fn untar(reader: impl Read, name: &str, staging: &Path) -> Result<Vec<String>, UnpackError> {
    let mut archive = tar::Archive::new(reader);
    let mut files = Vec::new();
    for entry in archive.entries().map_err(damaged(name))? {
        let mut entry = entry.map_err(damaged(name))?;
        let path = entry
            .path()
            .map_err(damaged(name))?
            .to_string_lossy()
            .into_owned();
        let kind = entry.header().entry_type();
        let Some(target) = destination(staging, name, &path)? else {
            continue;
        };
        if kind.is_dir() {
            create_dir(&target)?;
        } else if kind.is_symlink() || kind.is_hard_link() {
            let link = entry
                .link_name()
                .map_err(damaged(name))?
                .unwrap_or_default();
            check_link(name, &path, &link, kind.is_hard_link())?;
        } else if kind.is_file() || kind.is_gnu_sparse() {
            let expected = entry.size();
            let copied = copy_entry(name, &mut entry, &target)?;
            // The size of a GNU sparse entry counts only its stored data.
            if !kind.is_gnu_sparse() {
                check_size(name, &path, copied, expected)?;
            }
            files.push(path);
        }
    }
    Ok(files)
}

fn unzip(
    reader: impl Read + std::io::Seek,
    name: &str,
    staging: &Path,
) -> Result<Vec<String>, UnpackError> {
    let zip_error = |error: zip::result::ZipError| {
        UnpackError::Damaged(anyhow!(error).context(format!("reading archive {name}")))
    };
    let mut archive = zip::ZipArchive::new(reader).map_err(zip_error)?;
    let mut files = Vec::new();
    for index in 0..archive.len() {
        let mut entry = archive.by_index(index).map_err(zip_error)?;
        let path = entry.name().to_string();
        let Some(target) = destination(staging, name, &path)? else {
            continue;
        };
        if entry.is_dir() {
            create_dir(&target)?;
        } else if entry.is_symlink() {
            let mut link = String::new();
            entry.read_to_string(&mut link).map_err(damaged(name))?;
            check_link(name, &path, Path::new(&link), false)?;
        } else {
            let expected = entry.size();
            let copied = copy_entry(name, &mut entry, &target)?;
            check_size(name, &path, copied, expected)?;
            files.push(path);
        }
    }
    Ok(files)
}

fn un7z(download: &Path, name: &str, staging: &Path) -> Result<Vec<String>, UnpackError> {
    let seven_error = |error: sevenz_rust::Error| {
        UnpackError::Damaged(anyhow!("{error}").context(format!("reading archive {name}")))
    };
    let mut reader = sevenz_rust::SevenZReader::open(download, sevenz_rust::Password::empty())
        .map_err(seven_error)?;
    let mut files = Vec::new();
    // The callback must return a sevenz_rust::Error, so the real error waits here.
    let mut failure: Option<UnpackError> = None;
    let result = reader.for_each_entries(|entry, data| {
        match extract_7z_entry(entry, data, name, staging) {
            Ok(Some(path)) => files.push(path),
            Ok(None) => {}
            Err(error) => {
                failure = Some(error);
                return Err(sevenz_rust::Error::other("stopped unpacking"));
            }
        }
        Ok(true)
    });
    if let Some(error) = failure {
        return Err(error);
    }
    result.map_err(seven_error)?;
    Ok(files)
}

fn extract_7z_entry(
    entry: &sevenz_rust::SevenZArchiveEntry,
    data: &mut dyn Read,
    name: &str,
    staging: &Path,
) -> Result<Option<String>, UnpackError> {
    let path = entry.name().to_string();
    let Some(target) = destination(staging, name, &path)? else {
        return Ok(None);
    };
    if entry.is_directory() {
        create_dir(&target)?;
        return Ok(None);
    }
    let copied = copy_entry(name, data, &target)?;
    check_size(name, &path, copied, entry.size())?;
    Ok(Some(path))
}

fn create_dir(path: &Path) -> Result<(), UnpackError> {
    std::fs::create_dir_all(path)
        .with_context(|| format!("creating {}", path.display()))
        .map_err(other)
}

/// Picks the disk image among the unpacked `files`.
///
/// `file_in_archive` matches a whole path or a file name. Without it, the one file
/// with a disk extension wins. The only file of a plain `.gz` or `.xz`
/// (`single`) is the disk whatever its name.
fn choose_disk(
    archive: &str,
    files: &[String],
    file_in_archive: Option<&str>,
    single: bool,
) -> anyhow::Result<String> {
    if let Some(file_in_archive) = file_in_archive {
        let matches: Vec<&String> = files
            .iter()
            .filter(|file| file.as_str() == file_in_archive || file_name(file) == file_in_archive)
            .collect();
        return match matches.as_slice() {
            [one] => Ok(one.to_string()),
            [] => Err(Failure::usage(format!(
                "archive {archive} has no file {file_in_archive:?}; it contains {}; \
                 set `file` in the profile's [image] table to one of them",
                list(files)
            ))),
            _ => Err(Failure::usage(format!(
                "archive {archive} has several files named {file_in_archive:?}: {}; \
                 set `file` in the profile's [image] table to the full path of one",
                list(&matches)
            ))),
        };
    }
    if single && files.len() == 1 {
        return Ok(files[0].clone());
    }
    let disks: Vec<&String> = files.iter().filter(|file| is_disk_name(file)).collect();
    match disks.as_slice() {
        [one] => Ok(one.to_string()),
        [] => Err(Failure::usage(format!(
            "archive {archive} contains no disk image (.{}); it contains {}; \
             set `file` in the profile's [image] table to the disk image's path",
            DISK_EXTENSIONS.join(", ."),
            list(files)
        ))),
        _ => Err(Failure::usage(format!(
            "archive {archive} contains several disk images: {}; \
             set `file` in the profile's [image] table to the one to boot",
            list(&disks)
        ))),
    }
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn is_disk_name(path: &str) -> bool {
    let name = file_name(path).to_ascii_lowercase();
    DISK_EXTENSIONS
        .iter()
        .any(|extension| name.ends_with(&format!(".{extension}")))
}

fn list<S: AsRef<str>>(names: &[S]) -> String {
    if names.is_empty() {
        return "no files".to_string();
    }
    let listed: Vec<&str> = names.iter().take(MAX_LISTED).map(AsRef::as_ref).collect();
    let mut text = listed.join(", ");
    if names.len() > MAX_LISTED {
        text.push_str(&format!(" and {} more", names.len() - MAX_LISTED));
    }
    text
}

#[cfg(test)]
#[path = "unpack_tests.rs"]
mod tests;
