//! Readiness: whether this instance should get work now.
//!
//! Liveness (`/health/live`) only says the process runs; Kubernetes restarts it when that fails.
//! Readiness (`/health/ready`) says the instance can do its job; Kubernetes stops sending it
//! traffic while it is not. Each part of the service that can be unable to work registers a
//! named [`Condition`] and flips it; the service is ready when every condition is. Today that
//! is `messaging`: up while the service consumes from its queue.

use std::collections::BTreeMap;

use tokio::sync::watch;

/// The set of readiness conditions of one service. Cheap to clone: clones share the set.
#[derive(Debug, Clone)]
pub struct Readiness {
    conditions: watch::Sender<BTreeMap<&'static str, bool>>,
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
        self.conditions.send_modify(|conditions| {
            conditions.insert(name, false);
        });
        Condition {
            name,
            readiness: self.clone(),
        }
    }

    /// Every condition with its state, and whether all of them are ready.
    pub fn report(&self) -> (bool, BTreeMap<&'static str, bool>) {
        let conditions = self.conditions.borrow().clone();
        (all_ready(&conditions), conditions)
    }

    /// Waits until every condition is ready.
    pub async fn wait_until_ready(&self) {
        let mut changes = self.conditions.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = changes.wait_for(all_ready).await;
    }
}

fn all_ready(conditions: &BTreeMap<&'static str, bool>) -> bool {
    conditions.values().all(|ready| *ready)
}

/// One named readiness condition, owned by the part of the service it describes.
#[derive(Debug, Clone)]
pub struct Condition {
    name: &'static str,
    readiness: Readiness,
}

impl Condition {
    /// Records whether this part of the service can do its work now.
    pub fn set(&self, ready: bool) {
        self.readiness
            .conditions
            .send_if_modified(|conditions| conditions.insert(self.name, ready) != Some(ready));
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
