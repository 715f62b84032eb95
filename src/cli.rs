//! Process set-up shared by Funnel's binaries (`funnel`, `index-builder`).

/// What a write to a closed pipe or socket does to the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigPipe {
    /// The default action, ending the process: `funnel inspect … | head` ends quietly like other
    /// CLI tools instead of panicking on a failed print. Only for commands that print and serve
    /// nothing.
    Default,
    /// Ignored (Rust's own start-up setting): a write to a peer that went away is an `EPIPE`
    /// error on that one connection. Every command that serves sockets must keep this, or any
    /// client that closes early ends the server.
    Ignore,
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object a line, with the fields of every enclosing span (a request's
    /// `request_id` on each of its lines).
    Json,
}

/// Logs to stderr (filter from `RUST_LOG`, default `warn`) in `format` and sets the SIGPIPE
/// disposition. With `spans`, every closed span (a request, each stage) logs a line with its
/// busy and idle time, so a slow request can be followed stage by stage. Call first thing in
/// `main`, before any thread starts.
pub fn init(sigpipe: SigPipe, format: LogFormat, spans: bool) {
    #[cfg(unix)]
    if sigpipe == SigPipe::Default {
        // SAFETY: called before any thread starts; only resets a signal disposition.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    // Stage spans are at info: RUST_LOG=funnel=info shows them; below the filter they cost
    // nothing.
    let spans = match spans {
        true => tracing_subscriber::fmt::format::FmtSpan::CLOSE,
        false => tracing_subscriber::fmt::format::FmtSpan::NONE,
    };
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_span_events(spans)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => fmt.init(),
        LogFormat::Json => fmt
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .flatten_event(true)
            .init(),
    }
}

/// The exit of a command: its code, or the error (with its causes, `{:#}`) on stderr and 1.
pub fn finish<E: std::fmt::Display>(
    result: Result<std::process::ExitCode, E>,
) -> std::process::ExitCode {
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
