//! Test helpers: handlers without a broker, and the whole service on a real one.
//!
//! [`TestBroker`] delivers a message by routing key through the same matching, decoding,
//! retrying and dead-lettering code the service runs, and reports the [`Outcome`] and what
//! the handlers published. Publishing is recorded, not sent; requests made by handlers get the
//! answers registered with [`TestBroker::answer_requests`].
//!
//! ```ignore
//! let broker = TestBroker::new(my_service::register);
//! let delivered = broker.deliver_json("orders.created", &order).await;
//! assert!(delivered.is_handled());
//! ```
//!
//! [`TestService`] runs the service itself in the test process, the way `main` does: on a
//! free port, with a service name, exchange and dead-letter queue of its own on the broker
//! (so tests running in parallel never see each other's messages), ready before it is
//! returned, and removed from the broker when it is dropped. [`eventually`] waits for what
//! happens asynchronously (a message going through RabbitMQ) without a fixed sleep.
//!
//! ```ignore
//! let service = TestService::spawn(DEFAULTS, register).await;
//! service.post_json("/orders", &order).await;
//! eventually("the order is counted", Duration::from_secs(10), || async {
//!     let stats: Stats = service.get_json("/orders/stats").await;
//!     if stats.orders == 1 { Ok(()) } else { Err(stats) }
//! })
//! .await;
//! ```

