//! TLS on the wire port and the admin port: the `[tls]` files, the rustls server
//! configuration built from them (ring provider), its reload on SIGHUP, and the accept step
//! that refuses plaintext.
//!
//! Bounds and behaviour at them:
//! - the TLS handshake (and the wait for its first byte) is bounded by `hello_timeout_ms` on
//!   the wire port and by `admin.header_read_timeout_ms` on the admin port; a connection that
//!   has not finished it by then is closed and counted in `weir_tls_handshake_failures_total`.
//! - a client whose first byte is not a TLS handshake record (plain Weir frames, plain HTTP)
//!   gets no answer: the connection is half-closed at once and its input discarded until the
//!   client closes (at most 500 ms, so it reads a clean close rather than a reset), counted in
//!   `weir_tls_plaintext_refused_total`, and logged at most once a second.
//! - a reload ([`TlsServer::reload`]) re-reads every file; if any is missing or invalid the
//!   configuration in use is kept and the error says which file and why. Open connections
//!   are never touched: only handshakes after the reload see the new certificate.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::metrics::Metrics;

/// The first byte of a TLS handshake record (a ClientHello starts with it).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// How long a refused plaintext connection is drained before it is closed (within the
/// handshake timeout), so the client reads a clean close instead of a reset.
const PLAINTEXT_LINGER: Duration = Duration::from_millis(500);

/// `[tls]`: the certificate the broker presents on both ports, and optionally the CA that
/// client certificates must chain to (mutual TLS). When set, both ports refuse plaintext.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the broker's certificate, followed by any intermediates (a chain).
    pub cert_file: PathBuf,
    /// PEM file with the certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM file with the CA certificates a client certificate must chain to. Set, a client
    /// without a valid certificate fails the handshake; unset, no client certificate is asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca_file: Option<PathBuf>,
}

/// Why the TLS configuration could not be built: names the file and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("tls.{field} {}: {reason}", path.display())]
pub struct TlsError {
    /// The `[tls]` field naming the file (`cert_file`, `key_file`, `client_ca_file`).
    pub field: &'static str,
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub reason: String,
}

impl TlsError {
    fn new(field: &'static str, path: &Path, reason: impl ToString) -> Self {
        TlsError {
            field,
            path: path.to_owned(),
            reason: reason.to_string(),
        }
    }
}

/// The broker's TLS server configuration, shared by both ports and replaced whole by
/// [`TlsServer::reload`].
#[derive(Debug)]
pub struct TlsServer {
    files: TlsConfig,
    current: RwLock<Arc<ServerConfig>>,
    /// The plaintext-refused log line, at most once a second.
    plaintext_log: OncePerSecond,
}

impl TlsServer {
    /// Reads and checks every file of `files`; the error names the first bad one.
    pub fn load(files: &TlsConfig) -> Result<Self, TlsError> {
        let config = build(files)?;
        Ok(TlsServer {
            files: files.clone(),
            current: RwLock::new(Arc::new(config)),
            plaintext_log: OncePerSecond::new(),
        })
    }

    /// Re-reads the files (the certificate and key rotated in place, a new client CA); new
    /// handshakes use them, open connections keep theirs. On error the configuration in use
    /// is kept, and the error names the file.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = Arc::new(build(&self.files)?);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = config;
        Ok(())
    }

    /// The files this configuration is read from.
    pub fn files(&self) -> &TlsConfig {
        &self.files
    }

    /// An acceptor with the configuration in use now.
    fn acceptor(&self) -> TlsAcceptor {
        let config = self.current.read().unwrap_or_else(|e| e.into_inner());
        TlsAcceptor::from(Arc::clone(&config))
    }

    /// Runs the server side of the handshake on `socket` within `timeout`. A first byte that
    /// is not a TLS handshake record (plaintext) closes the connection at once; both outcomes
    /// are counted in `metrics` (see the module docs). `None`: the connection is done.
    pub(crate) async fn accept(
        &self,
        socket: TcpStream,
        peer: SocketAddr,
        port: &'static str,
        timeout: Duration,
        metrics: &Metrics,
    ) -> Option<TlsStream<TcpStream>> {
        let acceptor = self.acceptor();
        let handshake = async {
            let mut first = [0u8; 1];
            match socket.peek(&mut first).await {
                Ok(1) if first[0] == TLS_HANDSHAKE_RECORD => {}
                Ok(1) => {
                    // Counted before the close, which the client may see at once.
                    self.refuse_plaintext(peer, port, metrics);
                    close_gently(socket).await;
                    return Err(Refused::Closed);
                }
                Ok(_) => return Err(Refused::Closed),
                Err(e) => return Err(Refused::Failed(e.to_string())),
            }
            acceptor
                .accept(socket)
                .await
                .map_err(|e| Refused::Failed(e.to_string()))
        };
        let refused = match tokio::time::timeout(timeout, handshake).await {
            Ok(Ok(stream)) => return Some(stream),
            Ok(Err(refused)) => refused,
            Err(_) => Refused::Failed(format!(
                "no TLS handshake within {} ms",
                timeout.as_millis()
            )),
        };
        match refused {
            Refused::Failed(reason) => {
                metrics.tls_handshake_failures.add(1);
                tracing::debug!(%peer, port, %reason, "TLS handshake failed");
            }
            Refused::Closed => {}
        }
        None
    }

    /// Counts a plaintext client, and logs it (at most once a second).
    fn refuse_plaintext(&self, peer: SocketAddr, port: &'static str, metrics: &Metrics) {
        metrics.tls_plaintext_refused.add(1);
        if self.plaintext_log.allow() {
            tracing::warn!(%peer, port, "plaintext connection refused: this port requires TLS (the client must connect with TLS, e.g. `weir --tls`)");
        }
    }
}

