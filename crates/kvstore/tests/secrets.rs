//! No password, token or key material in what kvstore shows: the `Debug` output of configs
//! and stores, the `Display`, `Debug` and source chain of errors (malformed URLs, refused
//! credentials), and everything logged at `trace` level during a full conformance run over
//! TLS with authentication on every network backend (the servers `ci/servers.sh` starts as
//! `redis-tls`, `etcd-tls`, `zk-tls`, `consul-tls` and `postgres-tls`).

use std::io::Write;
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use kvstore::Error;
use kvstore_testutils::secure::{Credential, with_client_certificate, with_credential};
use kvstore_testutils::{Opener, backend_url, error_chain, ok};

/// A secret no test URL shares with anything else, so finding it means a leak.
const PLANTED: &str = "planted-secret-3f9c1";

/// The TLS+auth URLs, the credential each names, and the credential's value in it.
fn secure_urls() -> Option<Vec<(String, Credential)>> {
    Some(vec![
        (backend_url("KVSTORE_REDIS_TLS_URL")?, Credential::Password),
        (backend_url("KVSTORE_ETCD_TLS_URL")?, Credential::Password),
        (backend_url("KVSTORE_ZK_TLS_URL")?, Credential::Password),
        (
            backend_url("KVSTORE_CONSUL_TLS_URL")?,
            Credential::Query("token"),
        ),
        (
            backend_url("KVSTORE_POSTGRES_TLS_URL")?,
            Credential::Password,
        ),
    ])
}

fn secret_of(url: &str, credential: Credential) -> String {
    let parsed = url::Url::parse(url).expect("a single-host URL");
    match credential {
        Credential::Password => parsed.password().expect("a password").to_owned(),
        Credential::Query(name) => parsed
            .query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
            .expect("the token option"),
    }
}

/// Every secret of this run: the servers' passwords and tokens, the read-only Consul token,
/// the base64 body lines of the client's private key, and the planted one.
fn secrets() -> Option<Vec<String>> {
    let mut out = vec![PLANTED.to_owned()];
    for (url, credential) in secure_urls()? {
        out.push(secret_of(&url, credential));
    }
    out.push(backend_url("KVSTORE_CONSUL_TLS_READER_TOKEN")?);
    let key = std::fs::read_to_string(
        std::path::Path::new(&backend_url("KVSTORE_TLS_DIR")?).join("client-key.pem"),
    )
    .expect("the client key");
    out.extend(
        key.lines()
            .filter(|l| !l.starts_with("-----") && l.len() >= 16)
            .map(str::to_owned),
    );
    Some(out)
}

#[track_caller]
fn assert_no_secret(text: &str, secrets: &[String], what: &str) {
    for secret in secrets {
        assert!(
            !text.contains(secret.as_str()),
            "{what} shows a secret ({} chars): {text}",
            secret.len()
        );
    }
}

