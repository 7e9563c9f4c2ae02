//! `#[event(..., broadcast)]`: every running replica gets each message.
//!
//! Each session declares a queue of this replica's own (`topology::declare_broadcast_queue`:
//! server-named, exclusive, auto-delete), binds it with the broadcast handlers' patterns and
//! consumes from it on the session's channel, beside the shared queue. Its deliveries are
//! settled like the others (same retries, dead-lettering and acks), by a dispatcher of the
//! broadcast handlers only, so a message never runs a handler of the other kind.
//!
//! The queue lives as long as the consuming connection: messages sent while no replica runs,
//! and those a replica had not settled when its connection dropped, are not kept.

use std::sync::Arc;

use lapin::{Channel, message::Delivery, options::BasicConsumeOptions, types::FieldTable};
use tracing::info;

use super::{dispatch::Dispatcher, settle::Settle, topology};
use crate::config::MessagingConfig;

/// A session's broadcast consumer and how its deliveries are settled.
pub(super) struct Broadcast {
    pub(super) deliveries: lapin::Consumer,
    pub(super) settle: Arc<Settle>,
}

/// Declares this replica's broadcast queue for `dispatcher`'s handlers and consumes from it on
/// `channel`; returns the consumer tag (the session's tag with `-broadcast`) and the
/// deliveries.
pub(super) async fn consume(
    channel: &Channel,
    config: &MessagingConfig,
    dispatcher: &Dispatcher,
    session_tag: &str,
) -> Result<(String, lapin::Consumer), lapin::Error> {
    let patterns: Vec<&str> = dispatcher
        .handlers()
        .iter()
        .flat_map(|handler| handler.patterns().iter().map(|p| p.as_str()))
        .collect();
    let queue = topology::declare_broadcast_queue(channel, config, &patterns).await?;
    let tag = format!("{session_tag}-broadcast");
    let deliveries = channel
        .basic_consume(
            queue.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions {
                exclusive: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    info!(%queue, ?patterns, "consuming broadcasts");
    Ok((tag, deliveries))
}

/// The next broadcast delivery with the settling side it goes to; never, when the service
/// has no broadcast handlers. `None` inside when the broker cancelled the consumer.
pub(super) async fn next(
    broadcast: &mut Option<Broadcast>,
) -> Option<Result<(Delivery, Arc<Settle>), lapin::Error>> {
    use futures_util::StreamExt;

    let Some(broadcast) = broadcast else {
        return std::future::pending().await;
    };
    let delivery = broadcast.deliveries.next().await?;
    Some(delivery.map(|delivery| (delivery, Arc::clone(&broadcast.settle))))
}
