//! [`TlsOptions`]: connecting to a broker whose wire port serves TLS (`[tls]` in its config),
//! and the errors that say what failed (unknown CA, name mismatch, expired certificate).
//!
//! The CA, certificate and key files are read at each connect, reconnects included, so every
//! connection of a [`crate::Client`] uses the same settings (and a client certificate rotated
//! in place is picked up by the next reconnect).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{CertificateError, ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::error::ClientError;

/// How to speak TLS to the broker. `TlsOptions::default()`: trust the bundled Mozilla roots
/// (webpki-roots), check the certificate against the host of the address connected to, send
/// no client certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// PEM file of the CA certificates that the broker's certificate must chain to. `None`:
    /// the bundled Mozilla root store.
    pub ca_file: Option<PathBuf>,
    /// The name the broker's certificate must be valid for. `None`: the host of the address
    /// connected to (a DNS name or an IP address).
    pub server_name: Option<String>,
    /// A client certificate, for a broker that requires one (mutual TLS).
    pub client_cert: Option<ClientCert>,
}

/// A client certificate and its key, both PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    /// The certificate, followed by any intermediates.
    pub cert_file: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

impl TlsOptions {
    /// Trusts only the CA certificates in the PEM file `ca_file`.
    pub fn with_ca_file(ca_file: impl Into<PathBuf>) -> Self {
        TlsOptions {
            ca_file: Some(ca_file.into()),
            ..TlsOptions::default()
        }
    }

    /// The rustls configuration of these options; the error names the file that is missing or
    /// unusable.
    fn client_config(&self) -> Result<ClientConfig, ClientError> {
        let mut roots = RootCertStore::empty();
        match &self.ca_file {
            Some(path) => {
                for cert in read_certs("CA file", path)? {
                    roots
                        .add(cert)
                        .map_err(|e| file_error("CA file", path, e))?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Tls(e.to_string()))?
            .with_root_certificates(roots);
        match &self.client_cert {
            None => Ok(builder.with_no_client_auth()),
            Some(client) => {
                let certs = read_certs("client certificate", &client.cert_file)?;
                let key = PrivateKeyDer::from_pem_file(&client.key_file)
                    .map_err(|e| file_error("client key", &client.key_file, e))?;
                builder
                    .with_client_auth_cert(certs, key)
                    .map_err(|e| file_error("client key", &client.key_file, e))
            }
        }
    }

    /// What the broker's certificate is checked against, for error messages.
    fn trust(&self) -> String {
        match &self.ca_file {
            Some(path) => format!("the CA file {}", path.display()),
            None => "the bundled Mozilla roots (set a CA file for a private CA)".into(),
        }
    }
}

/// Runs the client side of the TLS handshake on `socket` for the broker at `addr`
/// (`host:port`).
pub(crate) async fn connect(
    opts: &TlsOptions,
    addr: &str,
    socket: TcpStream,
) -> Result<TlsStream<TcpStream>, ClientError> {
    let name = match &opts.server_name {
        Some(name) => name.clone(),
        None => host_of(addr).to_owned(),
    };
    let server_name = ServerName::try_from(name.clone())
        .map_err(|_| ClientError::Tls(format!("{name:?} is not a valid TLS server name")))?;
    let connector = TlsConnector::from(Arc::new(opts.client_config()?));
    connector
        .connect(server_name, socket)
        .await
        .map_err(|e| describe(opts, &name, e))
}

/// The host part of `host:port` (`[v6]:port` too).
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// The error of a failed TLS exchange with the broker named `name`: [`ClientError::Tls`]
/// saying what failed when rustls said why, else the i/o error as it is.
pub(crate) fn describe(opts: &TlsOptions, name: &str, e: std::io::Error) -> ClientError {
    let Some(tls) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return e.into();
    };
    let what = match tls {
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer => format!(
                "unknown CA: the broker's certificate is not signed by a CA trusted here ({})",
                opts.trust()
            ),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!("name mismatch: the broker's certificate is not valid for {name:?} (set the server name to one it names)")
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "expired: the broker's certificate has expired".to_owned()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "not yet valid: the broker's certificate is not valid yet (check the clocks)"
                    .to_owned()
            }
            CertificateError::Other(other)
                if matches!(
                    other.0.downcast_ref::<webpki::Error>(),
                    Some(webpki::Error::CaUsedAsEndEntity)
                ) =>
            {
                "the broker's certificate is a CA certificate (CA:TRUE, as `openssl req -x509` makes by default); it needs a certificate with basicConstraints CA:FALSE, self-signed or signed by a CA".to_owned()
            }
            other => format!("the broker's certificate is invalid: {other:?}"),
        },
        rustls::Error::InvalidMessage(_) => {
            "the broker did not answer with TLS: is `[tls]` configured on it? (connect without TLS if not)".to_owned()
        }
        rustls::Error::AlertReceived(alert) => format!(
            "the broker refused the TLS session ({alert:?}): does it require a client certificate, or not trust this one?"
        ),
        other => format!("TLS handshake failed: {other}"),
    };
    ClientError::Tls(what)
}

/// Every certificate in the PEM file at `path`; none is an error.
fn read_certs(what: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(what, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(what, path, e))?;
    if certs.is_empty() {
        return Err(file_error(what, path, "holds no PEM certificate"));
    }
    Ok(certs)
}

fn file_error(what: &str, path: &Path, e: impl std::fmt::Display) -> ClientError {
    ClientError::Tls(format!("{what} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_name_is_the_host_of_the_address() {
        assert_eq!(host_of("broker.example:7070"), "broker.example");
        assert_eq!(host_of("127.0.0.1:7070"), "127.0.0.1");
        assert_eq!(host_of("[::1]:7070"), "::1");
        assert_eq!(host_of("localhost"), "localhost");
    }

    #[test]
    fn rustls_certificate_errors_are_named() {
        let opts = TlsOptions::with_ca_file("/etc/weir/ca.pem");
        let io = |e: rustls::Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        let unknown = describe(
            &opts,
            "b",
            io(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            )),
        );
        assert!(
            unknown.to_string().contains("unknown CA") && unknown.to_string().contains("ca.pem"),
            "{unknown}"
        );
        let mismatch = describe(
            &opts,
            "b.example",
            io(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName,
            )),
        );
        assert!(mismatch.to_string().contains("name mismatch"), "{mismatch}");
        let expired = describe(
            &opts,
            "b",
            io(rustls::Error::InvalidCertificate(CertificateError::Expired)),
        );
        assert!(expired.to_string().contains("expired"), "{expired}");
        let plaintext = describe(
            &opts,
            "b",
            io(rustls::Error::InvalidMessage(
                rustls::InvalidMessage::InvalidContentType,
            )),
        );
        assert!(
            plaintext.to_string().contains("did not answer with TLS"),
            "{plaintext}"
        );
        let ca_as_leaf = describe(
            &opts,
            "b",
            io(rustls::Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(webpki::Error::CaUsedAsEndEntity)),
            ))),
        );
        assert!(ca_as_leaf.to_string().contains("CA:FALSE"), "{ca_as_leaf}");
        let plain = describe(&opts, "b", std::io::ErrorKind::ConnectionReset.into());
        assert!(matches!(plain, ClientError::Io(_)), "{plain}");
    }

    #[test]
    fn a_missing_ca_file_is_named() {
        let opts = TlsOptions::with_ca_file("/nonexistent/weir-ca.pem");
        let e = opts.client_config().unwrap_err();
        assert!(e.to_string().contains("/nonexistent/weir-ca.pem"), "{e}");
    }
}
