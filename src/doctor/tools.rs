//! Checks for programs and headers: QEMU, the compiler and the kernel's
//! build tools.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use super::install::Requirement;
use super::{Check, HostContext};
use crate::host::find_program;
use crate::vm::qemu::{QEMU_IMG, QEMU_SYSTEM};

/// Time allowed for one `--version` call; they take milliseconds when they work.
const VERSION_DEADLINE: Duration = Duration::from_secs(10);

/// The apt suite that Debian 12 machines with a newer qemu-utils take it from.
const BOOKWORM_BACKPORTS: &str = "bookworm-backports";

/// A program the kernel build runs.
struct Tool {
    name: &'static str,
    program: &'static str,
    requirement: Requirement,
    required: bool,
    /// Prints a version line with `--version`; otherwise the check shows the path.
    has_version: bool,
    /// Why an optional tool matters, shown when it is missing.
    purpose: &'static str,
}

/// A header file the kernel's host programs include.
struct Header {
    name: &'static str,
    file: &'static str,
    requirement: Requirement,
    purpose: &'static str,
}

/// The programs a kernel build runs, in output order.
const BUILD_TOOLS: [Tool; 9] = [
    tool("gcc", "gcc", Requirement::Gcc, true),
    tool("make", "make", Requirement::Make, true),
    tool("ld", "ld", Requirement::Binutils, true),
    tool("flex", "flex", Requirement::Flex, true),
    tool("bison", "bison", Requirement::Bison, true),
    path_only("bc", "bc", Requirement::Bc, true, ""),
    path_only("perl", "perl", Requirement::Perl, true, ""),
    path_only(
        "cpio",
        "cpio",
        Requirement::Cpio,
        false,
        "the kernel build runs it for CONFIG_IKHEADERS",
    ),
    path_only(
        "xz",
        "xz",
        Requirement::Xz,
        false,
        "tar runs it to unpack a .tar.xz kernel source, and the kernel build for \
         CONFIG_KERNEL_XZ and CONFIG_MODULE_COMPRESS_XZ",
    ),
];

const HEADERS: [Header; 2] = [
    Header {
        name: "libelf",
        file: "gelf.h",
        requirement: Requirement::LibelfHeaders,
        purpose: "objtool and resolve_btfids include it",
    },
    Header {
        name: "openssl",
        file: "openssl/opensslv.h",
        requirement: Requirement::OpensslHeaders,
        purpose: "sign-file and extract-cert include it",
    },
];

/// Programs that only some kbuild features run, checked after the headers.
const OPTIONAL_TOOLS: [Tool; 2] = [
    Tool {
        name: "ccache",
        program: "ccache",
        requirement: Requirement::Ccache,
        required: false,
        has_version: true,
        purpose: "with [build] ccache = \"auto\", rebuilds take unchanged objects from its cache",
    },
    Tool {
        name: "ssh",
        program: "ssh",
        requirement: Requirement::SshClient,
        required: false,
        has_version: false,
        purpose: "only the interactive `kbuild ssh` runs it",
    },
];

const fn tool(
    name: &'static str,
    program: &'static str,
    requirement: Requirement,
    required: bool,
) -> Tool {
    Tool {
        name,
        program,
        requirement,
        required,
        has_version: true,
        purpose: "",
    }
}

const fn path_only(
    name: &'static str,
    program: &'static str,
    requirement: Requirement,
    required: bool,
    purpose: &'static str,
) -> Tool {
    Tool {
        name,
        program,
        requirement,
        required,
        has_version: false,
        purpose,
    }
}

/// Checks qemu-system-x86_64 and reports its version line.
pub async fn check_qemu(host: &HostContext) -> Check {
    let Some(path) = find_program(QEMU_SYSTEM) else {
        let mut packages = host.package(Requirement::Qemu);
        let mut detail =
            format!("{QEMU_SYSTEM} not found on PATH; kbuild boots every kernel with it");
        if host.is_bookworm() && qemu_utils_from_backports().await {
            for package in &mut packages {
                package.suite = Some(BOOKWORM_BACKPORTS);
            }
            detail += "; qemu-utils comes from bookworm-backports here, so QEMU must come \
                       from there too";
        } else if host.is_bookworm() {
            detail += "; on Debian 12, take QEMU from bookworm-backports when qemu-utils \
                       comes from there";
        }
        return Check::missing("qemu", true, detail, packages, host);
    };
    version_check("qemu", true, &path).await
}

