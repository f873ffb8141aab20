//! Exit codes and the typed error that carries one.

use std::fmt;

/// Process exit codes that a CI pipeline can act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitCode {
    /// Every check passed.
    Passed = 0,
    /// The kernel booted but the syscall check failed.
    VerificationFailed = 1,
    /// Bad command line, project file or input tree.
    Usage = 2,
    /// The kernel configuration or build failed.
    BuildFailed = 3,
    /// A host tool or the VM failed: QEMU missing, the kernel did not boot, a timeout.
    Infrastructure = 69,
    /// SIGINT or SIGTERM stopped `kbuild run`; its reports name the step.
    Interrupted = 130,
}

impl ExitCode {
    pub fn code(self) -> i32 {
        self as i32
    }
}

/// An error whose exit code is known where it is raised.
///
/// Commands give each phase a default code; a `Failure` found anywhere in an
/// error's chain overrides that default.
#[derive(Debug, thiserror::Error)]
pub struct Failure {
    pub code: ExitCode,
    pub message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl Failure {
    pub fn error(code: ExitCode, message: impl Into<String>) -> anyhow::Error {
        anyhow::Error::new(Failure {
            code,
            message: message.into(),
        })
    }

    pub fn usage(message: impl Into<String>) -> anyhow::Error {
        Self::error(ExitCode::Usage, message)
    }

    pub fn build(message: impl Into<String>) -> anyhow::Error {
        Self::error(ExitCode::BuildFailed, message)
    }

    pub fn infrastructure(message: impl Into<String>) -> anyhow::Error {
        Self::error(ExitCode::Infrastructure, message)
    }
}

/// Returns the code of the first `Failure` in the error's chain, or `default`.
pub fn exit_code_of(error: &anyhow::Error, default: ExitCode) -> ExitCode {
    error
        .chain()
        .find_map(|cause| cause.downcast_ref::<Failure>())
        .map_or(default, |failure| failure.code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn failure_code_found_under_context() {
        let error = Err::<(), _>(Failure::build("make failed"))
            .context("building linux")
            .unwrap_err();
        assert_eq!(exit_code_of(&error, ExitCode::Usage), ExitCode::BuildFailed);
    }

    #[test]
    fn plain_error_gets_default() {
        let error = anyhow::anyhow!("disk full");
        assert_eq!(
            exit_code_of(&error, ExitCode::Infrastructure),
            ExitCode::Infrastructure
        );
    }
}
