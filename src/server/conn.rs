//! Client connections, from accept to close: hyper's HTTP/1 parser with the configured limits,
//! the connection cap, the header, idle and write timeouts, graceful shutdown, and JSON bodies
//! for the errors hyper answers by itself.
//!
//! hyper answers a request it cannot parse (400, 414, 431) with a bare status line and an empty
//! body, before the router sees anything. [`GuardedIo`] frames the responses the connection
//! writes, holds such a bodiless error back, and once hyper has given the connection up the
//! same status goes out with the JSON `{code, message}` body every other error has.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::rt::TokioTimer;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::api::{ApiErrorBody, ErrorCode};
use crate::config::ServerConfig;

/// The limits one connection lives under (from `[server]`).
#[derive(Debug, Clone)]
pub struct ConnLimits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub write_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_connections: usize,
}

impl ConnLimits {
    pub fn from_config(c: &ServerConfig) -> Self {
        Self {
            header_timeout: Duration::from_millis(c.header_timeout_ms),
            idle_timeout: Duration::from_millis(c.idle_timeout_ms),
            write_timeout: Duration::from_millis(c.write_timeout_ms),
            max_header_bytes: c.max_header_bytes,
            max_headers: c.max_headers,
            max_connections: c.max_connections,
        }
    }
}

/// Accepts connections on `listener` and serves `app` on each until `shutdown` turns true; then
/// lets the open ones finish their requests (at most `drain` long) and returns.
pub async fn accept_loop(
    listener: TcpListener,
    app: Router,
    limits: ConnLimits,
    mut shutdown: watch::Receiver<bool>,
    drain: Duration,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let limits = Arc::new(limits);
    let counts = Arc::new(ConnCounts::default());
    let trimmer = tokio::spawn(give_back_memory(counts.clone()));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        // hyper's head timer starts when it begins waiting for a request, so it is the idle
        // timer of a kept-alive connection; the head's own (shorter) deadline is the watchdog's.
        .header_read_timeout(limits.idle_timeout.max(limits.header_timeout))
        .max_header_size(limits.max_header_bytes)
        .max_headers(limits.max_headers)
        .max_buf_size(limits.max_header_bytes.max(8192) * 4)
        .writev(false);
    let http = Arc::new(http);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors (or a similar transient error): back off instead of
                // spinning on a listener that stays readable.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            refuse(stream);
            continue;
        };
        let (app, limits, http, shutdown) =
            (app.clone(), limits.clone(), http.clone(), shutdown.clone());
        let open = counts.open.fetch_add(1, Ordering::Relaxed) + 1;
        counts.peak.fetch_max(open, Ordering::Relaxed);
        let counts = counts.clone();
        tokio::spawn(async move {
            serve_one(stream, app, &limits, &http, shutdown, permit).await;
            counts.open.fetch_sub(1, Ordering::Relaxed);
            tracing::trace!(%peer, "connection closed");
        });
    }
    // Every permit back = every connection gone.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(drain, slots.acquire_many(all)).await;
    trimmer.abort();
}

/// Open connections, and the most open since the memory trimmer last looked.
#[derive(Default)]
struct ConnCounts {
    open: AtomicUsize,
    peak: AtomicUsize,
}

/// Connections closed since the peak after which freed memory is handed back to the OS.
const TRIM_AFTER_CLOSED: usize = 128;

/// Hands the memory of many closed connections back to the OS. Their buffers are freed, but
/// glibc's allocator keeps freed pages in its arenas: after a burst of slow or half-sent
/// requests the process would stay at its peak size for good.
async fn give_back_memory(counts: Arc<ConnCounts>) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let open = counts.open.load(Ordering::Relaxed);
        let peak = counts.peak.swap(open, Ordering::Relaxed);
        if peak.saturating_sub(open) >= TRIM_AFTER_CLOSED {
            // Off the reactor: a trim walks the allocator's arenas.
            let _ = tokio::task::spawn_blocking(trim_heap).await;
        }
    }
}

fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of the allocator's arenas to the OS.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Over the connection cap: a 503 written without waiting (it fits the socket buffer of a new
/// connection), then closed.
fn refuse(stream: TcpStream) {
    let resp = error_response(
        ErrorCode::TooManyConnections,
        "the server has as many open connections as it takes; retry shortly",
        &[("retry-after", "1")],
    );
    let _ = stream.try_write(&resp);
    tracing::debug!("connection refused: connection cap reached");
}

