//! The Redis connection behind the feature store, the builder's push and streaming writes: one
//! server (a multiplexed connection, re-established once when it drops) or a Redis Cluster
//! (redis-rs's async cluster client), behind one [`RedisConn::query`] that runs a pipeline.
//!
//! A cluster answers a pipeline only when its keys live on one node. Keys that must be read
//! together share a hash tag (`{u:42}`: feature-defs/README.md), so a user's feature groups and
//! streaming lists are one slot and one round trip, as on a single server. A pipeline over many
//! slots (item features of 500 candidates, a push of 1,000 entities) is split per node with a
//! slot map read from `CLUSTER SLOTS`, the node pipelines run concurrently and the replies are
//! put back in order. When the map is stale (a failover, a resharding), a node pipeline that
//! fails is sent again one slot at a time, routed by the cluster client, which follows MOVED and
//! refreshes its own map; the slot map is read again before the next split.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::redis::aio::MultiplexedConnection;
use ::redis::cluster::ClusterClientBuilder;
use ::redis::cluster_async::ClusterConnection;
use ::redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use ::redis::{AsyncConnectionConfig, Client, Cmd, Pipeline, RedisError, Value};
use tokio::sync::RwLock;
use tokio::task::JoinSet;

use super::FeatureError;

/// The scheme of a cluster URL: `redis+cluster://host:port,host:port` (any node list; the
/// client discovers the rest). Credentials, if any, go before the first host.
pub const CLUSTER_SCHEME: &str = "redis+cluster://";

/// Slots of a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// Where the online store lives, parsed from a `--redis` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `redis://…` (or `rediss://`, `unix://`): one server.
    Single(String),
    /// `redis+cluster://[user:pass@]h1:p1,h2:p2[/]`: the seed nodes, as `redis://` URLs.
    Cluster(Vec<String>),
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, FeatureError> {
        let Some(rest) = url.strip_prefix(CLUSTER_SCHEME) else {
            return Ok(Target::Single(url.to_owned()));
        };
        let rest = rest.trim_end_matches('/');
        let (auth, hosts) = match rest.rsplit_once('@') {
            Some((a, h)) => (format!("{a}@"), h),
            None => (String::new(), rest),
        };
        let nodes: Vec<String> = hosts
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(|h| format!("redis://{auth}{h}/"))
            .collect();
        if nodes.is_empty() {
            return Err(FeatureError::Runtime(
                "a redis+cluster:// URL needs at least one host:port".to_owned(),
            ));
        }
        Ok(Target::Cluster(nodes))
    }
}

/// Timeouts of a [`RedisConn`].
#[derive(Debug, Clone, Copy)]
pub struct ConnOptions {
    /// Reply timeout of a query without its own.
    pub response_timeout: Option<Duration>,
    pub connection_timeout: Option<Duration>,
}

/// A connection to one Redis or to a cluster; cheap to clone, shared by all requests.
#[derive(Clone)]
pub struct RedisConn {
    inner: Arc<Inner>,
}

enum Inner {
    Single(Box<Single>),
    Cluster(Cluster),
}

/// The commands (their positions in the caller's pipeline) one node pipeline carried, and its
/// reply.
type GroupReply = (Vec<usize>, Result<Vec<Value>, RedisError>);

struct Single {
    client: Client,
    config: AsyncConnectionConfig,
    /// (generation, connection); the generation lets concurrent failures reconnect once.
    conn: RwLock<(u64, MultiplexedConnection)>,
}

struct Cluster {
    conn: ClusterConnection,
    response_timeout: Option<Duration>,
    /// Master of each slot (index into `nodes`), read from `CLUSTER SLOTS`; None until the first
    /// split and after a failure.
    map: RwLock<Option<Arc<SlotMap>>>,
}

fn redis_err(context: &str, source: RedisError) -> FeatureError {
    FeatureError::Redis {
        context: context.to_owned(),
        source,
    }
}

fn timed_out(context: &str, after: Duration) -> FeatureError {
    redis_err(
        context,
        RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no reply within {} ms", after.as_millis()),
        )),
    )
}

