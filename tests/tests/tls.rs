//! TLS on the wire and admin ports, end to end: certificates made at test time (rcgen) in a
//! temp dir; the real daemon (`--tls-cert`, `--tls-key`, `--tls-client-ca`, SIGHUP) and, where
//! a counter or a reload result is asserted, a broker in this process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use rustls_pki_types::pem::PemObject;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weir_broker::tls::{TlsConfig, TlsServer};
use weir_broker::Broker;
use weir_client::{ClientCert, ClientError, ClientOptions, ReconnectPolicy, TlsOptions};
use weir_tests::process::workspace_bin;
use weir_tests::{test_config, BrokerProcess, RawClient};

/// How long one step (a connect, a delivery, an HTTP answer) may take.
const STEP: Duration = Duration::from_secs(20);

/// A CA that signs certificates, its certificate written to `<dir>/<name>-ca.pem`.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
    file: PathBuf,
}

impl Ca {
    fn new(dir: &Path, name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("Weir test CA {name}"));
        let cert = params.self_signed(&key).unwrap();
        let file = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&file, cert.pem()).unwrap();
        Ca { cert, key, file }
    }

    /// A certificate for `names` (DNS names or IP addresses) signed by this CA, for a server
    /// or a client; written to `<dir>/<file>.pem` and `<dir>/<file>.key`.
    fn issue(&self, dir: &Path, file: &str, names: &[&str], client: bool) -> (PathBuf, PathBuf) {
        self.issue_with(dir, file, names, client, |_| {})
    }

    /// [`Ca::issue`], with `tweak` adjusting the certificate (its validity, say) first.
    fn issue_with(
        &self,
        dir: &Path,
        file: &str,
        names: &[&str],
        client: bool,
        tweak: impl FnOnce(&mut CertificateParams),
    ) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        tweak(&mut params);
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or(file));
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let (cert_file, key_file) = (
            dir.join(format!("{file}.pem")),
            dir.join(format!("{file}.key")),
        );
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        (cert_file, key_file)
    }
}

/// A temp dir with a CA and a server certificate for `localhost` and `127.0.0.1`.
struct Pki {
    dir: TempDir,
    ca: Ca,
    cert: PathBuf,
    key: PathBuf,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new(dir.path(), "server");
        let (cert, key) = ca.issue(dir.path(), "broker", &["localhost", "127.0.0.1"], false);
        Pki { dir, ca, cert, key }
    }

    fn broker_args(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.cert.display().to_string(),
            "--tls-key".into(),
            self.key.display().to_string(),
        ]
    }

    fn tls_config(&self) -> TlsConfig {
        TlsConfig {
            cert_file: self.cert.clone(),
            key_file: self.key.clone(),
            client_ca_file: None,
        }
    }
}

/// Starts the daemon with `args`.
fn start(data: &TempDir, args: &[String]) -> BrokerProcess {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    BrokerProcess::start(data.path(), &args)
}

/// Client options trusting `ca_file`, without reconnecting (a refusal shows at once).
fn tls_options(ca_file: &Path) -> ClientOptions {
    ClientOptions {
        tls: Some(TlsOptions::with_ca_file(ca_file)),
        reconnect: ReconnectPolicy::disabled(),
        ..ClientOptions::default()
    }
}

async fn connect(
    addr: SocketAddr,
    options: ClientOptions,
) -> Result<weir_client::Client, ClientError> {
    tokio::time::timeout(STEP, weir_client::Client::connect_with(addr, options))
        .await
        .expect("connect within the step timeout")
}

/// A broker in this process serving TLS with `tls`; its handle, address and stop switch.
async fn in_process(
    data: &TempDir,
    tls: Arc<TlsServer>,
) -> (Broker, SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let broker = Broker::open(test_config(data.path())).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = broker.clone();
    tokio::spawn(async move {
        weir_broker::server::serve_with_tls(listener, serving.clone(), Some(tls), async {
            let _ = stopped.await;
        })
        .await;
        serving.close().await;
    });
    (broker, addr, stop)
}