async fn serve_one(
    stream: TcpStream,
    app: Router,
    limits: &ConnLimits,
    http: &hyper::server::conn::http1::Builder,
    mut shutdown: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    let track = Arc::new(Mutex::new(Track::default()));
    let mut io = GuardedIo::new(stream, track.clone());
    let svc_track = track.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let (track, app) = (svc_track.clone(), app.clone());
        lock(&track).request_started(req.method() == hyper::Method::HEAD);
        async move {
            let resp = tower::ServiceExt::oneshot(app, req.map(axum::body::Body::new)).await;
            lock(&track).request_done();
            resp
        }
    });
    let outcome = {
        let conn = http.serve_connection(&mut io, service);
        tokio::pin!(conn);
        let mut watchdog = Watchdog::new(track.clone(), limits);
        let mut draining = false;
        loop {
            tokio::select! {
                r = conn.as_mut() => break Ended::Hyper(r),
                t = &mut watchdog => break Ended::Timeout(t),
                _ = shutdown.wait_for(|s| *s), if !draining => {
                    draining = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    };
    let (held_back, started) = {
        let mut t = lock(&track);
        (t.suppressed.take(), t.head_started.is_some())
    };
    if let Some(status) = held_back {
        let (code, message) = parse_error_body(status, limits);
        io.finish_with(code, &message).await;
        tracing::debug!(status, "request refused by the HTTP parser");
        return;
    }
    match outcome {
        Ended::Hyper(Ok(())) => {}
        Ended::Hyper(Err(e)) => {
            if e.is_timeout() && started {
                // hyper's idle timer fired while a head was arriving.
                io.finish_with(ErrorCode::RequestTimeout, &head_timeout_message(limits))
                    .await;
            }
            // Peers that close or reset mid-request are routine for a server.
            tracing::debug!(error = %e, "connection ended with an error");
        }
        Ended::Timeout(Stall::Head) => {
            io.finish_with(ErrorCode::RequestTimeout, &head_timeout_message(limits))
                .await;
            tracing::debug!("connection closed: request head too slow");
        }
        Ended::Timeout(Stall::Write) => {
            tracing::debug!("connection closed: client stopped reading the response");
        }
    }
}

enum Ended {
    Hyper(hyper::Result<()>),
    Timeout(Stall),
}

fn head_timeout_message(limits: &ConnLimits) -> String {
    format!(
        "the request head did not arrive within {} ms",
        limits.header_timeout.as_millis()
    )
}

/// The JSON error for a status hyper chose for a request it could not parse (hyper answers
/// 400, 414 or 431; each code's status is that status again).
fn parse_error_body(status: u16, limits: &ConnLimits) -> (ErrorCode, String) {
    match status {
        431 => (
            ErrorCode::HeadersTooLarge,
            format!(
                "request headers too large: at most {} bytes and {} fields",
                limits.max_header_bytes, limits.max_headers
            ),
        ),
        414 => (
            ErrorCode::UriTooLong,
            "the request target is too long".into(),
        ),
        _ => (
            ErrorCode::BadRequest,
            "malformed HTTP request (request line, header syntax, or conflicting \
             Content-Length / Transfer-Encoding)"
                .into(),
        ),
    }
}

/// A whole `Connection: close` response with a JSON `{code, message}` body, under the status
/// the router gives the same code.
pub fn error_response(code: ErrorCode, message: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let body = ApiErrorBody {
        code,
        message: message.to_string(),
    };
    // Two string fields: serializing cannot fail, but a body is still owed if it ever did.
    let body = serde_json::to_string(&body).unwrap_or_else(|_| String::from("{}"));
    let status = super::status_of(code.kind());
    let reason = status.canonical_reason().unwrap_or("Error");
    let status = status.as_u16();
    let date = chrono::Utc::now().format("%a, %d %b %Y %H:%M:%S GMT");
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\ndate: {date}\r\n",
        body.len()
    );
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

fn lock(t: &Mutex<Track>) -> MutexGuard<'_, Track> {
    t.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a connection is doing, shared by its IO, its service and its watchdog (all polled by
/// the connection's one task; the mutex is never contended).
#[derive(Default)]
struct Track {
    /// Requests handed to the router and not yet answered.
    in_flight: usize,
    /// When the first byte of the next request head arrived (no request in flight).
    head_started: Option<Instant>,
    /// Since when the socket has refused the bytes of a response.
    write_blocked: Option<Instant>,
    /// For each request handed to the router, in order: whether it was HEAD (its response has
    /// no body, whatever its Content-Length says).
    heads: VecDeque<bool>,
    /// The status of a bodiless error response of hyper's that was held back.
    suppressed: Option<u16>,
    watchdog: Option<Waker>,
}

impl Track {
    fn request_started(&mut self, is_head: bool) {
        self.in_flight += 1;
        self.head_started = None;
        self.heads.push_back(is_head);
    }

    fn request_done(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    fn read(&mut self, n: usize) {
        if n > 0 && self.in_flight == 0 && self.head_started.is_none() {
            self.head_started = Some(Instant::now());
            self.wake();
        }
    }

    fn write_progress(&mut self, blocked: bool) {
        match (blocked, self.write_blocked) {
            (true, None) => {
                self.write_blocked = Some(Instant::now());
                self.wake();
            }
            (false, Some(_)) => self.write_blocked = None,
            _ => {}
        }
    }

    fn wake(&self) {
        if let Some(w) = &self.watchdog {
            w.wake_by_ref();
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stall {
    /// A request head took longer than the header timeout.
    Head,
    /// The client did not take a response for longer than the write timeout.
    Write,
}

/// Resolves when the connection stalls past a deadline; sleeps while nothing is pending.
struct Watchdog {
    track: Arc<Mutex<Track>>,
    header_timeout: Duration,
    write_timeout: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl Watchdog {
    fn new(track: Arc<Mutex<Track>>, limits: &ConnLimits) -> Self {
        Self {
            track,
            header_timeout: limits.header_timeout,
            write_timeout: limits.write_timeout,
            sleep: Box::pin(tokio::time::sleep(limits.idle_timeout)),
        }
    }
}

impl std::future::Future for Watchdog {
    type Output = Stall;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Stall> {
        loop {
            let next = {
                let mut t = lock(&self.track);
                if !t.watchdog.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    t.watchdog = Some(cx.waker().clone());
                }
                let head = t
                    .head_started
                    .map(|s| (s + self.header_timeout, Stall::Head));
                let write = t
                    .write_blocked
                    .map(|s| (s + self.write_timeout, Stall::Write));
                match (head, write) {
                    (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
                    (a, b) => a.or(b),
                }
            };
            let Some((at, stall)) = next else {
                // Nothing to time: the IO wakes this when a head or a blocked write starts.
                return Poll::Pending;
            };
            if at <= Instant::now() {
                return Poll::Ready(stall);
            }
            if self.sleep.deadline() != at.into() {
                self.sleep.as_mut().reset(at.into());
            }
            if self.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }
}

/// Where the outgoing byte stream stands, response by response.
enum Framing {
    /// At or inside a response head (the bytes seen of it so far).
    Head(Vec<u8>),
    /// Inside a body: bytes left.
    Body(u64),
    /// A response this does not frame (chunked): the rest passes untouched.
    Pass,
}

/// The connection's socket as hyper sees it: counts the reads for the head timer, notes
/// blocked writes for the write timer, and frames the responses so that a bodiless error of
/// hyper's own can be held back (see the module's doc).
struct GuardedIo {
    stream: TcpStream,
    track: Arc<Mutex<Track>>,
    framing: Framing,
    /// Bytes taken from hyper and not yet written to the socket.
    pending: Vec<u8>,
    sent: usize,
}

/// A head larger than this is not ours to inspect; it passes.
const MAX_FRAMED_HEAD: usize = 64 * 1024;

impl GuardedIo {
    fn new(stream: TcpStream, track: Arc<Mutex<Track>>) -> Self {
        Self {
            stream,
            track,
            framing: Framing::Head(Vec::new()),
            pending: Vec::new(),
            sent: 0,
        }
    }

    /// Writes what is pending to the socket.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.pending.len() {
            match Pin::new(&mut self.stream).poll_write(cx, &self.pending[self.sent..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    self.sent += n;
                    lock(&self.track).write_progress(false);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    lock(&self.track).write_progress(true);
                    return Poll::Pending;
                }
            }
        }
        self.pending.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Moves `buf` into `pending`, response by response, leaving out a held-back error head.
    fn frame(&mut self, mut buf: &[u8]) {
        while !buf.is_empty() {
            match &mut self.framing {
                Framing::Pass => {
                    self.pending.extend_from_slice(buf);
                    return;
                }
                Framing::Body(left) => {
                    let take = (*left).min(buf.len() as u64) as usize;
                    self.pending.extend_from_slice(&buf[..take]);
                    *left -= take as u64;
                    buf = &buf[take..];
                    if *left == 0 {
                        self.framing = Framing::Head(Vec::new());
                    }
                }
                Framing::Head(head) => {
                    // The end of the head may straddle the previous write: search from a little
                    // before the new bytes.
                    let from = head.len().saturating_sub(3);
                    head.extend_from_slice(buf);
                    let Some(end) = find_head_end(&head[from..]).map(|e| e + from) else {
                        if head.len() > MAX_FRAMED_HEAD {
                            let head = std::mem::take(head);
                            self.pending.extend_from_slice(&head);
                            self.framing = Framing::Pass;
                        }
                        return;
                    };
                    let rest = head.split_off(end);
                    let head = std::mem::take(head);
                    let next = self.classify(&head);
                    self.framing = next;
                    // `rest` belongs to what follows the head (a body, the next response).
                    if !rest.is_empty() {
                        self.frame(&rest);
                    }
                    return;
                }
            }
        }
    }

    /// Decides what follows a complete response head and queues the head (or holds it back).
    fn classify(&mut self, head: &[u8]) -> Framing {
        let mut fields = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut fields);
        let Ok(httparse::Status::Complete(_)) = resp.parse(head) else {
            self.pending.extend_from_slice(head);
            return Framing::Pass;
        };
        let status = resp.code.unwrap_or(0);
        let field = |name: &str| {
            resp.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
        };
        let length = field("content-length").and_then(|v| v.parse::<u64>().ok());
        let chunked = field("transfer-encoding").is_some();
        let typed = field("content-type").is_some();
        if (100..200).contains(&status) {
            self.pending.extend_from_slice(head);
            return Framing::Head(Vec::new());
        }
        let mut t = lock(&self.track);
        // A final response to no request of the router's, with no type and no body: hyper's
        // own parse error. Every response of the router carries a JSON content type.
        if status >= 400 && !typed && length.unwrap_or(0) == 0 && t.heads.is_empty() {
            t.suppressed = Some(status);
            return Framing::Pass;
        }
        let is_head = t.heads.pop_front().unwrap_or(false);
        drop(t);
        self.pending.extend_from_slice(head);
        if chunked {
            Framing::Pass
        } else if is_head || status == 204 || status == 304 {
            Framing::Head(Vec::new())
        } else {
            match length {
                Some(0) | None => Framing::Head(Vec::new()),
                Some(n) => Framing::Body(n),
            }
        }
    }

    /// After hyper let go: writes the error `code` (with its status) and closes.
    async fn finish_with(&mut self, code: ErrorCode, message: &str) {
        let resp = error_response(code, message, &[]);
        let write = async {
            std::future::poll_fn(|cx| self.drain(cx)).await?;
            self.stream.write_all(&resp).await?;
            self.stream.shutdown().await
        };
        // A client that does not read its error gets no more time than any other.
        let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
    }
}

fn find_head_end(b: &[u8]) -> Option<usize> {
    b.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

impl Read for GuardedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        // Through a stack buffer: the copy is cheap next to a syscall and needs no unsafe.
        let mut local = [0u8; 16 * 1024];
        let want = buf.remaining().min(local.len());
        let mut rb = tokio::io::ReadBuf::new(&mut local[..want]);
        match Pin::new(&mut self.stream).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                buf.put_slice(rb.filled());
                lock(&self.track).read(n);
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl Write for GuardedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // One of hyper's writes at a time is held here: backpressure stays hyper's.
        if let Poll::Ready(Err(e)) = this.drain(cx) {
            return Poll::Ready(Err(e));
        }
        if !this.pending.is_empty() {
            return Poll::Pending;
        }
        this.frame(buf);
        if let Poll::Ready(Err(e)) = this.drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.drain(cx))?;
        Pin::new(&mut this.stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.drain(cx))?;
        // A held-back error still has to go out: the write side stays open until it has.
        if lock(&this.track).suppressed.is_some() {
            return Pin::new(&mut this.stream).poll_flush(cx);
        }
        Pin::new(&mut this.stream).poll_shutdown(cx)
    }
}

/// Raises the soft open-file limit towards `want` (up to the hard limit) and returns the soft
/// limit now in force, so the connection cap can be held to what the process may open.
pub fn raise_fd_limit(want: u64) -> Option<u64> {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit only read and write the struct passed.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                return None;
            }
            if lim.rlim_cur < want as libc::rlim_t {
                let mut raised = lim;
                raised.rlim_cur = (want as libc::rlim_t).min(lim.rlim_max);
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                    lim = raised;
                }
            }
        }
        #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every unix
        Some(lim.rlim_cur as u64)
    }
    #[cfg(not(unix))]
    {
        let _ = want;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_response_is_complete_json() {
        let r = error_response(ErrorCode::TooManyConnections, "x", &[("retry-after", "1")]);
        let text = String::from_utf8(r).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{head}"
        );
        assert!(head.contains("retry-after: 1"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["code"], "too_many_connections");
    }

    #[test]
    fn head_end_is_found_across_any_split() {
        let resp = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        // Cuts before the terminator is whole (past it, the earlier write had found it).
        for cut in 0..resp.len() - 2 {
            let mut h = resp[..cut].to_vec();
            let from = h.len().saturating_sub(3);
            h.extend_from_slice(&resp[cut..]);
            assert_eq!(
                find_head_end(&h[from..]).map(|e| e + from),
                Some(resp.len() - 2)
            );
        }
    }
}
