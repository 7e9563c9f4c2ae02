//! The HTTP server loop: the routes as a hyper HTTP/1 service, with the limits warp's own
//! `serve` leaves out.
//!
//! warp 0.4 runs hyper without a timer, so hyper's header-read timeout never fires and a
//! client that never finishes its request head holds its connection (a task, a socket and a
//! buffer) forever: a few thousand such clients exhaust the service. Here every connection
//! has [`HEADER_READ_TIMEOUT`] to send each request head. Connection errors are the clients'
//! (a reset, a malformed or oversized head): they are logged at debug level, so a client
//! cannot fill the log with errors.

use std::{future::Future, time::Duration};

use hyper::server::conn::http1;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use tokio::net::TcpListener;
use tracing::{debug, warn};

use super::{Endpoints, routes};

/// How long a client has to send a request head, from the connection's start or the end of
/// its previous request.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `endpoints` on `listener` until `stop` completes, then stops accepting and waits
/// for the requests in flight (the caller bounds that wait).
pub(crate) async fn serve(
    listener: TcpListener,
    endpoints: Endpoints,
    stop: impl Future<Output = ()>,
) {
    let service = warp::service(routes(endpoints));
    let connections = GracefulShutdown::new();
    let mut stop = std::pin::pin!(stop);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors, most likely: give in-flight requests a moment
                    // to release some instead of spinning.
                    warn!(%error, "cannot accept an HTTP connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .serve_connection(
                TokioIo::new(stream),
                TowerToHyperService::new(service.clone()),
            );
        let connection = connections.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                debug!(%error, "HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    connections.shutdown().await;
}