#[tokio::test]
async fn publish_and_subscribe_over_tls() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let broker = start(&data, &pki.broker_args());
    let client = connect(broker.addr, tls_options(&pki.ca.file))
        .await
        .unwrap();
    let publisher = client.publisher();
    for i in 0..20 {
        let confirm = publisher.publish("secure", format!("m-{i}")).await.unwrap();
        assert_eq!(confirm.await.unwrap(), i + 1);
    }
    let mut sub = client.subscribe("secure", "readers", 5).await.unwrap();
    for i in 0..20u64 {
        let delivery = tokio::time::timeout(STEP, sub.next())
            .await
            .expect("a delivery in time")
            .expect("stream open")
            .unwrap();
        assert_eq!(delivery.seq(), i + 1);
        assert_eq!(delivery.payload(), format!("m-{i}").as_bytes());
        delivery.ack();
    }
}

#[tokio::test]
async fn plaintext_is_refused_on_a_tls_port_and_counted() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let tls = Arc::new(TlsServer::load(&pki.tls_config()).unwrap());
    let (broker, addr, _stop) = in_process(&data, tls).await;
    // A TLS neighbour, connected before and used after.
    let neighbour = connect(addr, tls_options(&pki.ca.file)).await.unwrap();

    let mut plain = RawClient::connect_raw(addr).await;
    plain.hello(None).await;
    assert_eq!(
        plain.recv_within(STEP).await,
        None,
        "a plaintext Hello gets no answer: the connection is closed"
    );
    assert_eq!(broker.metrics().tls_plaintext_refused.get(), 1);
    assert_eq!(broker.metrics().tls_handshake_failures.get(), 0);

    neighbour.ping().await.unwrap();
    let confirm = neighbour
        .publisher()
        .publish("t", "still here")
        .await
        .unwrap();
    assert_eq!(confirm.await.unwrap(), 1);
}

#[tokio::test]
async fn a_client_with_the_wrong_ca_is_refused_naming_the_ca() {
    let pki = Pki::new();
    let other = Ca::new(pki.dir.path(), "other");
    let data = tempfile::tempdir().unwrap();
    let tls = Arc::new(TlsServer::load(&pki.tls_config()).unwrap());
    let (broker, addr, _stop) = in_process(&data, tls).await;
    let err = connect(addr, tls_options(&other.file)).await.unwrap_err();
    let ClientError::Tls(message) = &err else {
        panic!("expected a TLS error, got {err:?}");
    };
    assert!(message.contains("unknown CA"), "{message}");
    assert!(message.contains("other-ca.pem"), "{message}");
    // The broker saw the client give up on the handshake.
    weir_tests::eventually("the failed handshake is counted", || {
        broker.metrics().tls_handshake_failures.get() == 1
    })
    .await;
}

#[tokio::test]
async fn a_name_mismatch_is_named() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let tls = Arc::new(TlsServer::load(&pki.tls_config()).unwrap());
    let (_broker, addr, _stop) = in_process(&data, tls).await;
    let mut options = tls_options(&pki.ca.file);
    options.tls.as_mut().unwrap().server_name = Some("billing.example".into());
    let err = connect(addr, options.clone()).await.unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(err, ClientError::Tls(_)) && message.contains("name mismatch"),
        "{message}"
    );
    assert!(message.contains("billing.example"), "{message}");
    // The name the certificate does hold works.
    options.tls.as_mut().unwrap().server_name = Some("localhost".into());
    connect(addr, options).await.unwrap().ping().await.unwrap();
}

#[tokio::test]
async fn an_expired_certificate_is_named() {
    let pki = Pki::new();
    let (cert_file, key_file) = pki.ca.issue_with(
        pki.dir.path(),
        "expired",
        &["localhost", "127.0.0.1"],
        false,
        |params| {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        },
    );
    let data = tempfile::tempdir().unwrap();
    let tls = TlsServer::load(&TlsConfig {
        cert_file,
        key_file,
        client_ca_file: None,
    })
    .unwrap();
    let (_broker, addr, _stop) = in_process(&data, Arc::new(tls)).await;
    let err = connect(addr, tls_options(&pki.ca.file)).await.unwrap_err();
    assert!(
        matches!(err, ClientError::Tls(ref m) if m.starts_with("expired")),
        "{err}"
    );
}

