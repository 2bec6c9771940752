//! The conformance suite's store opener, shared by the test files that run a suite against
//! the server.

use std::str::FromStr;
use std::time::Duration;

use kvstore_postgres::{Postgres, PostgresConfig};
use kvstore_testutils::{Opener, backend_url};

/// An opener for the server at `url`. Each opener's stores share one table, as the suite's
/// stores share one server on the other backends.
pub(crate) fn opener_for_url(url: &str) -> Opener {
    // Expired keys are invisible at once; watches hear of them at the next reap (250 ms). A
    // 2 s TTL leaves the suite's timing checks room when four suites run at once.
    Opener::backend::<Postgres>(url)
        .with_ttl(Duration::from_secs(2))
        .with_ttl_slack(Duration::from_secs(1))
}

/// An opener for the server named by the environment variable `var` (see [`backend_url`]).
#[allow(dead_code)] // Not every test file that shares this module uses it.
pub(crate) fn opener(var: &str) -> Option<Opener> {
    Some(opener_for_url(&backend_url(var)?))
}

/// A plain client on the first server `url` names, for what only SQL shows.
///
/// # Errors
///
/// The connect's.
#[allow(dead_code)] // Not every test file that shares this module uses it.
pub(crate) async fn sql(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let config = PostgresConfig::from_str(url).expect("a postgres URL");
    let mut pg = tokio_postgres::Config::new();
    let (host, port) = &config.hosts[0];
    pg.host(host)
        .port(*port)
        .user(&config.user)
        .dbname(&config.database)
        // Bounded: a server that takes the connection and never answers fails the test.
        .connect_timeout(Duration::from_secs(5));
    if let Some(password) = &config.password {
        pg.password(password);
    }
    let (client, connection) = pg.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}
