//! Coalesced acknowledgements.
//!
//! Acking every message on its own costs a frame, a syscall and several thread hand-offs each
//! and caps a consumer far below the broker's speed. One `basic.ack` with `multiple=true`
//! settles every outstanding delivery up to its tag, so this task collects completions and
//! acks a whole run at once: after `batch` completions, or `interval` after the first pending
//! one, so a lone message is not held back.
//!
//! Handlers finish out of order, and `multiple=true` covers every outstanding delivery up to
//! the tag, so only the *contiguous* run of completed deliveries from the oldest one is ever
//! acked together. This task is the only one that settles deliveries (dead letters are acked
//! here too, once their copy is confirmed), so no ack is ever sent for a tag twice.
//!
//! A delivery that stays in the way (a handler retrying with back-off, a slow one) would hold
//! back the acks of everything completed after it, until the prefetch window is full of
//! handled messages and the broker stops delivering, and a dropped connection would hand all
//! of them out again. So once the oldest delivery has blocked the run for [`STALL`], the
//! completions beyond it are acked one by one, on the same cadence as the run, every ack of a
//! flush sent at once.

use std::{collections::BTreeMap, time::Duration};

use futures_util::future::join_all;
use lapin::{Channel, options::BasicAckOptions, types::DeliveryTag};
use tokio::{sync::mpsc, task::JoinHandle, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// How long the oldest running delivery may hold back the acks of those completed after it:
/// long enough that a delivery finishing a little late still lets one multiple ack cover the
/// others, short enough that a connection drop meanwhile repeats only a few of them.
const STALL: Duration = Duration::from_millis(5);

/// How a delivery was completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Completion {
    /// Handled: to be acked by this task.
    Ack,
    /// Already acked on its own (beyond the run): only moves the run on.
    Settled,
    /// Left unsettled on purpose (the session is over): must never be covered by a multiple
    /// ack, so that the broker delivers it again.
    Abandoned,
}

/// The sending side: report each delivery's completion once.
#[derive(Clone)]
pub(crate) struct Acks {
    completions: mpsc::UnboundedSender<(DeliveryTag, Completion)>,
}

impl Acks {
    /// Starts the ack task for `channel`, whose delivery tags start at 1.
    pub(crate) fn spawn(channel: Channel, batch: usize, interval: Duration) -> (Self, AckTask) {
        let (completions, receiver) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(channel, receiver, stop.clone(), batch.max(1), interval));
        (Self { completions }, AckTask { task, stop })
    }

    pub(crate) fn complete(&self, tag: DeliveryTag, completion: Completion) {
        // Fails only when the task is gone with its channel; the broker redelivers then.
        let _ = self.completions.send((tag, completion));
    }
}

/// The running ack task.
pub(crate) struct AckTask {
    task: JoinHandle<()>,
    stop: CancellationToken,
}

