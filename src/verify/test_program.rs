//! The test program that runs as /init: rendered from the built-in template
//! and compiled statically, so the initramfs needs no libc.

use std::path::{Path, PathBuf};

use anyhow::Context;
use sha2::{Digest, Sha256};

use super::write_atomic;
use crate::exit::Failure;
use crate::project::{Project, TestArg};
use crate::template;

/// Renders the C source of the test program for `project` and syscall `number`.
pub fn render_test_program(project: &Project, number: u32) -> anyhow::Result<String> {
    let values = [
        ("name", project.syscall.name.clone()),
        ("nr", number.to_string()),
        ("call_args", call_args(&project.test.args)),
    ];
    template::render("test program", template::TEST_PROGRAM, &values)
}

/// Formats the test arguments as they follow the number in `syscall(...)`,
/// such as `, 20L, 22L`.
pub fn call_args(args: &[TestArg]) -> String {
    args.iter()
        .map(|arg| match arg {
            TestArg::Int(value) => format!(", {}", c_long_literal(*value)),
            TestArg::Str(text) => format!(", {}", c_string_literal(text)),
        })
        .collect()
}

/// Formats an integer as a C `long` constant.
fn c_long_literal(value: i64) -> String {
    // C has no negative literals: `-9223372036854775808L` negates a constant
    // that does not fit in a long.
    if value == i64::MIN {
        format!("({}L - 1)", i64::MIN + 1)
    } else {
        format!("{value}L")
    }
}

/// Formats text as a C string literal that no input can break out of.
///
/// Every byte outside printable ASCII, and `"`, `\` and `?`, becomes a
/// three-digit octal escape. Three digits end every escape unambiguously, and
/// escaping `?` rules out trigraphs such as `??/` under strict ISO modes.
pub fn c_string_literal(text: &str) -> String {
    let mut literal = String::with_capacity(text.len() + 2);
    literal.push('"');
    for &byte in text.as_bytes() {
        let plain = (0x20..0x7f).contains(&byte) && !matches!(byte, b'"' | b'\\' | b'?');
        if plain {
            literal.push(char::from(byte));
        } else {
            literal.push_str(&format!("\\{byte:03o}"));
        }
    }
    literal.push('"');
    literal
}

/// Writes the test program to `dir` and compiles it statically, returning the binary's path.
///
/// The compile is skipped when a stamp shows that the binary came from the
/// same source, so repeated boots do not pay for gcc.
pub async fn compile(source: &str, dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let source_path = dir.join("init.c");
    let binary = dir.join("init");
    let stamp_path = dir.join("init.sha256");
    let digest = format!("{:x}", Sha256::digest(source.as_bytes()));

    let stamp = std::fs::read_to_string(&stamp_path).unwrap_or_default();
    if binary.is_file() && stamp.trim() == digest {
        tracing::debug!("reusing {} built from the same source", binary.display());
        return Ok(binary);
    }

    write_atomic(&source_path, source.as_bytes())?;
    run_gcc(&source_path, &binary).await?;
    write_atomic(&stamp_path, digest.as_bytes())?;
    Ok(binary)
}

async fn run_gcc(source: &Path, binary: &Path) -> anyhow::Result<()> {
    let partial = binary.with_extension("partial");
    let mut command = tokio::process::Command::new("gcc");
    command
        .args(["-static", "-O2", "-o"])
        .arg(&partial)
        .arg(source)
        .stdin(std::process::Stdio::null());
    tracing::debug!("running {command:?}");

    let output = match command.output().await {
        Ok(output) => output,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(Failure::infrastructure(
                "gcc not found; install gcc and libc6-dev (apt-get install gcc libc6-dev) \
                 to compile the test program",
            ))
        }
        Err(error) => {
            return Err(error).with_context(|| format!("running gcc on {}", source.display()))
        }
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(gcc_failure(source, output.status, &stderr));
    }
    std::fs::rename(&partial, binary)
        .with_context(|| format!("renaming {} to {}", partial.display(), binary.display()))
}

