//! SIGINT and SIGTERM during `kbuild run`: the run stops the current step,
//! writes its reports and exits 130. A step blocked in SSH cannot be
//! stopped from outside, so if the run does not end within a grace period
//! the process exits without reports.

use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::exit::{ExitCode, Failure};
use crate::ui;

/// Time the run gets after a signal to write its reports and exit.
const GRACE: Duration = Duration::from_secs(15);

/// Starts listening for SIGINT and SIGTERM; the receiver gets the signal's name.
pub fn listen() -> watch::Receiver<Option<&'static str>> {
    let (sender, receiver) = watch::channel(None);
    tokio::spawn(async move {
        let mut terminate = signal(SignalKind::terminate()).ok();
        let name = tokio::select! {
            _ = tokio::signal::ctrl_c() => "SIGINT",
            _ = async {
                match terminate.as_mut() {
                    Some(stream) => { stream.recv().await; }
                    None => std::future::pending::<()>().await,
                }
            } => "SIGTERM",
        };
        let _ = sender.send(Some(name));
        tokio::time::sleep(GRACE).await;
        ui::error(&Failure::error(
            ExitCode::Interrupted,
            format!(
                "{name}: the current step did not stop within {} s; exiting without reports",
                GRACE.as_secs()
            ),
        ));
        std::process::exit(ExitCode::Interrupted.code());
    });
    receiver
}

/// Waits for a signal and returns its name.
pub async fn received(receiver: &mut watch::Receiver<Option<&'static str>>) -> &'static str {
    loop {
        if let Some(name) = *receiver.borrow() {
            return name;
        }
        if receiver.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