impl RedisConn {
    /// Connects to `url` (see [`Target`]). The context of an error omits the URL: it may carry a
    /// password.
    pub async fn connect(url: &str, opts: &ConnOptions) -> Result<RedisConn, FeatureError> {
        let inner = match Target::parse(url)? {
            Target::Single(url) => {
                let client = Client::open(url).map_err(|e| redis_err("parse url", e))?;
                let config = AsyncConnectionConfig::new()
                    .set_response_timeout(opts.response_timeout)
                    .set_connection_timeout(opts.connection_timeout);
                let conn = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map_err(|e| redis_err("connect", e))?;
                Inner::Single(Box::new(Single {
                    client,
                    config,
                    conn: RwLock::new((0, conn)),
                }))
            }
            Target::Cluster(nodes) => {
                let mut b = ClusterClientBuilder::new(nodes)
                    // A failover takes seconds; a request has milliseconds. Each query is capped
                    // by its own timeout below, so retries never outlive it.
                    .retries(3)
                    .min_retry_wait(10)
                    .max_retry_wait(200);
                if let Some(t) = opts.connection_timeout {
                    b = b.connection_timeout(t);
                }
                if let Some(t) = opts.response_timeout {
                    b = b.response_timeout(t);
                }
                let client = b.build().map_err(|e| redis_err("parse cluster url", e))?;
                let conn = client
                    .get_async_connection()
                    .await
                    .map_err(|e| redis_err("connect to cluster", e))?;
                Inner::Cluster(Cluster {
                    conn,
                    response_timeout: opts.response_timeout,
                    map: RwLock::new(None),
                })
            }
        };
        Ok(RedisConn {
            inner: Arc::new(inner),
        })
    }

    pub fn is_cluster(&self) -> bool {
        matches!(&*self.inner, Inner::Cluster(_))
    }

    /// Runs `pipe` (with `reply_timeout` instead of the connection's, when given).
    ///
    /// On one server the replies are those of `pipe` (ignored commands left out). On a cluster
    /// a transaction must keep to one slot, and a plain pipeline's replies include its ignored
    /// commands': callers that read replies do not ignore any.
    pub async fn query(
        &self,
        pipe: &Pipeline,
        context: &str,
        reply_timeout: Option<Duration>,
    ) -> Result<Vec<Value>, FeatureError> {
        match &*self.inner {
            Inner::Single(s) => s.query(pipe, context, reply_timeout).await,
            Inner::Cluster(c) => {
                let Some(limit) = reply_timeout.or(c.response_timeout) else {
                    return c.query(pipe, context).await;
                };
                tokio::time::timeout(limit, c.query(pipe, context))
                    .await
                    .unwrap_or_else(|_| Err(timed_out(context, limit)))
            }
        }
    }
}

impl Single {
    async fn query(
        &self,
        pipe: &Pipeline,
        context: &str,
        reply_timeout: Option<Duration>,
    ) -> Result<Vec<Value>, FeatureError> {
        let (generation, mut conn) = {
            let guard = self.conn.read().await;
            (guard.0, guard.1.clone())
        };
        // The timeout belongs to this handle (a clone), not to the shared connection.
        if let Some(t) = reply_timeout {
            conn.set_response_timeout(t);
        }
        match pipe.query_async::<Vec<Value>>(&mut conn).await {
            Ok(v) => Ok(v),
            Err(e) if e.is_unrecoverable_error() || e.is_connection_dropped() => {
                tracing::warn!(error = %e, "redis connection lost; reconnecting");
                let mut conn = self.reconnect(generation).await?;
                if let Some(t) = reply_timeout {
                    conn.set_response_timeout(t);
                }
                pipe.query_async::<Vec<Value>>(&mut conn)
                    .await
                    .map_err(|e| redis_err(context, e))
            }
            Err(e) => Err(redis_err(context, e)),
        }
    }

