//! A throwaway 6-node Redis Cluster for tests: 3 masters and 3 replicas, each a `redis-server
//! --cluster-enabled yes` on an ephemeral loopback port (its bus port, +10000, free too), joined
//! with `redis-cli --cluster create --cluster-replicas 1`; killed on drop. A short node timeout
//! (1 s) makes a failover take seconds, not the production default's tens of seconds.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Node timeout of the test cluster: a master is failed over about this long after it dies.
pub const NODE_TIMEOUT_MS: u64 = 1000;

struct Node {
    port: u16,
    child: Option<Child>,
}

/// A running cluster, killed on drop.
pub struct RedisCluster {
    nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub id: String,
    pub port: u16,
    pub master: bool,
    /// The master's id, for a replica.
    pub master_id: Option<String>,
    pub failed: bool,
    /// Slot ranges, for a master.
    pub slots: Vec<(u16, u16)>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        for _ in 0..5 {
            if let Some(c) = Self::try_start() {
                return c;
            }
        }
        panic!("could not start a redis cluster (redis-server and redis-cli must be installed)");
    }

    fn try_start() -> Option<RedisCluster> {
        let dir = tempfile::tempdir().ok()?;
        let mut nodes = Vec::new();
        for _ in 0..6 {
            let port = cluster_port()?;
            let child = spawn_node(port, dir.path())?;
            nodes.push(Node {
                port,
                child: Some(child),
            });
        }
        let cluster = RedisCluster { nodes, _dir: dir };
        let addrs: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .ok()?;
        if !created.success() {
            return None;
        }
        cluster
            .wait_healthy(Duration::from_secs(30))
            .then_some(cluster)
    }

    /// `redis+cluster://` URL of every node (the engine's `--redis`).
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// A synchronous cluster client (redis-rs), for checks from the test.
    pub fn client(&self) -> redis::cluster::ClusterConnection {
        let urls: Vec<String> = self
            .alive_ports()
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}/"))
            .collect();
        redis::cluster::ClusterClient::new(urls)
            .expect("cluster client")
            .get_connection()
            .expect("cluster connection")
    }

    fn alive_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.port)
            .collect()
    }

    /// `CLUSTER NODES` as seen from a live node.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        for port in self.alive_ports() {
            if let Some(text) = node_query(port, &["CLUSTER", "NODES"]) {
                return parse_nodes(&text);
            }
        }
        Vec::new()
    }

    /// The port of the master serving `key`'s slot.
    pub fn master_of(&self, key: &str) -> u16 {
        let slot: u16 = self
            .alive_ports()
            .iter()
            .find_map(|&p| node_query(p, &["CLUSTER", "KEYSLOT", key]))
            .and_then(|s| s.trim().parse().ok())
            .expect("CLUSTER KEYSLOT");
        self.nodes()
            .into_iter()
            .find(|n| {
                n.master && !n.failed && n.slots.iter().any(|&(a, b)| (a..=b).contains(&slot))
            })
            .map(|n| n.port)
            .expect("a master for the slot")
    }

    /// Kills (SIGKILL) the node on `port`.
    pub fn kill(&mut self, port: u16) {
        if let Some(n) = self.nodes.iter_mut().find(|n| n.port == port) {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    /// Whether every live node reports `cluster_state:ok` and all 16384 slots are served by
    /// live masters.
    pub fn healthy(&self) -> bool {
        let alive = self.alive_ports();
        let states_ok = alive.iter().all(|&p| {
            node_query(p, &["CLUSTER", "INFO"]).is_some_and(|t| t.contains("cluster_state:ok"))
        });
        if !states_ok {
            return false;
        }
        let served: u32 = self
            .nodes()
            .iter()
            .filter(|n| n.master && !n.failed && alive.contains(&n.port))
            .flat_map(|n| n.slots.iter())
            .map(|&(a, b)| u32::from(b - a) + 1)
            .sum();
        served == 16384
    }

    /// Waits until [`Self::healthy`]; false after `timeout`.
    pub fn wait_healthy(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.healthy() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// A free loopback port whose cluster bus port (+10000) is free too, never 6379.
fn cluster_port() -> Option<u16> {
    for _ in 0..200 {
        let port = crate::redis::free_port();
        if port == 6379 || port > 55_000 {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return Some(port);
        }
    }
    None
}

fn spawn_node(port: u16, dir: &std::path::Path) -> Option<Child> {
    let child = crate::redis::server_command(port, dir)
        .args(["--cluster-enabled", "yes"])
        .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
        .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
        .args(["--appendonly", "no"])
        .spawn()
        .expect("redis-server must be installed");
    crate::redis::ready_or_killed(child, port)
}

/// One command on one node (no cluster routing); its reply as text.
fn node_query(port: u16, args: &[&str]) -> Option<String> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).ok()?;
    let mut conn = client
        .get_connection_with_timeout(Duration::from_millis(500))
        .ok()?;
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    match cmd.query::<redis::Value>(&mut conn).ok()? {
        redis::Value::Int(n) => Some(n.to_string()),
        v => redis::from_redis_value::<String>(v).ok(),
    }
}

fn parse_nodes(text: &str) -> Vec<NodeInfo> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            let port = f[1].split('@').next()?.rsplit(':').next()?.parse().ok()?;
            let flags = f[2];
            let slots = f[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => s.parse().ok().map(|x| (x, x)),
                })
                .collect();
            Some(NodeInfo {
                id: f[0].to_owned(),
                port,
                master: flags.contains("master"),
                master_id: (f[3] != "-").then(|| f[3].to_owned()),
                failed: flags.contains("fail") && !flags.contains("fail?"),
                slots,
            })
        })
        .collect()
}