/// Checks qemu-img, which `kbuild up` runs to create the VM's disk overlay
/// and to convert images.
pub async fn check_qemu_img(host: &HostContext) -> Check {
    match find_program(QEMU_IMG) {
        Some(path) => version_check("qemu-img", false, &path).await,
        None => Check::missing(
            "qemu-img",
            false,
            format!(
                "{QEMU_IMG} not found on PATH; `kbuild up` needs it for the VM's disk, \
                 `kbuild verify --direct` does not"
            ),
            host.package(Requirement::QemuImg),
            host,
        ),
    }
}

/// Checks the compiler, the build tools, the headers and the optional tools.
pub async fn check_build_tools(host: &HostContext) -> Vec<Check> {
    let mut checks = Vec::new();
    for tool in &BUILD_TOOLS {
        checks.push(check_tool(tool, host).await);
    }
    for header in &HEADERS {
        checks.push(check_header(header, &include_dirs(), host));
    }
    for tool in &OPTIONAL_TOOLS {
        checks.push(check_tool(tool, host).await);
    }
    checks
}

async fn check_tool(tool: &Tool, host: &HostContext) -> Check {
    let Some(path) = find_program(tool.program) else {
        let mut detail = format!("{} not found on PATH", tool.program);
        if !tool.purpose.is_empty() {
            detail += &format!(" (optional: {})", tool.purpose);
        }
        let packages = host.package(tool.requirement);
        return Check::missing(tool.name, tool.required, detail, packages, host);
    };
    if tool.has_version {
        version_check(tool.name, tool.required, &path).await
    } else {
        Check::ok(tool.name, tool.required, path.display().to_string())
    }
}

/// Runs `program --version` and reports its first line. A program that is
/// found but fails to print a version gets a warning.
async fn version_check(name: &'static str, required: bool, program: &Path) -> Check {
    match first_output_line(program, &["--version"]).await {
        Ok(line) => Check::ok(name, required, line),
        Err(reason) => Check::warn(
            name,
            required,
            format!("found {}, but {reason}", program.display()),
        ),
    }
}

fn check_header(header: &Header, dirs: &[PathBuf], host: &HostContext) -> Check {
    match find_header(header.file, dirs) {
        Some(path) => Check::ok(header.name, true, path.display().to_string()),
        None => Check::missing(
            header.name,
            true,
            format!(
                "{} not found in /usr/include or /usr/local/include; {}",
                header.file, header.purpose
            ),
            host.package(header.requirement),
            host,
        ),
    }
}

/// Lists the standard system header folders, multiarch ones such as
/// `/usr/include/x86_64-linux-gnu` included.
fn include_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![
        PathBuf::from("/usr/local/include"),
        PathBuf::from("/usr/include"),
    ];
    if let Ok(entries) = std::fs::read_dir("/usr/include") {
        let mut multiarch: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .filter(|entry| entry.file_name().to_string_lossy().contains("-linux-"))
            .map(|entry| entry.path())
            .collect();
        multiarch.sort();
        dirs.extend(multiarch);
    }
    dirs
}

/// Returns the first `dir/file` that exists.
fn find_header(file: &str, dirs: &[PathBuf]) -> Option<PathBuf> {
    dirs.iter()
        .map(|dir| dir.join(file))
        .find(|path| path.is_file())
}

