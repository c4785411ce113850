//! HTTPS on every role with a certificate authority the test makes itself
//! (openssl): curl over HTTP/2 and HTTP/1.1, `shoal get`, a cache filling
//! from an https origin, and certificates replaced under running servers
//! (SIGHUP, a file change, a broken renewal that must not take a server
//! off the air).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::*;

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new(find_tool("openssl"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A CA named `name` and a certificate for 127.0.0.1 signed by it:
/// (ca.pem, leaf.pem, leaf.key) in `dir`.
fn make_ca_and_leaf(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = format!("{name}-ca.key");
    let ca = format!("{name}-ca.pem");
    let key = format!("{name}-leaf.key");
    let csr = format!("{name}-leaf.csr");
    let leaf = format!("{name}-leaf.pem");
    let ext = format!("{name}.ext");
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &ca_key,
            "-out",
            &ca,
            "-days",
            "2",
            "-subj",
            &format!("/CN=shoal test CA {name}"),
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    std::fs::write(
        dir.join(&ext),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &leaf,
            "-days",
            "2",
            "-extfile",
            &ext,
        ],
    );
    (dir.join(ca), dir.join(leaf), dir.join(key))
}

/// The `tls=https://…` address a role printed.
fn https_url(proc: &Proc) -> String {
    proc.banner
        .split_whitespace()
        .find_map(|w| w.strip_prefix("tls="))
        .unwrap_or_else(|| panic!("no tls= in `{}`", proc.banner))
        .to_string()
}

fn tls_env<'a>(prefix: &str, cert: &'a Path, key: &'a Path) -> Vec<(String, String)> {
    vec![
        (format!("{prefix}TLS__LISTEN"), "127.0.0.1:0".into()),
        (
            format!("{prefix}TLS__CERT_FILE"),
            cert.display().to_string(),
        ),
        (format!("{prefix}TLS__KEY_FILE"), key.display().to_string()),
        (format!("{prefix}TLS__RELOAD_CHECK_MS"), "200".into()),
    ]
}

fn as_refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