#[tokio::test]
async fn the_cli_publishes_and_subscribes_over_tls() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let broker = start(&data, &pki.broker_args());
    let ca = pki.ca.file.display().to_string();
    let out = crate::cli::weir(
        broker.addr,
        &["--tls-ca", &ca, "pub", "cli-secure", "one", "two"],
        "",
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = crate::cli::weir(
        broker.addr,
        &[
            "--tls-ca",
            &ca,
            "sub",
            "cli-secure",
            "--group",
            "g",
            "--count",
            "2",
        ],
        "",
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "one\ntwo\n");
    // Without TLS the CLI cannot talk to it.
    let out = crate::cli::weir(broker.addr, &["--no-reconnect", "ping"], "").await;
    assert!(!out.status.success());
}

#[tokio::test]
async fn mutual_tls_refuses_a_client_without_a_certificate_and_accepts_one_with() {
    let pki = Pki::new();
    let clients = Ca::new(pki.dir.path(), "clients");
    let (cert_file, key_file) = clients.issue(pki.dir.path(), "billing", &["billing"], true);
    let data = tempfile::tempdir().unwrap();
    let mut args = pki.broker_args();
    args.extend(["--tls-client-ca".into(), clients.file.display().to_string()]);
    let broker = start(&data, &args);

    let err = connect(broker.addr, tls_options(&pki.ca.file))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Tls(ref m) if m.contains("client certificate")),
        "{err:?}"
    );

    // A certificate from a CA the broker does not trust for clients is refused too.
    let (stranger_cert, stranger_key) =
        pki.ca
            .issue(pki.dir.path(), "stranger", &["stranger"], true);
    let mut options = tls_options(&pki.ca.file);
    options.tls.as_mut().unwrap().client_cert = Some(ClientCert {
        cert_file: stranger_cert,
        key_file: stranger_key,
    });
    let err = connect(broker.addr, options).await.unwrap_err();
    assert!(matches!(err, ClientError::Tls(_)), "{err:?}");

    let mut options = tls_options(&pki.ca.file);
    options.tls.as_mut().unwrap().client_cert = Some(ClientCert {
        cert_file,
        key_file,
    });
    let client = connect(broker.addr, options).await.unwrap();
    let confirm = client.publisher().publish("mtls", "hi").await.unwrap();
    assert_eq!(confirm.await.unwrap(), 1);
}

#[tokio::test]
async fn sighup_serves_the_new_certificate_and_keeps_open_connections() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let broker = start(&data, &pki.broker_args());
    let old = connect(broker.addr, tls_options(&pki.ca.file))
        .await
        .unwrap();
    let publisher = old.publisher();
    assert_eq!(
        publisher
            .publish("rot", "before")
            .await
            .unwrap()
            .await
            .unwrap(),
        1
    );

    // Rotate in place: a certificate from a new CA, at the same paths.
    let new_ca = Ca::new(pki.dir.path(), "next");
    let (cert, key) = new_ca.issue(pki.dir.path(), "broker-next", &["127.0.0.1"], false);
    std::fs::rename(&cert, &pki.cert).unwrap();
    std::fs::rename(&key, &pki.key).unwrap();
    broker.signal(libc::SIGHUP);

    // No event says the reload is done: new connections are tried until one sees it.
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        match connect(broker.addr, tls_options(&new_ca.file)).await {
            Ok(client) => {
                client.ping().await.unwrap();
                break;
            }
            Err(ClientError::Tls(m)) if m.contains("unknown CA") => {}
            Err(e) => panic!("unexpected error while the reload is pending: {e}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A client trusting only the old CA is now refused, naming it.
    let err = connect(broker.addr, tls_options(&pki.ca.file))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unknown CA"), "{err}");
    // The connection opened before the rotation is still the same, working one.
    assert_eq!(
        publisher
            .publish("rot", "after")
            .await
            .unwrap()
            .await
            .unwrap(),
        2
    );
    assert_eq!(old.reconnects(), 0);
}

#[tokio::test]
async fn a_bad_file_on_reload_keeps_the_certificate_in_use() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let tls = Arc::new(TlsServer::load(&pki.tls_config()).unwrap());
    let (_broker, addr, _stop) = in_process(&data, tls.clone()).await;
    std::fs::write(&pki.cert, "not a certificate\n").unwrap();
    let err = tls.reload().unwrap_err();
    assert_eq!(err.field, "cert_file");
    assert!(
        err.to_string().contains(&pki.cert.display().to_string()),
        "{err}"
    );
    // A key that does not go with the certificate is named too.
    let other = pki.ca.issue(pki.dir.path(), "other", &["localhost"], false);
    std::fs::copy(&other.0, &pki.cert).unwrap();
    let err = tls.reload().unwrap_err();
    assert_eq!(err.field, "key_file", "{err}");
    // New connections still get the certificate loaded at start.
    connect(addr, tls_options(&pki.ca.file))
        .await
        .unwrap()
        .ping()
        .await
        .unwrap();
}

