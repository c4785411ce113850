//! `shoal cache` configuration from a TOML file, the environment and flags,
//! and clear errors for bad settings.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;
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

fn shoal_output(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    Command::new(shoal_bin())
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn print_config_shows_the_merge_with_comma_lists_and_the_secret_hidden() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cache.toml");
    std::fs::write(
        &file,
        "capacity = \"2GiB\"\n[limits]\nidle_timeout_ms = 7000\n",
    )
    .unwrap();
    let out = shoal_output(
        &[
            "cache",
            "--config",
            file.to_str().unwrap(),
            "--origin",
            "http://origin.example:8080",
            "--egress-mbps",
            "12.5",
            "--gossip",
            "127.0.0.1:0",
            "--print-config",
        ],
        &[
            ("SHOAL_CACHE_MESH__SEEDS", "10.0.0.5:7946, 10.0.0.6:7946"),
            ("SHOAL_CACHE_IGNORED_QUERY_PARAMS", "utm_*,fbclid"),
            (
                "SHOAL_CACHE_MESH__CLUSTER_SECRET",
                "a secret that must not be printed",
            ),
            ("SHOAL_CACHE_LIMITS__CONNECTIONS_MAX", "77"),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let value: toml::Value = toml::from_str(&text).unwrap();
    assert_eq!(value["capacity"].as_integer(), Some(2 << 30));
    assert_eq!(value["origin"].as_str(), Some("http://origin.example:8080"));
    assert_eq!(value["limits"]["idle_timeout_ms"].as_integer(), Some(7000));
    assert_eq!(value["limits"]["connections_max"].as_integer(), Some(77));
    // 12.5 Mbit/s = 1,562,500 bytes/s.
    assert_eq!(
        value["limits"]["egress_bytes_per_s"].as_integer(),
        Some(1_562_500)
    );
    let seeds: Vec<&str> = value["mesh"]["seeds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(seeds, ["10.0.0.5:7946", "10.0.0.6:7946"]);
    assert_eq!(value["ignored_query_params"].as_array().unwrap().len(), 2);
    assert!(!text.contains("must not be printed"), "{text}");
    assert_eq!(
        value["mesh"]["cluster_secret"].as_str(),
        Some("(set, hidden)")
    );
    // TOML syntax still works for lists.
    let out = shoal_output(
        &["cache", "--origin", "http://o", "--print-config"],
        &[("SHOAL_CACHE_IGNORED_QUERY_PARAMS", "[\"a\", \"b,c\"]")],
    );
    let value: toml::Value = toml::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!(value["ignored_query_params"][1].as_str(), Some("b,c"));
}

#[test]
fn config_errors_name_the_file_key_variable_or_flag() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cache.toml");
    std::fs::write(&file, "capasity = \"2GiB\"\n").unwrap();
    let said = |args: &[&str], env: &[(&str, &str)]| {
        let out = shoal_output(args, env);
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let text = said(
        &[
            "cache",
            "--config",
            file.to_str().unwrap(),
            "--origin",
            "http://o",
        ],
        &[],
    );
    assert!(
        text.contains(&format!(
            "{}: unknown setting `capasity` (did you mean `capacity`?)",
            file.display()
        )),
        "{text}"
    );
    assert!(!text.contains("default."), "{text}");
    let text = said(
        &["cache", "--origin", "http://o"],
        &[("SHOAL_CACHE_LIMITS__IDLE_TIMEOUTMS", "5")],
    );
    assert!(
        text.contains("environment variable SHOAL_CACHE_LIMITS__IDLE_TIMEOUTMS: unknown setting `idle_timeoutms` (did you mean `idle_timeout_ms`?)"),
        "{text}"
    );
    let text = said(
        &["cache", "--origin", "http://o"],
        &[("SHOAL_CACHE_CAPACITY", "lots")],
    );
    assert!(
        text.contains("environment variable SHOAL_CACHE_CAPACITY: `lots` is not a number of bytes"),
        "{text}"
    );
    let text = said(&["cache", "--origin", "http://o", "--egress-mbps=-3"], &[]);
    assert!(text.contains("--egress-mbps"), "{text}");
    // The selector's missing secret names the variable.
    let text = said(
        &[
            "selector",
            "--listen",
            "127.0.0.1:0",
            "--gossip",
            "127.0.0.1:0",
            "--seed",
            "127.0.0.1:9",
        ],
        &[],
    );
    assert!(
        text.contains("SHOAL_SELECTOR_MESH__CLUSTER_SECRET"),
        "{text}"
    );
}

#[test]
fn the_example_configs_in_deploy_are_valid() {
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
    for (role, file, env) in [
        (
            "cache",
            "cache.toml.example",
            ("SHOAL_CACHE_MESH__CLUSTER_SECRET", "0123456789abcdef0123"),
        ),
        (
            "selector",
            "selector.toml.example",
            (
                "SHOAL_SELECTOR_MESH__CLUSTER_SECRET",
                "0123456789abcdef0123",
            ),
        ),
        ("origin", "origin.toml.example", ("UNUSED", "")),
    ] {
        let out = shoal_output(
            &[
                role,
                "--config",
                deploy.join(file).to_str().unwrap(),
                "--print-config",
            ],
            &[env],
        );
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(toml::from_str::<toml::Value>(&String::from_utf8_lossy(&out.stdout)).is_ok());
    }
}

#[test]
fn set_egress_takes_decimals_and_tries_every_cache() {
    let root = tempfile::tempdir().unwrap();
    write_file(root.path(), "a.txt", b"a\n");
    let origin = start_origin(root.path());
    let dir = tempfile::tempdir().unwrap();
    let caches = start_mesh(&origin.url, dir.path(), &[("se-a", "eu")], &[]);
    let dead = format!("http://127.0.0.1:{}", free_port());
    let out = shoal_output(
        &[
            "set-egress",
            "--cache",
            &dead,
            "--cache",
            &caches[0].url,
            "--mbps",
            "12.5",
        ],
        &[("SHOAL_CACHE_MESH__CLUSTER_SECRET", CLUSTER_SECRET)],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "one cache was unreachable");
    assert!(
        stderr.contains(&dead) && stderr.contains("1 of 2 cache(s) not changed"),
        "{stderr}"
    );
    assert!(
        stdout.contains(&format!(
            "{}: egress cap 12.5 Mbit/s (was: no cap)",
            caches[0].url
        )),
        "{stdout}"
    );
    assert!(stdout.contains("runtime only"), "{stdout}");
    let mesh = curl(&format!("{}/_shoal/mesh", caches[0].url), &[]);
    let report: serde_json::Value = serde_json::from_slice(&mesh.body).unwrap();
    let cap = report["members"][0]["egress_cap_mbps"].as_f64();
    assert!(cap.is_some(), "{report}");
    wait_until("the cap is gossiped", Duration::from_secs(10), || {
        let mesh = curl(&format!("{}/_shoal/mesh", caches[0].url), &[]);
        let report: serde_json::Value = serde_json::from_slice(&mesh.body).unwrap();
        report["members"][0]["egress_cap_mbps"].as_f64() == Some(12.5)
    });
}
