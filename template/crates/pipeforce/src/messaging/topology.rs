//! The exchange, queues and bindings the service needs, declared on every (re)connect.
//!
//! - the topic exchange: durable;
//! - the dead-letter queue: durable; if it exists already it is used as it is, whatever its
//!   type or arguments (PIPEFORCE may have created it);
//! - the service queue `pipeforce.service.<service>`: durable and *not* auto-delete, so
//!   messages published while the service restarts wait for it; its dead-letter arguments
//!   point at the dead-letter queue, so anything the broker itself dead-letters (a quorum
//!   queue's delivery limit, a rejected message) ends up there too;
//! - one binding per handler pattern.
//!
//! Bindings of handlers that were removed are left in place: AMQP 0-9-1 cannot list a queue's
//! bindings, and removing one a still-running older replica relies on would lose its messages
//! during a rolling update. A message that arrives through such a binding matches no handler
//! and is dead-lettered with the reason "no handler matches"; remove the binding with the
//! management UI or `rabbitmqadmin delete binding`.

use lapin::{
    Channel, Connection, ExchangeKind,
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, LongString},
};

use crate::config::MessagingConfig;

/// Declares everything; `patterns` are the handlers' binding patterns.
pub(crate) async fn declare(
    connection: &Connection,
    channel: &Channel,
    config: &MessagingConfig,
    patterns: &[&str],
) -> Result<(), lapin::Error> {
    channel
        .exchange_declare(
            config.exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;

    declare_dead_letter_queue(connection, channel, &config.dead_letter_queue).await?;

    let mut arguments = FieldTable::default();
    let mut set = |name: &str, value: &str| {
        arguments.insert(name.into(), AMQPValue::LongString(LongString::from(value)));
    };
    set("x-queue-type", config.queue_type.as_str());
    set("x-dead-letter-exchange", "");
    set("x-dead-letter-routing-key", &config.dead_letter_queue);
    channel
        .queue_declare(
            config.queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            arguments,
        )
        .await?;

    for pattern in patterns {
        channel
            .queue_bind(
                config.queue.as_str().into(),
                config.exchange.as_str().into(),
                (*pattern).into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

/// Uses an existing dead-letter queue as it is, or creates a durable classic one.
pub(crate) async fn declare_dead_letter_queue(
    connection: &Connection,
    channel: &Channel,
    name: &str,
) -> Result<(), lapin::Error> {
    // A passive declare of a missing queue closes its channel, so probe on a spare one.
    let probe = connection.create_channel().await?;
    let exists = probe
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .is_ok();
    if probe.status().connected() {
        let _ = probe.close(200, "probe done".into()).await;
    }
    if !exists {
        channel
            .queue_declare(
                name.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}
