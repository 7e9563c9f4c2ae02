//! Following whether RabbitMQ blocks publishers (a memory or disk alarm).

use std::sync::Arc;

use futures_util::{StreamExt, stream::BoxStream};
use lapin::{Connection, Event};
use metrics::gauge;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::{health::Condition, telemetry::metric};

/// Follows whether RabbitMQ blocks publishing on the connection the publisher is handed, for
/// the log, the `pipeforce_broker_blocked` gauge and the `publishing` check of
/// `/health/ready`.
///
/// The check does not make the instance unready: a resource alarm blocks publishers on every
/// node of the cluster, so every replica is blocked alike and none would serve better.
/// Taking them all out of the load balancer would turn the clear 503 problem of a publishing
/// endpoint into connection errors, and also stop the endpoints that do not publish, while
/// consuming goes on either way.
pub(super) async fn follow_blocking(
    mut connections: watch::Receiver<Option<Arc<Connection>>>,
    publishing: Condition,
) {
    let show = |blocked: bool| {
        publishing.set(!blocked);
        gauge!(metric::BROKER_BLOCKED).set(if blocked { 1.0 } else { 0.0 });
    };
    loop {
        // Listen first, then read the status: a notice in between is not missed.
        let (mut events, blocked): (BoxStream<'static, Event>, bool) =
            match connections.borrow_and_update().as_ref() {
                Some(connection) => (
                    connection.events_listener().boxed(),
                    connection.status().blocked(),
                ),
                None => (futures_util::stream::pending().boxed(), false),
            };
        show(blocked);
        loop {
            tokio::select! {
                changed = connections.changed() => match changed {
                    Ok(()) => break,
                    Err(_) => return,
                },
                Some(event) = events.next() => match event {
                    Event::ConnectionBlocked(reason) => {
                        warn!(%reason, "RabbitMQ blocks publishing; publishes fail until it stops");
                        show(true);
                    }
                    Event::ConnectionUnblocked => {
                        info!("RabbitMQ accepts publishes again");
                        show(false);
                    }
                    _ => {}
                },
            }
        }
    }
}
