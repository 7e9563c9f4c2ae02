//! The errors that stop a service from starting or running.
//!
//! `main` returns `Result<(), Error>`, and Rust prints a returned error with `Debug`. `Debug` is
//! therefore written for people: the message and its causes, no struct dump, no backtrace.

use std::{fmt, io, net::SocketAddr};

use crate::{config::ConfigError, hub::HubError, messaging::PublishError};

/// Why the service could not start or had to stop.
#[derive(thiserror::Error)]
pub enum Error {
    /// The environment holds bad `PIPEFORCE_*` values.
    #[error(transparent)]
    Config(#[from] ConfigError),

    /// `RUST_LOG` is not a valid filter.
    #[error("RUST_LOG is not a valid log filter (e.g. `info` or `info,lapin=warn`): {0}")]
    LogFilter(String),

    /// Tracing could not be set up.
    #[error("{0}")]
    Telemetry(String),

    /// The HTTP port is taken or the address does not exist on this machine.
    #[error("cannot listen for HTTP on {address} (PIPEFORCE_HTTP_HOST, PIPEFORCE_HTTP_PORT)")]
    HttpBind {
        /// The address from the configuration.
        address: SocketAddr,
        /// What the operating system said.
        source: io::Error,
    },

    /// The HTTP server ended although nobody asked it to.
    #[error("the HTTP server stopped unexpectedly")]
    HttpServerStopped,

    /// The hub client could not be set up (e.g. no TLS roots).
    #[error("cannot set up the hub client")]
    Hub(#[from] HubError),

    /// A message could not be published.
    #[error("cannot publish")]
    Publish(#[from] PublishError),

    /// The message consumer ended although nobody asked it to.
    #[error("the message consumer stopped unexpectedly")]
    ConsumerStopped,
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")?;
        let mut cause = std::error::Error::source(self);
        while let Some(error) = cause {
            write!(f, "\n  caused by: {error}")?;
            cause = error.source();
        }
        Ok(())
    }
}
