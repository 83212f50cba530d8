//! TLS for the gRPC and HTTP servers (rustls), from a PEM certificate chain and key. The
//! process's calls to its own services do not leave it (see `serve::in_process`), so they need
//! no TLS.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::debug;

/// A certificate and key, read once at start.
#[derive(Clone)]
pub struct Tls {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    acceptor: TlsAcceptor,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Tls {
    pub fn load(cert: &Path, key: &Path) -> anyhow::Result<Self> {
        let cert_pem =
            std::fs::read(cert).with_context(|| format!("--tls-cert {}", cert.display()))?;
        let key_pem = std::fs::read(key).with_context(|| format!("--tls-key {}", key.display()))?;
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow!("--tls-cert {}: {e}", cert.display()))?;
        if chain.is_empty() {
            anyhow::bail!("--tls-cert {} holds no certificate", cert.display());
        }
        let private = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| anyhow!("--tls-key {}: {e}", key.display()))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, private)
            .context("--tls-cert and --tls-key do not make a certificate and its key")?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            cert_pem,
            key_pem,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// The gRPC server's TLS settings.
    pub fn grpc_server(&self) -> tonic::transport::ServerTlsConfig {
        tonic::transport::ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(
            &self.cert_pem,
            &self.key_pem,
        ))
    }

    /// The HTTP listener: TLS connections accepted on `listener`.
    pub fn http_listener(&self, listener: TcpListener) -> TlsListener {
        TlsListener {
            listener,
            acceptor: self.acceptor.clone(),
        }
    }
}

/// TLS connections for the HTTP server. A handshake that fails or stalls drops that
/// connection only.
pub struct TlsListener {
    listener: TcpListener,
    acceptor: TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, addr) = axum::serve::Listener::accept(&mut self.listener).await;
            let handshake = self.acceptor.accept(stream);
            match tokio::time::timeout(Duration::from_secs(10), handshake).await {
                Ok(Ok(tls)) => return (tls, addr),
                Ok(Err(err)) => debug!(error = %err, "tls handshake failed"),
                Err(_) => debug!("tls handshake timed out"),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}