fn signal(proc: &Proc, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &proc.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn https_everywhere_with_a_private_ca_and_certificates_replaced_live() {
    let pki = tempfile::tempdir().unwrap();
    let (ca, leaf, key) = make_ca_and_leaf(pki.path(), "one");
    // The servers read these two paths; the test replaces their contents.
    let cert_file = pki.path().join("server.pem");
    let key_file = pki.path().join("server.key");
    std::fs::copy(&leaf, &cert_file).unwrap();
    std::fs::copy(&key, &key_file).unwrap();

    let root = tempfile::tempdir().unwrap();
    let data = content(5 * 1024 * 1024 + 123, 9);
    write_file(root.path(), "v/film.bin", &data);
    let origin_env = tls_env("SHOAL_ORIGIN_", &cert_file, &key_file);
    let origin = start_shoal(
        &[
            "origin",
            "--root",
            root.path().to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        &as_refs(&origin_env),
    );
    let origin_https = https_url(&origin);

    // The cache fills from the origin over https (trusting the test CA)
    // and serves https itself.
    let dir = tempfile::tempdir().unwrap();
    let mut cache_env = tls_env("SHOAL_CACHE_", &cert_file, &key_file);
    cache_env.push((
        "SHOAL_CACHE_ORIGIN_CA_FILE".into(),
        ca.display().to_string(),
    ));
    let cache = start_shoal(
        &[
            "cache",
            "--listen",
            "127.0.0.1:0",
            "--origin",
            &origin_https,
            "--data-dir",
            dir.path().join("data").to_str().unwrap(),
        ],
        &as_refs(&cache_env),
    );
    let cache_https = https_url(&cache);
    let ca_arg = ca.to_str().unwrap();

    let h2 = curl(
        &format!("{cache_https}/v/film.bin"),
        &["--cacert", ca_arg, "-w", "%{http_version}", "--http2"],
    );
    assert_eq!(h2.status, 200);
    assert_eq!(h2.body.len(), data.len());
    assert!(h2.body == data, "bytes differ over h2");
    let h1 = curl(
        &format!("{cache_https}/v/film.bin"),
        &["--cacert", ca_arg, "--http1.1", "-r", "100-199"],
    );
    assert_eq!(h1.status, 206);
    assert_eq!(h1.body, &data[100..200]);
    // The ALPN choice: HTTP/2 when offered.
    let version = Command::new(find_tool("curl"))
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version}",
            "--cacert",
            ca_arg,
        ])
        .arg(format!("{cache_https}/readyz"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&version.stdout), "2");
    // Not trusted without the CA; plain HTTP on the TLS port is refused.
    assert_ne!(curl(&format!("{cache_https}/livez"), &[]).exit_code, 0);

    // `shoal get` over https.
    let out = dir.path().join("got.bin");
    let got = Command::new(shoal_bin())
        .args([
            "get",
            &format!("{cache_https}/v/film.bin"),
            "--no-peers",
            "--quiet",
            "--ca-file",
            ca_arg,
            "-o",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        got.status.success(),
        "shoal get: {}",
        String::from_utf8_lossy(&got.stderr)
    );
    assert!(std::fs::read(&out).unwrap() == data);
    let untrusted = Command::new(shoal_bin())
        .args([
            "get",
            &format!("{cache_https}/v/film.bin"),
            "--no-peers",
            "--quiet",
            "-o",
        ])
        .arg(dir.path().join("untrusted.bin"))
        .output()
        .unwrap();
    assert!(!untrusted.status.success());

    // Renewal: a certificate from another CA replaces the files; SIGHUP
    // makes the cache use it, the origin notices the change itself.
    let (ca2, leaf2, key2) = make_ca_and_leaf(pki.path(), "two");
    std::fs::copy(&key2, &key_file).unwrap();
    std::fs::copy(&leaf2, &cert_file).unwrap();
    signal(&cache, "HUP");
    let ca2_arg = ca2.to_str().unwrap();
    wait_until(
        "the cache serves the new certificate",
        Duration::from_secs(10),
        || curl(&format!("{cache_https}/livez"), &["--cacert", ca2_arg]).status == 200,
    );
    assert_ne!(
        curl(&format!("{cache_https}/livez"), &["--cacert", ca_arg]).exit_code,
        0
    );
    wait_until(
        "the origin notices the new files",
        Duration::from_secs(10),
        || {
            curl(
                &format!("{origin_https}/v/film.bin"),
                &["--cacert", ca2_arg, "-r", "0-9"],
            )
            .status
                == 206
        },
    );

    // A broken renewal (a key that is not the certificate's) is refused:
    // the server keeps the identity it has.
    std::fs::copy(&key, &key_file).unwrap();
    signal(&cache, "HUP");
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        curl(&format!("{cache_https}/livez"), &["--cacert", ca2_arg]).status,
        200,
        "a bad renewal took the cache's TLS down"
    );
    assert_eq!(
        curl(&format!("{origin_https}/livez"), &["--cacert", ca2_arg]).status,
        200,
        "a bad renewal took the origin's TLS down"
    );

    let metrics = String::from_utf8(curl(&format!("{}/metrics", cache.url), &[]).body).unwrap();
    let failures: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("shoal_http_tls_handshake_failures_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        failures >= 2.0,
        "untrusted handshakes are counted: {failures}"
    );
}

