//! Operating shoal as an operator does: scrape `/metrics` of every role
//! and check it with Prometheus' own `promtool`; `/livez` and `/readyz` as
//! a load balancer reads them; a drain with a 1 GiB download in flight;
//! access logs in both formats, reopened on SIGHUP.

mod support;

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use support::*;

/// `promtool check metrics` on a page: its complaints, empty when clean.
fn promtool_complaints(page: &[u8]) -> String {
    let mut child = Command::new(find_tool("promtool"))
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run promtool");
    child.stdin.take().unwrap().write_all(page).unwrap();
    let output = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if output.status.success() && text.trim().is_empty() {
        String::new()
    } else {
        format!("exit {:?}: {text}", output.status.code())
    }
}

/// The value of the sample `series` (name with labels, exactly as
/// written) on a metrics page.
fn sample(page: &str, series: &str) -> f64 {
    page.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {series} in\n{page}"))
        .parse()
        .unwrap()
}

fn metrics(url: &str) -> String {
    let got = curl(&format!("{url}/metrics"), &[]);
    assert_eq!(got.status, 200);
    assert_eq!(
        got.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    String::from_utf8(got.body).unwrap()
}

fn signal(proc: &Proc, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &proc.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name}");
}

/// Waits for `proc` to exit on its own; its exit status.
fn wait_exit(proc: &mut Proc, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = proc.child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "{} did not exit", proc.name);
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn every_role_exposes_metrics_that_promtool_accepts() {
    let root = tempfile::tempdir().unwrap();
    let big = content(3 * 1024 * 1024, 41);
    write_file(root.path(), "v/big.bin", &big);
    write_file(root.path(), "small.txt", b"hello metrics\n");
    publish(root.path());
    let origin = start_origin(root.path());
    let dir = tempfile::tempdir().unwrap();
    let caches = start_mesh(
        &origin.url,
        dir.path(),
        &[("m-a", "eu"), ("m-b", "us")],
        &[],
    );
    let selector = start_selector(dir.path(), &gossip_addr(&caches[0]), 8, "");
    wait_for_selector(&selector, 2);

    // Traffic: through each cache (one fills from the other), a plan and
    // a redirect at the selector, a 404.
    for cache in &caches {
        assert_eq!(curl(&format!("{}/v/big.bin", cache.url), &[]).body, big);
        assert_eq!(curl(&format!("{}/small.txt", cache.url), &[]).status, 200);
    }
    assert_eq!(curl(&format!("{}/nope", caches[0].url), &[]).status, 404);
    assert_eq!(
        curl(&format!("{}/plan?path=/v/big.bin", selector.url), &[]).status,
        200
    );
    assert_eq!(
        curl(&format!("{}/v/big.bin", selector.url), &[]).status,
        302
    );

    for (role, url) in [
        ("origin", origin.url.as_str()),
        ("cache", caches[0].url.as_str()),
        ("cache", caches[1].url.as_str()),
        ("selector", selector.url.as_str()),
    ] {
        let page = metrics(url);
        let complaints = promtool_complaints(page.as_bytes());
        assert!(complaints.is_empty(), "{role} {url}: {complaints}\n{page}");
        assert_eq!(
            sample(
                &page,
                &format!(
                    "shoal_build_info{{version=\"{}\",role=\"{role}\"}}",
                    env!("CARGO_PKG_VERSION")
                )
            ),
            1.0
        );
        assert_eq!(sample(&page, "shoal_ready{phase=\"ready\"}"), 1.0, "{role}");
        assert!(sample(&page, "shoal_http_requests_total{code=\"2xx\"}") >= 1.0);
    }

    // The numbers mean what they say.
    let origin_page = metrics(&origin.url);
    assert!(sample(&origin_page, "shoal_http_response_body_bytes_total") >= big.len() as f64);
    let pages: Vec<String> = caches.iter().map(|c| metrics(&c.url)).collect();
    let sum = |series: &str| pages.iter().map(|p| sample(p, series)).sum::<f64>();
    assert!(sum("shoal_cache_sent_bytes_total{destination=\"client\"}") >= 2.0 * big.len() as f64);
    // The object came from the origin once (by its shield) and from a
    // sibling once.
    let from_origin = sum("shoal_cache_fill_bytes_total{source=\"origin\"}");
    assert!(
        from_origin >= big.len() as f64 && from_origin < 1.5 * big.len() as f64,
        "{from_origin}"
    );
    let from_siblings = sum("shoal_cache_fill_bytes_total{source=\"holder\"}")
        + sum("shoal_cache_fill_bytes_total{source=\"shield\"}")
        + sum("shoal_cache_fill_bytes_total{source=\"relay\"}");
    assert!(from_siblings >= big.len() as f64, "{from_siblings}");
    assert!(sum("shoal_cache_fill_latency_seconds_count{source=\"origin\"}") >= 1.0);
    assert!(sum("shoal_cache_fill_latency_seconds_count{source=\"peer_cache\"}") >= 1.0);
    assert!(sum("shoal_http_requests_total{code=\"4xx\"}") >= 1.0);
    assert_eq!(sample(&pages[0], "shoal_mesh_members{health=\"ok\"}"), 2.0);
    assert!(sample(&pages[0], "shoal_cache_store_bytes") > 0.0);

    let selector_page = metrics(&selector.url);
    assert!(
        sample(
            &selector_page,
            "shoal_selector_decisions_total{service=\"all\"}"
        ) >= 2.0
    );
    assert_eq!(
        sample(&selector_page, "shoal_selector_redirects_total"),
        1.0
    );
    let up: Vec<&str> = selector_page
        .lines()
        .filter(|l| l.starts_with("shoal_selector_cache_up{"))
        .collect();
    assert_eq!(up.len(), 2, "{selector_page}");
    assert!(up
        .iter()
        .any(|l| l.contains("cache=\"m-a\",region=\"eu\",health=\"ok\"")));
}