#[test]
fn a_bad_tls_file_fails_start_naming_it() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let missing = pki.dir.path().join("missing.pem");
    let out = std::process::Command::new(workspace_bin("weir-broker"))
        .args(["--listen", "127.0.0.1:0", "--no-admin", "--data-dir"])
        .arg(data.path())
        .arg("--tls-cert")
        .arg(&missing)
        .arg("--tls-key")
        .arg(&pki.key)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("tls.cert_file") && stderr.contains("missing.pem"),
        "{stderr}"
    );
}

/// One HTTP/1.1 request over TLS (trusting `ca`) to the admin port; the status and body.
async fn https(admin: SocketAddr, ca: &Path, path: &str, token: &str) -> (u16, String) {
    https_as(admin, ca, path, Some(token), None).await
}

/// `GET path` over HTTPS trusting `ca`, with a bearer `token` and/or a client certificate
/// `(cert_file, key_file)`; the status and body.
async fn https_as(
    admin: SocketAddr,
    ca: &Path,
    path: &str,
    token: Option<&str>,
    client: Option<(&Path, &Path)>,
) -> (u16, String) {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).unwrap();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let config = match client {
        None => config.with_no_client_auth(),
        Some((cert, key)) => {
            let certs = rustls_pki_types::CertificateDer::pem_file_iter(cert)
                .unwrap()
                .map(Result::unwrap)
                .collect();
            let key = rustls_pki_types::PrivateKeyDer::from_pem_file(key).unwrap();
            config.with_client_auth_cert(certs, key).unwrap()
        }
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let exchange = async {
        let socket = TcpStream::connect(admin).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = connector.connect(name, socket).await.unwrap();
        let bearer = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{bearer}Connection: close\r\n\r\n");
        tls.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        // The broker may close without close_notify after `Connection: close`.
        let _ = tls.read_to_end(&mut answer).await;
        String::from_utf8_lossy(&answer).into_owned()
    };
    let answer = tokio::time::timeout(STEP, exchange)
        .await
        .expect("HTTPS answer in time");
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"));
    let body = answer
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    (status, body)
}

#[tokio::test]
async fn the_admin_port_serves_tls_with_a_bearer_token_and_refuses_plain_http() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let config = pki.dir.path().join("weir.toml");
    std::fs::write(
        &config,
        "[[keys]]\nname = \"ops\"\ntoken = \"ops-secret\"\n",
    )
    .unwrap();
    let mut args = pki.broker_args();
    args.extend(["--config".into(), config.display().to_string()]);
    let broker = start(&data, &args);
    let admin = broker.admin_addr();

    let (status, _) = https(admin, &pki.ca.file, "/topics", "ops-secret").await;
    assert_eq!(status, 200);
    let (status, _) = https(admin, &pki.ca.file, "/topics", "wrong").await;
    assert!(
        matches!(status, 401 | 403),
        "a wrong token is refused: {status}"
    );

    // Plain HTTP gets no answer: the connection is closed.
    let mut plain = TcpStream::connect(admin).await.unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(STEP, plain.read_to_end(&mut answer))
        .await
        .expect("closed in time");
    assert!(
        answer.is_empty(),
        "{read:?} {:?}",
        String::from_utf8_lossy(&answer)
    );

    let (status, metrics) = https(admin, &pki.ca.file, "/metrics", "ops-secret").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("weir_tls_plaintext_refused_total 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn sighup_without_tls_does_not_stop_the_broker() {
    let data = tempfile::tempdir().unwrap();
    let broker = start(&data, &[]);
    broker.signal(libc::SIGHUP);
    let client = weir_client::Client::connect_with(
        broker.addr,
        ClientOptions {
            reconnect: ReconnectPolicy::disabled(),
            ..ClientOptions::default()
        },
    )
    .await
    .unwrap();
    client.ping().await.unwrap();
    broker.signal(libc::SIGTERM);
    let (status, log) = broker.wait(STEP);
    assert!(status.success(), "{status}");
    assert!(
        log.iter().any(|l| l.contains("nothing to reload")),
        "{log:#?}"
    );
}