impl AckTask {
    /// Acks what has completed so far and ends the task; completions reported later are
    /// never acked (the broker delivers those messages again).
    pub(crate) async fn finish(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

async fn run(
    channel: Channel,
    mut completions: mpsc::UnboundedReceiver<(DeliveryTag, Completion)>,
    stop: CancellationToken,
    batch: usize,
    interval: Duration,
) {
    let mut window = Window::default();
    let mut flush_at: Option<Instant> = None;
    // The delivery that blocks the run, and since when.
    let mut blocked_by: Option<(DeliveryTag, Instant)> = None;
    let stalled_at =
        |blocked_by: Option<(DeliveryTag, Instant)>| blocked_by.map(|(_, since)| since + STALL);
    let stalled =
        |blocked_by| stalled_at(blocked_by).is_some_and(|at: Instant| at <= Instant::now());
    let far = || Instant::now() + Duration::from_secs(3600);
    loop {
        let stall_pending = window.acks_beyond > 0 && !stalled(blocked_by);
        // Timers before completions: a steady stream of completions must not hold back acks.
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            () = tokio::time::sleep_until(flush_at.unwrap_or_else(far)), if flush_at.is_some() => {
                send(&channel, window.take(stalled(blocked_by))).await;
                flush_at = None;
            }
            () = tokio::time::sleep_until(stalled_at(blocked_by).unwrap_or_else(far)),
                if stall_pending =>
            {
                send(&channel, window.take(true)).await;
                flush_at = None;
            }
            completion = completions.recv() => match completion {
                Some((tag, completion)) => {
                    window.complete(tag, completion);
                    blocked_by = match (window.blocking(), blocked_by) {
                        (Some(tag), Some((same, since))) if tag == same => Some((tag, since)),
                        (Some(tag), _) => Some((tag, Instant::now())),
                        (None, _) => None,
                    };
                    let pending = window.pending(stalled(blocked_by));
                    if pending >= batch {
                        send(&channel, window.take(stalled(blocked_by))).await;
                        flush_at = None;
                    } else if pending > 0 && flush_at.is_none() {
                        flush_at = Some(Instant::now() + interval);
                    }
                }
                None => break,
            },
        }
    }
    // Whatever completed before the stop; past a gap (an abandoned or still running
    // delivery) one by one, since a multiple ack would settle the gap too.
    while let Ok((tag, completion)) = completions.try_recv() {
        window.complete(tag, completion);
    }
    send(&channel, window.take(true)).await;
}

/// Sends `acks` (tag, multiple) together: awaiting each before the next would let the
/// window fill up with handled messages a dropped connection hands out again.
async fn send(channel: &Channel, acks: Vec<(DeliveryTag, bool)>) {
    let sent = acks.iter().map(|&(tag, multiple)| async move {
        if let Err(error) = channel.basic_ack(tag, BasicAckOptions { multiple }).await {
            // The channel is gone; the broker requeues everything unacked on it.
            debug!(%error, tag, "ack not sent");
        }
    });
    join_all(sent).await;
}

/// The bookkeeping: which deliveries completed and what can be acked together.
#[derive(Debug, Default)]
struct Window {
    /// Every delivery up to this tag is completed and, if acked, included in a sent ack or in
    /// `ack_through`.
    run_end: DeliveryTag,
    /// Completions after a gap, waiting for the gap to close.
    ahead: BTreeMap<DeliveryTag, Completion>,
    /// The highest tag in the run still to be acked (with multiple=true).
    ack_through: Option<DeliveryTag>,
    /// Completions covered by `ack_through`.
    pending_acks: usize,
    /// Completions in `ahead` still to be acked.
    acks_beyond: usize,
    /// An abandoned delivery ended the run for good.
    blocked: bool,
}

impl Window {
    fn complete(&mut self, tag: DeliveryTag, completion: Completion) {
        self.ahead.insert(tag, completion);
        if completion == Completion::Ack {
            self.acks_beyond += 1;
        }
        while !self.blocked {
            let next = self.run_end + 1;
            let Some(completion) = self.ahead.remove(&next) else {
                break;
            };
            match completion {
                Completion::Ack => {
                    self.acks_beyond -= 1;
                    self.ack_through = Some(next);
                    self.pending_acks += 1;
                }
                Completion::Settled => {}
                Completion::Abandoned => {
                    self.blocked = true;
                    break;
                }
            }
            self.run_end = next;
        }
    }

    /// How many acks a flush would send; those beyond the run only once it is stalled.
    fn pending(&self, stalled: bool) -> usize {
        self.pending_acks + if stalled { self.acks_beyond } else { 0 }
    }

    /// The acks to send now, as (tag, multiple): the run's, and if the run is stalled, every
    /// completion beyond it.
    fn take(&mut self, stalled: bool) -> Vec<(DeliveryTag, bool)> {
        let run = self.take_ack().map(|tag| (tag, true));
        let beyond = if stalled {
            self.take_acks_beyond_the_run()
        } else {
            Vec::new()
        };
        run.into_iter()
            .chain(beyond.into_iter().map(|tag| (tag, false)))
            .collect()
    }

    fn take_ack(&mut self) -> Option<DeliveryTag> {
        self.pending_acks = 0;
        self.ack_through.take()
    }

    /// The delivery that keeps completions beyond it out of the run, if any.
    fn blocking(&self) -> Option<DeliveryTag> {
        (!self.ahead.is_empty()).then_some(self.run_end + 1)
    }

    /// The completions beyond the run still to be acked, for acking one by one; from now on
    /// they count as settled, so the run passes them without acking them again.
    fn take_acks_beyond_the_run(&mut self) -> Vec<DeliveryTag> {
        let mut tags = Vec::new();
        self.acks_beyond = 0;
        for (tag, completion) in &mut self.ahead {
            if *completion == Completion::Ack {
                *completion = Completion::Settled;
                tags.push(*tag);
            }
        }
        tags
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// What the broker would see: every delivery's state after the acks the window sends.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Broker {
        Outstanding,
        Acked,
        SettledByCaller,
    }

    fn completion() -> impl Strategy<Value = Completion> {
        prop_oneof![
            8 => Just(Completion::Ack),
            1 => Just(Completion::Settled),
            1 => Just(Completion::Abandoned),
        ]
    }