fn error_text(err: &Error) -> String {
    format!("{err} | {err:?} | {}", error_chain(err))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_stay_out_of_debug_and_errors() {
    let Some(secrets) = secrets() else { return };
    let planted = [PLANTED.to_owned()];
    // Malformed URLs with a planted password or token: InvalidConfig, and the secret nowhere.
    for url in [
        format!("redis://user:{PLANTED}@127.0.0.1:notaport/0"),
        format!("rediss://user:{PLANTED}@127.0.0.1:1?nonsense=1"),
        format!("redis+sentinel://u:{PLANTED}@127.0.0.1:1,127.0.0.1:notaport/svc"),
        format!("redis+sentinel://127.0.0.1:1/svc?sentinel_password={PLANTED}&nonsense=1"),
        format!("etcd://u:{PLANTED}@127.0.0.1:notaport"),
        format!("etcd://u:{PLANTED}@127.0.0.1:2379/path"),
        format!("zk://u:{PLANTED}@127.0.0.1:notaport"),
        format!("zk://u:{PLANTED}@127.0.0.1:2181?acl=nobody"),
        format!("consul://127.0.0.1:notaport?token={PLANTED}"),
        format!("consul://127.0.0.1:8500/path?token={PLANTED}"),
        format!("consul://127.0.0.1:8500?token={PLANTED}&tls=maybe"),
        format!("postgres://u:{PLANTED}@127.0.0.1:notaport/db"),
        format!("postgresql://u:{PLANTED}@127.0.0.1:5432/db?table=Not-An-Identifier"),
        format!("postgres://u:{PLANTED}@127.0.0.1:5432/db?sslmode=maybe"),
    ] {
        match kvstore::open(&url).await {
            Err(err @ Error::InvalidConfig { .. }) => {
                assert_no_secret(&error_text(&err), &planted, "InvalidConfig");
            }
            other => panic!("a malformed URL must be InvalidConfig, got {other:?}"),
        }
    }
    for (url, credential) in secure_urls().unwrap() {
        // Configs and stores.
        let configs = [
            format!("{:?}", kvstore_redis::RedisConfig::from_str(&url)),
            format!("{:?}", kvstore_etcd::EtcdConfig::from_str(&url)),
            format!("{:?}", kvstore_zk::ZkConfig::from_str(&url)),
            format!("{:?}", kvstore_consul::ConsulConfig::from_str(&url)),
            format!("{:?}", kvstore_postgres::PostgresConfig::from_str(&url)),
        ];
        for shown in configs {
            assert_no_secret(&shown, &secrets, "a config's Debug");
        }
        let store = ok(kvstore::open(&url).await, "open");
        assert_no_secret(&format!("{store:?}"), &secrets, "a store's Debug");
        let dir = kvstore_testutils::scratch_dir("secret");
        let key = format!("{dir}/k");
        ok(store.put(&key, b"original", None).await, "put");
        // A refused credential: the wrong one and the right one stay out of the error. (A
        // ZooKeeper creator ACL also grants the creator's certificate, so the wrong digest
        // password comes with another certificate there.)
        let mut wrong = with_credential(&url, credential, PLANTED);
        if url.starts_with("zk:") {
            let dir = backend_url("KVSTORE_TLS_DIR").unwrap();
            wrong = with_client_certificate(&wrong, std::path::Path::new(&dir), "reader");
        }
        let refused = match kvstore::open(&wrong).await {
            Ok(store) => {
                let result = store.put(&key, b"x", None).await;
                let _ = store.close().await;
                result.map(|_| ())
            }
            Err(err) => Err(err),
        };
        match refused {
            Err(err) => assert_no_secret(&error_text(&err), &secrets, "a refusal"),
            Ok(()) => panic!("{}: a wrong credential must be refused", store.backend()),
        }
        kvstore_testutils::cleanup(&*store, &dir).await;
        let _ = store.close().await;
    }
}

/// A `MakeWriter` that appends everything to one buffer.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn captured() -> &'static Capture {
    static CAPTURE: OnceLock<Capture> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        let capture = Capture::default();
        let writer = capture.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .init();
        capture
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_stay_out_of_trace_output() {
    let Some(secrets) = secrets() else { return };
    let capture = captured();
    let runs = secure_urls()
        .unwrap()
        .into_iter()
        .map(|(url, _)| async move {
            let opener = Opener::new(move || {
                let url = url.clone();
                async move { kvstore::open(&url).await }
            })
            .with_ttl(Duration::from_secs(2))
            .with_ttl_slack(Duration::from_secs(4));
            kvstore_testutils::run_all(&opener).await;
        });
    futures::future::join_all(runs).await;
    let text = String::from_utf8_lossy(&capture.0.lock().unwrap()).into_owned();
    assert!(
        text.contains("TRACE") && text.contains("kvstore"),
        "the capture must hold trace-level output of kvstore's spans ({} bytes)",
        text.len()
    );
    assert_no_secret(&text, &secrets, "the trace output");
}
