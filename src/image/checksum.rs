//! Digests computed while a file streams past, and lookup of one file's digest
//! in a sums file.
//!
//! Sums files come in two styles, and one file may mix them:
//! - GNU (`sha256sum`): `HEX  NAME`, or `HEX *NAME` for binary mode. The
//!   algorithm follows from the length of HEX.
//! - BSD (`sha256sum --tag`, Fedora's `CHECKSUM`): `SHA256 (NAME) = HEX`.
//!
//! Fedora signs its `CHECKSUM` inline with PGP. Lines of the signature block
//! and the armor headers are skipped, because kbuild does not check the signature.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use anyhow::Context;
use sha2::{Digest as _, Sha256, Sha512};

use crate::exit::Failure;
use crate::profile::{Digest, DigestAlgorithm};

/// Read size when hashing a file that is already on disk.
const HASH_BUFFER: usize = 1 << 20;

/// Running SHA-256, plus SHA-512 when the expected digest uses it.
///
/// SHA-256 always runs because `CachedImage::digest` reports it.
#[derive(Clone)]
pub(crate) struct Hashers {
    sha256: Sha256,
    sha512: Option<Sha512>,
}

/// Finished digests of one file, as lowercase hex.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Digests {
    pub sha256: String,
    pub sha512: Option<String>,
}

impl Hashers {
    /// Creates hashers for SHA-256 and, if `extra` is SHA-512, for SHA-512 too.
    pub fn new(extra: Option<DigestAlgorithm>) -> Hashers {
        Hashers {
            sha256: Sha256::new(),
            sha512: (extra == Some(DigestAlgorithm::Sha512)).then(Sha512::new),
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.sha256.update(bytes);
        if let Some(sha512) = &mut self.sha512 {
            sha512.update(bytes);
        }
    }

    /// Discards everything hashed so far.
    pub fn reset(&mut self) {
        self.sha256 = Sha256::new();
        if let Some(sha512) = &mut self.sha512 {
            *sha512 = Sha512::new();
        }
    }

    pub fn finish(self) -> Digests {
        Digests {
            sha256: hex(&self.sha256.finalize()),
            sha512: self.sha512.map(|sha512| hex(&sha512.finalize())),
        }
    }
}

impl Digests {
    /// Returns the digest of `algorithm`, if it was computed.
    pub fn get(&self, algorithm: DigestAlgorithm) -> Option<&str> {
        match algorithm {
            DigestAlgorithm::Sha256 => Some(&self.sha256),
            DigestAlgorithm::Sha512 => self.sha512.as_deref(),
        }
    }

