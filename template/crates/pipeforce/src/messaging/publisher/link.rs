//! The broker side of a publisher: a confirm-mode channel on the current connection, opened
//! on demand, and publishes bounded by the publish timeout.

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use lapin::{
    Channel, Confirmation, Connection,
    options::{BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions},
    types::{FieldTable, ShortString},
};
use tokio::{
    sync::watch,
    time::{Instant, timeout_at},
};
use tracing::warn;

use super::{
    Outgoing, PublishError,
    requests::{PendingReplies, REPLY_TO, route_replies},
};

/// The broker side: a confirm-mode channel on the current connection, opened on demand.
pub(super) struct BrokerLink {
    connection: watch::Receiver<Option<Arc<Connection>>>,
    /// Set for a publisher with a connection of its own ([`Publisher::connect`](super::Publisher::connect)).
    _own_connection: Option<watch::Sender<Option<Arc<Connection>>>>,
    /// How long one publish may take, from waiting for a connection to the confirm.
    timeout: Duration,
    /// The open publish channel. Locked only to read or replace it, never across an await.
    current: Mutex<Option<Link>>,
    /// Held while a channel is opened, so that concurrent callers open one, not one each.
    /// Waiting for a connection happens before, without it: each caller waits its own
    /// timeout, not the sum of the callers' before it.
    opening: tokio::sync::Mutex<()>,
    pub(super) pending: PendingReplies,
}

/// A publish channel and the connection it is on (whose status says whether it is blocked).
#[derive(Clone)]
struct Link {
    connection: Arc<Connection>,
    channel: Channel,
}

impl BrokerLink {
    pub(super) fn new(
        connection: watch::Receiver<Option<Arc<Connection>>>,
        own_connection: Option<watch::Sender<Option<Arc<Connection>>>>,
        timeout: Duration,
    ) -> Self {
        Self {
            connection,
            _own_connection: own_connection,
            timeout,
            current: Mutex::new(None),
            opening: tokio::sync::Mutex::new(()),
            pending: Arc::default(),
        }
    }

    /// The open publish channel, if it still works.
    fn current(&self) -> Option<Link> {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .filter(|link| link.channel.status().connected())
    }

    /// The publish channel, opened (with its reply consumer) when there is none or it broke.
    async fn link(&self, deadline: Instant) -> Result<Link, PublishError> {
        if let Some(link) = self.current() {
            return Ok(link);
        }
        let not_connected = || PublishError::NotConnected(self.timeout);
        let mut updates = self.connection.clone();
        let connected = updates.wait_for(|c| c.as_ref().is_some_and(|c| c.status().connected()));
        let connection = timeout_at(deadline, connected)
            .await
            .map_err(|_| not_connected())?
            .map_err(|_| not_connected())?
            .clone()
            .ok_or_else(not_connected)?;
        if connection.status().blocked() {
            return Err(PublishError::Blocked);
        }

        let _opening = timeout_at(deadline, self.opening.lock())
            .await
            .map_err(|_| self.timed_out(&connection))?;
        // Another caller may have opened it while this one waited for the lock.
        if let Some(link) = self.current() {
            return Ok(link);
        }
        let channel = timeout_at(deadline, self.open_channel(&connection))
            .await
            .map_err(|_| self.timed_out(&connection))??;
        let link = Link {
            connection,
            channel,
        };
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Some(link.clone());
        Ok(link)
    }

    /// Opens a confirm-mode channel and starts consuming the replies to its requests.
    async fn open_channel(&self, connection: &Connection) -> Result<Channel, PublishError> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let replies = channel
            .basic_consume(
                REPLY_TO.into(),
                ShortString::from(""),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        tokio::spawn(route_replies(replies, Arc::clone(&self.pending)));
        Ok(channel)
    }

    /// The error for a publish that ran out of time: a blocked connection explains it.
    fn timed_out(&self, connection: &Connection) -> PublishError {
        if connection.status().blocked() {
            PublishError::Blocked
        } else {
            PublishError::Timeout(self.timeout)
        }
    }

    pub(super) async fn send(&self, outgoing: Outgoing<'_>) -> Result<(), PublishError> {
        let deadline = Instant::now() + self.timeout;
        let Link {
            connection,
            channel,
        } = self.link(deadline).await?;
        if connection.status().blocked() {
            return Err(PublishError::Blocked);
        }
        let confirmed = async {
            channel
                .basic_publish(
                    outgoing.exchange.into(),
                    outgoing.routing_key.into(),
                    BasicPublishOptions {
                        mandatory: outgoing.mandatory,
                        ..BasicPublishOptions::default()
                    },
                    outgoing.body,
                    outgoing.properties,
                )
                .await?
                .await
        };
        let confirmation = timeout_at(deadline, confirmed)
            .await
            .map_err(|_| self.timed_out(&connection))??;
        match confirmation {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_returned)) => {
                Err(PublishError::Unroutable(outgoing.routing_key.to_owned()))
            }
            Confirmation::Nack(_) => Err(PublishError::Nacked),
            Confirmation::NotRequested => {
                warn!("publish channel is not in confirm mode");
                Ok(())
            }
        }
    }
}