use std::{
    ffi::OsString,
    fmt::Debug,
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use lapin::BasicProperties;
use serde::{Serialize, de::DeserializeOwned};
use tokio::{sync::oneshot, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::{
    App, Config, Defaults, Error,
    messaging::{Dispatcher, Message, Outcome, Pattern, Published, Publisher, RetryPolicy},
    services::Services,
};

/// The exchange test messages claim to come from.
pub const TEST_EXCHANGE: &str = "pipeforce.topic.default";

/// An in-process stand-in for RabbitMQ, for unit tests of handlers.
///
/// `#[event]` options apply as in the service: a `publish = "key"` result shows in
/// [`Delivered::published`], a handler's own `retries` and `timeout_secs` win over the
/// broker's, and `concurrency` limits deliveries made at once. A `broadcast` handler runs
/// like any other: the broker plays one replica.
pub struct TestBroker {
    dispatcher: Dispatcher,
    publisher: Publisher,
    never_stopping: CancellationToken,
}

impl TestBroker {
    /// Registers the services the way the service's `main` does, with the default retry count
    /// but no waiting between retries.
    pub fn new(register: impl FnOnce(&mut Services)) -> Self {
        Self::with_retries(register, 3)
    }

    /// Like [`TestBroker::new`], with `max_retries` retries for failing handlers.
    pub fn with_retries(register: impl FnOnce(&mut Services), max_retries: u32) -> Self {
        let publisher = Publisher::recording(TEST_EXCHANGE);
        let mut services = Services::new(publisher.clone(), test_hub());
        register(&mut services);
        let retry = RetryPolicy {
            max_retries,
            first_delay: Duration::ZERO,
        };
        Self {
            dispatcher: Dispatcher::new(
                services.into_registered().handlers,
                publisher.clone(),
                retry,
            ),
            publisher,
            never_stopping: CancellationToken::new(),
        }
    }

    /// Delivers `body` as it is (text, bytes) with `routing_key`.
    pub async fn deliver(&self, routing_key: &str, body: impl Into<Vec<u8>>) -> Delivered {
        self.deliver_message(Message::new(TEST_EXCHANGE, routing_key, body))
            .await
    }

    /// Delivers `body` as JSON with `routing_key`.
    pub async fn deliver_json<T: Serialize + ?Sized>(
        &self,
        routing_key: &str,
        body: &T,
    ) -> Delivered {
        let body = serde_json::to_vec(body).expect("test body serializes to JSON");
        let properties = BasicProperties::default().with_content_type("application/json".into());
        self.deliver_message(
            Message::new(TEST_EXCHANGE, routing_key, body).with_properties(properties),
        )
        .await
    }

    /// Delivers `body` as JSON with `routing_key` as a request: with `reply_to` and a
    /// correlation id set, so handlers' return values come back in [`Delivered::replies`].
    pub async fn request_json<T: Serialize + ?Sized>(
        &self,
        routing_key: &str,
        body: &T,
    ) -> Delivered {
        let body = serde_json::to_vec(body).expect("test body serializes to JSON");
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_reply_to("amq.rabbitmq.reply-to".into())
            .with_correlation_id("test-request".into());
        self.deliver_message(
            Message::new(TEST_EXCHANGE, routing_key, body).with_properties(properties),
        )
        .await
    }

    /// Delivers a message with its properties (headers, ids, `reply_to`, ...).
    pub async fn deliver_message(&self, message: Message) -> Delivered {
        let before = self.publisher.recorded().len();
        let outcome = self
            .dispatcher
            .dispatch(Arc::new(message), &self.never_stopping)
            .await;
        let published = self.publisher.recorded().split_off(before);
        Delivered { outcome, published }
    }

    /// Answers requests whose routing key matches `pattern` with `reply` (as JSON).
    ///
    /// # Panics
    ///
    /// If `pattern` is not a valid routing-key pattern.
    pub fn answer_requests<T: Serialize + ?Sized>(&self, pattern: &str, reply: &T) {
        let pattern = Pattern::parse(pattern).expect("a valid routing-key pattern");
        let reply = serde_json::to_vec(reply).expect("reply serializes to JSON");
        self.publisher.answer_requests(pattern, reply);
    }
}

/// A hub client for unit tests: it points at a local address where nothing listens, so a
/// handler that calls the hub in a unit test fails fast instead of reaching a real hub.
fn test_hub() -> crate::hub::HubClient {
    let config = crate::config::HubConfig {
        url: url::Url::parse("http://127.0.0.1:9").expect("a valid literal URL"),
        auth: None,
        timeout: Duration::from_secs(1),
    };
    crate::hub::HubClient::new(&config)
        .expect("a hub client without credentials builds")
        .with_retries(0)
}

/// What became of one delivered message.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivered {
    /// Handled, dead-lettered (and why), or abandoned.
    pub outcome: Outcome,
    /// What the handlers published (events and requests), in order.
    pub published: Vec<Published>,
}

impl Delivered {
    /// Whether every matching handler succeeded, so the message would be acked.
    pub fn is_handled(&self) -> bool {
        matches!(self.outcome, Outcome::Handled { .. })
    }

    /// The handlers that ran successfully.
    pub fn handlers(&self) -> &[&'static str] {
        match &self.outcome {
            Outcome::Handled { handlers, .. } => handlers,
            _ => &[],
        }
    }

    /// Why the message would go to the dead-letter queue, if it would.
    pub fn dead_letter_reason(&self) -> Option<&str> {
        match &self.outcome {
            Outcome::DeadLettered { reason, .. } => Some(reason),
            _ => None,
        }
    }

    /// The replies the handlers returned, parsed as JSON (only requests get replies, see
    /// [`TestBroker::request_json`]).
    pub fn replies(&self) -> Vec<serde_json::Value> {
        match &self.outcome {
            Outcome::Handled { replies, .. } => replies
                .iter()
                .map(|reply| serde_json::from_slice(reply).unwrap_or(serde_json::Value::Null))
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// How long [`TestService::spawn`] waits for the service to consume.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long [`TestService::stop`] waits for the service to stop.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The service running in the test process on a free local port, with names of its own on the
/// broker. Dropping it stops the service and deletes its queue, dead-letter queue and
/// exchange, even when the test fails half-way; [`TestService::stop`] stops it gracefully
/// first and says whether it stopped cleanly.
pub struct TestService {
    /// `http://127.0.0.1:<port>`.
    pub address: String,
    /// Publishes to the service's exchange (events and requests).
    pub publisher: Publisher,
    /// The configuration it runs with; its unique names are in `config.messaging`.
    pub config: Config,
    /// A client for its HTTP endpoints.
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    running: Option<JoinHandle<Result<(), Error>>>,
    /// Whether it has names of its own on a broker, to delete.
    on_broker: bool,
}

impl TestService {
    /// Runs the service with the services of `register` on the broker the
    /// `PIPEFORCE_MESSAGING_*` variables name (default: localhost:5672, guest/guest), and
    /// waits until it consumes.
    ///
    /// # Panics
    ///
    /// If the configuration is invalid, the app does not build, or it does not consume within
    /// 30 s (RabbitMQ not running).
    pub async fn spawn(defaults: Defaults, register: impl FnOnce(&mut Services)) -> Self {
        Self::spawn_with_vars(defaults, register, &[]).await
    }

    /// Like [`TestService::spawn`], with more variables (e.g. `PIPEFORCE_HUB_URL` of a
    /// stand-in hub). They win over the environment, but not over the unique names: those
    /// are what is deleted afterwards.
    pub async fn spawn_with_vars(
        defaults: Defaults,
        register: impl FnOnce(&mut Services),
        vars: &[(&str, &str)],
    ) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let id = &id[..12];
        let names = [
            ("PIPEFORCE_SERVICE", format!("test-{id}")),
            (
                "PIPEFORCE_MESSAGING_DEFAULT_TOPIC",
                format!("test.topic.{id}"),
            ),
            ("PIPEFORCE_MESSAGING_DEFAULT_DLQ", format!("test.dlq.{id}")),
        ];
        let vars = vars
            .iter()
            .copied()
            .chain(names.iter().map(|(key, value)| (*key, value.as_str())));
        let (service, app) = Self::build(defaults, register, vars, true).await;
        let readiness = app.readiness().clone();
        let service = service.run(app);
        tokio::time::timeout(READY_TIMEOUT, readiness.wait_until_ready())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "the service does not consume within {READY_TIMEOUT:?}: is RabbitMQ \
                     running where PIPEFORCE_MESSAGING_HOST and _PORT say?"
                )
            });
        service
    }

    /// Runs the service for its HTTP endpoints only: messaging points at a local port where
    /// nothing listens, so it never consumes and `/health/ready` answers 503.
    pub async fn spawn_without_broker(
        defaults: Defaults,
        register: impl FnOnce(&mut Services),
    ) -> Self {
        let unreachable = [
            ("PIPEFORCE_MESSAGING_HOST", "127.0.0.1"),
            ("PIPEFORCE_MESSAGING_PORT", "1"),
        ];
        let (service, app) = Self::build(defaults, register, unreachable, false).await;
        service.run(app)
    }

    /// Builds the app from the environment, a free local port and `vars`, in that order of
    /// precedence (last wins).
    async fn build<'a>(
        defaults: Defaults,
        register: impl FnOnce(&mut Services),
        vars: impl IntoIterator<Item = (&'a str, &'a str)>,
        on_broker: bool,
    ) -> (Self, App) {
        let local = [
            ("PIPEFORCE_HTTP_HOST", "127.0.0.1"),
            ("PIPEFORCE_HTTP_PORT", "0"),
        ];
        let vars = local
            .into_iter()
            .chain(vars)
            .map(|(key, value)| (OsString::from(key), OsString::from(value)));
        let config = Config::from_vars(defaults, std::env::vars_os().chain(vars))
            .unwrap_or_else(|error| panic!("the test configuration is invalid: {error}"));
        let app = App::build(config.clone(), register)
            .await
            .unwrap_or_else(|error| panic!("the app does not build: {error}"));
        let service = Self {
            address: format!("http://{}", app.http_addr()),
            publisher: app.publisher(),
            config,
            client: reqwest::Client::new(),
            stop: None,
            running: None,
            on_broker,
        };
        (service, app)
    }

    fn run(mut self, app: App) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        self.stop = Some(stop);
        self.running = Some(tokio::spawn(app.run_until_stopped(async {
            let _ = stopped.await;
        })));
        self
    }

    /// The URL of `path` (`/greetings`) on the service.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// `GET path`.
    ///
    /// # Panics
    ///
    /// If the request cannot be sent.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .unwrap_or_else(|error| panic!("GET {path}: {error}"))
    }

    /// `GET path`, the body parsed as JSON.
    ///
    /// # Panics
    ///
    /// If the request cannot be sent or the answer is not a `T`.
    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> T {
        self.get(path)
            .await
            .json()
            .await
            .unwrap_or_else(|error| panic!("GET {path}: not the expected JSON: {error}"))
    }

    /// `POST path` with `body` as JSON.
    ///
    /// # Panics
    ///
    /// If the request cannot be sent.
    pub async fn post_json<T: Serialize + ?Sized>(
        &self,
        path: &str,
        body: &T,
    ) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap_or_else(|error| panic!("POST {path}: {error}"))
    }

    /// Stops the service as SIGTERM would, waits until it has stopped, and deletes its names
    /// from the broker.
    ///
    /// # Panics
    ///
    /// If it does not stop cleanly within 30 s, or its names cannot be deleted.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(running) = self.running.take() {
            tokio::time::timeout(STOP_TIMEOUT, running)
                .await
                .unwrap_or_else(|_| panic!("the service does not stop within {STOP_TIMEOUT:?}"))
                .expect("the service task does not panic")
                .unwrap_or_else(|error| panic!("the service does not stop cleanly: {error}"));
        }
        if std::mem::take(&mut self.on_broker) {
            delete_names(&self.config)
                .await
                .unwrap_or_else(|error| panic!("the test's names stay on the broker: {error}"));
        }
    }
}

