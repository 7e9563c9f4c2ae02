//! Logging through `tracing`.
//!
//! The filter comes from `RUST_LOG` (default `info`). Install once, from `main`; tests that
//! build an [`App`](crate::App) directly stay quiet unless they install a subscriber themselves.

use tracing_subscriber::EnvFilter;

use crate::Error;

/// Installs the global log subscriber, writing to stderr.
pub fn init() -> Result<(), Error> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) => {
            EnvFilter::try_new(&directives).map_err(|error| Error::LogFilter(error.to_string()))?
        }
        Err(_) => EnvFilter::new("info"),
    };
    // Fails only when a subscriber is installed already, e.g. by a test harness: keep that one.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    Ok(())
}
