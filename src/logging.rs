//! `tracing` set-up: level from -v/-q, overridden by `KBUILD_LOG`.

use tracing_subscriber::EnvFilter;

/// Installs the stderr log subscriber.
pub fn init(verbose: u8, quiet: bool) {
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "kbuild=debug",
        (false, _) => "kbuild=trace",
    };
    let filter = EnvFilter::try_from_env("KBUILD_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(crate::ui::is_interactive())
        .without_time()
        .try_init();
}
