//! The signal that starts a graceful shutdown.
//!
//! Only the binary listens for signals; [`App::run_until_stopped`](crate::App::run_until_stopped)
//! takes any future as its stop trigger, so tests stop an app without signals.

use std::future::Future;

use tracing::{info, warn};

/// Completes when the process is asked to stop: SIGTERM (Kubernetes, `docker stop`) or SIGINT
/// (Ctrl-C).
///
/// The handlers are installed when this function is called, not when the future is first
/// polled, so a signal that arrives in between is not lost. Call it inside the Tokio runtime.
pub fn signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};

        let terminate = signal(SignalKind::terminate());
        let interrupt = signal(SignalKind::interrupt());
        async move {
            let (mut terminate, mut interrupt) = match (terminate, interrupt) {
                (Ok(terminate), Ok(interrupt)) => (terminate, interrupt),
                (Err(error), _) | (_, Err(error)) => {
                    // Without handlers the default action still ends the process; it just
                    // will not be graceful.
                    warn!(%error, "cannot listen for SIGTERM/SIGINT; shutdown will not be graceful");
                    return std::future::pending().await;
                }
            };
            tokio::select! {
                _ = terminate.recv() => info!("received SIGTERM"),
                _ = interrupt.recv() => info!("received SIGINT"),
            }
        }
    }
    #[cfg(not(unix))]
    async {
        match tokio::signal::ctrl_c().await {
            Ok(()) => info!("received Ctrl-C"),
            Err(error) => {
                warn!(%error, "cannot listen for Ctrl-C; shutdown will not be graceful");
                std::future::pending().await
            }
        }
    }
}
