//! `deploy service`: starts (or updates) the service with the hub command `service.start`.
//!
//! `name` is the service name, `image` the project's image with the tag, `port` the HTTP port
//! the service listens on, `ingress` the service name (PIPEFORCE then serves it at
//! `https://<service>-<namespace>.pipeforce.net`), plus `replicas`, `env` (with the broker
//! credentials, see [`crate::broker_login`]), `imagePullSecret` when given and
//! `imagePullPolicy` (see [`crate::image`]). With `--wait-ready` it then waits until the
//! service is ready ([`crate::readiness`]).

use std::{collections::BTreeMap, process::ExitCode};

use pipeforce::{Config, HubClient, config::masked_url};
use serde::Serialize;

use crate::{
    Error, Target,
    cli::ServiceOptions,
    container_env,
    image::IMAGE_PULL_POLICY,
    names,
    readiness::{public_url, readiness_url, wait_ready},
    shown,
};

/// The parameters of `service.start`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ServiceStart<'a> {
    name: &'a str,
    image: &'a str,
    port: u16,
    ingress: &'a str,
    replicas: u32,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    env: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    image_pull_secret: Option<&'a str>,
    image_pull_policy: &'a str,
}

/// Starts the service, prints what it asked for and what the hub answered, and with
/// `--wait-ready` waits until the service is ready.
pub async fn deploy(
    hub: &HubClient,
    config: &Config,
    target: &Target,
    options: ServiceOptions,
) -> Result<ExitCode, Error> {
    let image = format!("{}:{}", target.image, options.image.tag);
    let env = container_env(&options.image, &image)?;
    let pull_secret = options.image.image_pull_secret();
    let service = &config.service;
    let service_url = options
        .service_url()
        .unwrap_or_else(|| public_url(service, &config.namespace));
    println!(
        "starting service {service} in namespace {}",
        config.namespace
    );
    println!("  image:    {image}");
    println!(
        "  pull:     {IMAGE_PULL_POLICY}, secret {}",
        pull_secret.unwrap_or("(none)")
    );
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
                image_pull_secret: pull_secret,
                image_pull_policy: IMAGE_PULL_POLICY,
            },
        )
        .await?;

    println!("the hub answered {}:\n{}", answer.status(), shown(&answer));
    if options.wait_ready {
        wait_ready(
            &readiness_url(&service_url),
            options.timeout(),
            options.poll(),
        )
        .await?;
    } else {
        println!("once running: {}", masked_url(&service_url));
    }
    Ok(ExitCode::SUCCESS)
}
