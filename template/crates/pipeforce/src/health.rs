//! Readiness: whether this instance should get work now.
//!
//! Liveness (`/health/live`) only says the process runs; Kubernetes restarts it when that fails.
//! Readiness (`/health/ready`) says the instance can do its job; Kubernetes stops sending it
//! traffic while it is not. Each part of the service that can be unable to work registers a
//! named [`Condition`] and flips it; the service is ready when every condition is.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, PoisonError},
};

/// The set of readiness conditions of one service. Cheap to clone: clones share the set.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    conditions: Arc<Mutex<BTreeMap<&'static str, bool>>>,
}

impl Readiness {
    /// Registers a condition under `name`, not ready until [`Condition::set`] says so.
    pub fn condition(&self, name: &'static str) -> Condition {
        self.lock().insert(name, false);
        Condition {
            name,
            readiness: self.clone(),
        }
    }

    /// Every condition with its state, and whether all of them are ready.
    pub fn report(&self) -> (bool, BTreeMap<&'static str, bool>) {
        let conditions = self.lock().clone();
        (conditions.values().all(|ready| *ready), conditions)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, bool>> {
        // A panic while holding this lock cannot leave the map half-written: every critical
        // section is a single insert or clone.
        self.conditions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
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
        self.readiness.lock().insert(self.name, ready);
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
}
