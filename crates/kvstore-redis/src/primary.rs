//! The server a store sends its calls to: one fixed server (`redis://`), or the primary that
//! Redis Sentinel names (`redis+sentinel://`), followed across failovers. Every call goes
//! through [`Conn`], which also adds `WAIT` to writes when the store wants replicas to confirm
//! them.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use kvstore_core::{Error, Result};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{Cmd, ConnectionAddr, Pipeline, RedisFuture, Value};
use tokio::sync::Notify;

use crate::BACKEND;
use crate::config::{DEFAULT_SENTINEL_PORT, RedisConfig, SentinelConfig};
use crate::error::{FAILOVER_CODES, from_connect, is_connection_failure};

/// How often a store asks the Sentinels which server is the primary while nothing fails.
pub(crate) const SENTINEL_CHECK_PERIOD: Duration = Duration::from_secs(1);
/// The shortest time between two such questions, however many calls fail meanwhile.
pub(crate) const SENTINEL_MIN_GAP: Duration = Duration::from_millis(100);

/// One server: its client (for pub/sub connections) and its multiplexed connection.
#[derive(Clone)]
pub(crate) struct Node {
    pub(crate) client: redis::Client,
    pub(crate) conn: ConnectionManager,
}

impl Node {
    /// Connects to `client`'s server within the connect timeout.
    pub(crate) async fn connect(client: redis::Client, config: &RedisConfig) -> Result<Node> {
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.request_timeout))
            .set_number_of_retries(2);
        let conn = tokio::time::timeout(
            config.connect_timeout,
            client.get_connection_manager_with_config(manager_config),
        )
        .await
        .map_err(|_| no_answer(config.connect_timeout))?
        .map_err(from_connect)?;
        let loaded = tokio::time::timeout(config.connect_timeout, crate::scripts::load_all(&conn))
            .await
            .map_err(|_| no_answer(config.connect_timeout))?;
        match loaded {
            Ok(()) => {}
            Err(err) if is_connection_failure(&err) => return Err(from_connect(err)),
            // Loading ahead is an optimisation: a user the server does not let run SCRIPT
            // LOAD gets the refusal from the call that needs the script, as before.
            Err(err) => tracing::debug!(error = %err, "loading the scripts ahead failed"),
        }
        Ok(Node { client, conn })
    }

    fn address(&self) -> String {
        self.client.get_connection_info().addr().to_string()
    }
}

/// The error of a connect step that got no answer within `timeout`.
fn no_answer(timeout: Duration) -> Error {
    Error::not_reachable(BACKEND, format!("no answer within {timeout:?}"))
}

/// The current server, replaced when Sentinel names another primary.
pub(crate) struct Primary {
    node: RwLock<Node>,
    /// Set by calls that failed in a way a failover explains; wakes the Sentinel follower.
    suspect: Notify,
    /// `(replicas, timeout in ms)` for `WAIT` after each write; `None`: writes do not wait.
    wait: Option<(u32, u64)>,
}

impl Primary {
    /// Resolves when a call has failed the way a failover makes calls fail.
    pub(crate) async fn suspected(&self) {
        self.suspect.notified().await;
    }

    pub(crate) fn new(node: Node, config: &RedisConfig) -> Arc<Primary> {
        let wait = (config.wait_replicas > 0).then(|| {
            (
                config.wait_replicas,
                u64::try_from(config.wait_timeout.as_millis()).unwrap_or(u64::MAX),
            )
        });
        Arc::new(Primary {
            node: RwLock::new(node),
            suspect: Notify::new(),
            wait,
        })
    }

    pub(crate) fn node(&self) -> Node {
        self.node.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A connection for reads and other calls that change nothing.
    pub(crate) fn conn(self: &Arc<Self>) -> Conn {
        self.conn_with(None)
    }

    /// A connection for calls that write: with `wait_replicas`, each of its commands is
    /// followed by `WAIT` in the same round trip.
    pub(crate) fn write_conn(self: &Arc<Self>) -> Conn {
        self.conn_with(self.wait)
    }

    /// The current server's connection (only it: calls need not copy the client too).
    fn conn_with(self: &Arc<Self>, wait: Option<(u32, u64)>) -> Conn {
        let manager = self
            .node
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .conn
            .clone();
        Conn {
            manager,
            primary: self.clone(),
            wait,
        }
    }
}

/// A [`ConnectionLike`] over the current server's connection.
pub(crate) struct Conn {
    manager: ConnectionManager,
    primary: Arc<Primary>,
    wait: Option<(u32, u64)>,
}

impl Conn {
    fn note(&self, reply: &redis::RedisResult<Value>) {
        let suspect = match reply {
            Err(err) => {
                is_connection_failure(err) || FAILOVER_CODES.contains(&err.code().unwrap_or(""))
            }
            Ok(Value::ServerError(err)) => FAILOVER_CODES.contains(&err.code()),
            Ok(_) => false,
        };
        if suspect {
            self.primary.suspect.notify_one();
        }
    }