/// True when dpkg reports a qemu-utils version built for backports (`~bpo`).
async fn qemu_utils_from_backports() -> bool {
    // dpkg-query lives in /usr/bin on every Debian system, so look there
    // too when PATH leaves it out.
    let Some(dpkg_query) = find_program("dpkg-query")
        .or_else(|| Some(PathBuf::from("/usr/bin/dpkg-query")).filter(|path| path.is_file()))
    else {
        return false;
    };
    let args = ["-W", "-f=${Version}", "qemu-utils"];
    match first_output_line(&dpkg_query, &args).await {
        Ok(version) => version.contains("~bpo"),
        Err(reason) => {
            tracing::debug!("no qemu-utils version from dpkg: {reason}");
            false
        }
    }
}

/// Runs `program args` and returns the first non-empty line it printed,
/// from stdout or else stderr, or why it failed.
pub async fn first_output_line(program: &Path, args: &[&str]) -> Result<String, String> {
    let line = std::iter::once(program.display().to_string())
        .chain(args.iter().map(|arg| arg.to_string()))
        .collect::<Vec<_>>()
        .join(" ");
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    tracing::debug!("running {line}");

    let output = match tokio::time::timeout(VERSION_DEADLINE, command.output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(error)) => return Err(format!("`{line}` failed to start: {error}")),
        Err(_elapsed) => {
            let seconds = VERSION_DEADLINE.as_secs();
            return Err(format!("`{line}` timed out after {seconds} s"));
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        let reason = first_line(&stderr).unwrap_or_default();
        return Err(format!("`{line}` failed ({}) {reason}", output.status)
            .trim_end()
            .to_string());
    }
    first_line(&stdout)
        .or_else(|| first_line(&stderr))
        .ok_or_else(|| format!("`{line}` printed nothing"))
}

fn first_line(text: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::{OsRelease, Status};
    use crate::profile::PackageManager;

    fn debian_host() -> HostContext {
        HostContext {
            release: Some(OsRelease::parse("ID=debian\n")),
            manager: Some(PackageManager::Apt),
            as_root: false,
        }
    }

    #[test]
    fn header_found_in_second_dir() {
        let first = tempfile::tempdir().unwrap();
        let second = tempfile::tempdir().unwrap();
        std::fs::create_dir(second.path().join("openssl")).unwrap();
        std::fs::write(second.path().join("openssl/opensslv.h"), "").unwrap();
        let dirs = [first.path().to_path_buf(), second.path().to_path_buf()];
        let found = find_header("openssl/opensslv.h", &dirs);
        assert_eq!(found, Some(second.path().join("openssl/opensslv.h")));
        assert_eq!(find_header("gelf.h", &dirs), None);
    }

    #[test]
    fn missing_header_names_package() {
        let empty = tempfile::tempdir().unwrap();
        let dirs = [empty.path().to_path_buf()];
        let check = check_header(&HEADERS[0], &dirs, &debian_host());
        assert_eq!(check.status, Status::Missing);
        assert!(check.required);
        assert_eq!(
            check.install.as_deref(),
            Some("sudo apt-get install libelf-dev")
        );
    }

    #[test]
    fn first_line_skips_blank_lines() {
        assert_eq!(first_line("\n  \nperl 5\nmore"), Some("perl 5".to_string()));
        assert_eq!(first_line(" \n"), None);
    }

    #[tokio::test]
    async fn first_output_line_reads_stdout() {
        let sh = find_program("sh").expect("sh on PATH");
        let line = first_output_line(&sh, &["-c", "echo; echo 'tool 1.2'; echo other"]).await;
        assert_eq!(line, Ok("tool 1.2".to_string()));
    }

    #[tokio::test]
    async fn first_output_line_reports_failure() {
        let sh = find_program("sh").expect("sh on PATH");
        let error = first_output_line(&sh, &["-c", "echo broken >&2; exit 3"])
            .await
            .unwrap_err();
        assert!(error.contains("exit status: 3"), "{error}");
        assert!(error.ends_with("broken"), "{error}");
    }

    #[tokio::test]
    async fn missing_program_fails_to_start() {
        let error = first_output_line(Path::new("/nonexistent/tool"), &["--version"])
            .await
            .unwrap_err();
        assert!(error.contains("failed to start"), "{error}");
    }
}