/// Stops the service and deletes its names from the broker, when [`TestService::stop`] did
/// not: after a failed assertion, say.
impl Drop for TestService {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            // Not a graceful stop: the test is over, and a task of its runtime cannot be
            // awaited here. Aborted, it never runs again, so it cannot declare the names anew.
            running.abort();
        }
        if !self.on_broker {
            return;
        }
        let config = self.config.clone();
        // Drop cannot await and runs inside the test's runtime: delete from a thread with a
        // runtime of its own.
        let deleted = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|error| error.to_string())?
                .block_on(delete_names(&config))
                .map_err(|error| error.to_string())
        })
        .join();
        if let Ok(Err(error)) = deleted {
            eprintln!("the test's queues and exchange stay on the broker: {error}");
        }
    }
}

/// Deletes the service's queue, dead-letter queue and exchange from the broker.
async fn delete_names(config: &Config) -> Result<(), lapin::Error> {
    use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};

    let messaging = &config.messaging;
    let address = &messaging.addresses[0];
    let connection = crate::messaging::connect(messaging, address, &config.service).await?;
    let channel = connection.create_channel().await?;
    for queue in [&messaging.queue, &messaging.dead_letter_queue] {
        channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await?;
    }
    channel
        .exchange_delete(
            messaging.exchange.as_str().into(),
            ExchangeDeleteOptions::default(),
        )
        .await?;
    connection.close(200, "test done".into()).await
}

/// Waits until `check` succeeds, and returns what it returned: for effects that arrive
/// asynchronously, such as a message handled after it went through RabbitMQ. `check` runs at
/// once and then again every few milliseconds (backing off to 100 ms) until `timeout`.
///
/// # Panics
///
/// When `timeout` passes first, with `what` and the last error `check` returned.
pub async fn eventually<T, E, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    E: Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        let last = match check().await {
            Ok(value) => return value,
            Err(last) => last,
        };
        assert!(
            Instant::now() < deadline,
            "{what}: not within {timeout:?}; last seen: {last:?}"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}
