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
//! - [`messaging`]: `#[service]`/`#[event]` handlers, the consumer and the [`Publisher`].
//! - [`services`]: [`Services`], where the service crate registers its services.
//! - [`testing`]: [`TestBroker`](testing::TestBroker), handlers tested without a broker.
//! - [`shutdown`]: the SIGTERM/SIGINT future that starts a graceful shutdown.
//! - [`telemetry`]: logs (`tracing`, filtered by `RUST_LOG`), traces (OpenTelemetry, OTLP) and
//!   Prometheus metrics.
//! - [`error`]: [`Error`], what can stop the service from starting or running.

pub mod app;
pub mod config;
pub mod error;
pub mod health;
pub mod http;
pub mod hub;
pub mod messaging;
pub mod services;
pub mod shutdown;
pub mod telemetry;
pub mod testing;

pub use app::App;
pub use config::{Config, Defaults};
pub use error::Error;
pub use hub::{HubClient, HubError};
pub use messaging::{Context, HandlerError, Publisher, event, service};
pub use services::Services;
/// Re-exported so services build their HTTP routes with the framework's warp.
pub use warp;
