//! HTTPS for the API: a listener that hands axum only connections whose TLS handshake
//! finished. Handshakes run on their own tasks under a deadline, so a client that
//! connects and says nothing holds one socket for a few seconds, never the accept
//! loop.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument as _;

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);

/// The HTTPS server's configuration, replaceable while it serves (certificate
/// reload): each handshake uses the one current when it starts.
pub type HttpsConfig = Arc<std::sync::RwLock<Arc<rustls::ServerConfig>>>;

/// Accepted, handshaken connections.
pub struct HttpsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    accepting: tokio::task::AbortHandle,
}

impl HttpsListener {
    pub fn new(tcp: TcpListener, config: HttpsConfig) -> io::Result<HttpsListener> {
        let local = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        let accepting = tokio::spawn(
            async move {
                loop {
                    let (stream, remote) = match tcp.accept().await {
                        Ok(accepted) => accepted,
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let acceptor =
                        TlsAcceptor::from(config.read().unwrap_or_else(|p| p.into_inner()).clone());
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        match tokio::time::timeout(HANDSHAKE_DEADLINE, acceptor.accept(stream))
                            .await
                        {
                            Ok(Ok(tls)) => {
                                let _ = tx.send((tls, remote)).await;
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(%remote, error = %e, "TLS handshake failed")
                            }
                            Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                        }
                    });
                }
            }
            .instrument(tracing::info_span!("https_accept", %local)),
        )
        .abort_handle();
        Ok(HttpsListener {
            ready,
            local,
            accepting,
        })
    }
}

/// The accept loop ends with the listener (when the server stops).
impl Drop for HttpsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl axum::serve::Listener for HttpsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accept loop is gone only once the listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}