#[test]
fn readiness_follows_the_mesh_and_the_selector_view() {
    let root = tempfile::tempdir().unwrap();
    write_file(root.path(), "a.txt", b"a\n");
    let origin = start_origin(root.path());
    let dir = tempfile::tempdir().unwrap();
    // A cache whose only seed never answers: not ready while it waits for
    // the mesh, ready (alone) after the join wait.
    let dead_seed = format!("127.0.0.1:{}", free_port());
    let lonely = start_mesh_cache(
        &origin.url,
        &dir.path().join("lonely"),
        "lonely",
        "eu",
        &[dead_seed],
        None,
        &[],
    );
    let started = Instant::now();
    let got = curl(&format!("{}/readyz", lonely.url), &[]);
    assert_eq!(got.status, 503, "{}", String::from_utf8_lossy(&got.body));
    assert!(String::from_utf8_lossy(&got.body).contains("joining the mesh"));
    assert_eq!(curl(&format!("{}/livez", lonely.url), &[]).status, 200);
    // It still serves meanwhile (a load balancer decides).
    assert_eq!(curl(&format!("{}/a.txt", lonely.url), &[]).status, 200);

    // A selector seeded by it sees it (and so is ready) once it gossips.
    let selector = start_selector(dir.path(), &gossip_addr(&lonely), 8, "");
    wait_for_selector(&selector, 1);
    assert_eq!(curl(&format!("{}/readyz", selector.url), &[]).status, 200);

    wait_until(
        "the lonely cache gives up waiting",
        Duration::from_secs(20),
        || curl(&format!("{}/readyz", lonely.url), &[]).status == 200,
    );
    assert!(
        started.elapsed() >= Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );

    // A second cache seeded by the first is ready as soon as it hears it.
    let second = start_mesh_cache(
        &origin.url,
        &dir.path().join("second"),
        "second",
        "eu",
        &[gossip_addr(&lonely)],
        None,
        &[],
    );
    let joined = Instant::now();
    wait_until("the second cache joins", Duration::from_secs(8), || {
        curl(&format!("{}/readyz", second.url), &[]).status == 200
    });
    assert!(joined.elapsed() < Duration::from_secs(8));

    // With every cache gone, the selector is not ready: it would refuse
    // every plan.
    drop(second);
    let mut lonely = lonely;
    lonely.kill9();
    wait_until("the selector notices", Duration::from_secs(30), || {
        curl(&format!("{}/readyz", selector.url), &[]).status == 503
    });
    let got = curl(&format!("{}/readyz", selector.url), &[]);
    assert!(String::from_utf8_lossy(&got.body).contains("no cache in view"));
    assert_eq!(curl(&format!("{}/livez", selector.url), &[]).status, 200);
}

