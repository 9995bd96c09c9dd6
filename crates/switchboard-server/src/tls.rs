//! TLS (rustls) with optional client certificates.
//!
//! A TLS connection goes to axum with a [`ClientAddr`]: the peer's
//! address and, for a verified client certificate, the identity it names
//! (its subject's common name: an agent id). TLS handshakes run on their
//! own tasks of the serving thread the connection was handed to, so a
//! slow client never holds up the others; finished connections wait in a
//! bounded queue for the server to take them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::serve::Listener;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use switchboard_api::ClientAddr;
use switchboard_core::FieldError;
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use crate::ServerError;
use crate::serving::{Handed, Held};

/// How the hub serves TLS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain HTTP.
    #[default]
    Off,
    /// A certificate chain and key from PEM files.
    Files {
        /// The certificate chain (PEM).
        cert: PathBuf,
        /// The private key (PEM: PKCS#8, PKCS#1 or SEC1).
        key: PathBuf,
    },
    /// A self-signed certificate for localhost, made on first start and
    /// kept under the data directory (development only).
    SelfSigned,
}

/// TLS settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsConfig {
    /// Where the certificate comes from.
    pub mode: TlsMode,
    /// CA certificates (PEM) that sign agents' client certificates; when
    /// set, a client may present one, and an agent is then known by the
    /// certificate's common name.
    pub client_ca: Option<PathBuf>,
    /// Refuse connections without a client certificate.
    pub require_client_cert: bool,
}

impl TlsConfig {
    /// Whether TLS is on.
    pub fn enabled(&self) -> bool {
        self.mode != TlsMode::Off
    }
}

/// Where the self-signed certificate and key live under the data directory.
pub fn self_signed_paths(data_dir: &Path) -> (PathBuf, PathBuf) {
    let dir = data_dir.join("tls");
    (dir.join("self-signed.crt"), dir.join("self-signed.key"))
}

fn bad(field: &str, reason: impl Into<String>) -> ServerError {
    ServerError::Config(vec![FieldError::new(field, reason)])
}

fn read_certs(path: &Path, field: &str) -> Result<Vec<CertificateDer<'static>>, ServerError> {
    let pem = std::fs::read(path)
        .map_err(|e| bad(field, format!("cannot read {}: {e}", path.display())))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| {
            bad(
                field,
                format!("{}: not PEM certificates: {e}", path.display()),
            )
        })?;
    if certs.is_empty() {
        return Err(bad(
            field,
            format!("{} holds no certificate", path.display()),
        ));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, ServerError> {
    let pem = std::fs::read(path).map_err(|e| {
        bad(
            "tls.key_file",
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| bad("tls.key_file", format!("{}: {e}", path.display())))?
        .ok_or_else(|| {
            bad(
                "tls.key_file",
                format!("{} holds no private key", path.display()),
            )
        })
}

/// Makes (once) the self-signed certificate for development.
fn ensure_self_signed(data_dir: &Path) -> Result<(PathBuf, PathBuf), ServerError> {
    let (cert, key) = self_signed_paths(data_dir);
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    let names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let made = rcgen::generate_simple_self_signed(names)
        .map_err(|e| bad("tls.self_signed", format!("cannot make a certificate: {e}")))?;
    if let Some(dir) = cert.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&cert, made.cert.pem())?;
    write_private(&key, &made.signing_key.serialize_pem())?;
    tracing::warn!(cert = %cert.display(), "made a self-signed TLS certificate for localhost (development only); clients must trust this file");
    Ok((cert, key))
}

#[cfg(unix)]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::write(path, text)
}

/// The rustls configuration these settings describe.
pub(crate) fn server_config(
    tls: &TlsConfig,
    data_dir: &Path,
) -> Result<Arc<rustls::ServerConfig>, ServerError> {
    let (cert, key) = match &tls.mode {
        TlsMode::Off => return Err(bad("tls", "TLS is off")),
        TlsMode::Files { cert, key } => (cert.clone(), key.clone()),
        TlsMode::SelfSigned => ensure_self_signed(data_dir)?,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("tls", e.to_string()))?;
    let builder = match &tls.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in read_certs(ca, "tls.client_ca_file")? {
                roots
                    .add(c)
                    .map_err(|e| bad("tls.client_ca_file", e.to_string()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if tls.require_client_cert {
                verifier.build()
            } else {
                verifier.allow_unauthenticated().build()
            }
            .map_err(|e| bad("tls.client_ca_file", e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(read_certs(&cert, "tls.cert_file")?, read_key(&key)?)
        .map_err(|e| {
            bad(
                "tls.key_file",
                format!("the key does not fit the certificate: {e}"),
            )
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

pub(crate) async fn accept_failed(error: std::io::Error) {
    // Out of file descriptors and the like: wait instead of spinning.
    tracing::warn!(%error, "accept failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// Handshakes that may run at once.
const HANDSHAKES: usize = 1024;
/// How long a client may take to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS connections, handshaken off the accept loop.
pub(crate) struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<Held>, ClientAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Starts handshaking the connections `handed` gives; stops when
    /// `stop` is cancelled.
    pub(crate) fn start(
        mut handed: Handed,
        config: Arc<rustls::ServerConfig>,
        stop: CancellationToken,
    ) -> Self {
        let local = handed
            .local_addr()
            .map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |a| a.addr);
        let (tx, ready) = mpsc::channel(256);
        let acceptor = TlsAcceptor::from(config);
        let slots = Arc::new(Semaphore::new(HANDSHAKES));
        tokio::spawn(async move {
            loop {
                let (stream, addr) = tokio::select! {
                    () = stop.cancelled() => break,
                    a = handed.accept() => a,
                };
                let addr = addr.addr;
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    break;
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let _slot = slot;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let identity = client_identity(&tls);
                            let _ = tx.send((tls, ClientAddr::tls(addr, identity))).await;
                        }
                        Ok(Err(error)) => tracing::debug!(%addr, %error, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
                    }
                });
            }
        });
        Self { ready, local }
    }
}

/// The common name of a verified client certificate.
fn client_identity(tls: &TlsStream<Held>) -> Option<Arc<str>> {
    let der = tls.get_ref().1.peer_certificates()?.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
    Some(cn.into())
}

impl Listener for TlsListener {
    type Io = TlsStream<Held>;
    type Addr = ClientAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The acceptor stopped (shutdown): wait for the server to stop
            // asking.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(ClientAddr::tls(self.local, None))
    }
}