    async fn reconnect(&self, seen_generation: u64) -> Result<MultiplexedConnection, FeatureError> {
        let mut guard = self.conn.write().await;
        if guard.0 != seen_generation {
            // Another request already replaced the connection.
            return Ok(guard.1.clone());
        }
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await
            .map_err(|e| redis_err("reconnect", e))?;
        *guard = (seen_generation.wrapping_add(1), conn.clone());
        Ok(conn)
    }
}

impl Cluster {
    async fn query(&self, pipe: &Pipeline, context: &str) -> Result<Vec<Value>, FeatureError> {
        let slots: Vec<Option<u16>> = pipe.cmd_iter().map(cmd_slot).collect();
        let first = slots.iter().flatten().next().copied();
        let one_slot = slots.iter().flatten().all(|s| Some(*s) == first);
        if pipe.is_transaction() || one_slot {
            // The cluster client routes it by its keys' slot and follows redirects.
            let mut conn = self.conn.clone();
            return pipe
                .query_async::<Vec<Value>>(&mut conn)
                .await
                .map_err(|e| redis_err(context, e));
        }
        let map = self.slot_map(context).await?;
        // Commands per master, in pipeline order; keyless commands go with the first group.
        let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (i, slot) in slots.iter().enumerate() {
            let node = slot.or(first).map_or(0, |s| map.node_of(s));
            groups.entry(node).or_default().push(i);
        }
        let cmds: Vec<&Cmd> = pipe.cmd_iter().collect();
        let mut running: JoinSet<GroupReply> = JoinSet::new();
        for (_, members) in groups {
            // Any slot of the group names the node: the map says they share it.
            let slot = members
                .iter()
                .find_map(|&i| slots[i])
                .or(first)
                .unwrap_or(0);
            let route = SingleNodeRoutingInfo::SpecificNode(Route::new(slot, SlotAddr::Master));
            self.spawn_group(&mut running, &cmds, members, Some(route));
        }
        let mut out: Vec<Option<Value>> = vec![None; cmds.len()];
        let mut stale: Vec<usize> = Vec::new();
        while let Some(joined) = running.join_next().await {
            let (members, reply) =
                joined.map_err(|e| FeatureError::Runtime(format!("redis task failed: {e}")))?;
            match reply {
                Ok(values) if values.len() == members.len() && !values.iter().any(redirected) => {
                    for (i, v) in members.into_iter().zip(values) {
                        out[i] = Some(v);
                    }
                }
                // Moved slots, a failed node, a short reply: slot by slot below.
                Ok(_) | Err(_) => stale.extend(members),
            }
        }
        if !stale.is_empty() {
            *self.map.write().await = None;
            self.by_slot(&cmds, &slots, &stale, &mut out, context)
                .await?;
        }
        out.into_iter()
            .map(|v| v.ok_or_else(|| super::redis::reply_err(context, "a command got no reply")))
            .collect()
    }

    /// Sends the commands `which` in one pipeline per slot, routed by the cluster client.
    async fn by_slot(
        &self,
        cmds: &[&Cmd],
        slots: &[Option<u16>],
        which: &[usize],
        out: &mut [Option<Value>],
        context: &str,
    ) -> Result<(), FeatureError> {
        let mut per_slot: BTreeMap<Option<u16>, Vec<usize>> = BTreeMap::new();
        for &i in which {
            per_slot.entry(slots[i]).or_default().push(i);
        }
        let mut running: JoinSet<GroupReply> = JoinSet::new();
        for (_, members) in per_slot {
            self.spawn_group(&mut running, cmds, members, None);
        }
        while let Some(joined) = running.join_next().await {
            let (members, reply) =
                joined.map_err(|e| FeatureError::Runtime(format!("redis task failed: {e}")))?;
            let values = reply.map_err(|e| redis_err(context, e))?;
            if values.len() != members.len() {
                return Err(super::redis::reply_err(
                    context,
                    &format!("{} replies for {} commands", values.len(), members.len()),
                ));
            }
            for (i, v) in members.into_iter().zip(values) {
                out[i] = Some(v);
            }
        }
        Ok(())
    }

