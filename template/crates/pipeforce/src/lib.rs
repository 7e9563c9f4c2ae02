//! # pipeforce: the framework half of a PIPEFORCE service
//!
//! Everything a service needs that is not its own business logic lives in this crate, so that
//! the service crate next to it holds only what its authors write. The service's `main` reads
//! [`Config`], starts [`telemetry`], builds an [`App`] and runs it until [`shutdown::signal`].
//!
//! # Layout
//! - [`config`]: the `PIPEFORCE_*` environment, checked all at once.
//! - [`app`]: [`App`], which binds the HTTP listener in `build` and serves until told to stop.
//! - [`http`]: the HTTP server's routes (health, metrics, API documents, the services'),
//!   [`Problem`](http::Problem) responses and JSON bodies.
//! - [`health`]: [`Readiness`](health::Readiness), the conditions `/health/ready` reports.
//! - [`hub`]: [`HubClient`], which runs pipelines and commands on the PIPEFORCE hub.
//! - [`names`]: the DNS-label rule PIPEFORCE's names follow (services, namespaces, jobs).
//! - [`messaging`]: `#[service]`/`#[event]` handlers, the consumer and the [`Publisher`].
//! - [`services`]: [`Services`], where the service crate registers its services.
//! - [`testing`]: [`TestBroker`](testing::TestBroker), handlers tested without a broker.
//! - [`shutdown`]: the SIGTERM/SIGINT future that starts a graceful shutdown.
//! - [`telemetry`]: logs (`tracing`, filtered by `RUST_LOG`), traces (OpenTelemetry, OTLP) and
//!   Prometheus metrics.
//! - [`error`]: [`Error`], what can stop the service from starting or running.
//!
//! Without the default feature `service`, only [`config`], [`hub`] and [`names`] are built:
//! what a tool that talks to the hub needs (the deploy tool is one), without the broker
//! client, the HTTP server and OpenTelemetry.

pub mod config;
pub mod hub;
pub mod names;

#[cfg(feature = "service")]
pub mod app;
#[cfg(feature = "service")]
pub mod error;
#[cfg(feature = "service")]
pub mod health;
#[cfg(feature = "service")]
pub mod http;
#[cfg(feature = "service")]
pub mod messaging;
#[cfg(feature = "service")]
pub mod services;
#[cfg(feature = "service")]
pub mod shutdown;
#[cfg(feature = "service")]
pub mod telemetry;
#[cfg(feature = "service")]
pub mod testing;

pub use config::{Config, Defaults};
pub use hub::{HubClient, HubError};
/// Re-exported so services build their HTTP routes with the framework's warp.
#[cfg(feature = "service")]
pub use warp;
#[cfg(feature = "service")]
pub use {
    app::App,
    error::Error,
    messaging::{Context, HandlerError, Publisher, event, service},
    services::Services,
};