/// Most DNS names read from one client certificate (a certificate listing more is read up to
/// here), and the longest kept (a DNS name is at most 253 bytes).
const MAX_PEER_NAMES: usize = 16;
const MAX_PEER_NAME_BYTES: usize = 253;

/// The DNS names (subject alternative names) of the client certificate `stream`'s handshake
/// verified against `client_ca_file` — empty without mutual TLS, or when the certificate
/// names none. At most [`MAX_PEER_NAMES`]. A key whose `name` is one of them is the client's
/// identity when its `Hello` carries no token ([`crate::keys::KeyRing::authenticate_with`]).
pub(crate) fn peer_names<S>(stream: &TlsStream<S>) -> Vec<String> {
    let Some(cert) = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
    else {
        return Vec::new();
    };
    match webpki::EndEntityCert::try_from(cert) {
        Ok(cert) => cert
            .valid_dns_names()
            .filter(|n| n.len() <= MAX_PEER_NAME_BYTES)
            .take(MAX_PEER_NAMES)
            .map(str::to_owned)
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Lets one event through per second (for a log line), however many threads ask.
#[derive(Debug)]
struct OncePerSecond {
    /// Milliseconds since `epoch` (plus one) of the last event let through; 0: none yet.
    last_ms: AtomicU64,
    epoch: Instant,
}

impl OncePerSecond {
    fn new() -> Self {
        OncePerSecond {
            last_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// Whether an event may pass now.
    fn allow(&self) -> bool {
        self.allow_at(self.epoch.elapsed().as_millis() as u64 + 1)
    }

    /// Whether an event may pass at `now_ms` (milliseconds since `epoch`, plus one): the first
    /// does, then one whose predecessor passed at least 1 000 ms earlier.
    fn allow_at(&self, now_ms: u64) -> bool {
        let last = self.last_ms.load(Ordering::Relaxed);
        (last == 0 || now_ms.saturating_sub(last) >= 1000)
            && self
                .last_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// Closes a plaintext connection with a FIN rather than a reset (which would race the client's
/// read): half-closes it, then discards what the client sent until it closes too, for at most
/// [`PLAINTEXT_LINGER`].
async fn close_gently(mut socket: TcpStream) {
    let _ = tokio::time::timeout(PLAINTEXT_LINGER, async {
        socket.shutdown().await?;
        let mut scratch = [0u8; 1024];
        while socket.read(&mut scratch).await? > 0 {}
        Ok::<(), std::io::Error>(())
    })
    .await;
}

/// Why a TLS accept did not produce a stream.
enum Refused {
    /// The client closed before sending anything, or spoke plaintext (counted already).
    Closed,
    /// The handshake failed or timed out.
    Failed(String),
}

/// The rustls configuration of `files`.
fn build(files: &TlsConfig) -> Result<ServerConfig, TlsError> {
    let certs = read_certs("cert_file", &files.cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&files.key_file).map_err(|e| {
        TlsError::new(
            "key_file",
            &files.key_file,
            format!("no usable PEM private key: {e}"),
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::new("cert_file", &files.cert_file, e))?;
    let builder = match &files.client_ca_file {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs("client_ca_file", path)? {
                roots
                    .add(cert)
                    .map_err(|e| TlsError::new("client_ca_file", path, e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::new("client_ca_file", path, e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    builder.with_single_cert(certs, key).map_err(|e| {
        TlsError::new(
            "key_file",
            &files.key_file,
            format!(
                "does not go with tls.cert_file {}: {e}",
                files.cert_file.display()
            ),
        )
    })
}

/// Every certificate in the PEM file at `path`; none is an error.
fn read_certs(field: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsError::new(field, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::new(field, path, e))?;
    if certs.is_empty() {
        return Err(TlsError::new(field, path, "holds no PEM certificate"));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_empty_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = TlsConfig {
            cert_file: dir.path().join("missing.pem"),
            key_file: dir.path().join("broker.key"),
            client_ca_file: None,
        };
        let e = TlsServer::load(&missing).unwrap_err();
        assert_eq!(e.field, "cert_file");
        assert!(e.to_string().starts_with("tls.cert_file "), "{e}");
        assert!(e.to_string().contains("missing.pem"), "{e}");

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let e = TlsServer::load(&TlsConfig {
            cert_file: empty,
            ..missing
        })
        .unwrap_err();
        assert!(e.to_string().contains("holds no PEM certificate"), "{e}");
    }

    #[test]
    fn plaintext_refusals_are_logged_at_most_once_a_second() {
        let limit = OncePerSecond::new();
        assert!(limit.allow_at(1));
        assert!(!limit.allow_at(2));
        assert!(!limit.allow_at(1000));
        assert!(limit.allow_at(1001));
        assert!(!limit.allow_at(1500));
        assert!(limit.allow_at(5000));
    }

    #[test]
    fn the_tls_section_reads_from_and_prints_to_the_config_file() {
        let config: crate::config::Config = toml::from_str(
            "[tls]\ncert_file = \"/etc/weir/b.pem\"\nkey_file = \"/etc/weir/b.key\"\n",
        )
        .unwrap();
        let tls = config.tls.clone().expect("[tls] read");
        assert_eq!(tls.cert_file, PathBuf::from("/etc/weir/b.pem"));
        assert_eq!(tls.client_ca_file, None);
        let printed = config.to_toml();
        assert!(printed.contains("[tls]"), "{printed}");
        let back: crate::config::Config = toml::from_str(&printed).unwrap();
        assert_eq!(back.tls, config.tls);
        assert!(toml::from_str::<crate::config::Config>("[tls]\ncert = \"x\"\n").is_err());
        assert_eq!(crate::config::Config::default().tls, None);
    }
}
