//! Connecting the JetStream store with credentials and over TLS: a user/password server and a
//! TLS server whose certificates are generated at test time (a CA and a server certificate for
//! `localhost` and `127.0.0.1`). Each connection appends and loads an aggregate; a wrong
//! password and an untrusted server certificate are typed, actionable errors, returned at once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use cqrs_core::{CommandMetadata, Repository};
use cqrs_nats::async_nats::ConnectOptions;
use cqrs_nats::{ConnectError, JetStreamEventStore, StoreConfig};
use cqrs_test_server::NatsServer;
use examples::bank_account::{AccountCommand, BankAccount};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A failed connect must not wait for anything: well under the request timeout.
const FAST: Duration = Duration::from_secs(2);

fn config() -> StoreConfig {
    StoreConfig::new("bank").request_timeout(Duration::from_secs(5))
}

/// Opens an account and deposits into it through `store`, then loads it back: the round trip.
async fn round_trip(store: &JetStreamEventStore, id: &str) {
    let repo = Repository::<BankAccount, _>::new(store.clone());
    let metadata = || CommandMetadata::root().with_actor("user:app");
    let open = AccountCommand::Open {
        owner: id.to_owned(),
        overdraft_limit: 0,
    };
    repo.execute(id, open, metadata()).await.unwrap();
    let deposit = AccountCommand::Deposit { amount: 42 };
    let committed = repo.execute(id, deposit, metadata()).await.unwrap();
    assert_eq!(committed[0].version, 2);
    let history = repo
        .history(&cqrs_core::StreamId::of::<BankAccount>(id, None), 1)
        .await
        .unwrap();
    let versions: Vec<u64> = history.iter().map(|e| e.version).collect();
    assert_eq!(versions, [1, 2]);
}

#[tokio::test]
async fn user_and_password_connect_and_a_wrong_password_is_refused_at_once() {
    let started = Instant::now();
    let server = NatsServer::builder()
        .config("authorization {\n  users: [ { user: app, password: \"s3cret-pass\" } ]\n}\n")
        .start()
        .await
        .unwrap();
    let credentials = |password: &str| {
        ConnectOptions::new().user_and_password("app".to_owned(), password.to_owned())
    };

    let store = JetStreamEventStore::connect_with_options(
        server.url(),
        credentials("s3cret-pass"),
        config(),
    )
    .await
    .unwrap();
    round_trip(&store, "acc-auth").await;

    let refused_at = Instant::now();
    let wrong =
        JetStreamEventStore::connect_with_options(server.url(), credentials("wrong"), config())
            .await
            .unwrap_err();
    let wrong_ms = refused_at.elapsed();
    let message = wrong.to_string();
    assert!(matches!(wrong, ConnectError::Unauthorized(_)), "{wrong:?}");
    assert!(message.contains("refused the credentials"), "{message}");
    assert!(message.contains("check the user and password"), "{message}");

    let anonymous = JetStreamEventStore::connect(server.url(), config())
        .await
        .unwrap_err();
    assert!(
        matches!(anonymous, ConnectError::Unauthorized(_)),
        "{anonymous:?}"
    );
    println!(
        "connect auth: round_trip=ok wrong_password_refused_ms={} error=\"{message}\" total_ms={}",
        wrong_ms.as_millis(),
        started.elapsed().as_millis()
    );
    assert!(wrong_ms < FAST, "a wrong password took {wrong_ms:?}");
}

/// A CA and a server certificate it signed, for `localhost` and `127.0.0.1`, as PEM files.
struct Certificates {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn certificates(dir: &Path) -> Certificates {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "cqrs-nats test CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);

    let key = KeyPair::generate().unwrap();
    let mut server = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    server
        .distinguished_name
        .push(DnType::CommonName, "nats-server");
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let cert = server.signed_by(&key, &issuer).unwrap();

    let write = |name: &str, pem: String| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path
    };
    Certificates {
        ca: write("ca.pem", ca_cert.pem()),
        cert: write("server-cert.pem", cert.pem()),
        key: write("server-key.pem", key.serialize_pem()),
    }
}

#[tokio::test]
async fn tls_connects_with_the_ca_and_refuses_an_untrusted_server_at_once() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let certs = certificates(dir.path());
    let server = NatsServer::builder()
        .config(format!(
            "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n}}\nauthorization {{\n  users: [ {{ user: app, password: \"tls-pass\" }} ]\n}}\n",
            certs.cert, certs.key
        ))
        .start()
        .await
        .unwrap();
    let options = || {
        ConnectOptions::new()
            .user_and_password("app".to_owned(), "tls-pass".to_owned())
            .require_tls(true)
    };

    // Over TLS, trusting the generated CA: the round trip works.
    let store = JetStreamEventStore::connect_with_options(
        server.url(),
        options().add_root_certificates(certs.ca.clone()),
        config(),
    )
    .await
    .unwrap();
    round_trip(&store, "acc-tls").await;
    // The same through a `tls://` URL.
    let tls_url = format!("tls://127.0.0.1:{}", server.port());
    let again = JetStreamEventStore::connect_with_options(
        tls_url,
        options().add_root_certificates(certs.ca.clone()),
        config(),
    )
    .await
    .unwrap();
    let loaded = Repository::<BankAccount, _>::new(again)
        .load(&cqrs_core::StreamId::of::<BankAccount>("acc-tls", None))
        .await
        .unwrap();
    assert_eq!(loaded.version(), 2);

    // Without the CA the server certificate is not trusted: a typed TLS error, at once.
    let refused_at = Instant::now();
    let untrusted = JetStreamEventStore::connect_with_options(server.url(), options(), config())
        .await
        .unwrap_err();
    let untrusted_ms = refused_at.elapsed();
    let message = untrusted.to_string();
    assert!(matches!(untrusted, ConnectError::Tls(_)), "{untrusted:?}");
    assert!(message.contains("add_root_certificates"), "{message}");
    println!(
        "connect tls: round_trip=ok untrusted_refused_ms={} error=\"{message}\" total_ms={}",
        untrusted_ms.as_millis(),
        started.elapsed().as_millis()
    );
    assert!(
        untrusted_ms < FAST,
        "an untrusted server took {untrusted_ms:?}"
    );
}

/// A connect failure's chain: our message says what failed, async-nats' error why, and a
/// reporter prints each cause once.
#[tokio::test]
async fn a_connect_failure_prints_each_cause_once() {
    // A loopback port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let options = ConnectOptions::new().connection_timeout(Duration::from_secs(2));
    let error = JetStreamEventStore::connect_with_options(
        format!("nats://127.0.0.1:{port}"),
        options,
        config(),
    )
    .await
    .expect_err("nothing listens there");
    assert!(matches!(error, ConnectError::Connect(_)), "{error:?}");
    // What failed, without the why; the why is the source.
    assert_eq!(error.to_string(), "cannot connect to NATS");
    let source = std::error::Error::source(&error).expect("a source");
    let mut chain = vec![error.to_string()];
    let mut cause = Some(source);
    while let Some(e) = cause {
        chain.push(e.to_string());
        cause = e.source();
    }
    let line = cqrs_core::error::report(&error);
    assert!(line.starts_with("cannot connect to NATS: "), "{line}");
    // Every cause's text appears in the line, and none twice.
    for text in &chain[1..] {
        assert!(line.contains(text.as_str()), "{line} lacks {text}");
    }
    let refused = chain.last().unwrap();
    assert_eq!(line.matches(refused.as_str()).count(), 1, "{line}");
}
