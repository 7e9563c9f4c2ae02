//! Readiness: whether this instance should get work now.
//!
//! Liveness (`/health/live`) only says the process runs; Kubernetes restarts it when that fails.
//! Readiness (`/health/ready`) says the instance can do its job; Kubernetes stops sending it
//! traffic while it is not. Each part of the service that can be unable to work registers a
//! named [`Condition`] and flips it; the service is ready when every condition is. Today that
//! is `messaging`: up while the service consumes from its queue.
//!
//! A part can also report a check that is shown but does not decide readiness
//! ([`Readiness::informational`]): `publishing`, down while RabbitMQ blocks publishers.

use std::collections::BTreeMap;

use tokio::sync::watch;

/// The set of readiness conditions of one service. Cheap to clone: clones share the set.
#[derive(Debug, Clone)]
pub struct Readiness {
    conditions: watch::Sender<BTreeMap<&'static str, Check>>,
}

/// One condition's state, and whether it decides readiness or is only shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Check {
    up: bool,
    decides: bool,
}

impl Default for Readiness {
    fn default() -> Self {
        Self {
            conditions: watch::Sender::new(BTreeMap::new()),
        }
    }
}

impl Readiness {
    /// Registers a condition under `name`, not ready until [`Condition::set`] says so.
    pub fn condition(&self, name: &'static str) -> Condition {
        self.register(
            name,
            Check {
                up: false,
                decides: true,
            },
        )
    }

    /// Registers a check under `name` that `/health/ready` shows, up until
    /// [`Condition::set`] says otherwise, but that does not decide readiness: for a state
    /// that taking the instance out of the load balancer would not help.
    pub fn informational(&self, name: &'static str) -> Condition {
        self.register(
            name,
            Check {
                up: true,
                decides: false,
            },
        )
    }

    fn register(&self, name: &'static str, check: Check) -> Condition {
        self.conditions.send_modify(|conditions| {
            conditions.insert(name, check);
        });
        Condition {
            name,
            readiness: self.clone(),
        }
    }

    /// Every condition and check with its state, and whether the service is ready.
    pub fn report(&self) -> (bool, BTreeMap<&'static str, bool>) {
        let conditions = self.conditions.borrow();
        let states = conditions
            .iter()
            .map(|(name, check)| (*name, check.up))
            .collect();
        (all_ready(&conditions), states)
    }

    /// Waits until every condition is ready.
    pub async fn wait_until_ready(&self) {
        let mut changes = self.conditions.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = changes.wait_for(all_ready).await;
    }
}

fn all_ready(conditions: &BTreeMap<&'static str, Check>) -> bool {
    conditions.values().all(|check| check.up || !check.decides)
}

/// One named readiness condition, owned by the part of the service it describes.
#[derive(Debug, Clone)]
pub struct Condition {
    name: &'static str,
    readiness: Readiness,
}

impl Condition {
    /// Records whether this part of the service can do its work now.
    pub fn set(&self, up: bool) {
        self.readiness.conditions.send_if_modified(|conditions| {
            conditions
                .get_mut(self.name)
                .is_some_and(|check| std::mem::replace(&mut check.up, up) != up)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_without_conditions_is_ready() {
        assert!(Readiness::default().report().0);
    }

    #[test]
    fn the_service_is_ready_only_when_every_condition_is() {
        let readiness = Readiness::default();
        let messaging = readiness.condition("messaging");
        let cache = readiness.condition("cache");
        assert!(!readiness.report().0, "new conditions start not ready");

        messaging.set(true);
        assert!(!readiness.report().0);

        cache.set(true);
        let (ready, conditions) = readiness.report();
        assert!(ready);
        assert_eq!(conditions.len(), 2);

        messaging.set(false);
        assert!(!readiness.report().0);
    }

    #[test]
    fn an_informational_check_is_shown_but_does_not_decide() {
        let readiness = Readiness::default();
        let publishing = readiness.informational("publishing");
        assert!(readiness.report().0, "informational checks start up");

        publishing.set(false);
        let (ready, checks) = readiness.report();
        assert!(ready);
        assert_eq!(checks.get("publishing"), Some(&false));
    }

    #[tokio::test]
    async fn waiting_ends_when_the_last_condition_becomes_ready() {
        let readiness = Readiness::default();
        let messaging = readiness.condition("messaging");
        let waiting = tokio::spawn({
            let readiness = readiness.clone();
            async move { readiness.wait_until_ready().await }
        });

        messaging.set(true);

        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("readiness was awaited")
            .unwrap();
    }
}
