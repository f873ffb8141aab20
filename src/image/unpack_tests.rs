//! Unpacking tests on archives built here with the same crates kbuild reads them with.

use std::io::Write;

use super::*;

/// Bytes that compress a little but not to nothing, with a run of zeros for the hole logic.
fn disk_bytes() -> Vec<u8> {
    let mut data: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    data.extend(std::iter::repeat_n(0u8, 2 << 20));
    data.extend_from_slice(b"end of disk");
    data
}

struct Case {
    _dir: tempfile::TempDir,
    archive: PathBuf,
    staging: PathBuf,
}

fn case(file_name: &str) -> Case {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join(file_name);
    let staging = dir.path().join("staging");
    Case {
        _dir: dir,
        archive,
        staging,
    }
}

impl Case {
    fn unpack(&self, kind: Archive, file_in_archive: Option<&str>) -> Result<PathBuf, UnpackError> {
        let name = self.archive.file_name().unwrap().to_str().unwrap();
        unpack(&self.archive, name, kind, file_in_archive, &self.staging)
    }

    fn unpack_ok(&self, kind: Archive, file_in_archive: Option<&str>) -> PathBuf {
        match self.unpack(kind, file_in_archive) {
            Ok(path) => path,
            Err(UnpackError::Damaged(error) | UnpackError::Other(error)) => panic!("{error:#}"),
        }
    }

    fn unpack_message(&self, kind: Archive, file_in_archive: Option<&str>) -> String {
        match self.unpack(kind, file_in_archive) {
            Ok(path) => panic!("unpacking succeeded with {}", path.display()),
            Err(UnpackError::Other(error)) => format!("{error:#}"),
            Err(UnpackError::Damaged(error)) => panic!("reported as damaged: {error:#}"),
        }
    }

    fn is_damaged(&self, kind: Archive) -> bool {
        matches!(self.unpack(kind, None), Err(UnpackError::Damaged(_)))
    }

    fn truncate(&self, keep_fraction: f64) {
        let bytes = std::fs::read(&self.archive).unwrap();
        let keep = (bytes.len() as f64 * keep_fraction) as usize;
        std::fs::write(&self.archive, &bytes[..keep]).unwrap();
    }
}

fn tar_bytes(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, path, *data).unwrap();
    }
    builder.into_inner().unwrap()
}

