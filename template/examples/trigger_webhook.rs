//! Publishes a sample webhook event, like the Python template's `trigger_webhook.py`:
//!
//! ```sh
//! cargo run --example trigger_webhook -- [routing-key] [body]
//! ```
//!
//! The defaults, `pipeforce.webhook.foo.hoho` and the plain text `bodyOfWebhook`, reach
//! `HelloService::webhook` of a running service. The broker comes from the same
//! `PIPEFORCE_MESSAGING_*` variables the service reads.

use pipeforce::{Config, Publisher};

use {{crate_name}}::DEFAULTS;

#[tokio::main]
async fn main() -> Result<(), pipeforce::Error> {
    let mut args = std::env::args().skip(1);
    let routing_key = args
        .next()
        .unwrap_or_else(|| "pipeforce.webhook.foo.hoho".to_owned());
    let body = args.next().unwrap_or_else(|| "bodyOfWebhook".to_owned());

    let config = Config::from_env(DEFAULTS)?;
    let publisher = Publisher::connect(&config).await?;
    publisher.publish_text(&routing_key, &body).await?;
    println!(
        "published {body:?} to {} with routing key {routing_key:?}",
        publisher.exchange()
    );
    Ok(())
}
