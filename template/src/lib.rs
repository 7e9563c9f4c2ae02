//! The {{project-name}} service of the PIPEFORCE namespace {{namespace}}.
//!
//! `main.rs` only wires things together; everything here is a library so that the tests in
//! `tests/` start the service exactly the way `main` does.

pub mod service;

/// The answers given when this project was generated. At run time the environment wins:
/// PIPEFORCE injects `PIPEFORCE_SERVICE` and `PIPEFORCE_NAMESPACE`, and `PIPEFORCE_HTTP_PORT`
/// overrides the port.
pub const DEFAULTS: pipeforce::Defaults = pipeforce::Defaults {
    service: "{{project-name}}",
    namespace: "{{namespace}}",
    http_port: {{http_port}},
    version: env!("CARGO_PKG_VERSION"),
};