/// Writes `size` bytes of varied content to `path`; their BLAKE3 hash.
fn write_large_file(path: &Path, size: u64) -> blake3::Hash {
    let block = content(4 << 20, 77);
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut hasher = blake3::Hasher::new();
    let mut written = 0u64;
    let mut index = 0u64;
    while written < size {
        let mut chunk = block.clone();
        chunk[..8].copy_from_slice(&index.to_le_bytes());
        let take = (size - written).min(chunk.len() as u64) as usize;
        file.write_all(&chunk[..take]).unwrap();
        hasher.update(&chunk[..take]);
        written += take as u64;
        index += 1;
    }
    file.flush().unwrap();
    hasher.finalize()
}

fn hash_file(path: &Path) -> blake3::Hash {
    let mut hasher = blake3::Hasher::new();
    hasher.update_mmap(path).unwrap();
    hasher.finalize()
}

#[test]
fn a_drain_finishes_a_1gib_download_in_flight() {
    const SIZE: u64 = 1 << 30;
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("v")).unwrap();
    let expected = write_large_file(&root.path().join("v/huge.bin"), SIZE);
    let origin = start_origin(root.path());
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("access.json");
    let mut cache = start_shoal(
        &[
            "cache",
            "--listen",
            "127.0.0.1:0",
            "--origin",
            &origin.url,
            "--data-dir",
            dir.path().join("data").to_str().unwrap(),
            "--capacity",
            "2GiB",
        ],
        &[
            ("SHOAL_CACHE_LIMITS__DRAIN_DELAY_MS", "1500"),
            ("SHOAL_CACHE_ACCESS_LOG__FORMAT", "json"),
            ("SHOAL_CACHE_ACCESS_LOG__PATH", log_path.to_str().unwrap()),
        ],
    );
    assert_eq!(curl(&format!("{}/readyz", cache.url), &[]).status, 200);

    // ~100 MB/s: the download takes about ten seconds.
    let out = dir.path().join("huge.out");
    let mut download = Command::new(find_tool("curl"))
        .args(["-sS", "--fail", "--limit-rate", "100M", "-o"])
        .arg(&out)
        .arg(format!("{}/v/huge.bin", cache.url))
        .spawn()
        .unwrap();
    wait_until("the download is under way", Duration::from_secs(20), || {
        std::fs::metadata(&out).is_ok_and(|m| m.len() > 50_000_000)
    });
    signal(&cache, "TERM");
    let signalled = Instant::now();
    // During the drain delay the port still answers, not ready.
    let got = curl(&format!("{}/readyz", cache.url), &["--max-time", "1"]);
    assert_eq!(got.status, 503);
    assert!(String::from_utf8_lossy(&got.body).contains("draining"));
    assert_eq!(
        curl(&format!("{}/livez", cache.url), &["--max-time", "1"]).status,
        200
    );
    // After it, the port is closed to new clients.
    std::thread::sleep(Duration::from_millis(2500).saturating_sub(signalled.elapsed()));
    let late = curl(&format!("{}/livez", cache.url), &["--max-time", "2"]);
    assert_ne!(
        late.status, 200,
        "a new connection was taken after the drain delay"
    );
    assert!(
        cache.child.try_wait().unwrap().is_none(),
        "the cache left before the download ended"
    );

    let status = download.wait().unwrap();
    assert!(status.success(), "the download was cut: {status}");
    assert_eq!(std::fs::metadata(&out).unwrap().len(), SIZE);
    assert_eq!(hash_file(&out), expected, "the downloaded bytes differ");
    // The cache exits once the transfer is done, cleanly.
    let exit = wait_exit(&mut cache, Duration::from_secs(20));
    assert!(exit.success(), "{exit}");
    assert!(signalled.elapsed() > Duration::from_secs(3));

    let log = std::fs::read_to_string(&log_path).unwrap();
    let line: serde_json::Value = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["target"] == "/v/huge.bin")
        .unwrap_or_else(|| panic!("no line for the download in\n{log}"));
    assert_eq!(line["status"], 200);
    assert_eq!(line["body_bytes_sent"], SIZE);
    assert_eq!(line["outcome"], "complete");
    // How the cache answered: the first download was a miss.
    assert_eq!(line["note"], "miss", "{line}");
    assert!(line["duration_ms"].as_f64().unwrap() > 3000.0, "{line}");
}