/// Classifies a failed gcc run: a missing static libc or header is a host
/// problem, anything else an error in the rendered program.
fn gcc_failure(source: &Path, status: std::process::ExitStatus, stderr: &str) -> anyhow::Error {
    let stderr = stderr.trim_end();
    let missing_libc = stderr.contains("cannot find -lc")
        || (stderr.contains("fatal error:") && stderr.contains(".h: No such file or directory"));
    if missing_libc {
        return Failure::infrastructure(format!(
            "gcc cannot link the test program statically because the C library for static \
             linking is missing; install libc6-dev (apt-get install libc6-dev)\n{stderr}"
        ));
    }
    Failure::usage(format!(
        "compiling the test program {} failed (gcc {status}); check the test args in \
         kbuild.toml\n{stderr}",
        source.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_args_formats_integers() {
        let args = [TestArg::Int(20), TestArg::Int(-22)];
        assert_eq!(call_args(&args), ", 20L, -22L");
    }

    #[test]
    fn call_args_empty() {
        assert_eq!(call_args(&[]), "");
    }

    #[test]
    fn long_literal_handles_minimum() {
        assert_eq!(c_long_literal(i64::MIN), "(-9223372036854775807L - 1)");
    }

    #[test]
    fn string_literal_keeps_plain_text() {
        assert_eq!(c_string_literal("hello, world"), "\"hello, world\"");
    }

    #[test]
    fn string_literal_escapes_breakouts() {
        let literal = c_string_literal("a\"); system(\"x\\?\n");
        assert_eq!(literal, "\"a\\042); system(\\042x\\134\\077\\012\"");
    }

    #[test]
    fn string_literal_escapes_utf8_bytes() {
        assert_eq!(c_string_literal("é"), "\"\\303\\251\"");
    }

    #[test]
    fn string_literal_escapes_nul_before_digit() {
        // A short `\0` escape followed by `1` would read as `\01`.
        assert_eq!(c_string_literal("\u{0}1"), "\"\\0001\"");
    }

    #[test]
    fn call_args_formats_strings() {
        let args = [TestArg::Str("hi".to_string())];
        assert_eq!(call_args(&args), ", \"hi\"");
    }

    #[tokio::test]
    async fn string_literal_round_trips_through_gcc() {
        let text = "quote\" backslash\\ ??/ newline\n tab\t é \u{1}7";
        let source = format!(
            "#include <stdio.h>\nint main(void) {{ fputs({}, stdout); return 0; }}\n",
            c_string_literal(text)
        );
        let dir = tempfile::tempdir().expect("creating a temporary folder");
        let binary = compile(&source, dir.path()).await.expect("compiling");
        let output = std::process::Command::new(&binary)
            .output()
            .expect("running the compiled program");
        assert_eq!(String::from_utf8_lossy(&output.stdout), text);
    }

    #[test]
    fn render_fills_name_and_call() {
        let (_dir, project) = super::super::tests::project("args = [20, 22]\nexpect = 42");
        let source = render_test_program(&project, 451).expect("rendering");
        assert!(source.contains("syscall(451, 20L, 22L)"), "{source}");
        assert!(source.contains("start kbuild_add nr=451"), "{source}");
    }

    #[tokio::test]
    async fn compile_reports_syntax_error_as_usage() {
        let dir = tempfile::tempdir().expect("creating a temporary folder");
        let error = compile("int main(void) { return }\n", dir.path())
            .await
            .unwrap_err();
        let code = crate::exit::exit_code_of(&error, crate::exit::ExitCode::Infrastructure);
        assert_eq!(code, crate::exit::ExitCode::Usage);
        assert!(error.to_string().contains("expected expression"), "{error}");
    }

    #[tokio::test]
    async fn compile_skips_unchanged_source() {
        let dir = tempfile::tempdir().expect("creating a temporary folder");
        let source = "int main(void) { return 0; }\n";
        let binary = compile(source, dir.path()).await.expect("first compile");
        let first = std::fs::metadata(&binary)
            .and_then(|m| m.modified())
            .unwrap();
        compile(source, dir.path()).await.expect("second compile");
        let second = std::fs::metadata(&binary)
            .and_then(|m| m.modified())
            .unwrap();
        assert_eq!(first, second);
    }

    #[test]
    fn gcc_failure_names_libc6_dev() {
        let status = std::process::Command::new("false").status().unwrap();
        let error = gcc_failure(
            Path::new("init.c"),
            status,
            "ld: cannot find -lc: No such file",
        );
        let code = crate::exit::exit_code_of(&error, crate::exit::ExitCode::Usage);
        assert_eq!(code, crate::exit::ExitCode::Infrastructure);
        assert!(error.to_string().contains("libc6-dev"), "{error}");
    }
}
