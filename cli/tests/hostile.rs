//! Hostile traffic against the real `funnel serve` process: random bytes, truncated and mutated
//! JSON, duplicate keys, deep nesting, huge numbers, chunked, oversized and half-sent bodies,
//! odd headers, `Expect: 100-continue` aborts, pipelined requests closed unread, resets
//! (SO_LINGER 0) while the response is written, slow headers, and event batches of unknown
//! items. Afterwards the process must be alive, `/healthz` must answer within 100 ms, no
//! response may be a 5xx, every error body must be JSON `{code, message}`, and memory and idle
//! CPU must be back near their baseline.
//!
//! Short by default (CI); `FUNNEL_HOSTILE_LONG=1` runs the long mode (over 20,000 requests and
//! 2M event clicks on unknown items). `FUNNEL_HOSTILE_SEED` replays one seed.

mod common;

use common::build_bundle;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const HEADER_TIMEOUT_MS: u64 = 1000;

struct Server {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Server {
    fn start(dir: &Path, bundle: &Path) -> Server {
        let port = common::free_port();
        let cfg = dir.join("hostile.toml");
        std::fs::write(
            &cfg,
            format!(
                "[server]\nheader_timeout_ms = {HEADER_TIMEOUT_MS}\nbody_timeout_ms = 1000\n\
                 idle_timeout_ms = 3000\nwrite_timeout_ms = 2000\n\n[features]\nclock = \"bundle\"\n\n\
                 [events]\nlog_dir = \"{}\"\n",
                dir.join("events").display()
            ),
        )
        .expect("config");
        let log = dir.join("server.log");
        let child = Command::new(env!("CARGO_BIN_EXE_funnel"))
            .args(["serve", "--config"])
            .arg(&cfg)
            .arg("--bundle")
            .arg(bundle)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("spawn funnel");
        let s = Server { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(60);
        while s.get("/healthz").map(|r| r.status) != Some(200) {
            assert!(Instant::now() < deadline, "server did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
        s
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn get(&self, path: &str) -> Option<Resp> {
        let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        exchange(self.port, req.as_bytes(), Duration::from_secs(5))
            .ok()
            .and_then(|r| r.into_iter().next())
    }

    fn post(&self, path: &str, body: &str) -> Option<Resp> {
        exchange(self.port, &post(path, body), Duration::from_secs(10))
            .ok()
            .and_then(|r| r.into_iter().next())
    }

    /// (resident set KiB, CPU ticks used so far).
    fn usage(&self) -> (u64, u64) {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let rss = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // Fields after the ")" of the command name: utime and stime are the 12th and 13th.
        let ticks = stat
            .rsplit_once(')')
            .map(|(_, rest)| {
                let f: Vec<&str> = rest.split_whitespace().collect();
                f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
                    + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
            })
            .unwrap_or(0);
        (rss, ticks)
    }

    /// Share of one core used over `over`.
    fn cpu_share(&self, over: Duration) -> f64 {
        let (_, a) = self.usage();
        std::thread::sleep(over);
        let (_, b) = self.usage();
        // SAFETY: sysconf reads a constant.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        (b - a) as f64 / hz / over.as_secs_f64()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn post(path: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// One complete response read back.
#[derive(Debug)]
struct Resp {
    status: u16,
    body: Vec<u8>,
}

/// Every complete response in `buf` (content-length framed, as the server's all are).
fn parse_responses(mut buf: &[u8]) -> Vec<Resp> {
    let mut out = Vec::new();
    loop {
        let mut fields = [httparse::EMPTY_HEADER; 32];
        let mut r = httparse::Response::new(&mut fields);
        let Ok(httparse::Status::Complete(n)) = r.parse(buf) else {
            return out;
        };
        let status = r.code.unwrap_or(0);
        let len = r
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| {
                std::str::from_utf8(h.value)
                    .ok()?
                    .trim()
                    .parse::<usize>()
                    .ok()
            })
            .unwrap_or(0);
        // The response to a HEAD request has a length and no body; these tests send no HEAD
        // they read back, and 1xx heads have neither.
        let len = if (100..200).contains(&status) { 0 } else { len };
        if buf.len() < n + len {
            return out;
        }
        out.push(Resp {
            status,
            body: buf[n..n + len].to_vec(),
        });
        buf = &buf[n + len..];
    }
}

/// Sends `bytes`, reads until the server closes (or `wait` passes), parses what came back.
fn exchange(port: u16, bytes: &[u8], wait: Duration) -> std::io::Result<Vec<Resp>> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(wait))?;
    // The server may refuse before taking everything: what it answered still counts.
    let _ = s.write_all(bytes);
    Ok(parse_responses(&read_to_close(&mut s, wait)))
}

fn read_to_close(s: &mut TcpStream, wait: Duration) -> Vec<u8> {
    let deadline = Instant::now() + wait;
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    out
}

/// Closes with a reset instead of a FIN (SO_LINGER 0): what a crashed or impatient client does.
fn reset(s: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket this function owns, with a correctly sized struct.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(s);
}

/// What one case sends and how it ends.
enum Case {
    /// Send, read every response until the server closes.
    Exchange(Vec<u8>),
    /// Send, then close without reading (FIN), after `after` ms.
    CloseUnread(Vec<u8>, u64),
    /// Send, then reset the connection while the response is being written.
    Reset(Vec<u8>),
}

fn valid_recommend(rng: &mut StdRng) -> String {
    serde_json::json!({
        "user_id": rng.gen_range(1..=220).to_string(),
        "k": rng.gen_range(1..=30),
        "explain": rng.gen_bool(0.3),
        "context": {"session_items": [rng.gen_range(1..=500)], "device": "mobile"},
        "filters": {"categories_none": ["c7"]},
    })
    .to_string()
}

fn valid_events(rng: &mut StdRng) -> String {
    let n = rng.gen_range(1..=20);
    const TYPES: [&str; 5] = ["click", "view", "impression", "purchase", "teleport"];
    let events: Vec<serde_json::Value> = (0..n)
        .map(|_| {
            let ty = TYPES[rng.gen_range(0..TYPES.len())];
            serde_json::json!({
                "user_id": rng.gen_range(1..=220),
                "item_id": rng.gen_range(1..=520),
                "type": ty,
                "event_id": format!("h{}", rng.gen::<u32>()),
            })
        })
        .collect();
    serde_json::json!({ "events": events }).to_string()
}

fn mutate(rng: &mut StdRng, s: &str) -> Vec<u8> {
    let mut b = s.as_bytes().to_vec();
    for _ in 0..rng.gen_range(1..=4) {
        if b.is_empty() {
            break;
        }
        let at = rng.gen_range(0..b.len());
        match rng.gen_range(0..5) {
            0 => b.truncate(at),
            1 => b[at] = rng.gen(),
            2 => {
                const NOISE: &[u8] = b"{}[]\",:\\0-e9\x00\xff";
                b.insert(at, NOISE[rng.gen_range(0..NOISE.len())]);
            }
            3 => {
                let end = (at + rng.gen_range(1..20)).min(b.len());
                b.drain(at..end);
            }
            _ => {
                let end = (at + rng.gen_range(1..20)).min(b.len());
                let dup = b[at..end].to_vec();
                b.splice(at..at, dup);
            }
        }
    }
    b
}

fn framed(path: &str, body: &[u8], extra: &str) -> Vec<u8> {
    let mut v = format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{extra}Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    v.extend_from_slice(body);
    v
}

fn chunked(path: &str, body: &[u8], chunk: usize) -> Vec<u8> {
    let mut v = format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for c in body.chunks(chunk.max(1)) {
        v.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        v.extend_from_slice(c);
        v.extend_from_slice(b"\r\n");
    }
    v.extend_from_slice(b"0\r\n\r\n");
    v
}

fn route(rng: &mut StdRng) -> &'static str {
    if rng.gen_bool(0.5) {
        "/v1/recommend"
    } else {
        "/v1/events"
    }
}

fn body_for(rng: &mut StdRng, path: &str) -> String {
    if path == "/v1/events" {
        valid_events(rng)
    } else {
        valid_recommend(rng)
    }
}

/// The case number `i` of the suite (deterministic in the seed).
fn case(rng: &mut StdRng) -> Case {
    let path = route(rng);
    match rng.gen_range(0..16) {
        // Random bytes, sometimes behind a plausible request line.
        0 => {
            let mut v: Vec<u8> = (0..rng.gen_range(1..3000)).map(|_| rng.gen()).collect();
            if rng.gen_bool(0.5) {
                let mut head = b"POST /v1/recommend HTTP/1.1\r\n".to_vec();
                head.append(&mut v);
                v = head;
            }
            v.extend_from_slice(b"\r\n\r\n");
            Case::Exchange(v)
        }
        // Truncated and mutated JSON, framed correctly.
        1..=3 => {
            let b = body_for(rng, path);
            Case::Exchange(framed(path, &mutate(rng, &b), ""))
        }
        // Duplicate keys, deep nesting, huge numbers, long strings.
        4 => {
            let depth = rng.gen_range(100..50_000);
            let bodies = [
                r#"{"user_id": "1", "user_id": "2", "k": 5, "k": 7}"#.to_string(),
                format!(r#"{{"user_id": {}1{}}}"#, "[".repeat(depth), "]".repeat(depth)),
                format!(r#"{{"events": {}{}}}"#, "[".repeat(depth), "]".repeat(depth)),
                format!(r#"{{"user_id": "1", "context": {}}}"#, "{\"a\":".repeat(depth)),
                r#"{"user_id": 1e999, "k": 99999999999999999999999999999}"#.into(),
                r#"{"user_id": "1", "k": -1e308}"#.into(),
                r#"{"events": [{"user_id": 18446744073709551616, "item_id": 1e400, "type": "click"}]}"#.into(),
                format!(r#"{{"user_id": "{}"}}"#, "x".repeat(rng.gen_range(1..60_000))),
                r#"{"user_id": "1", "exclude_items": [1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1]}"#.into(),
            ];
            let b = &bodies[rng.gen_range(0..bodies.len())];
            Case::Exchange(framed(path, b.as_bytes(), ""))
        }
        // Chunked bodies: good, oversized, broken chunk sizes.
        5 => {
            let b = body_for(rng, path);
            match rng.gen_range(0..3) {
                0 => Case::Exchange(chunked(path, b.as_bytes(), rng.gen_range(1..64))),
                1 => Case::Exchange(chunked(path, &vec![b' '; 1_200_000], 65_536)),
                _ => {
                    let mut v = chunked(path, b.as_bytes(), 7);
                    let at = rng.gen_range(80..v.len());
                    v[at] = b'z';
                    Case::Exchange(v)
                }
            }
        }
        // Oversized: declared, or sent.
        6 => {
            if rng.gen_bool(0.5) {
                let head = format!(
                    "POST {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 900000000\r\n\r\n{{"
                );
                Case::Exchange(head.into_bytes())
            } else {
                Case::Exchange(framed(path, &vec![b'['; 2_000_000], ""))
            }
        }
        // Half-sent: a body shorter than its Content-Length, then gone (or kept: 408).
        7 => {
            let b = body_for(rng, path);
            let mut v = format!(
                "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
                b.len() + 100
            )
            .into_bytes();
            v.extend_from_slice(b.as_bytes());
            if rng.gen_bool(0.8) {
                Case::CloseUnread(v, rng.gen_range(0..30))
            } else {
                Case::Exchange(v)
            }
        }
        // Odd headers.
        8 | 9 => {
            let b = body_for(rng, path);
            let odd = [
                "Content-Length: 5\r\n".to_string(),
                "Content-Type: appl\x01ication/json\r\n".into(),
                "Content-Type: text/plain; charset=\u{00ff}\r\n".into(),
                format!("X-Long: {}\r\n", "v".repeat(rng.gen_range(1..30_000))),
                (0..rng.gen_range(50..150))
                    .map(|i| format!("X-H{i}: v\r\n"))
                    .collect(),
                "Transfer-Encoding: chunked, gzip\r\n".into(),
                "Transfer-Encoding: gzip\r\n".into(),
                "Content-Length: -1\r\n".into(),
                "Authorization: Bearer nope\r\n".into(),
                "Expect: something-else\r\n".into(),
                "X-Request-Id: \x7f\r\n".into(),
                format!("X-Request-Id: {}\r\n", "r".repeat(500)),
                "Host: \r\nHost: b\r\n".into(),
                " folded: header\r\n".into(),
                "Bad Header: x\r\n".into(),
            ];
            let extra = &odd[rng.gen_range(0..odd.len())];
            Case::Exchange(framed(path, b.as_bytes(), extra))
        }
        // Odd request lines.
        10 => {
            let lines = [
                "GET /healthz HTTP/1.0\r\n\r\n".to_string(),
                "GET /healthz HTTP/2.0\r\n\r\n".into(),
                "GET http://t/healthz HTTP/1.1\r\nHost: t\r\n\r\n".into(),
                "post /v1/recommend HTTP/1.1\r\nHost: t\r\n\r\n".into(),
                "BREW /v1/recommend HTTP/1.1\r\nHost: t\r\n\r\n".into(),
                "GET /heal\x01thz HTTP/1.1\r\nHost: t\r\n\r\n".into(),
                format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "a".repeat(70_000)),
                "GET /readyz?x=%ff%00 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".into(),
                "DELETE /v1/events HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".into(),
                "\r\n\r\nGET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".into(),
                "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".into(),
            ];
            Case::Exchange(lines[rng.gen_range(0..lines.len())].clone().into_bytes())
        }
        // `Expect: 100-continue`, then the upload is abandoned.
        11 => {
            let v = format!(
                "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: 15\r\n\r\n{{\"us"
            );
            Case::CloseUnread(v.into_bytes(), 50)
        }
        // Pipelined requests, closed unread or reset.
        12 | 13 => {
            let n = rng.gen_range(2..60);
            let one = if rng.gen_bool(0.5) {
                b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()
            } else {
                let b = body_for(rng, path);
                format!(
                    "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{b}",
                    b.len()
                )
                .into_bytes()
            };
            let v = one.repeat(n);
            if rng.gen_bool(0.5) {
                Case::CloseUnread(v, rng.gen_range(0..5))
            } else {
                Case::Reset(v)
            }
        }
        // Valid traffic, to keep the real path busy among the rest.
        _ => {
            let b = body_for(rng, path);
            Case::Exchange(framed(path, b.as_bytes(), ""))
        }
    }
}

/// What a response must look like: never a 5xx, and an error body is JSON `{code, message}`.
fn check(r: &Resp) -> Result<(), String> {
    let text = String::from_utf8_lossy(&r.body);
    if r.status >= 500 {
        return Err(format!("{}: {text}", r.status));
    }
    if r.status == 100 {
        return Ok(());
    }
    let v: serde_json::Value = serde_json::from_slice(&r.body)
        .map_err(|e| format!("{}: not JSON ({e}): {text:.200}", r.status))?;
    if r.status >= 400 && !(v["code"].is_string() && v["message"].is_string()) {
        return Err(format!(
            "{}: error body without code/message: {text:.200}",
            r.status
        ));
    }
    Ok(())
}

fn run_case(port: u16, c: Case) -> Vec<Resp> {
    match c {
        Case::Exchange(bytes) => exchange(port, &bytes, Duration::from_secs(5)).unwrap_or_default(),
        Case::CloseUnread(bytes, after) => {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                let _ = s.write_all(&bytes);
                std::thread::sleep(Duration::from_millis(after));
            }
            Vec::new()
        }
        Case::Reset(bytes) => {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                let _ = s.write_all(&bytes);
                // Read a little, so the server is mid-write when the reset lands.
                s.set_read_timeout(Some(Duration::from_millis(20))).ok();
                let mut b = [0u8; 64];
                let _ = s.read(&mut b);
                reset(s);
            }
            Vec::new()
        }
    }
}

/// Slow clients, one header byte every `every`: each must be closed (with a 408) within the
/// header timeout and some slack. Returns the longest time a connection stayed open.
fn slow_headers(port: u16, n: usize, every: Duration) -> (Duration, usize) {
    let req = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut socks: Vec<(TcpStream, usize, Option<Duration>, Vec<u8>)> = (0..n)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", port)).ok())
        .map(|s| {
            s.set_nonblocking(true).ok();
            (s, 0, None, Vec::new())
        })
        .collect();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(20) && socks.iter().any(|s| s.2.is_none()) {
        for (s, sent, closed, got) in socks.iter_mut().filter(|s| s.2.is_none()) {
            let mut b = [0u8; 1024];
            match s.read(&mut b) {
                Ok(0) => *closed = Some(t0.elapsed()),
                Ok(k) => got.extend_from_slice(&b[..k]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if *sent < req.len() && s.write(&req[*sent..*sent + 1]).is_ok() {
                        *sent += 1;
                    }
                }
                Err(_) => *closed = Some(t0.elapsed()),
            }
        }
        std::thread::sleep(every);
    }
    let longest = socks
        .iter()
        .map(|s| s.2.unwrap_or(Duration::MAX))
        .max()
        .unwrap_or_default();
    let timeouts = socks
        .iter()
        .filter(|s| {
            parse_responses(&s.3)
                .first()
                .is_some_and(|r| r.status == 408)
        })
        .count();
    (longest, timeouts)
}

/// Event batches of 1,000 clicks on item ids the catalog does not hold: every one refused by
/// its index, nothing counted.
fn unknown_item_batches(s: &Server, batches: usize, failures: &Mutex<Vec<String>>) {
    for b in 0..batches {
        let events: Vec<serde_json::Value> = (0..1000)
            .map(|i| {
                serde_json::json!({"user_id": i % 97, "item_id": 1_000_000 + b * 1000 + i, "type": "click"})
            })
            .collect();
        let body = serde_json::json!({ "events": events }).to_string();
        match s.post("/v1/events", &body) {
            Some(r) if r.status == 202 => {
                let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
                let rejected = v["rejected"].as_array().map(Vec::len).unwrap_or(0);
                let unknown = v["rejected"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .all(|r| r["code"] == "unknown_item");
                if v["accepted"] != 0 || rejected != 1000 || !unknown {
                    failures
                        .lock()
                        .unwrap()
                        .push(format!("unknown items accepted: {v:.300}"));
                    return;
                }
            }
            other => {
                failures
                    .lock()
                    .unwrap()
                    .push(format!("unknown-item batch: {other:?}"));
                return;
            }
        }
    }
}

#[test]
fn the_server_survives_hostile_traffic() {
    let long = std::env::var("FUNNEL_HOSTILE_LONG").is_ok_and(|v| v == "1");
    let seed: u64 = std::env::var("FUNNEL_HOSTILE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_261_202);
    let dir = tempfile::tempdir().expect("tmp");
    let bundle = build_bundle(dir.path());
    let mut server = Server::start(dir.path(), &bundle);
    let port = server.port;

    // The three requests that killed the server through SIGPIPE, each several times.
    for _ in 0..5 {
        run_case(
            port,
            Case::CloseUnread(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n".repeat(3), 0),
        );
        run_case(
            port,
            Case::CloseUnread(
                b"POST /v1/recommend HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 15\r\n\r\n{\"us".to_vec(),
                50,
            ),
        );
        let body = r#"{"user_id": "1", "k": 10}"#;
        let one = format!(
            "POST /v1/recommend HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.write_all(one.repeat(50).as_bytes());
            let mut b = [0u8; 256];
            let _ = s.read(&mut b);
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(server.alive(), "killed by a client closing early (SIGPIPE)");

    // Warm-up on valid traffic, then the baseline.
    let mut rng = StdRng::seed_from_u64(seed);
    for _ in 0..200 {
        let b = valid_recommend(&mut rng);
        let r = server.post("/v1/recommend", &b).expect("warm-up");
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    std::thread::sleep(Duration::from_millis(500));
    let (rss0, _) = server.usage();
    let idle0 = server.cpu_share(Duration::from_secs(2));

    // The mixed hostile cases, on four client threads.
    let cases = if long { 24_000 } else { 2_400 };
    let next = Arc::new(AtomicUsize::new(0));
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let statuses: Arc<Mutex<std::collections::BTreeMap<u16, usize>>> = Arc::default();
    let t = Instant::now();
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (next, failures, statuses) = (next.clone(), failures.clone(), statuses.clone());
            std::thread::spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= cases {
                    break;
                }
                let mut rng =
                    StdRng::seed_from_u64(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                for r in run_case(port, case(&mut rng)) {
                    *statuses.lock().unwrap().entry(r.status).or_default() += 1;
                    if let Err(e) = check(&r) {
                        failures.lock().unwrap().push(format!("case {i}: {e}"));
                    }
                }
            })
        })
        .collect();
    // Meanwhile: slow headers, and unknown-item events.
    let (slowest, slow_408) = slow_headers(
        port,
        if long { 200 } else { 40 },
        Duration::from_millis(200),
    );
    unknown_item_batches(&server, if long { 2_000 } else { 20 }, &failures);
    for w in workers {
        w.join().expect("client thread");
    }
    let took = t.elapsed();
    let statuses = statuses.lock().unwrap().clone();
    let answered: usize = statuses.values().sum();
    eprintln!(
        "hostile: {cases} cases, {answered} responses in {:.1}s, statuses {statuses:?}; slow headers closed within {:.2}s ({slow_408} got 408)",
        took.as_secs_f64(),
        slowest.as_secs_f64()
    );

    // Half-sent requests held open, then let go: their memory must come back.
    let held: Vec<TcpStream> = (0..if long { 2_000 } else { 500 })
        .filter_map(|i| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
            let head = if i % 2 == 0 {
                format!(
                    "POST /v1/events HTTP/1.1\r\nHost: t\r\nContent-Length: 60000\r\n\r\n{}",
                    "[".repeat(30_000)
                )
            } else {
                format!(
                    "GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: {}",
                    "h".repeat(12_000)
                )
            };
            s.write_all(head.as_bytes()).ok()?;
            Some(s)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let (rss_held, _) = server.usage();
    std::thread::sleep(Duration::from_millis(HEADER_TIMEOUT_MS + 1500));
    drop(held);

    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        server.alive(),
        "the server died; log: {}",
        server.log.display()
    );
    let t = Instant::now();
    let health = server.get("/healthz").map(|r| r.status);
    let health_ms = t.elapsed().as_secs_f64() * 1e3;
    let (rss1, _) = server.usage();
    let idle1 = server.cpu_share(Duration::from_secs(3));
    eprintln!(
        "hostile: RSS {} MiB before, {} MiB with half-sent requests held, {} MiB after; idle CPU {:.3} → {:.3} cores; /healthz in {health_ms:.1} ms",
        rss0 / 1024,
        rss_held / 1024,
        rss1 / 1024,
        idle0,
        idle1
    );
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} bad responses (seed {seed}), e.g.:\n{}",
        failures.len(),
        failures[..failures.len().min(10)].join("\n")
    );
    assert_eq!(health, Some(200));
    assert!(health_ms < 100.0, "/healthz took {health_ms:.1} ms");
    assert!(
        slowest <= Duration::from_millis(HEADER_TIMEOUT_MS * 2 + 1500),
        "a slow-header client stayed {slowest:?}"
    );
    assert!(slow_408 > 0, "no slow-header client got its 408");
    assert!(
        answered >= cases / 2,
        "only {answered} responses to {cases} cases"
    );
    // Near baseline: within 24 MiB and a quarter of it; and most of what the held requests
    // took is given back once they are dropped.
    let slack = rss0 / 4 + 24 * 1024;
    assert!(
        rss1 <= rss0 + slack,
        "RSS {rss1} KiB after the suite, {rss0} KiB before"
    );
    if rss_held > rss0 + 8 * 1024 {
        assert!(
            rss1 - rss0.min(rss1) <= (rss_held - rss0) / 2,
            "half-sent requests' memory kept: {rss0} → {rss_held} → {rss1} KiB"
        );
    }
    assert!(
        idle1 <= idle0 + 0.05,
        "idle CPU {idle1:.3} cores after, {idle0:.3} before"
    );

    // /readyz names no absolute path of this machine.
    let ready = server.get("/readyz").expect("readyz");
    let text = String::from_utf8_lossy(&ready.body).into_owned();
    let tmp = dir.path().display().to_string();
    assert!(!text.contains(&tmp), "{text}");
    assert!(!text.contains("\"/"), "{text}");
}
