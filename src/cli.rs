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

/// Logs to stderr (filter from `RUST_LOG`, default `warn`) and sets the SIGPIPE disposition.
/// Call first thing in `main`, before any thread starts.
pub fn init(sigpipe: SigPipe) {
    #[cfg(unix)]
    if sigpipe == SigPipe::Default {
        // SAFETY: called before any thread starts; only resets a signal disposition.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
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
