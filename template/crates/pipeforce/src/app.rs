//! The running service: [`App::build`] prepares everything that can fail, then
//! [`App::run_until_stopped`] serves until its stop trigger fires and shuts down gracefully.
//!
//! Building binds the HTTP listener, so a taken port is a start-up error and the real port is
//! known before serving starts (tests bind port 0 and read [`App::http_addr`]).

use std::{future::Future, net::SocketAddr};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{Config, Error, health::Readiness, http};

/// A service ready to run.
pub struct App {
    config: Config,
    http_listener: TcpListener,
    http_addr: SocketAddr,
    readiness: Readiness,
}

impl App {
    /// Binds the HTTP listener. Logs the effective configuration, with secrets redacted.
    pub async fn build(config: Config) -> Result<Self, Error> {
        info!(%config, "effective configuration");
        let address = SocketAddr::new(config.http.host, config.http.port);
        let bind_error = |source| Error::HttpBind { address, source };
        let http_listener = TcpListener::bind(address).await.map_err(bind_error)?;
        let http_addr = http_listener.local_addr().map_err(bind_error)?;
        Ok(Self {
            config,
            http_listener,
            http_addr,
            readiness: Readiness::default(),
        })
    }

    /// The address the HTTP server listens on, with the real port when port 0 was asked for.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The readiness conditions `/health/ready` reports.
    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    /// Serves until `stop` completes, then shuts down gracefully: stops accepting connections
    /// and lets in-flight requests finish, for at most the configured shutdown timeout.
    pub async fn run_until_stopped(self, stop: impl Future<Output = ()>) -> Result<(), Error> {
        let stopping = CancellationToken::new();
        let server = warp::serve(http::routes(self.readiness.clone()))
            .incoming(self.http_listener)
            .graceful(stopping.clone().cancelled_owned())
            .run();
        let mut server = tokio::spawn(server);
        info!(address = %self.http_addr, service = %self.config.service, "serving HTTP");

        tokio::select! {
            () = stop => {}
            _ = &mut server => return Err(Error::HttpServerStopped),
        }

        info!("shutting down: no new connections, finishing in-flight requests");
        stopping.cancel();
        let timeout = self.config.shutdown_timeout;
        if tokio::time::timeout(timeout, server).await.is_err() {
            warn!(
                ?timeout,
                "in-flight requests did not finish in time; stopping anyway"
            );
        }
        info!("stopped");
        Ok(())
    }
}
