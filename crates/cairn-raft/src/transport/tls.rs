//! Mutual TLS on the peer port: both ends show a certificate of the cluster's CA, and a
//! certificate names the node it belongs to (`node-<id>.cairn` among its DNS names), so
//! a connection can speak only for the node its certificate names.
//!
//! The dialling side asks for its peer by that name, not by address, so it reaches
//! the node it meant even through a proxy or a NAT; the accepting side checks the name
//! against the id the connection's hello claims ([`PeerTls::certifies`]). This module
//! loads and checks the material; it never decides what a connection may do.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector, TlsStream};

use cairn_store::NodeId;

/// What can be wrong with TLS material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what} {path}: {why}")]
    File {
        what: &'static str,
        path: String,
        why: String,
    },
    #[error("TLS setup: {0}")]
    Setup(String),
}

/// The DNS name a node's certificate carries to say which node it is.
pub fn node_name(id: NodeId) -> String {
    format!("node-{id}.cairn")
}

/// A node's TLS material, loaded and checked: the CA, its certificate chain and key.
#[derive(Clone)]
pub struct TlsMaterial {
    pub ca: Vec<CertificateDer<'static>>,
    pub chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
}

/// Paths only: the key is never shown.
impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("ca_certificates", &self.ca.len())
            .field("chain", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl TlsMaterial {
    /// Read PEM files: the CA certificate(s), this node's certificate chain, its key.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<TlsMaterial, TlsError> {
        let file = |what, path: &Path, why: String| TlsError::File {
            what,
            path: path.display().to_string(),
            why,
        };
        let certs = |what, path: &Path| -> Result<Vec<CertificateDer<'static>>, TlsError> {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| file(what, path, e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| file(what, path, e.to_string()))?;
            if certs.is_empty() {
                return Err(file(what, path, "holds no PEM certificate".into()));
            }
            Ok(certs)
        };
        let material = TlsMaterial {
            ca: certs("CA certificate file", ca)?,
            chain: certs("certificate file", cert)?,
            key: Arc::new(
                PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| file("key file", key, e.to_string()))?,
            ),
        };
        // Fail at start, not at the first connection.
        material.server_config(false)?;
        material.client_config()?;
        Ok(material)
    }

    fn roots(&self) -> Result<rustls::RootCertStore, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for ca in &self.ca {
            roots
                .add(ca.clone())
                .map_err(|e| TlsError::Setup(format!("the CA certificate: {e}")))?;
        }
        Ok(roots)
    }

    /// A server configuration presenting this node's certificate; with
    /// `client_certificates`, a client must present one of the CA's too.
    pub fn server_config(
        &self,
        client_certificates: bool,
    ) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let provider = provider();
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Setup(e.to_string()))?;
        let builder = if client_certificates {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(self.roots()?),
                provider,
            )
            .build()
            .map_err(|e| TlsError::Setup(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let config = builder
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| TlsError::Setup(format!("the certificate and key: {e}")))?;
        Ok(Arc::new(config))
    }

    /// A client configuration trusting only the CA and presenting this node's
    /// certificate.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Setup(e.to_string()))?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| TlsError::Setup(format!("the certificate and key: {e}")))?;
        Ok(Arc::new(config))
    }

    /// Whether this node's own certificate names node `id`.
    pub fn names_node(&self, id: NodeId) -> bool {
        self.chain.first().is_some_and(|c| certifies(c, id))
    }
}

/// One crypto provider for every TLS configuration (ring: it builds with the C
/// compiler alone).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Whether `cert` is valid for node `id`'s name. Its chain was verified by the
/// handshake; this checks only whose it is.
pub fn certifies(cert: &CertificateDer<'_>, id: NodeId) -> bool {
    let Ok(name) = ServerName::try_from(node_name(id)) else {
        return false;
    };
    webpki::EndEntityCert::try_from(cert)
        .is_ok_and(|end| end.verify_is_valid_for_subject_name(&name).is_ok())
}

/// The peer port's TLS: dial and accept with mutual authentication. Clones share
/// their material, so [`PeerTls::reload`] on any of them reaches every connection
/// made afterwards (live ones keep what they were opened with).
#[derive(Clone)]
pub struct PeerTls {
    current: Arc<std::sync::RwLock<(TlsConnector, TlsAcceptor)>>,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerTls")
    }
}

impl PeerTls {
    pub fn new(material: &TlsMaterial) -> Result<PeerTls, TlsError> {
        Ok(PeerTls {
            current: Arc::new(std::sync::RwLock::new(Self::build(material)?)),
        })
    }

    fn build(material: &TlsMaterial) -> Result<(TlsConnector, TlsAcceptor), TlsError> {
        Ok((
            TlsConnector::from(material.client_config()?),
            TlsAcceptor::from(material.server_config(true)?),
        ))
    }

    /// Use `material` (a renewed certificate, a new CA) for every later connection.
    pub fn reload(&self, material: &TlsMaterial) -> Result<(), TlsError> {
        let built = Self::build(material)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = built;
        Ok(())
    }

    fn now(&self) -> (TlsConnector, TlsAcceptor) {
        // Only a whole pair is ever written, so a poisoned lock still holds one.
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Open TLS on a dialled connection to node `peer`: its certificate must name it.
    pub(super) async fn dial(&self, tcp: TcpStream, peer: NodeId) -> io::Result<PeerStream> {
        let name = ServerName::try_from(node_name(peer)).map_err(io::Error::other)?;
        let tls = self.now().0.connect(name, tcp).await?;
        Ok(PeerStream::Tls(Box::new(TlsStream::Client(tls))))
    }

    /// Open TLS on an accepted connection: the stream and the peer's certificate.
    pub(super) async fn accept(
        &self,
        tcp: TcpStream,
    ) -> io::Result<(PeerStream, CertificateDer<'static>)> {
        let tls = self.now().1.accept(tcp).await?;
        let cert = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .cloned()
            .ok_or_else(|| io::Error::other("the peer showed no certificate"))?;
        Ok((PeerStream::Tls(Box::new(TlsStream::Server(tls))), cert))
    }
}

/// A peer connection, plain or under TLS.
pub enum PeerStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for PeerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PeerStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            PeerStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            PeerStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            PeerStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PeerStream::Plain(s) => Pin::new(s).poll_flush(cx),
            PeerStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PeerStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            PeerStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
