//! The `funnel` command's failure surface: clear messages naming the file (and line), non-zero exit.

use std::process::Command;

fn funnel(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_funnel"))
        .args(args)
        .output()
        .expect("run funnel");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_config_names_file_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[budget]\ntotal_ms = 200\nsurprise = 1\n").expect("write");
    let (ok, err) = funnel(&[
        "serve",
        "--config",
        cfg.to_str().expect("utf8"),
        "--bundle",
        "x",
    ]);
    assert!(!ok);
    assert!(err.contains(&format!("{}:3:", cfg.display())), "{err}");

    std::fs::write(&cfg, "[rerank]\norder = [\"seen\", \"filters\"]\n").expect("write");
    let (ok, err) = funnel(&[
        "serve",
        "--config",
        cfg.to_str().expect("utf8"),
        "--bundle",
        "x",
    ]);
    assert!(!ok);
    assert!(err.contains("policy"), "{err}");
}

#[test]
fn missing_bundle_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nothing-here");
    let (ok, err) = funnel(&[
        "serve",
        "--bundle",
        missing.to_str().expect("utf8"),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert!(!ok);
    assert!(err.contains("nothing-here"), "{err}");
}