    proptest! {
        /// However completions arrive and whenever flushes happen, each handled delivery is
        /// acked exactly once, a multiple ack never covers a delivery that is still running,
        /// abandoned or settled elsewhere, and its own tag is always outstanding (RabbitMQ
        /// closes the channel otherwise).
        #[test]
        fn every_handled_delivery_is_acked_exactly_once_and_nothing_else_is(
            kinds in prop::collection::vec(completion(), 1..60),
            order_seed in any::<u64>(),
            flushes in prop::collection::vec(0..3u8, 60),
        ) {
            let count = kinds.len() as u64;
            let mut order: Vec<u64> = (1..=count).collect();
            // A deterministic shuffle from the seed.
            let mut state = order_seed | 1;
            for i in (1..order.len()).rev() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                order.swap(i, (state % (i as u64 + 1)) as usize);
            }

            let mut broker = vec![Broker::Outstanding; count as usize + 1];
            let mut completed = vec![false; count as usize + 1];
            let mut acked_twice = false;
            let mut ack = |broker: &mut Vec<Broker>, completed: &[bool], tag: u64, multiple: bool| {
                assert_eq!(broker[tag as usize], Broker::Outstanding, "ack of a settled tag");
                let range = if multiple { 1..=tag } else { tag..=tag };
                for t in range {
                    match broker[t as usize] {
                        Broker::Outstanding => {
                            assert!(completed[t as usize], "delivery {t} acked while running");
                            assert_eq!(kinds[t as usize - 1], Completion::Ack, "delivery {t} is not to be acked");
                            broker[t as usize] = Broker::Acked;
                        }
                        Broker::Acked if !multiple => acked_twice = true,
                        _ => {}
                    }
                }
            };

            let mut window = Window::default();
            for (step, tag) in order.iter().enumerate() {
                let kind = kinds[*tag as usize - 1];
                completed[*tag as usize] = true;
                if kind == Completion::Settled {
                    broker[*tag as usize] = Broker::SettledByCaller;
                }
                window.complete(*tag, kind);
                // 0: no flush; 1: the run only; 2: a stalled run, with what is beyond it.
                if flushes[step] > 0 {
                    let stalled = flushes[step] == 2;
                    let pending = window.pending(stalled);
                    let acks = window.take(stalled);
                    let covered: usize = acks
                        .iter()
                        .map(|&(tag, multiple)| {
                            if multiple {
                                (1..=tag)
                                    .filter(|t| broker[*t as usize] == Broker::Outstanding)
                                    .count()
                            } else {
                                1
                            }
                        })
                        .sum();
                    prop_assert_eq!(pending, covered, "pending counts what a flush acks");
                    for (tag, multiple) in acks {
                        ack(&mut broker, &completed, tag, multiple);
                    }
                }
            }
            for (tag, multiple) in window.take(true) {
                ack(&mut broker, &completed, tag, multiple);
            }

            prop_assert!(!acked_twice);
            for tag in 1..=count {
                let expected = match kinds[tag as usize - 1] {
                    Completion::Ack => Broker::Acked,
                    Completion::Settled => Broker::SettledByCaller,
                    Completion::Abandoned => Broker::Outstanding,
                };
                prop_assert_eq!(broker[tag as usize], expected, "delivery {}", tag);
            }
        }
    }

    #[test]
    fn only_the_contiguous_run_from_the_oldest_delivery_is_acked() {
        let mut window = Window::default();
        window.complete(2, Completion::Ack);
        window.complete(3, Completion::Ack);
        assert_eq!(window.take_ack(), None, "delivery 1 is still running");

        window.complete(1, Completion::Ack);
        assert_eq!(window.pending_acks, 3);
        assert_eq!(window.take_ack(), Some(3));
        assert_eq!(window.take_ack(), None, "nothing is acked twice");
    }

    #[test]
    fn a_settled_delivery_is_never_the_tag_of_a_multiple_ack() {
        let mut window = Window::default();
        window.complete(1, Completion::Ack);
        window.complete(2, Completion::Settled);
        assert_eq!(window.take_ack(), Some(1));

        window.complete(3, Completion::Settled);
        assert_eq!(window.take_ack(), None);
        window.complete(4, Completion::Ack);
        assert_eq!(window.take_ack(), Some(4));
    }

    #[test]
    fn nothing_after_an_abandoned_delivery_joins_the_run() {
        let mut window = Window::default();
        window.complete(1, Completion::Ack);
        window.complete(2, Completion::Abandoned);
        window.complete(3, Completion::Ack);
        window.complete(4, Completion::Settled);
        window.complete(5, Completion::Ack);

        assert_eq!(window.take_ack(), Some(1));
        assert_eq!(window.take_acks_beyond_the_run(), [3, 5]);
    }

    #[test]
    fn completions_held_back_by_a_stalled_delivery_are_acked_one_by_one_and_only_once() {
        let mut window = Window::default();
        window.complete(2, Completion::Ack);
        window.complete(3, Completion::Ack);
        assert_eq!(window.blocking(), Some(1));
        assert_eq!(window.take_ack(), None);

        assert_eq!(window.take_acks_beyond_the_run(), [2, 3]);
        assert!(
            window.take_acks_beyond_the_run().is_empty(),
            "nothing is acked twice"
        );

        window.complete(1, Completion::Ack);
        window.complete(4, Completion::Ack);
        assert_eq!(window.blocking(), None);
        assert_eq!(
            window.take_ack(),
            Some(4),
            "1 and 4, past the acked 2 and 3"
        );
    }
}