#[test]
fn a_second_stop_signal_ends_the_drain_at_once() {
    let root = tempfile::tempdir().unwrap();
    let data = content(64 << 20, 5);
    write_file(root.path(), "slow.bin", &data);
    let origin = start_origin(root.path());
    let dir = tempfile::tempdir().unwrap();
    let mut cache = start_cache(&origin.url, &dir.path().join("data"), "1GiB", &[]);
    let out = dir.path().join("slow.out");
    let mut download = Command::new(find_tool("curl"))
        .args(["-sS", "--limit-rate", "1M", "-o"])
        .arg(&out)
        .arg(format!("{}/slow.bin", cache.url))
        .spawn()
        .unwrap();
    wait_until("the download is under way", Duration::from_secs(20), || {
        std::fs::metadata(&out).is_ok_and(|m| m.len() > 100_000)
    });
    signal(&cache, "TERM");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        cache.child.try_wait().unwrap().is_none(),
        "one signal is a drain, not a stop"
    );
    let second = Instant::now();
    signal(&cache, "TERM");
    wait_exit(&mut cache, Duration::from_secs(5));
    assert!(second.elapsed() < Duration::from_secs(3));
    assert!(
        !download.wait().unwrap().success(),
        "a 64 MB download at 1 MB/s cannot have ended"
    );
}

#[test]
fn access_logs_are_combined_or_json_and_reopen_on_sighup() {
    let root = tempfile::tempdir().unwrap();
    write_file(root.path(), "page.html", b"<p>hi</p>\n");
    let origin = start_origin(root.path());
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("access.log");
    let config = dir.path().join("cache.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\norigin = \"{}\"\ndata_dir = \"{}\"\n[access_log]\nformat = \"combined\"\npath = \"{}\"\n",
            origin.url,
            dir.path().join("data").display(),
            log_path.display()
        ),
    )
    .unwrap();
    let cache = start_shoal(&["cache", "--config", config.to_str().unwrap()], &[]);
    let got = curl(
        &format!("{}/page.html?x=1", cache.url),
        &["-A", "test \"agent\"/1", "-e", "http://ref.example/"],
    );
    assert_eq!(got.status, 200);
    wait_until("the line is written", Duration::from_secs(5), || {
        std::fs::read_to_string(&log_path).is_ok_and(|l| l.contains("page.html"))
    });
    let log = std::fs::read_to_string(&log_path).unwrap();
    let line = log.lines().find(|l| l.contains("page.html")).unwrap();
    // 127.0.0.1 - - [02/Dec/2026:09:40:05 +0000] "GET /page.html?x=... HTTP/1.1" 200 10 "ref" "agent"
    let (addr, rest) = line.split_once(" - - [").unwrap();
    assert_eq!(addr, "127.0.0.1");
    let (time, rest) = rest.split_once("] ").unwrap();
    assert!(time.ends_with(" +0000") && time.len() == 26, "{time}");
    assert!(
        rest.starts_with("\"GET /page.html?x=1 HTTP/1.1\" 200 10 \"http://ref.example/\" \"test \\x22agent\\x22/1\""),
        "{line}"
    );
    assert!(!log.contains('\x1b'));

    // logrotate: move the file away, SIGHUP, the next line goes to a new
    // file of the same name.
    let rotated = dir.path().join("access.log.1");
    std::fs::rename(&log_path, &rotated).unwrap();
    signal(&cache, "HUP");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(curl(&format!("{}/page.html", cache.url), &[]).status, 200);
    wait_until("the new file gets the line", Duration::from_secs(5), || {
        std::fs::read_to_string(&log_path)
            .is_ok_and(|l| l.contains("GET /page.html HTTP/1.1\" 200"))
    });
    assert!(!std::fs::read_to_string(&rotated)
        .unwrap()
        .contains("GET /page.html HTTP"));

    // An access log that cannot be opened is an error naming the setting.
    let bad = start_shoal_failing(
        &[
            "cache",
            "--origin",
            &origin.url,
            "--data-dir",
            dir.path().join("data2").to_str().unwrap(),
        ],
        &[(
            "SHOAL_CACHE_ACCESS_LOG__PATH",
            "/nonexistent/dir/access.log",
        )],
    );
    assert!(
        bad.contains("access_log.path /nonexistent/dir/access.log"),
        "{bad}"
    );
}