    /// Sends the commands `members` as one pipeline: to `route`, or (None: one slot) where the
    /// cluster client routes it.
    fn spawn_group(
        &self,
        running: &mut JoinSet<GroupReply>,
        cmds: &[&Cmd],
        members: Vec<usize>,
        route: Option<SingleNodeRoutingInfo>,
    ) {
        let mut sub = Pipeline::with_capacity(members.len());
        for &i in &members {
            sub.add_command(cmds[i].clone());
        }
        let mut conn = self.conn.clone();
        running.spawn(async move {
            let n = sub.len();
            let reply = match route {
                Some(route) => conn.route_pipeline(sub, 0, n, route).await,
                None => sub.query_async::<Vec<Value>>(&mut conn).await,
            };
            (members, reply)
        });
    }

    /// The slot map, read once and again after a failure. Refreshes are serialized: the first
    /// waiter reads it, the others find it there.
    async fn slot_map(&self, context: &str) -> Result<Arc<SlotMap>, FeatureError> {
        if let Some(m) = self.map.read().await.as_ref() {
            return Ok(m.clone());
        }
        let mut guard = self.map.write().await;
        if let Some(m) = guard.as_ref() {
            return Ok(m.clone());
        }
        let started = Instant::now();
        let mut conn = self.conn.clone();
        let mut cmd = ::redis::cmd("CLUSTER");
        cmd.arg("SLOTS");
        let reply = conn
            .route_command(cmd, RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random))
            .await
            .map_err(|e| redis_err(context, e))?;
        let map = SlotMap::from_cluster_slots(reply)
            .map_err(|m| super::redis::reply_err("CLUSTER SLOTS", &m))?;
        tracing::debug!(
            masters = map.nodes.len(),
            took_ms = started.elapsed().as_millis() as u64,
            "read the cluster's slot map"
        );
        let map = Arc::new(map);
        *guard = Some(map.clone());
        Ok(map)
    }
}

/// A reply that says the slot lives elsewhere now (or the cluster cannot answer for it yet).
fn redirected(v: &Value) -> bool {
    matches!(v, Value::ServerError(e)
        if matches!(e.code(), "MOVED" | "ASK" | "TRYAGAIN" | "CLUSTERDOWN"))
}

/// Which master serves each slot.
#[derive(Debug, Clone)]
pub struct SlotMap {
    /// `host:port` of each master.
    pub nodes: Vec<String>,
    /// Index into `nodes` per slot (slots no master claims map to 0; the cluster client routes
    /// those commands and reports the error).
    owner: Vec<u16>,
}

impl SlotMap {
    pub fn node_of(&self, slot: u16) -> usize {
        self.owner
            .get(usize::from(slot))
            .map_or(0, |&n| usize::from(n))
    }

    /// Parses a `CLUSTER SLOTS` reply: `[[start, end, [host, port, id, …], replicas…], …]`.
    pub fn from_cluster_slots(reply: Value) -> Result<SlotMap, String> {
        let Value::Array(ranges) = reply else {
            return Err("expected an array".to_owned());
        };
        let mut nodes: Vec<String> = Vec::new();
        let mut owner = vec![0u16; usize::from(SLOTS)];
        for range in ranges {
            let Value::Array(parts) = range else {
                return Err("a slot range is not an array".to_owned());
            };
            let mut it = parts.into_iter();
            let (Some(start), Some(end), Some(Value::Array(master))) =
                (it.next(), it.next(), it.next())
            else {
                return Err("a slot range lacks start, end or master".to_owned());
            };
            let (Value::Int(start), Value::Int(end)) = (start, end) else {
                return Err("slot bounds are not integers".to_owned());
            };
            let mut m = master.into_iter();
            let host = m
                .next()
                .and_then(super::redis::value_bytes)
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or("a master without a host")?;
            let Some(Value::Int(port)) = m.next() else {
                return Err("a master without a port".to_owned());
            };
            let addr = format!("{host}:{port}");
            let index = match nodes.iter().position(|n| *n == addr) {
                Some(i) => i,
                None => {
                    nodes.push(addr);
                    nodes.len() - 1
                }
            };
            let index = u16::try_from(index).map_err(|_| "too many masters")?;
            let (lo, hi) = (start.max(0), end.min(i64::from(SLOTS) - 1));
            for s in lo..=hi {
                owner[s as usize] = index;
            }
        }
        Ok(SlotMap { nodes, owner })
    }
}

