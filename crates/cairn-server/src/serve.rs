//! The HTTP(S) server loop: axum's router on hyper, with the limits `axum::serve` does
//! not set. A client must send a request's headers within [`HEADER_TIMEOUT`] (also
//! the next request's on a kept-alive connection), and at most `--max-connections`
//! connections are served at once; past that, new ones wait in the listen backlog.
//! Together they keep a client that opens connections and sends nothing (slowloris)
//! from starving the others for longer than the timeout.

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a client may take to send a request's headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serve `app` on `listener`, at most `max_connections` connections at a time, until
/// `stop` fires; then stop accepting, let in-flight requests finish (kept-alive
/// connections close after their current request) and return.
pub async fn serve<L>(
    mut listener: L,
    app: axum::Router,
    max_connections: usize,
    stop: CancellationToken,
) where
    L: axum::serve::Listener,
{
    let permits = Arc::new(Semaphore::new(max_connections.max(1)));
    let connections = TaskTracker::new();
    loop {
        let permit = tokio::select! {
            _ = stop.cancelled() => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (io, _remote) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let service = TowerToHyperService::new(app.clone());
        let stop = stop.clone();
        connections.spawn(async move {
            // HTTP/1.1 only: sniffing for HTTP/2 would wait for a first byte before
            // the header timeout starts, which is what a silent client never sends.
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let mut conn = pin!(builder
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades());
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::trace!(error = %e, "connection ended");
                    }
                }
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}
