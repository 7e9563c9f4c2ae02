//! The exchange, queues and bindings the service needs, declared on every (re)connect.
//!
//! - the topic exchange: durable;
//! - the dead-letter queue: durable; if it exists already it is used as it is, whatever its
//!   type or arguments (PIPEFORCE may have created it);
//! - the service queue `pipeforce.service.<service>`: durable and *not* auto-delete, so
//!   messages published while the service restarts wait for it; its dead-letter arguments
//!   point at the dead-letter queue, so anything the broker itself dead-letters (a quorum
//!   queue's delivery limit, a rejected message) ends up there too;
//! - one binding per handler pattern;
//! - with `broadcast` handlers, a queue of this replica's own: server-named, exclusive (it
//!   goes with the consuming connection) and auto-delete, bound with their patterns, so every
//!   running replica gets each message. It is declared anew with every session; what is sent
//!   while no replica runs, or while a replica reconnects, is not kept for it.
//!
//! Bindings of handlers that were removed are left in place: AMQP 0-9-1 cannot list a queue's
//! bindings, and removing one a still-running older replica relies on would lose its messages
//! during a rolling update. A message that arrives through such a binding matches no handler
//! and is dead-lettered with the reason "no handler matches"; remove the binding with the
//! management UI or `rabbitmqadmin delete binding`.
//!
//! # What the broker itself guards, by queue type
//! A quorum queue (`PIPEFORCE_MESSAGING_QUEUE_TYPE=quorum`) also gets
//! - `x-delivery-limit` (`PIPEFORCE_MESSAGING_DELIVERY_LIMIT`, default 5): a message
//!   delivered that often without being settled, because the service died holding it (an
//!   abort, an out-of-memory kill), is dead-lettered by RabbitMQ instead of crash-looping
//!   every replica that picks it up;
//! - `x-dead-letter-strategy: at-least-once`, with the `x-overflow: reject-publish` RabbitMQ
//!   requires for it: RabbitMQ keeps a message it dead-letters until the dead-letter queue
//!   has confirmed it, instead of dropping it when that queue is missing or refuses it.
//!
//! A classic queue can do neither. It counts no deliveries, so a message that kills the
//! process is delivered again for ever (handlers only see it marked `redelivered`); and its
//! own dead-lettering is at-most-once: a message the dead-letter queue does not take is gone.
//! Where that matters, use quorum queues.
//!
//! Arguments are fixed when a queue is created: RabbitMQ refuses a declaration with other
//! ones (`406 PRECONDITION_FAILED`). A quorum queue that an older version created without the
//! arguments above is used as it is, with a warning that names them; set them with a policy
//! (`delivery-limit`, `dead-letter-strategy`, `overflow`), or delete the drained queue and let
//! the service create it again.

use lapin::{
    Channel, Connection, ErrorKind, ExchangeKind,
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    protocol::{AMQPErrorKind, AMQPSoftError},
    types::{AMQPValue, FieldTable, LongString},
};
use tracing::warn;

use crate::config::{MessagingConfig, QueueType};

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

    declare_dead_letter_queue(connection, &config.dead_letter_queue).await?;
    declare_service_queue(connection, config).await?;

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

/// Declares this replica's broadcast queue on the consuming `channel` and binds it with
/// `patterns` (of the `broadcast` handlers); returns the name the broker gave it.
pub(crate) async fn declare_broadcast_queue(
    channel: &Channel,
    config: &MessagingConfig,
    patterns: &[&str],
) -> Result<String, lapin::Error> {
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    let name = queue.name().as_str().to_owned();
    for pattern in patterns {
        channel
            .queue_bind(
                name.as_str().into(),
                config.exchange.as_str().into(),
                (*pattern).into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(name)
}

/// Declares the service queue with every argument this version sets. A queue an older
/// version created without the quorum-only ones is used as it is, with a warning.
async fn declare_service_queue(
    connection: &Connection,
    config: &MessagingConfig,
) -> Result<(), lapin::Error> {
    let text = |value: &str| AMQPValue::LongString(LongString::from(value));
    let older = [
        ("x-queue-type", text(config.queue_type.as_str())),
        ("x-dead-letter-exchange", text("")),
        ("x-dead-letter-routing-key", text(&config.dead_letter_queue)),
    ];
    let broker_guards = match config.queue_type {
        QueueType::Quorum => vec![
            (
                "x-delivery-limit",
                AMQPValue::LongLongInt(config.delivery_limit.into()),
            ),
            ("x-dead-letter-strategy", text("at-least-once")),
            ("x-overflow", text("reject-publish")),
        ],
        QueueType::Classic => Vec::new(),
    };
    let all = older.iter().chain(&broker_guards);
    match declare_durable_queue(connection, &config.queue, all).await {
        Err(refused) if is_precondition_failed(&refused) && !broker_guards.is_empty() => {
            // Declaring it as the older version did succeeds only if that is the difference.
            declare_durable_queue(connection, &config.queue, older.iter())
                .await
                .map_err(|_| refused)?;
            let missing: Vec<String> = broker_guards
                .iter()
                .map(|(name, value)| match value {
                    AMQPValue::LongString(text) => format!("{name}={text}"),
                    AMQPValue::LongLongInt(number) => format!("{name}={number}"),
                    other => format!("{name}={other:?}"),
                })
                .collect();
            warn!(
                queue = %config.queue,
                missing = %missing.join(", "),
                "the queue exists without these arguments (created by an older version) and \
                 is used as it is: a message that kills the service is delivered again without \
                 limit. Set them with a policy, or delete the drained queue and restart"
            );
            Ok(())
        }
        declared => declared,
    }
}

/// Declares a durable queue with `arguments` on a channel of its own: a refused declaration
/// closes its channel.
async fn declare_durable_queue<'a>(
    connection: &Connection,
    name: &str,
    arguments: impl Iterator<Item = &'a (&'static str, AMQPValue)>,
) -> Result<(), lapin::Error> {
    let mut table = FieldTable::default();
    for (key, value) in arguments {
        table.insert((*key).into(), value.clone());
    }
    let channel = connection.create_channel().await?;
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            table,
        )
        .await?;
    channel.close(200, "declared".into()).await
}

/// Whether RabbitMQ refused a declaration because the existing entity differs.
fn is_precondition_failed(error: &lapin::Error) -> bool {
    matches!(
        error.kind(),
        ErrorKind::ProtocolError(amqp)
            if *amqp.kind() == AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)
    )
}

/// Uses an existing dead-letter queue as it is, or creates a durable classic one.
pub(crate) async fn declare_dead_letter_queue(
    connection: &Connection,
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
    if exists {
        return Ok(());
    }
    declare_durable_queue(connection, name, std::iter::empty()).await
}