fn zip_bytes(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default();
    for (path, data) in files {
        writer.start_file(*path, options).unwrap();
        writer.write_all(data).unwrap();
    }
    writer.finish().unwrap().into_inner()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

fn xz(data: &[u8]) -> Vec<u8> {
    let mut encoder = xz2::write::XzEncoder::new(Vec::new(), 1);
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

#[test]
fn unpack_zip_picks_disk() {
    let case = case("image.zip");
    let disk = disk_bytes();
    let zip = zip_bytes(&[("README.txt", b"read me"), ("vm/disk.qcow2", &disk)]);
    std::fs::write(&case.archive, zip).unwrap();
    let chosen = case.unpack_ok(Archive::Zip, None);
    assert!(chosen.ends_with("vm/disk.qcow2"));
    assert_eq!(std::fs::read(&chosen).unwrap(), disk);
}

#[test]
fn unpack_7z_picks_disk() {
    let case = case("image.7z");
    let source = case.staging.with_file_name("source");
    std::fs::create_dir_all(&source).unwrap();
    let disk = disk_bytes();
    std::fs::write(source.join("arch.vdi"), &disk).unwrap();
    std::fs::write(source.join("notes.txt"), b"osboxes").unwrap();
    sevenz_rust::compress_to_path(&source, &case.archive).unwrap();
    let chosen = case.unpack_ok(Archive::SevenZip, None);
    assert!(chosen.ends_with("arch.vdi"), "{}", chosen.display());
    assert_eq!(std::fs::read(&chosen).unwrap(), disk);
}

#[test]
fn unpack_xz_single_file() {
    let case = case("disk.raw.xz");
    let disk = disk_bytes();
    std::fs::write(&case.archive, xz(&disk)).unwrap();
    let chosen = case.unpack_ok(Archive::Xz, None);
    assert!(chosen.ends_with("disk.raw"));
    assert_eq!(std::fs::read(&chosen).unwrap(), disk);
}

#[test]
fn unpack_gz_single_file_any_name() {
    let case = case("download.gz");
    let disk = disk_bytes();
    std::fs::write(&case.archive, gzip(&disk)).unwrap();
    let chosen = case.unpack_ok(Archive::Gzip, None);
    assert!(chosen.ends_with("download"));
    assert_eq!(std::fs::read(&chosen).unwrap(), disk);
}

#[test]
fn unpack_tgz_as_tar() {
    let case = case("image.tgz");
    let disk = disk_bytes();
    let tar = tar_bytes(&[("image/disk.img", &disk), ("image/info", b"x")]);
    std::fs::write(&case.archive, gzip(&tar)).unwrap();
    let chosen = case.unpack_ok(Archive::Gzip, None);
    assert!(chosen.ends_with("image/disk.img"));
    assert_eq!(std::fs::read(&chosen).unwrap(), disk);
}

#[test]
fn unpack_tar_xz_as_tar() {
    let case = case("image.tar.xz");
    let disk = disk_bytes();
    std::fs::write(&case.archive, xz(&tar_bytes(&[("disk.qcow2", &disk)]))).unwrap();
    let chosen = case.unpack_ok(Archive::Xz, None);
    assert_eq!(std::fs::read(&chosen).unwrap(), disk);
}

#[test]
fn unpack_tar_plain() {
    let case = case("image.tar");
    let disk = disk_bytes();
    std::fs::write(&case.archive, tar_bytes(&[("disk.raw", &disk)])).unwrap();
    let chosen = case.unpack_ok(Archive::Tar, None);
    assert_eq!(std::fs::read(&chosen).unwrap(), disk);
}

#[test]
fn unpack_ova_picks_vmdk() {
    let case = case("appliance.ova");
    let disk = disk_bytes();
    let ova = tar_bytes(&[
        ("appliance.ovf", b"<Envelope/>"),
        ("appliance-disk001.vmdk", &disk),
        ("appliance.mf", b"SHA256(x)= 00"),
    ]);
    std::fs::write(&case.archive, ova).unwrap();
    let chosen = case.unpack_ok(Archive::Ova, None);
    assert!(chosen.ends_with("appliance-disk001.vmdk"));
    assert_eq!(std::fs::read(&chosen).unwrap(), disk);
}

#[test]
fn unpack_file_in_archive_file_chosen() {
    let case = case("two.zip");
    let zip = zip_bytes(&[("a/disk.qcow2", b"first"), ("b/disk.qcow2", b"second")]);
    std::fs::write(&case.archive, zip).unwrap();
    let chosen = case.unpack_ok(Archive::Zip, Some("b/disk.qcow2"));
    assert_eq!(std::fs::read(&chosen).unwrap(), b"second");
}

#[test]
fn unpack_several_disks_listed() {
    let case = case("two.tar");
    let tar = tar_bytes(&[("one.vmdk", b"1"), ("two.vmdk", b"2")]);
    std::fs::write(&case.archive, tar).unwrap();
    let message = case.unpack_message(Archive::Tar, None);
    assert!(message.contains("one.vmdk, two.vmdk"), "{message}");
    assert!(message.contains("`file`"), "{message}");
}

#[test]
fn unpack_no_disk_listed() {
    let case = case("docs.zip");
    std::fs::write(
        &case.archive,
        zip_bytes(&[("README", b"r"), ("LICENSE", b"l")]),
    )
    .unwrap();
    let message = case.unpack_message(Archive::Zip, None);
    assert!(message.contains("no disk image"), "{message}");
    assert!(message.contains("README, LICENSE"), "{message}");
}

#[test]
fn unpack_file_in_archive_missing_listed() {
    let case = case("image.zip");
    std::fs::write(&case.archive, zip_bytes(&[("disk.img", b"d")])).unwrap();
    let message = case.unpack_message(Archive::Zip, Some("other.vdi"));
    assert!(message.contains("\"other.vdi\""), "{message}");
    assert!(message.contains("disk.img"), "{message}");
}

/// Builds a tar whose one entry has a raw `name`, which tar::Builder would refuse.
fn raw_tar_entry(name: &str, kind: tar::EntryType, link: Option<&str>, data: &[u8]) -> Vec<u8> {
    let mut header = tar::Header::new_old();
    header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    if let Some(link) = link {
        header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
    }
    header.set_entry_type(kind);
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    let mut builder = tar::Builder::new(Vec::new());
    builder.append(&header, data).unwrap();
    builder.into_inner().unwrap()
}

fn assert_nothing_escaped(case: &Case) {
    let parent = case.staging.parent().unwrap();
    let names: Vec<String> = std::fs::read_dir(parent)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name != "staging" && !name.contains("evil.tar") && !name.contains(".zip"))
        .collect();
    assert!(
        names.is_empty(),
        "files outside the staging folder: {names:?}"
    );
}

#[test]
fn unpack_tar_parent_entry_rejected() {
    let case = case("evil.tar");
    let tar = raw_tar_entry("../evil.img", tar::EntryType::Regular, None, b"pwned");
    std::fs::write(&case.archive, tar).unwrap();
    let message = case.unpack_message(Archive::Tar, None);
    assert!(message.contains("\"../evil.img\""), "{message}");
    assert_nothing_escaped(&case);
}

#[test]
fn unpack_tar_absolute_entry_rejected() {
    let case = case("evil.tar");
    let target = case.staging.with_file_name("absolute.img");
    let name = target.to_str().unwrap();
    let tar = raw_tar_entry(name, tar::EntryType::Regular, None, b"pwned");
    std::fs::write(&case.archive, tar).unwrap();
    let message = case.unpack_message(Archive::Tar, None);
    assert!(message.contains(name), "{message}");
    assert!(!target.exists());
}

#[test]
fn unpack_tar_symlink_outside_rejected() {
    let case = case("evil.tar");
    let tar = raw_tar_entry(
        "disk.img",
        tar::EntryType::Symlink,
        Some("/etc/passwd"),
        b"",
    );
    std::fs::write(&case.archive, tar).unwrap();
    let message = case.unpack_message(Archive::Tar, None);
    assert!(message.contains("\"disk.img\""), "{message}");
    assert!(message.contains("/etc/passwd"), "{message}");
}

#[test]
fn unpack_zip_parent_entry_rejected() {
    let case = case("evil.zip");
    let zip = zip_bytes(&[("disk.img", b"ok"), ("../../evil.img", b"pwned")]);
    std::fs::write(&case.archive, zip).unwrap();
    let message = case.unpack_message(Archive::Zip, None);
    assert!(message.contains("\"../../evil.img\""), "{message}");
    assert_nothing_escaped(&case);
}

#[test]
fn unpack_truncated_zip_damaged() {
    let case = case("image.zip");
    std::fs::write(&case.archive, zip_bytes(&[("disk.img", &disk_bytes())])).unwrap();
    case.truncate(0.6);
    assert!(case.is_damaged(Archive::Zip));
}

#[test]
fn unpack_truncated_7z_damaged() {
    let case = case("image.7z");
    let source = case.staging.with_file_name("source");
    std::fs::create_dir_all(&source).unwrap();
    std::fs::write(source.join("disk.vdi"), disk_bytes()).unwrap();
    sevenz_rust::compress_to_path(&source, &case.archive).unwrap();
    case.truncate(0.6);
    assert!(case.is_damaged(Archive::SevenZip));
}

#[test]
fn unpack_truncated_xz_damaged() {
    let case = case("disk.raw.xz");
    std::fs::write(&case.archive, xz(&disk_bytes())).unwrap();
    case.truncate(0.6);
    assert!(case.is_damaged(Archive::Xz));
}

#[test]
fn unpack_truncated_gz_damaged() {
    let case = case("disk.raw.gz");
    std::fs::write(&case.archive, gzip(&disk_bytes())).unwrap();
    case.truncate(0.6);
    assert!(case.is_damaged(Archive::Gzip));
}

#[test]
fn unpack_corrupt_gz_crc_damaged() {
    let case = case("disk.raw.gz");
    let mut bytes = gzip(&disk_bytes());
    let crc_offset = bytes.len() - 8;
    bytes[crc_offset] ^= 0xff;
    std::fs::write(&case.archive, bytes).unwrap();
    assert!(case.is_damaged(Archive::Gzip));
}

#[test]
fn unpack_truncated_tar_damaged() {
    let case = case("image.tar");
    std::fs::write(&case.archive, tar_bytes(&[("disk.raw", &disk_bytes())])).unwrap();
    case.truncate(0.1);
    assert!(case.is_damaged(Archive::Tar));
}

#[test]
fn unpack_none_returns_download() {
    let case = case("disk.qcow2");
    std::fs::write(&case.archive, b"qcow").unwrap();
    assert_eq!(case.unpack_ok(Archive::None, None), case.archive);
    assert!(!case.staging.exists());
}
