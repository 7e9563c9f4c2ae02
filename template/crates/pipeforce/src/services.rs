//! The registry the service crate's `register` function fills: its services, and the shared
//! handles they are built with.

use std::sync::Arc;

use crate::{
    hub::HubClient,
    messaging::{Handler, Publisher, Service},
};

/// The services of this process.
pub struct Services {
    handlers: Vec<Handler>,
    publisher: Publisher,
    hub: HubClient,
}

impl Services {
    pub(crate) fn new(publisher: Publisher, hub: HubClient) -> Self {
        Self {
            handlers: Vec::new(),
            publisher,
            hub,
        }
    }

    /// Adds a service: its `#[event]` methods start receiving messages.
    pub fn add<S: Service>(&mut self, service: S) -> &mut Self {
        self.add_shared(Arc::new(service))
    }

    /// Adds a service that other parts of the process (e.g. HTTP endpoints) share.
    pub fn add_shared<S: Service>(&mut self, service: Arc<S>) -> &mut Self {
        self.handlers.extend(service.handlers());
        self
    }

    /// Publishes events and sends requests; services keep a clone to publish on their own.
    pub fn publisher(&self) -> Publisher {
        self.publisher.clone()
    }

    /// Runs pipelines and commands on the PIPEFORCE hub; services keep a clone.
    pub fn hub(&self) -> HubClient {
        self.hub.clone()
    }

    pub(crate) fn into_handlers(self) -> Vec<Handler> {
        self.handlers
    }
}