/// Runs `shoal ARGS` expecting it to fail at start; its error output.
fn start_shoal_failing(args: &[&str], env: &[(&str, &str)]) -> String {
    let output = Command::new(shoal_bin())
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(!output.status.success());
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn json_logs_name_members_joining_and_leaving() {
    let root = tempfile::tempdir().unwrap();
    write_file(root.path(), "a.txt", b"a\n");
    let origin = start_origin(root.path());
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("first.log");
    let first = start_shoal_with_stderr(
        &[
            "--log-format",
            "json",
            "cache",
            "--listen",
            "127.0.0.1:0",
            "--origin",
            &origin.url,
            "--data-dir",
            dir.path().join("first").to_str().unwrap(),
            "--gossip",
            "127.0.0.1:0",
            "--node-id",
            "first",
            "--region",
            "eu",
        ],
        &[
            ("SHOAL_CACHE_MESH__CLUSTER_SECRET", CLUSTER_SECRET),
            ("SHOAL_CACHE_MESH__GOSSIP_INTERVAL_MS", "200"),
        ],
        std::process::Stdio::from(std::fs::File::create(&log_path).unwrap()),
    );
    let second = start_mesh_cache(
        &origin.url,
        &dir.path().join("second"),
        "second",
        "us",
        &[gossip_addr(&first)],
        None,
        &[],
    );
    let lines = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&log_path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    };
    let said = |level: &str, words: &str| {
        lines().iter().any(|v| {
            v["level"] == level && v["message"].as_str().is_some_and(|m| m.contains(words))
        })
    };
    wait_until("the join is logged", Duration::from_secs(15), || {
        said("INFO", "second joined")
    });
    let joined = lines()
        .into_iter()
        .find(|v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.contains("second joined"))
        })
        .unwrap();
    assert_eq!(joined["member"], "second");
    assert_eq!(joined["region"], "us");
    drop(second);
    wait_until("the leave is logged", Duration::from_secs(30), || {
        said("WARN", "second left or stopped answering")
    });
    assert!(!std::fs::read_to_string(&log_path)
        .unwrap()
        .contains('\u{1b}'));
}

/// The repository's `deploy/` directory.
fn deploy_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

#[test]
fn systemd_units_verify_with_the_generated_manual_pages() {
    let dir = tempfile::tempdir().unwrap();
    let man = dir.path().join("man");
    let made = Command::new(shoal_bin())
        .arg("man")
        .arg(man.join("man1"))
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    for page in [
        "shoal.1",
        "shoal-cache.1",
        "shoal-selector.1",
        "shoal-origin.1",
        "shoal-get.1",
    ] {
        let text = std::fs::read_to_string(man.join("man1").join(page)).unwrap();
        assert!(text.contains(".TH"), "{page} is a manual page");
    }
    assert!(std::fs::read_to_string(man.join("man1/shoal-cache.1"))
        .unwrap()
        .contains("listen"));

    let mut units = Vec::new();
    for name in [
        "shoal-cache.service",
        "shoal-selector.service",
        "shoal-origin.service",
    ] {
        // The units name /usr/local/bin/shoal; verify checks it exists.
        let text = std::fs::read_to_string(deploy_dir().join(name))
            .unwrap()
            .replace("/usr/local/bin/shoal", shoal_bin());
        assert!(text.contains("Type=notify"), "{name}");
        std::fs::write(dir.path().join(name), text).unwrap();
        units.push(dir.path().join(name));
    }
    let verified = Command::new(find_tool("systemd-analyze"))
        .arg("verify")
        .args(&units)
        .env("MANPATH", &man)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&verified.stdout),
        String::from_utf8_lossy(&verified.stderr)
    );
    assert!(
        verified.status.success() && said.trim().is_empty(),
        "{said}"
    );

    // Completions are a script bash accepts.
    let script = Command::new(shoal_bin())
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(script.status.success());
    let path = dir.path().join("shoal.bash");
    std::fs::write(&path, &script.stdout).unwrap();
    let checked = Command::new("bash").arg("-n").arg(&path).status().unwrap();
    assert!(checked.success());
    assert!(String::from_utf8_lossy(&script.stdout).contains("complete -F"));
}

