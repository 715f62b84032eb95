//! A throwaway `redis-server` for tests: an ephemeral loopback port (never the developer's 6379),
//! an empty temp dir, killed on drop.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A throwaway redis-server, killed on drop.
pub struct RedisServer {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
    /// With an append-only file, so a restart finds the data again (like a production Redis).
    persistent: bool,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        Self::start_with(false)
    }

    /// A server whose data survives `kill` + `restart` (append-only file, fsync always).
    pub fn start_persistent() -> RedisServer {
        Self::start_with(true)
    }

    fn start_with(persistent: bool) -> RedisServer {
        for _ in 0..10 {
            let port = free_port();
            let dir = tempfile::tempdir().unwrap();
            if let Some(child) = spawn_redis(port, dir.path(), persistent) {
                return RedisServer {
                    child,
                    port,
                    dir,
                    persistent,
                };
            }
        }
        panic!("could not start redis-server");
    }

    /// Kills the server (SIGKILL) without starting another.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .unwrap()
    }

    /// Kills the server and starts another on the same port: empty, or with the data back when
    /// persistent.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(child) = spawn_redis(self.port, self.dir.path(), self.persistent) {
                self.child = child;
                return;
            }
            assert!(Instant::now() < deadline, "could not restart redis-server");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // The developer Redis lives on 6379; never touch it.
        if port != 6379 {
            return port;
        }
    }
}

/// Starts redis-server and waits for PING; `None` if it exits (e.g. the port was taken).
fn spawn_redis(port: u16, dir: &std::path::Path, persistent: bool) -> Option<Child> {
    let aof: &[&str] = if persistent {
        &["--appendonly", "yes", "--appendfsync", "always"]
    } else {
        &["--appendonly", "no"]
    };
    let child = server_command(port, dir)
        .args(aof)
        .spawn()
        .expect("redis-server must be installed");
    ready_or_killed(child, port)
}

/// `redis-server` on loopback `port`, keeping its files in `dir`, no RDB snapshots, quiet; the
/// caller adds its own options.
pub(crate) fn server_command(port: u16, dir: &std::path::Path) -> Command {
    let mut c = Command::new("redis-server");
    c.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", ""])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

/// Waits (up to 10 s) until the redis-server just spawned on `port` answers PING; `None`, with
/// the process killed, if it exits first or never answers (e.g. the port was taken).
pub(crate) fn ready_or_killed(mut child: Child, port: u16) -> Option<Child> {
    let url = format!("redis://127.0.0.1:{port}/");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if child.try_wait().ok()?.is_some() {
            return None;
        }
        let pong = redis::Client::open(url.as_str())
            .ok()
            .and_then(|c| c.get_connection().ok())
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c).ok());
        if pong.is_some() {
            return Some(child);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}
