//! An OTLP/HTTP trace receiver (`http/protobuf`, the service's default protocol) for
//! `ci/bench`: it takes every span a service exports, so the benchmark measures a service that
//! really exports, and prints how many spans it got when it is stopped (SIGTERM or Ctrl-C).
//!
//! `bench_otlp_sink --port P`

use template_tests::otlp::OtlpReceiver;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let port = match (args.next().as_deref(), args.next()) {
        (Some("--port"), Some(port)) => port.parse().expect("--port takes a port number"),
        _ => {
            eprintln!("usage: bench_otlp_sink --port P");
            std::process::exit(2);
        }
    };
    let receiver = OtlpReceiver::start_counting(port).await;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    println!("spans_received={}", receiver.count());
}