    async fn send(&mut self, cmd: &Cmd) -> redis::RedisResult<Value> {
        let Some((replicas, timeout_ms)) = self.wait else {
            return self.manager.req_packed_command(cmd).await;
        };
        // Source: Redis docs, "WAIT": blocks until the replicas acknowledged every write this
        // connection sent before it, or the timeout passed; replies with how many did.
        let mut pipe = Pipeline::new();
        pipe.add_command(cmd.clone())
            .cmd("WAIT")
            .arg(replicas)
            .arg(timeout_ms);
        let mut replies = self
            .manager
            .req_packed_commands(&pipe, 0, 2)
            .await?
            .into_iter();
        let (Some(reply), Some(acked)) = (replies.next(), replies.next()) else {
            return Err(redis::RedisError::from(std::io::Error::other(
                "the server sent fewer replies than commands",
            )));
        };
        if matches!(reply, Value::ServerError(_)) {
            return Ok(reply);
        }
        match acked {
            Value::Int(n) if n >= i64::from(replicas) => Ok(reply),
            other => {
                tracing::debug!(
                    backend = BACKEND,
                    ?other,
                    replicas,
                    "a write was not confirmed by enough replicas in time"
                );
                // A timeout: the primary applied the write, whether it survives a failover
                // is unknown (`Error::Timeout`, transient).
                Err(redis::RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "fewer than {replicas} replicas confirmed the write within {timeout_ms} ms"
                    ),
                )))
            }
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let reply = self.send(cmd).await;
            self.note(&reply);
            reply
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        // kvstore sends no pipelines of its own through a write connection.
        debug_assert!(self.wait.is_none(), "pipelines do not WAIT");
        self.manager.req_packed_commands(pipeline, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.manager.get_db()
    }
}

/// The Sentinel client of `config`, which names the primary and checks its `ROLE`.
///
/// # Errors
///
/// `InvalidConfig` for a Sentinel address that is not `host[:port]`.
pub(crate) fn sentinel_client(sentinel: &SentinelConfig) -> Result<SentinelClient> {
    let mut addrs = Vec::with_capacity(sentinel.sentinels.len());
    for host in &sentinel.sentinels {
        let invalid =
            |msg: &str| Error::invalid_config(BACKEND, format!("Sentinel {host:?}: {msg}"));
        // The url crate reads `host[:port]` (an IPv6 address in brackets).
        let url =
            url::Url::parse(&format!("redis://{host}")).map_err(|e| invalid(&e.to_string()))?;
        let name = url.host_str().ok_or_else(|| invalid("no host"))?;
        let name = name.trim_start_matches('[').trim_end_matches(']');
        addrs.push(ConnectionAddr::Tcp(
            name.to_owned(),
            url.port().unwrap_or(DEFAULT_SENTINEL_PORT),
        ));
    }
    let mut builder =
        SentinelClientBuilder::new(addrs, &sentinel.service, SentinelServerType::Master)
            .map_err(|e| Error::invalid_config(BACKEND, e))?
            .set_client_to_redis_db(sentinel.db);
    if let Some(user) = &sentinel.user {
        builder = builder.set_client_to_redis_username(user);
    }
    if let Some(password) = &sentinel.password {
        builder = builder.set_client_to_redis_password(password);
    }
    // Sentinels that demand a login of their own (Redis docs, "High availability with Redis
    // Sentinel", "Configuring Sentinel instances with authentication": `requirepass` or ACL
    // users in sentinel.conf).
    if let Some(user) = &sentinel.sentinel_user {
        builder = builder.set_client_to_sentinel_username(user);
    }
    if let Some(password) = &sentinel.sentinel_password {
        builder = builder.set_client_to_sentinel_password(password);
    }
    builder
        .build()
        .map_err(|e| Error::invalid_config(BACKEND, e))
}

/// Asks the Sentinels for the primary's client, within the connect timeout.
pub(crate) async fn find_primary(
    sentinel: &mut SentinelClient,
    config: &RedisConfig,
) -> Result<redis::Client> {
    tokio::time::timeout(config.connect_timeout, sentinel.async_get_client())
        .await
        .map_err(|_| {
            Error::not_reachable(
                BACKEND,
                format!(
                    "no Sentinel named a primary within {:?}",
                    config.connect_timeout
                ),
            )
        })?
        .map_err(from_connect)
}

/// Moves `primary` to the server the Sentinels name, if it is another; `true` if it moved.
pub(crate) async fn switch(
    primary: &Primary,
    sentinel: &mut SentinelClient,
    config: &RedisConfig,
) -> Result<bool> {
    let client = find_primary(sentinel, config).await?;
    let address = client.get_connection_info().addr().to_string();
    let old = primary.node().address();
    if address == old {
        return Ok(false);
    }
    let node = Node::connect(client, config).await?;
    tracing::info!(backend = BACKEND, from = %old, to = %address, "Sentinel named a new primary");
    *primary.node.write().unwrap_or_else(|e| e.into_inner()) = node;
    Ok(true)
}
