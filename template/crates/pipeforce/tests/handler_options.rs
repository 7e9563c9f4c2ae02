//! The `#[event]` options on the `TestBroker`: `publish`, `retries`, `timeout_secs`,
//! `broadcast` and `concurrency`, each on a handler of its own.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures_util::future::join_all;
use pipeforce::{HandlerError, Services, event, service, testing::TestBroker};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Debug, Deserialize)]
struct Order {
    id: u32,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Invoice {
    order: u32,
}

/// Counts runs, and how many ran at once at most.
#[derive(Default)]
struct Options {
    attempts: AtomicU32,
    running: AtomicUsize,
    most_at_once: AtomicUsize,
}

impl Options {
    /// Runs for a while, noting how many runs overlap.
    async fn overlap(&self) {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_at_once.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.running.fetch_sub(1, Ordering::SeqCst);
    }
}

#[service]
impl Options {
    #[event("orders.created", publish = "invoices.requested")]
    async fn invoice(&self, order: Order) -> Result<Invoice, HandlerError> {
        Ok(Invoice { order: order.id })
    }

    #[event("orders.flaky", retries = 5)]
    async fn flaky(&self) -> Result<(), HandlerError> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        Err(HandlerError::new("still down"))
    }

    #[event("orders.fragile", retries = 0)]
    async fn fragile(&self) -> Result<(), HandlerError> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        Err(HandlerError::new("down"))
    }

    #[event("orders.slow", timeout_secs = 1, retries = 0)]
    async fn slow(&self) {
        tokio::time::sleep(Duration::from_secs(30)).await;
    }

    #[event("config.changed", broadcast)]
    async fn reload(&self) {}

    #[event("orders.serial", concurrency = 1)]
    async fn serial(&self) {
        self.overlap().await;
    }

    #[event("orders.parallel")]
    async fn parallel(&self) {
        self.overlap().await;
    }
}

fn broker() -> (TestBroker, Arc<Options>) {
    let service = Arc::new(Options::default());
    let registered = Arc::clone(&service);
    let broker = TestBroker::new(move |services: &mut Services| {
        services.add_shared(registered);
    });
    (broker, service)
}

#[tokio::test]
async fn the_result_is_published_with_the_key_before_the_ack_and_still_replied() {
    let (broker, _) = broker();

    let delivered = broker
        .request_json("orders.created", &json!({ "id": 7 }))
        .await;

    assert!(delivered.is_handled(), "{delivered:?}");
    assert_eq!(delivered.published.len(), 1, "{delivered:?}");
    assert_eq!(delivered.published[0].routing_key, "invoices.requested");
    assert_eq!(delivered.published[0].json(), json!({ "order": 7 }));
    assert_eq!(delivered.replies(), [json!({ "order": 7 })]);
}

#[tokio::test]
async fn retries_of_a_handler_override_the_service_wide_count() {
    let (broker, service) = broker();

    let delivered = broker.deliver("orders.flaky", "").await;

    assert_eq!(service.attempts.load(Ordering::SeqCst), 6);
    assert_eq!(
        delivered.dead_letter_reason(),
        Some("Options::flaky failed after 6 attempts: still down")
    );
}

#[tokio::test]
async fn no_retries_dead_letters_on_the_first_failure() {
    let (broker, service) = broker();

    let delivered = broker.deliver("orders.fragile", "").await;

    assert_eq!(service.attempts.load(Ordering::SeqCst), 1);
    assert_eq!(
        delivered.dead_letter_reason(),
        Some("Options::fragile failed after 1 attempt: down")
    );
}

#[tokio::test]
async fn a_handler_past_its_own_time_limit_fails() {
    let (broker, _) = broker();

    let delivered = broker.deliver("orders.slow", "").await;

    assert_eq!(
        delivered.dead_letter_reason(),
        Some(
            "Options::slow failed after 1 attempt: the handler did not finish within 1 s \
             (timeout_secs of its #[event])"
        )
    );
}

#[tokio::test]
async fn a_broadcast_handler_is_delivered_to() {
    let (broker, _) = broker();

    let delivered = broker.deliver("config.changed", "").await;

    assert_eq!(delivered.handlers(), ["Options::reload"]);
}

#[tokio::test]
async fn a_concurrency_of_one_never_runs_two_at_once_under_a_burst() {
    let (broker, service) = broker();

    let burst = (0..20).map(|_| broker.deliver("orders.serial", ""));
    let delivered = join_all(burst).await;

    assert!(delivered.iter().all(|delivered| delivered.is_handled()));
    assert_eq!(service.most_at_once.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn without_a_limit_the_same_burst_runs_at_once() {
    let (broker, service) = broker();

    let burst = (0..20).map(|_| broker.deliver("orders.parallel", ""));
    join_all(burst).await;

    // What the test above rules out does happen without the option.
    assert!(service.most_at_once.load(Ordering::SeqCst) > 1);
}