/// The slot of a command's key (its first argument after the name); None for a keyless command.
pub fn cmd_slot(cmd: &Cmd) -> Option<u16> {
    match cmd.args_iter().nth(1)? {
        ::redis::Arg::Simple(key) => Some(key_slot(key)),
        _ => None,
    }
}

/// The cluster slot of `key`: CRC16 (XMODEM) of its hash tag — the part between the first `{`
/// and the next `}`, when not empty — or of the whole key, mod 16384.
pub fn key_slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    crc16_xmodem(tagged) % SLOTS
}

fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_the_redis_cluster_spec() {
        // Test vectors of the cluster specification and redis-cli's CLUSTER KEYSLOT.
        assert_eq!(crc16_xmodem(b"123456789"), 0x31C3);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"bar"), 5061);
        assert_eq!(
            key_slot(b"{user1000}.following"),
            key_slot(b"{user1000}.followers")
        );
        // An empty tag does not count: the whole key hashes.
        assert_eq!(key_slot(b"foo{}{bar}"), crc16_xmodem(b"foo{}{bar}") % SLOTS);
        assert_eq!(key_slot(b"foo{{bar}}zap"), crc16_xmodem(b"{bar") % SLOTS);
        assert_eq!(
            key_slot(b"funnel:v1:{u:42}"),
            key_slot(b"funnel:s:{u:42}:recent")
        );
    }

    #[test]
    fn cluster_urls_parse() {
        assert_eq!(
            Target::parse("redis://127.0.0.1:6379/").unwrap(),
            Target::Single("redis://127.0.0.1:6379/".into())
        );
        assert_eq!(
            Target::parse("redis+cluster://a:1, b:2/").unwrap(),
            Target::Cluster(vec!["redis://a:1/".into(), "redis://b:2/".into()])
        );
        assert_eq!(
            Target::parse("redis+cluster://:pw@a:1,b:2").unwrap(),
            Target::Cluster(vec!["redis://:pw@a:1/".into(), "redis://:pw@b:2/".into()])
        );
        assert!(Target::parse("redis+cluster://").is_err());
    }

    #[test]
    fn slot_map_parses_cluster_slots() {
        let node = |h: &str, p: i64| {
            Value::Array(vec![
                Value::BulkString(h.as_bytes().to_vec()),
                Value::Int(p),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node("h", 1),
                node("h", 4),
            ]),
            Value::Array(vec![Value::Int(5461), Value::Int(10922), node("h", 2)]),
            Value::Array(vec![Value::Int(10923), Value::Int(16383), node("h", 3)]),
        ]);
        let m = SlotMap::from_cluster_slots(reply).unwrap();
        assert_eq!(m.nodes, ["h:1", "h:2", "h:3"]);
        assert_eq!(m.node_of(0), 0);
        assert_eq!(m.node_of(5461), 1);
        assert_eq!(m.node_of(16383), 2);
        assert!(SlotMap::from_cluster_slots(Value::Int(1)).is_err());
    }

    #[test]
    fn a_users_keys_share_one_slot() {
        use crate::features::{Entity, FeatureRegistry};
        let reg = FeatureRegistry::bundled().unwrap();
        for id in [1u64, 42, 943, 99_999] {
            let slots: std::collections::BTreeSet<u16> = reg
                .key_groups(Entity::User)
                .map(|g| key_slot(g.key.render("v1", id).as_bytes()))
                .collect();
            assert_eq!(slots.len(), 1, "user {id}: {slots:?}");
        }
    }

    #[test]
    fn command_slot_is_its_key() {
        let mut c = ::redis::cmd("HGETALL");
        c.arg("funnel:v1:{i:7}");
        assert_eq!(cmd_slot(&c), Some(key_slot(b"i:7")));
        assert_eq!(cmd_slot(&::redis::cmd("PING")), None);
    }
}
