//! `deploy service`: starts (or updates) the service with the hub command `service.start`.
//!
//! `name` is the service name, `image` the project's image with the tag, `port` the HTTP port
//! the service listens on, `ingress` the service name (PIPEFORCE then serves it at
//! `https://<service>-<namespace>.pipeforce.net`), plus `replicas` and `env`.

use std::{collections::BTreeMap, process::ExitCode};

use pipeforce::{Config, HubClient, config::masked_url};
use serde::Serialize;

use crate::{Error, Target, cli::ServiceOptions, names, shown};

/// The parameters of `service.start`.
#[derive(Serialize)]
struct ServiceStart<'a> {
    name: &'a str,
    image: &'a str,
    port: u16,
    ingress: &'a str,
    replicas: u32,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    env: &'a BTreeMap<String, String>,
}

/// Starts the service and prints what it asked for and what the hub answered.
pub async fn deploy(
    hub: &HubClient,
    config: &Config,
    target: &Target,
    options: ServiceOptions,
) -> Result<ExitCode, Error> {
    let image = format!("{}:{}", target.image, options.image.tag);
    let env = options.image.env();
    let service = &config.service;
    println!(
        "starting service {service} in namespace {}",
        config.namespace
    );
    println!("  image:    {image}");
    println!("  port:     {}", target.http_port);
    println!("  replicas: {}", options.replicas);
    println!("  env:      {}", names(&env));
    println!("  hub:      {}", masked_url(hub.base_url()));

    let answer = hub
        .run_command(
            "service.start",
            &ServiceStart {
                name: service,
                image: &image,
                port: target.http_port,
                ingress: service,
                replicas: options.replicas,
                env: &env,
            },
        )
        .await?;

    println!("the hub answered {}:\n{}", answer.status(), shown(&answer));
    println!(
        "once running: https://{service}-{}.pipeforce.net",
        config.namespace
    );
    Ok(ExitCode::SUCCESS)
}