    /// Returns `sha256:HEX`, the form `CachedImage::digest` uses.
    pub fn sha256_label(&self) -> String {
        format!("sha256:{}", self.sha256)
    }
}

/// Formats a digest as `ALGORITHM:HEX`.
pub(crate) fn label(digest: &Digest) -> String {
    format!("{}:{}", digest.algorithm.name(), digest.hex)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Hashes a whole file with SHA-256 and, if `extra` is SHA-512, SHA-512.
pub(crate) fn hash_file(path: &Path, extra: Option<DigestAlgorithm>) -> anyhow::Result<Digests> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hashers = Hashers::new(extra);
    let mut buffer = vec![0u8; HASH_BUFFER];
    loop {
        let count = file
            .read(&mut buffer)
            .with_context(|| format!("reading {}", path.display()))?;
        if count == 0 {
            return Ok(hashers.finish());
        }
        hashers.update(&buffer[..count]);
    }
}

/// Compares computed digests with the expected one.
///
/// The error names `source` (the URL or cached file) and both digests.
pub(crate) fn check(expected: &Digest, actual: &Digests, source: &str) -> anyhow::Result<()> {
    let computed = actual.get(expected.algorithm).with_context(|| {
        format!(
            "no {} digest was computed for {source}",
            expected.algorithm.name()
        )
    })?;
    if computed == expected.hex {
        return Ok(());
    }
    Err(Failure::infrastructure(format!(
        "checksum mismatch for {source}: expected {}, got {}:{computed}",
        label(expected),
        expected.algorithm.name()
    )))
}

/// One line of a sums file. `algorithm` is `None` for digests kbuild does not
/// support (MD5, SHA-1), which still count for the list of names in errors.
#[derive(Debug, PartialEq, Eq)]
struct SumsEntry {
    name: String,
    algorithm: Option<DigestAlgorithm>,
    hex: String,
}

/// Finds the digest of `name` in the text of the sums file at `sums_url`.
///
/// Names match exactly, apart from a leading `./`. When several lines name the
/// file, SHA-512 wins over SHA-256. The error lists every name the file has.
pub(crate) fn find_in_sums(text: &str, name: &str, sums_url: &str) -> anyhow::Result<Digest> {
    let entries = parse_sums(text);
    let mut matches: Vec<&SumsEntry> = entries.iter().filter(|entry| entry.name == name).collect();
    matches.sort_by_key(|entry| match entry.algorithm {
        Some(DigestAlgorithm::Sha512) => 0,
        Some(DigestAlgorithm::Sha256) => 1,
        None => 2,
    });
    if let Some(SumsEntry {
        algorithm: Some(algorithm),
        hex,
        ..
    }) = matches.first()
    {
        return Ok(Digest {
            algorithm: *algorithm,
            hex: hex.clone(),
        });
    }
    if !matches.is_empty() {
        return Err(Failure::usage(format!(
            "sums file {sums_url} has no SHA-256 or SHA-512 digest for {name}; \
             put `checksum = \"sha256:HEX\"` in the profile instead"
        )));
    }
    let names: Vec<&str> = entries.iter().map(|entry| entry.name.as_str()).collect();
    let listed = if names.is_empty() {
        "no digest lines at all".to_string()
    } else {
        format!("only {}", names.join(", "))
    };
    Err(Failure::usage(format!(
        "sums file {sums_url} has no line for {name} (it has {listed}); \
         check the profile's urls and checksum_url"
    )))
}

fn parse_sums(text: &str) -> Vec<SumsEntry> {
    let mut entries = Vec::new();
    let mut in_signature = false;
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with("-----BEGIN PGP SIGNATURE") {
            in_signature = true;
        } else if line.starts_with("-----END PGP SIGNATURE") {
            in_signature = false;
        } else if !in_signature && !line.starts_with('#') {
            entries.extend(parse_bsd_line(line).or_else(|| parse_gnu_line(line)));
        }
    }
    entries
}

/// Parses `SHA256 (NAME) = HEX`.
fn parse_bsd_line(line: &str) -> Option<SumsEntry> {
    let (tag, rest) = line.split_once(" (")?;
    let (name, hex) = rest.rsplit_once(") = ")?;
    let algorithm = match tag.to_ascii_uppercase().as_str() {
        "SHA256" => Some(DigestAlgorithm::Sha256),
        "SHA512" => Some(DigestAlgorithm::Sha512),
        "MD5" | "SHA1" | "SHA224" | "SHA384" => None,
        _ => return None,
    };
    entry(name, algorithm, hex)
}

/// Parses `HEX  NAME` or `HEX *NAME`.
fn parse_gnu_line(line: &str) -> Option<SumsEntry> {
    let (hex, rest) = line.split_once(' ')?;
    let name = rest.strip_prefix(['*', ' '])?;
    let algorithm = match hex.len() {
        64 => Some(DigestAlgorithm::Sha256),
        128 => Some(DigestAlgorithm::Sha512),
        32 | 40 | 56 | 96 => None,
        _ => return None,
    };
    entry(name, algorithm, hex)
}

