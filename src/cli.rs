//! Process set-up shared by Funnel's binaries (`funnel`, `index-builder`).

/// Logs to stderr (filter from `RUST_LOG`, default `warn`) and restores the default SIGPIPE
/// disposition, so that `funnel … | head` ends quietly like other CLI tools instead of panicking
/// on a failed print. Call first thing in `main`.
pub fn init() {
    #[cfg(unix)]
    // SAFETY: called before any thread starts; only resets a signal disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
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