#[test]
fn a_selector_reached_over_https_sends_clients_to_https_caches_only() {
    let pki = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_ca_and_leaf(pki.path(), "mesh");
    let ca_arg = ca.to_str().unwrap();
    let root = tempfile::tempdir().unwrap();
    let data = content(3 * 1024 * 1024 + 17, 4);
    write_file(root.path(), "v/film.bin", &data);
    publish(root.path());
    let origin = start_origin(root.path());
    let dir = tempfile::tempdir().unwrap();
    // "secure" serves https too (and gossips that address); "plain" is
    // cheaper but serves plain HTTP only.
    let secure_env = tls_env("SHOAL_CACHE_", &cert, &key);
    let secure = start_mesh_cache_env(
        &origin.url,
        &dir.path().join("secure"),
        "secure",
        "eu",
        &[],
        None,
        &["--cost-per-gb", "0.05"],
        &as_refs(&secure_env),
    );
    let secure_https = https_url(&secure);
    let plain = start_mesh_cache(
        &origin.url,
        &dir.path().join("plain"),
        "plain",
        "eu",
        &[gossip_addr(&secure)],
        None,
        &["--cost-per-gb", "0.01"],
    );
    wait_for_mesh(&[&secure.url, &plain.url], 2);
    let selector = start_selector(
        dir.path(),
        &gossip_addr(&secure),
        8,
        &format!(
            "[tls]\nlisten = \"127.0.0.1:0\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            cert.display(),
            key.display()
        ),
    );
    wait_for_selector(&selector, 2);
    let selector_https = https_url(&selector);

    // Over https: a redirect to the secure cache's https address, and
    // every duplicate link https too.
    let answer = curl(
        &format!("{selector_https}/v/film.bin"),
        &["--cacert", ca_arg],
    );
    assert_eq!(answer.status, 302);
    let location = answer.header("location").unwrap();
    assert!(
        location.starts_with(&format!("{secure_https}/v/film.bin?shoal-object=")),
        "{location}"
    );
    if let Some(links) = answer.header("link") {
        assert!(!links.contains("http://"), "no plain duplicate: {links}");
    }
    let followed = curl(
        &format!("{selector_https}/v/film.bin"),
        &["--cacert", ca_arg, "-L"],
    );
    assert_eq!(followed.status, 200);
    assert!(followed.body == data, "byte-exact over https");
    // The plan says why the cheaper cache was left out.
    let plan = curl(
        &format!("{selector_https}/plan?path=/v/film.bin"),
        &["--cacert", ca_arg],
    );
    let plan: serde_json::Value = serde_json::from_slice(&plan.body).unwrap();
    assert!(
        plan["sources"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["url"].as_str().unwrap().starts_with("https://")),
        "{plan}"
    );
    assert!(plan.to_string().contains("HTTPS"), "{plan}");
    // `shoal get` through the https selector: its plan (with an https
    // tracker) is taken, and only the https cache serves.
    let out = dir.path().join("film-get.bin");
    let output = Command::new(shoal_bin())
        .args(["get", &format!("{selector_https}/v/film.bin")])
        .args([
            "--ca-file",
            ca_arg,
            "-o",
            out.to_str().unwrap(),
            "--json",
            "--quiet",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "shoal get over https: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(std::fs::read(&out).unwrap() == data, "byte-exact");
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let names: Vec<&str> = summary["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["secure"], "{summary}");

    // Over plain HTTP the cheaper plain cache serves, at its http address.
    let answer = curl(&format!("{}/v/film.bin", selector.url), &[]);
    assert_eq!(answer.status, 302);
    assert!(
        answer
            .header("location")
            .unwrap()
            .starts_with(&format!("{}/v/film.bin", plain.url)),
        "{:?}",
        answer.header("location")
    );
}

#[test]
fn tls_settings_errors_name_the_setting_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap();
    let run = |env: &[(&str, &str)]| {
        let output = Command::new(shoal_bin())
            .args(["origin", "--root", root, "--listen", "127.0.0.1:0"])
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(!output.status.success());
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let text = run(&[("SHOAL_ORIGIN_TLS__LISTEN", "127.0.0.1:0")]);
    assert!(text.contains("tls.cert_file and tls.key_file"), "{text}");
    let text = run(&[
        ("SHOAL_ORIGIN_TLS__LISTEN", "127.0.0.1:0"),
        ("SHOAL_ORIGIN_TLS__CERT_FILE", "/nonexistent/cert.pem"),
        ("SHOAL_ORIGIN_TLS__KEY_FILE", "/nonexistent/key.pem"),
    ]);
    assert!(
        text.contains("tls.cert_file /nonexistent/cert.pem"),
        "{text}"
    );
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let text = run(&[
        ("SHOAL_ORIGIN_TLS__LISTEN", "127.0.0.1:0"),
        ("SHOAL_ORIGIN_TLS__CERT_FILE", junk.to_str().unwrap()),
        ("SHOAL_ORIGIN_TLS__KEY_FILE", junk.to_str().unwrap()),
    ]);
    assert!(
        text.contains(&format!("tls.cert_file {}", junk.display())),
        "{text}"
    );
}
