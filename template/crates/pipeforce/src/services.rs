//! The registry the service crate's `register` function fills: its services' message
//! handlers and HTTP endpoints, what they publish, and the shared handles they are built with.

use std::sync::Arc;

use warp::{Filter, Rejection, Reply};

use crate::{
    http::Routes,
    hub::HubClient,
    messaging::{
        __private::{BodyOf, BodyOfSchema as _},
        Handler, Publisher, Service,
        asyncapi::DeclaredPublish,
    },
};

/// The services of this process.
pub struct Services {
    handlers: Vec<Handler>,
    routes: Vec<Routes>,
    apis: Vec<utoipa::openapi::OpenApi>,
    publishes: Vec<DeclaredPublish>,
    publisher: Publisher,
    hub: HubClient,
}

/// What [`Services`] collected, for the app to run.
pub(crate) struct Registered {
    pub(crate) handlers: Vec<Handler>,
    pub(crate) routes: Vec<Routes>,
    pub(crate) apis: Vec<utoipa::openapi::OpenApi>,
    pub(crate) publishes: Vec<DeclaredPublish>,
}

impl Services {
    pub(crate) fn new(publisher: Publisher, hub: HubClient) -> Self {
        Self {
            handlers: Vec::new(),
            routes: Vec::new(),
            apis: Vec::new(),
            publishes: Vec::new(),
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

    /// Adds HTTP endpoints: `routes` serves them, `api` documents them in `/openapi.json`
    /// (usually `MyApi::openapi()` of a `#[derive(utoipa::OpenApi)]` listing their
    /// `#[utoipa::path]` functions). Paths must not clash with the framework's.
    pub fn add_routes<F, R>(&mut self, routes: F, api: utoipa::openapi::OpenApi) -> &mut Self
    where
        F: Filter<Extract = (R,), Error = Rejection> + Clone + Send + Sync + 'static,
        R: Reply + 'static,
    {
        self.routes.push(routes.map(Reply::into_response).boxed());
        self.apis.push(api);
        self
    }

    /// Declares that the service publishes `T` with `routing_key`, for `/asyncapi.json`.
    /// Declaring is documentation only: publishing works without it.
    pub fn publishes<T: utoipa::ToSchema + 'static>(&mut self, routing_key: &str) -> &mut Self {
        self.publishes.push(DeclaredPublish {
            routing_key: routing_key.to_owned(),
            body: (&BodyOf::<T>::new()).doc(),
        });
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

    pub(crate) fn into_registered(self) -> Registered {
        Registered {
            handlers: self.handlers,
            routes: self.routes,
            apis: self.apis,
            publishes: self.publishes,
        }
    }
}
