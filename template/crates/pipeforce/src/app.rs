//! The running service: [`App::build`] prepares everything that can fail, then
//! [`App::run_until_stopped`] serves HTTP and consumes messages until its stop trigger fires,
//! then shuts both down gracefully.
//!
//! Building binds the HTTP listener, so a taken port is a start-up error and the real port is
//! known before serving starts (tests bind port 0 and read [`App::http_addr`]). The broker
//! connection is made in the background: an unreachable broker makes the service unready
//! (`/health/ready` answers 503) and it retries with back-off, instead of crash-looping.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use tokio::{net::TcpListener, sync::watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    Config, Error,
    config::{HttpConfig, MessagingConfig},
    health::Readiness,
    http,
    hub::HubClient,
    messaging::{Consumer, Dispatcher, Handler, Publisher, RetryPolicy, TimeLimits, asyncapi},
    services::Services,
    telemetry::Metrics,
};

/// A service ready to run.
pub struct App {
    config: Config,
    http_listener: TcpListener,
    http_addr: SocketAddr,
    endpoints: http::Endpoints,
    readiness: Readiness,
    consumer: Consumer,
    publisher: Publisher,
    metrics: Metrics,
}

impl App {
    /// Registers the services with `register`, binds the HTTP listener and prepares the
    /// consumer. Logs the effective configuration, with secrets redacted.
    pub async fn build(
        config: Config,
        register: impl FnOnce(&mut Services),
    ) -> Result<Self, Error> {
        info!(%config, "effective configuration");
        let (http_listener, http_addr) = bind_http(&config.http).await?;

        // Metric handles are taken below: the recorder must exist before.
        let metrics = Metrics::install();
        let (connection, connection_updates) = watch::channel(None);
        let messaging = &config.messaging;
        let readiness = Readiness::default();
        let publisher = Publisher::for_broker(
            &messaging.exchange,
            &config.service,
            connection_updates,
            messaging.publish_timeout,
            readiness.informational("publishing"),
        );
        let hub = HubClient::new(&config.hub)?;
        let mut services = Services::new(publisher.clone(), hub);
        register(&mut services);
        let registered = services.into_registered();
        let asyncapi = asyncapi::document(&asyncapi::Interface {
            service: &config.service,
            version: &config.version,
            messaging,
            handlers: &registered.handlers,
            publishes: &registered.publishes,
        });
        let openapi = http::docs::openapi(&config.service, &config.version, registered.apis);
        // Broadcast handlers get a queue of each replica's own, and a dispatcher of their own.
        let (broadcast, shared): (Vec<Handler>, Vec<Handler>) = registered
            .handlers
            .into_iter()
            .partition(Handler::is_broadcast);
        let dispatcher = new_dispatcher(shared, publisher.clone(), messaging);
        let broadcast = (!broadcast.is_empty())
            .then(|| Arc::new(new_dispatcher(broadcast, publisher.clone(), messaging)));

        let consumer = Consumer {
            config: messaging.clone(),
            service: config.service.clone(),
            dispatcher: Arc::new(dispatcher),
            broadcast,
            publisher: publisher.clone(),
            connection,
            ready: readiness.condition("messaging"),
            shutdown_timeout: config.shutdown_timeout,
        };
        Ok(Self {
            config,
            http_listener,
            http_addr,
            endpoints: http::Endpoints {
                readiness: readiness.clone(),
                metrics: metrics.clone(),
                services: registered.routes,
                openapi,
                asyncapi,
            },
            readiness,
            consumer,
            publisher,
            metrics,
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

    /// Publishes events and sends requests, like the services do.
    pub fn publisher(&self) -> Publisher {
        self.publisher.clone()
    }

    /// Serves until `stop` completes, then shuts down gracefully: stops accepting connections
    /// and deliveries, and lets in-flight requests and handlers finish, for at most the
    /// configured shutdown timeout.
    pub async fn run_until_stopped(self, stop: impl Future<Output = ()>) -> Result<(), Error> {
        let stopping = CancellationToken::new();
        let server = http::serve(
            self.http_listener,
            self.endpoints,
            stopping.clone().cancelled_owned(),
        );
        let mut server = tokio::spawn(server);
        // Histograms keep their recent samples until they are drained.
        let metrics = self.metrics;
        let upkeep = tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(5));
            loop {
                every.tick().await;
                metrics.run_upkeep();
            }
        });
        // Its own task: consuming from `main`'s thread would cost throughput.
        let mut consumer = tokio::spawn(self.consumer.run(stopping.clone()));
        info!(address = %self.http_addr, service = %self.config.service, "serving HTTP");

        tokio::select! {
            () = stop => {}
            _ = &mut server => return Err(Error::HttpServerStopped),
            _ = &mut consumer => return Err(Error::ConsumerStopped),
        }

        info!("shutting down: no new requests or deliveries, finishing the ones in flight");
        stopping.cancel();
        upkeep.abort();
        // The consumer keeps to the same timeout, closing included, so this bound only cuts
        // short HTTP requests still running when it passes.
        let timeout = self.config.shutdown_timeout;
        let finished = tokio::time::timeout(timeout, async {
            let _ = tokio::join!(server, consumer);
        });
        if finished.await.is_err() {
            warn!(
                ?timeout,
                "in-flight work did not finish in time; stopping anyway"
            );
        }
        info!("stopped");
        Ok(())
    }
}

/// Binds the HTTP listener: a taken port is a start-up error. Returns it with the address it
/// got, the real port when port 0 was asked for.
async fn bind_http(config: &HttpConfig) -> Result<(TcpListener, SocketAddr), Error> {
    let address = SocketAddr::new(config.host, config.port);
    let bind_error = |source| Error::HttpBind { address, source };
    let http_listener = TcpListener::bind(address).await.map_err(bind_error)?;
    let http_addr = http_listener.local_addr().map_err(bind_error)?;
    Ok((http_listener, http_addr))
}

/// The dispatcher of the registered handlers, with the configured retries and time limits;
/// logs each handler with its patterns.
fn new_dispatcher(
    handlers: Vec<Handler>,
    publisher: Publisher,
    messaging: &MessagingConfig,
) -> Dispatcher {
    let retry = RetryPolicy {
        max_retries: messaging.max_retries,
        first_delay: messaging.retry_delay,
    };
    let dispatcher = Dispatcher::new(handlers, publisher, retry).with_limits(TimeLimits {
        handler: Some(messaging.handler_timeout),
        consumer: Some(messaging.consumer_timeout),
    });
    for handler in dispatcher.handlers() {
        let patterns: Vec<&str> = handler.patterns().iter().map(|p| p.as_str()).collect();
        info!(
            handler = handler.name(),
            ?patterns,
            broadcast = handler.is_broadcast(),
            "registered handler"
        );
    }
    dispatcher
}