#[tokio::test]
async fn tls_and_plaintext_mixed_up_say_so() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let plain = start(&data, &[]);
    let err = connect(plain.addr, tls_options(&pki.ca.file))
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(err, ClientError::Tls(_)) && message.contains("not answer with TLS"),
        "{message}"
    );

    let data = tempfile::tempdir().unwrap();
    let secure = start(&data, &pki.broker_args());
    let options = ClientOptions {
        reconnect: ReconnectPolicy::disabled(),
        ..ClientOptions::default()
    };
    let err = connect(secure.addr, options).await.unwrap_err();
    assert!(err.to_string().contains("connect with TLS"), "{err}");
}

#[tokio::test]
async fn a_client_certificate_names_its_key_on_the_wire_and_over_https() {
    let pki = Pki::new();
    let clients = Ca::new(pki.dir.path(), "clients");
    let (billing_cert, billing_key) = clients.issue(pki.dir.path(), "billing", &["billing"], true);
    let (nobody_cert, nobody_key) = clients.issue(pki.dir.path(), "nobody", &["nobody"], true);
    let config = pki.dir.path().join("weir.toml");
    std::fs::write(
        &config,
        "[[keys]]\nname = \"billing\"\ntoken = \"t-billing\"\npermissions = [{ topics = \"orders.*\", allow = [\"publish\", \"monitor\"] }]\n\n[[keys]]\nname = \"ops\"\ntoken = \"t-ops\"\n",
    )
    .unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut args = pki.broker_args();
    args.extend([
        "--tls-client-ca".into(),
        clients.file.display().to_string(),
        "--config".into(),
        config.display().to_string(),
    ]);
    let broker = start(&data, &args);
    let with_cert = |cert: &Path, key: &Path| {
        let mut options = tls_options(&pki.ca.file);
        options.tls.as_mut().unwrap().client_cert = Some(ClientCert {
            cert_file: cert.to_path_buf(),
            key_file: key.to_path_buf(),
        });
        options
    };

    // No token: the certificate's name is the key, with that key's permissions.
    let billing = connect(broker.addr, with_cert(&billing_cert, &billing_key))
        .await
        .expect("the certificate names key billing");
    let publisher = billing.publisher();
    let stored = publisher.publish("orders.eu", "1").await.unwrap().await;
    assert_eq!(stored, Ok(1));
    let refused = publisher.publish("payroll", "1").await.unwrap().await;
    match refused {
        Err(weir_client::PublishError::Broker { code, message }) => {
            assert_eq!(code, weir_client::ErrorCode::Forbidden);
            assert!(message.contains("billing"), "{message}");
        }
        other => panic!("expected Forbidden, got {other:?}"),
    }
    // A certificate naming no key, and no token: refused as a missing token is.
    let err = connect(broker.addr, with_cert(&nobody_cert, &nobody_key))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Unauthorized(_)), "{err:?}");

    // Over HTTPS, the same certificate stands for the bearer token.
    let admin = broker.admin_addr();
    let ca = &pki.ca.file;
    let as_billing = Some((billing_cert.as_path(), billing_key.as_path()));
    let (status, body) = https_as(admin, ca, "/topics", None, as_billing).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("orders.eu"), "{body}");
    let (status, _) = https_as(admin, ca, "/topics/payroll", None, as_billing).await;
    assert_eq!(status, 403, "billing may not monitor payroll");
    let as_nobody = Some((nobody_cert.as_path(), nobody_key.as_path()));
    let (status, _) = https_as(admin, ca, "/topics", None, as_nobody).await;
    assert_eq!(status, 401);
}
