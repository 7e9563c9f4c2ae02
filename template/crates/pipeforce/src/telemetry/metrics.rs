//! Metrics: recorded through the `metrics` crate's macros, served in Prometheus' text format
//! at `GET /metrics` ([`metric`] lists them).
//!
//! The `metrics` crate works like `log`: code records through its macros into the one
//! recorder installed for the process, and the macros reach no other (its scoped
//! `with_local_recorder` covers only synchronous code on one thread, not handlers that hop
//! between Tokio workers). So the recorder itself stays process-wide, installed by
//! [`Metrics::install`], which [`App::build`](crate::App::build) calls before any metric
//! handle is taken, and user code's own `metrics::counter!` lines land on `/metrics` too. What
//! is passed around is the [`Metrics`] handle that reads it: the app hands it to the `/metrics`
//! route and to the task that drains histograms, instead of each reaching for a global.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Reads the process's Prometheus recorder. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Metrics {
    handle: PrometheusHandle,
}

impl Metrics {
    /// Installs the Prometheus recorder as the process's `metrics` recorder on the first call;
    /// later calls, e.g. from a second [`App`](crate::App) in the same test process, get a
    /// handle to the same recorder, the one their macros record into. Another recorder
    /// installed first (a test harness's) keeps its place; `/metrics` then stays empty.
    pub fn install() -> Self {
        static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
        let handle = HANDLE.get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0,
                ])
                .expect("the bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            let _ = ::metrics::set_global_recorder(recorder);
            handle
        });
        Self {
            handle: handle.clone(),
        }
    }

    /// Every metric in Prometheus' text format.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// Drains the samples histograms keep until then; call every few seconds.
    pub fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }
}

/// The metrics the framework records (Prometheus names).
pub mod metric {
    /// Counter: messages consumed, by `handler` and `outcome` (`handled`, `dead_lettered`,
    /// `abandoned`). A message matching two handlers counts once for each.
    pub const MESSAGES_CONSUMED: &str = "pipeforce_messages_consumed_total";
    /// Histogram: seconds one handler run took, by `handler`.
    pub const HANDLER_DURATION: &str = "pipeforce_handler_duration_seconds";
    /// Counter: retries of failed handler runs, by `handler`.
    pub const HANDLER_RETRIES: &str = "pipeforce_handler_retries_total";
    /// Counter: messages sent to the dead-letter queue, by `reason` (`undecodable`,
    /// `handler_failed`, `no_handler`).
    pub const MESSAGES_DEAD_LETTERED: &str = "pipeforce_messages_dead_lettered_total";
    /// Counter: copies to the dead-letter queue the broker refused (the queue is missing or
    /// full); each is retried, its message waits unacked meanwhile.
    pub const DEAD_LETTER_FAILURES: &str = "pipeforce_dead_letter_failures_total";
    /// Gauge: handler runs in progress.
    pub const HANDLERS_IN_FLIGHT: &str = "pipeforce_handlers_in_flight";
    /// Counter: messages published and confirmed, by `kind` (`event`, `request`, `reply`,
    /// `dead_letter`).
    pub const MESSAGES_PUBLISHED: &str = "pipeforce_messages_published_total";
    /// Counter: publishes that failed, by `kind`.
    pub const PUBLISH_FAILURES: &str = "pipeforce_publish_failures_total";
    /// Gauge: 1 while the service consumes from RabbitMQ, else 0.
    pub const BROKER_CONNECTED: &str = "pipeforce_broker_connected";
    /// Gauge: 1 while RabbitMQ blocks the service's publishing (a memory or disk alarm),
    /// else 0.
    pub const BROKER_BLOCKED: &str = "pipeforce_broker_blocked";
    /// Counter: HTTP requests served, by `method`, `route` and `status`, but for the `GET`s of
    /// the health and metrics endpoints that probes and scrapers send. `method` is `_OTHER`
    /// for a method outside the standard ones and `route` is `unmatched` for a path outside
    /// the routes, so clients cannot add series.
    pub const HTTP_REQUESTS: &str = "pipeforce_http_requests_total";
    /// Histogram: seconds to serve an HTTP request, by `method` and `route`.
    pub const HTTP_REQUEST_DURATION: &str = "pipeforce_http_request_duration_seconds";
}
