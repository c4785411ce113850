//! `shoal cache` configuration from a TOML file, the environment and flags,
//! and clear errors for bad settings.

mod support;

use std::process::{Command, Stdio};
use support::*;

#[test]
fn toml_file_with_environment_override_configures_the_cache() {
    let root = tempfile::tempdir().unwrap();
    let data = content(300_000, 1);
    write_file(root.path(), "x.bin", &data);
    let origin = start_origin(root.path());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cache.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\norigin = \"{}\"\ndata_dir = \"{}\"\ncapacity = \"64MiB\"\n[limits]\nidle_timeout_ms = 5000\n",
            origin.url,
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    // The environment wins over the file.
    let cache = start_shoal(
        &["cache", "--config", config.to_str().unwrap()],
        &[("SHOAL_CACHE_CAPACITY", "32MiB")],
    );
    assert!(curl(&format!("{}/x.bin", cache.url), &[]).body == data);
    assert!(dir.path().join("data").join("index.redb").exists());
}

fn cache_fails_with(args: &[&str], env: &[(&str, &str)], expected: &str) {
    let mut command = Command::new(shoal_bin());
    command.arg("cache").args(args).stdin(Stdio::null());
    for (k, v) in env {
        command.env(k, v);
    }
    let output = command.output().unwrap();
    assert!(!output.status.success(), "{args:?} should fail");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(expected),
        "{args:?}: expected `{expected}` in:\n{stderr}"
    );
}

#[test]
fn bad_settings_are_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    cache_fails_with(
        &["--data-dir", data, "--capacity", "1GiB"],
        &[],
        "origin URL is required",
    );
    cache_fails_with(
        &[
            "--origin",
            "http://127.0.0.1:1",
            "--data-dir",
            data,
            "--capacity",
            "12 parsecs",
        ],
        &[],
        "not a number of bytes",
    );
    cache_fails_with(
        &["--origin", "ftp://example", "--data-dir", data],
        &[],
        "must be an http:// or https:// URL",
    );
    cache_fails_with(
        &["--origin", "http://127.0.0.1:1", "--data-dir", data],
        &[("SHOAL_CACHE_EVICTION", "random")],
        "unknown eviction policy",
    );
    cache_fails_with(
        &["--config", "/nonexistent/shoal.toml"],
        &[],
        "does not exist",
    );
}

#[test]
fn bad_mesh_settings_are_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let base = [
        "--origin",
        "http://127.0.0.1:1",
        "--data-dir",
        data,
        "--listen",
        "127.0.0.1:0",
    ];
    let with = |extra: &[&str]| -> Vec<String> {
        base.iter().chain(extra).map(|s| s.to_string()).collect()
    };
    let run = |extra: &[&str], env: &[(&str, &str)], expected: &str| {
        let args = with(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cache_fails_with(&args, env, expected);
    };
    run(
        &["--gossip", "127.0.0.1:0"],
        &[],
        "cluster secret of at least 16 bytes",
    );
    run(
        &["--gossip", "127.0.0.1:0", "--cluster-secret", "short"],
        &[],
        "cluster secret of at least 16 bytes",
    );
    run(
        &["--seed", "127.0.0.1:7946"],
        &[],
        "seeds are set but gossip is not",
    );
    let secret = [("SHOAL_CACHE_MESH__CLUSTER_SECRET", "a secret long enough")];
    run(
        &["--gossip", "127.0.0.1:0", "--cost-per-gb", "-1"],
        &secret,
        "cost_per_gb -1 must be between 0 and 1000",
    );
    run(
        &["--gossip", "127.0.0.1:0", "--node-id", "no spaces please"],
        &secret,
        "node id `no spaces please` must be 1-64 characters",
    );
    run(
        &["--gossip", "not-an-address"],
        &secret,
        "invalid socket address",
    );
}

/// A log written to a file (not a terminal) carries no ANSI colour codes.
#[test]
fn logs_to_a_file_have_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("cache.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let data = dir.path().join("data");
    // Nothing listens on port 9: every origin request fails and is logged.
    let cache = start_shoal_with_stderr(
        &[
            "cache",
            "--listen",
            "127.0.0.1:0",
            "--origin",
            "http://127.0.0.1:9",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[],
        Stdio::from(log),
    );
    let got = curl(&format!("{}/nowhere.bin", cache.url), &[]);
    assert_eq!(got.status, 502);
    drop(cache);
    let text = std::fs::read_to_string(&log_path).unwrap();
    assert!(text.contains("WARN"), "a warning was logged: {text}");
    assert!(!text.contains('\u{1b}'), "colour codes in a file: {text:?}");
}