fn entry(name: &str, algorithm: Option<DigestAlgorithm>, hex: &str) -> Option<SumsEntry> {
    if name.is_empty() || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    if let Some(algorithm) = algorithm {
        if hex.len() != algorithm.hex_len() {
            return None;
        }
    }
    Some(SumsEntry {
        name: name.strip_prefix("./").unwrap_or(name).to_string(),
        algorithm,
        hex: hex.to_ascii_lowercase(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA256_OF_ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    fn sha512_of_abc() -> String {
        hex(&Sha512::digest(b"abc"))
    }

    #[test]
    fn hashers_known_vector() {
        let mut hashers = Hashers::new(Some(DigestAlgorithm::Sha512));
        hashers.update(b"a");
        hashers.update(b"bc");
        let digests = hashers.finish();
        assert_eq!(digests.sha256, SHA256_OF_ABC);
        assert_eq!(digests.sha512, Some(sha512_of_abc()));
    }

    #[test]
    fn hashers_reset_forgets_input() {
        let mut hashers = Hashers::new(None);
        hashers.update(b"garbage");
        hashers.reset();
        hashers.update(b"abc");
        assert_eq!(hashers.finish().sha256, SHA256_OF_ABC);
    }

    #[test]
    fn hash_file_matches_stream() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abc");
        std::fs::write(&path, b"abc").unwrap();
        let digests = hash_file(&path, None).unwrap();
        assert_eq!(digests.sha256, SHA256_OF_ABC);
        assert_eq!(digests.sha512, None);
    }

    #[test]
    fn check_mismatch_names_both_digests() {
        let expected = Digest {
            algorithm: DigestAlgorithm::Sha256,
            hex: "0".repeat(64),
        };
        let actual = Digests {
            sha256: SHA256_OF_ABC.to_string(),
            sha512: None,
        };
        let message = check(&expected, &actual, "http://127.0.0.1/x")
            .unwrap_err()
            .to_string();
        assert!(message.contains(&label(&expected)), "{message}");
        assert!(message.contains(SHA256_OF_ABC), "{message}");
        assert!(message.contains("http://127.0.0.1/x"), "{message}");
    }

    #[test]
    fn sums_gnu_text_and_binary_mode() {
        let sha512 = sha512_of_abc();
        let text = format!("{SHA256_OF_ABC}  other.img\n{sha512} *disk.qcow2\n");
        let digest = find_in_sums(&text, "disk.qcow2", "u").unwrap();
        assert_eq!(digest.algorithm, DigestAlgorithm::Sha512);
        assert_eq!(digest.hex, sha512);
    }

    #[test]
    fn sums_gnu_dot_slash_prefix() {
        let text = format!("{SHA256_OF_ABC}  ./disk.img\n");
        let digest = find_in_sums(&text, "disk.img", "u").unwrap();
        assert_eq!(digest.hex, SHA256_OF_ABC);
    }

    #[test]
    fn sums_fedora_signed_bsd() {
        let text = format!(
            "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n\
             # Fedora-Cloud-Base-Generic-41-1.4.x86_64.qcow2: 491716608 bytes\n\
             SHA256 (Fedora-Cloud-Base-Generic-41-1.4.x86_64.qcow2) = {}\n\
             -----BEGIN PGP SIGNATURE-----\n\niQIzBAEBCAAdFiEE\n{SHA256_OF_ABC}  trap\n\
             -----END PGP SIGNATURE-----\n",
            SHA256_OF_ABC.to_uppercase()
        );
        let digest = find_in_sums(&text, "Fedora-Cloud-Base-Generic-41-1.4.x86_64.qcow2", "u");
        assert_eq!(digest.unwrap().hex, SHA256_OF_ABC);
        let names: Vec<String> = parse_sums(&text)
            .into_iter()
            .map(|entry| entry.name)
            .collect();
        assert_eq!(names, vec!["Fedora-Cloud-Base-Generic-41-1.4.x86_64.qcow2"]);
    }

    #[test]
    fn sums_crlf_line_endings() {
        let text = format!("SHA256 (disk.img) = {SHA256_OF_ABC}\r\n");
        assert_eq!(
            find_in_sums(&text, "disk.img", "u").unwrap().hex,
            SHA256_OF_ABC
        );
    }

    #[test]
    fn sums_missing_name_lists_names() {
        let text = format!("{SHA256_OF_ABC}  a.img\nSHA256 (b.img) = {SHA256_OF_ABC}\n");
        let message = find_in_sums(&text, "c.img", "http://h/SUMS")
            .unwrap_err()
            .to_string();
        assert!(message.contains("c.img"), "{message}");
        assert!(message.contains("a.img, b.img"), "{message}");
        assert!(message.contains("http://h/SUMS"), "{message}");
    }

    #[test]
    fn sums_md5_only_rejected() {
        let text = "900150983cd24fb0d6963f7d28e17f72  disk.img\n";
        let message = find_in_sums(text, "disk.img", "u").unwrap_err().to_string();
        assert!(message.contains("no SHA-256 or SHA-512"), "{message}");
    }

    #[test]
    fn sums_wrong_length_ignored() {
        let text = "SHA256 (disk.img) = abcdef\n";
        assert!(parse_sums(text).is_empty());
    }
}
