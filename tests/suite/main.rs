//! The template's test suite: one binary, so helpers and the shared default render are built
//! and rendered once.
//!
//! Needs cargo-generate 0.23 on PATH and, from the messaging tests on, RabbitMQ on
//! 127.0.0.1:5672; `ci/test` provides both.

mod api_docs;
mod chaos;
mod cluster;
mod exposure;
mod fuzz;
mod handler_options;
mod hooks;
mod http_abuse;
mod hub;
mod local_loop;
mod messaging;
mod observability;
mod probe;
mod project;
mod publishing;
mod render;
mod routing;
mod secrets;
mod settlement;
mod shipping;
mod tls;
mod upgrade;

use std::{path::PathBuf, sync::LazyLock};

use template_tests::{Render, Rendered};

/// The render every test of the default answers shares: `--name orders -d namespace=acme`.
static DEFAULT_RENDER: LazyLock<Rendered> = LazyLock::new(|| {
    Render::new("orders")
        .namespace("acme")
        .run()
        .unwrap_or_else(|failure| panic!("default render failed:\n{}", failure.output))
});

/// The default render's service binary, built once.
static DEFAULT_BINARY: LazyLock<PathBuf> = LazyLock::new(|| {
    DEFAULT_RENDER
        .cargo(&["build", "--locked"])
        .assert_success("cargo build of the default render");
    DEFAULT_RENDER.debug_binary()
});