#[test]
fn a_cache_tells_systemd_when_it_is_ready_and_when_it_stops() {
    let root = tempfile::tempdir().unwrap();
    write_file(root.path(), "a.txt", b"a\n");
    let origin = start_origin(root.path());
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let cache = start_cache(
        &origin.url,
        &dir.path().join("data"),
        "64MiB",
        &[
            ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
            ("SHOAL_CACHE_LIMITS__DRAIN_DELAY_MS", "0"),
        ],
    );
    let mut buffer = [0u8; 512];
    let n = socket.recv(&mut buffer).expect("READY=1 within 15 s");
    let said = String::from_utf8_lossy(&buffer[..n]).into_owned();
    assert!(said.lines().any(|l| l == "READY=1"), "{said}");
    assert_eq!(curl(&format!("{}/readyz", cache.url), &[]).status, 200);
    signal(&cache, "TERM");
    let n = socket.recv(&mut buffer).expect("STOPPING=1 within 15 s");
    let said = String::from_utf8_lossy(&buffer[..n]).into_owned();
    assert!(said.lines().any(|l| l == "STOPPING=1"), "{said}");
}

#[test]
fn a_captured_operator_request_cannot_be_replayed() {
    let root = tempfile::tempdir().unwrap();
    write_file(root.path(), "a.txt", b"a\n");
    let origin = start_origin(root.path());
    let dir = tempfile::tempdir().unwrap();
    let caches = start_mesh(
        &origin.url,
        dir.path(),
        &[("op-a", "eu"), ("op-b", "eu")],
        &[],
    );
    let cache = &caches[0].url;
    let key = shoal_core::auth::ClusterKey::from_secret(CLUSTER_SECRET).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let post = |target: &str, expires: u64| {
        let token = key.sign("operator", expires, "POST", target).unwrap();
        curl(
            &format!("{cache}{target}"),
            &["-X", "POST", "-H", &format!("x-shoal-auth: {token}")],
        )
    };
    let target = format!(
        "/_shoal/egress?bytes_per_s=2500000&to=op-a&nonce={}",
        test_nonce()
    );
    assert_eq!(post(&target, now + 60).status, 200);
    // Captured on its way to op-a and sent to op-b: not for it.
    let elsewhere = {
        let token = key.sign("operator", now + 60, "POST", &target).unwrap();
        curl(
            &format!("{}{target}", caches[1].url),
            &["-X", "POST", "-H", &format!("x-shoal-auth: {token}")],
        )
    };
    assert_eq!(elsewhere.status, 421);
    // Without naming its cache at all: refused.
    let unaddressed = post(
        &format!("/_shoal/egress?bytes_per_s=2500000&nonce={}", test_nonce()),
        now + 60,
    );
    assert_eq!(unaddressed.status, 403);
    assert!(String::from_utf8_lossy(&unaddressed.body).contains("to=<node id>"));
    // The very same request, captured and sent again.
    let again = post(&target, now + 60);
    assert_eq!(again.status, 403);
    assert!(String::from_utf8_lossy(&again.body).contains("already used"));
    // Without a nonce: refused, saying what is missing.
    let bare = post("/_shoal/egress?bytes_per_s=2500000&to=op-a", now + 60);
    assert_eq!(bare.status, 403);
    assert!(String::from_utf8_lossy(&bare.body).contains("nonce"));
    // An expired token: refused without telling the cache's clock.
    let late = format!(
        "/_shoal/egress?bytes_per_s=2500000&to=op-a&nonce={}",
        test_nonce()
    );
    let expired = post(&late, now - 30);
    assert_eq!(expired.status, 403);
    let text = String::from_utf8_lossy(&expired.body).into_owned();
    assert!(
        text.contains("expired") && !text.chars().any(|c| c.is_ascii_digit()),
        "{text}"
    );

    // The command line signs a fresh request each time.
    for mbps in ["30", "40"] {
        let output = Command::new(shoal_bin())
            .args(["set-egress", "--cache", cache, "--mbps", mbps])
            .env("SHOAL_CACHE_MESH__CLUSTER_SECRET", CLUSTER_SECRET)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    assert_eq!(
        sample(&metrics(cache), "shoal_cache_egress_cap_bytes_per_second"),
        5_000_000.0
    );
}

/// A nonce no other request of this test run uses.
fn test_nonce() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = format!(
        "{:?}{}",
        Instant::now(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    blake3::hash(seed.as_bytes()).to_hex()[..32].to_string()
}
