use pipeforce::{App, Config, shutdown, telemetry};

use {{crate_name}}::{DEFAULTS, service};

#[tokio::main]
async fn main() -> Result<(), pipeforce::Error> {
    let config = Config::from_env(DEFAULTS)?;
    // Flushes the spans still queued for export when `main` returns.
    let _telemetry = telemetry::init(&config)?;
    let app = App::build(config, service::register).await?;
    app.run_until_stopped(shutdown::signal()).await
}
