//! Test harness: real processes on 127.0.0.1 ephemeral ports.
//!
//! `shoal` roles are started from the binary Cargo built for this test run;
//! nginx, curl and aria2c are the Debian programs that `scripts/test`
//! installs. Every process is killed when its handle drops.
#![allow(dead_code)]

pub mod any_origin;

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const PIECE: u64 = 256 * 1024;

pub fn shoal_bin() -> &'static str {
    env!("CARGO_BIN_EXE_shoal")
}

/// A child process killed (SIGKILL) on drop.
pub struct Proc {
    pub child: Child,
    pub url: String,
    pub name: String,
    /// The first line the process printed.
    pub banner: String,
}

impl Proc {
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Starts `shoal ARGS...` and waits for its "listening on http://..." line.
pub fn start_shoal(args: &[&str], env: &[(&str, &str)]) -> Proc {
    start_shoal_with_stderr(args, env, Stdio::inherit())
}

/// [`start_shoal`], its log (stderr) going to `stderr`.
pub fn start_shoal_with_stderr(args: &[&str], env: &[(&str, &str)], stderr: Stdio) -> Proc {
    let mut command = Command::new(shoal_bin());
    command
        .args(args)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .stdin(Stdio::null());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("spawn shoal");
    let stdout = child.stdout.take().expect("stdout");
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        let _ = sender.send(line);
        // Keep draining so the child never blocks on a full pipe.
        let mut sink = Vec::new();
        let _ = reader.read_to_end(&mut sink);
    });
    let line = receiver
        .recv_timeout(Duration::from_secs(30))
        .expect("shoal did not report its address");
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in `{line}`"))
        .to_string();
    Proc {
        child,
        url,
        name: args.first().copied().unwrap_or("shoal").to_string(),
        banner: line,
    }
}

pub fn start_origin(root: &Path) -> Proc {
    start_shoal(
        &[
            "origin",
            "--root",
            root.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        &[],
    )
}

/// `shoal origin` serving `root` with its uplink capped at `mbps` Mbit/s
/// (so a transfer is still running when a test kills something).
pub fn start_capped_origin(root: &Path, mbps: &str) -> Proc {
    start_shoal(
        &[
            "origin",
            "--root",
            root.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--egress-mbps",
            mbps,
        ],
        &[],
    )
}

pub fn start_cache(
    origin_url: &str,
    data_dir: &Path,
    capacity: &str,
    env: &[(&str, &str)],
) -> Proc {
    start_shoal(
        &[
            "cache",
            "--listen",
            "127.0.0.1:0",
            "--origin",
            origin_url,
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--capacity",
            capacity,
        ],
        env,
    )
}

pub fn publish(root: &Path) {
    let status = Command::new(shoal_bin())
        .args(["publish", root.to_str().unwrap()])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "shoal publish failed");
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait_for_port(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if TcpStream::connect(addr).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{addr} never accepted connections");
}

pub fn find_tool(name: &str) -> PathBuf {
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
    {
        let candidate = Path::new(dir).join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("{name} is not installed: run scripts/install-test-deps (the test script does)");
}

/// Headless Chromium (Debian's `chromium`) with a fresh profile: loads
/// `url`, lets its scripts run for `virtual_ms` of virtual time (timers
/// jump ahead; network waits are real), then does what `action` says
/// (`--dump-dom`, `--screenshot=FILE`, …). Returns its standard output
/// (the DOM for `--dump-dom`) and its log.
pub fn chromium(url: &str, virtual_ms: u64, action: &[&str]) -> (String, String) {
    let profile = tempfile::tempdir().unwrap();
    let output = Command::new(find_tool("chromium"))
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            &format!("--virtual-time-budget={virtual_ms}"),
            &format!("--user-data-dir={}", profile.path().display()),
        ])
        .args(action)
        .arg(url)
        .output()
        .expect("run chromium");
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// nginx serving `root` on an ephemeral port, with `extra` inside `server {}`.
pub fn start_nginx(root: &Path, extra: &str) -> (Proc, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let conf = format!(
        r#"daemon off;
master_process off;
worker_processes 1;
error_log {dir}/error.log warn;
pid {dir}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    sendfile on;
    tcp_nopush on;
    types {{ video/mp4 mp4; text/plain txt; }}
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        {extra}
    }}
}}
"#,
        dir = dir.path().display(),
        root = root.display(),
    );
    let conf_path = dir.path().join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let child = Command::new(find_tool("nginx"))
        .args([
            "-p",
            dir.path().to_str().unwrap(),
            "-c",
            conf_path.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn nginx");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_for_port(addr);
    (
        Proc {
            child,
            url: format!("http://{addr}"),
            name: "nginx".into(),
            banner: String::new(),
        },
        dir,
    )
}

/// Deterministic pseudo-random content.
pub fn content(size: u64, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(size as usize);
    while (out.len() as u64) < size {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(size as usize);
    out
}

pub fn write_file(root: &Path, rel: &str, data: &[u8]) -> PathBuf {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, data).unwrap();
    path
}

/// Result of one curl run.
pub struct CurlResult {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub exit_code: i32,
}

impl CurlResult {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .rev()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Runs curl with extra arguments; returns status, headers and body.
pub fn curl(url: &str, args: &[&str]) -> CurlResult {
    let dir = tempfile::tempdir().unwrap();
    let body_path = dir.path().join("body");
    let headers_path = dir.path().join("headers");
    let output = Command::new(find_tool("curl"))
        .args([
            "-sS",
            "--max-time",
            "120",
            "-o",
            body_path.to_str().unwrap(),
            "-D",
            headers_path.to_str().unwrap(),
        ])
        .args(args)
        .arg(url)
        .output()
        .expect("run curl");
    let raw_headers = std::fs::read_to_string(&headers_path).unwrap_or_default();
    let mut status = 0;
    let mut headers = Vec::new();
    for line in raw_headers.lines() {
        if line.starts_with("HTTP/") {
            status = line
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            headers.clear();
        } else if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    CurlResult {
        status,
        headers,
        body: std::fs::read(&body_path).unwrap_or_default(),
        exit_code: output.status.code().unwrap_or(-1),
    }
}

/// Downloads with aria2c `-x4 -s4 -k1M` and returns the file's bytes.
pub fn aria2c(url: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new(find_tool("aria2c"))
        .args([
            "-x4",
            "-s4",
            "-k1M",
            "-q",
            "--allow-overwrite=true",
            "--auto-file-renaming=false",
            "--file-allocation=none",
        ])
        .args(["-d", dir.path().to_str().unwrap(), "-o", "out", url])
        .status()
        .expect("run aria2c");
    assert!(status.success(), "aria2c failed for {url}");
    std::fs::read(dir.path().join("out")).unwrap_or_default()
}

/// Downloads one file from several mirrors with aria2c (`-x2 -s2`, a few
/// tries per mirror); `None` if aria2c gave up.
pub fn aria2c_mirrors(urls: &[String]) -> Option<Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new(find_tool("aria2c"))
        .args([
            "-x2",
            "-s2",
            "-k1M",
            "-q",
            "--max-tries=3",
            "--retry-wait=1",
            "--connect-timeout=2",
            "--timeout=10",
            "--allow-overwrite=true",
            "--auto-file-renaming=false",
            "--file-allocation=none",
        ])
        .args(["-d", dir.path().to_str().unwrap(), "-o", "out"])
        .args(urls)
        .status()
        .expect("run aria2c");
    status
        .success()
        .then(|| std::fs::read(dir.path().join("out")).unwrap_or_default())
}

/// The cache's counters.
pub fn stats(cache_url: &str) -> serde_json::Value {
    let result = curl(&format!("{cache_url}/_shoal/stats"), &[]);
    assert_eq!(result.status, 200);
    serde_json::from_slice(&result.body).expect("stats JSON")
}

pub fn stat(cache_url: &str, name: &str) -> u64 {
    stats(cache_url)[name]
        .as_u64()
        .unwrap_or_else(|| panic!("no stat {name}"))
}

/// The shared secret of test meshes.
pub const CLUSTER_SECRET: &str = "test cluster secret, long enough";

/// Starts a cache that joins a mesh (gossip on an ephemeral port unless
/// `gossip` is given) as `node_id` in `region`.
pub fn start_mesh_cache(
    origin_url: &str,
    data_dir: &Path,
    node_id: &str,
    region: &str,
    seeds: &[String],
    gossip: Option<&str>,
    extra: &[&str],
) -> Proc {
    start_mesh_cache_env(
        origin_url,
        data_dir,
        node_id,
        region,
        seeds,
        gossip,
        extra,
        &[],
    )
}

/// [`start_mesh_cache`] with more environment (`SHOAL_CACHE_…` settings).
#[allow(clippy::too_many_arguments)]
pub fn start_mesh_cache_env(
    origin_url: &str,
    data_dir: &Path,
    node_id: &str,
    region: &str,
    seeds: &[String],
    gossip: Option<&str>,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Proc {
    // `extra` may name the listen address (a restart on the same port).
    let listen = extra
        .iter()
        .position(|a| *a == "--listen")
        .and_then(|i| extra.get(i + 1))
        .copied()
        .unwrap_or("127.0.0.1:0");
    let extra: Vec<&str> = extra
        .iter()
        .enumerate()
        .filter(|(i, a)| **a != "--listen" && (*i == 0 || extra[i - 1] != "--listen"))
        .map(|(_, a)| *a)
        .collect();
    let mut args: Vec<String> = [
        "cache",
        "--listen",
        listen,
        "--origin",
        origin_url,
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--capacity",
        "1GiB",
        "--gossip",
        gossip.unwrap_or("127.0.0.1:0"),
        "--node-id",
        node_id,
        "--region",
        region,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for seed in seeds {
        args.push("--seed".into());
        args.push(seed.clone());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut all_env = vec![
        ("SHOAL_CACHE_MESH__CLUSTER_SECRET", CLUSTER_SECRET),
        // Fast failure detection for tests: dead within ~1-2 s.
        ("SHOAL_CACHE_MESH__GOSSIP_INTERVAL_MS", "200"),
    ];
    all_env.extend_from_slice(env);
    let mut proc = start_shoal(&args, &all_env);
    proc.name = node_id.to_string();
    proc
}

/// The gossip address a mesh cache printed.
pub fn gossip_addr(proc: &Proc) -> String {
    proc.banner
        .split_whitespace()
        .find_map(|w| w.strip_prefix("gossip="))
        .unwrap_or_else(|| panic!("no gossip address in `{}`", proc.banner))
        .to_string()
}

/// Waits until every cache sees exactly `members` live members.
pub fn wait_for_mesh(urls: &[&str], members: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let seen: Vec<u64> = urls.iter().map(|u| stat(u, "mesh_members")).collect();
        if seen.iter().all(|n| *n == members) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "mesh did not converge to {members} members: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Polls until `check` holds (or panics naming `what`).
pub fn wait_until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The cache's view of the mesh (`/_shoal/mesh`).
pub fn mesh_report(cache_url: &str) -> serde_json::Value {
    let result = curl(&format!("{cache_url}/_shoal/mesh"), &[]);
    assert_eq!(result.status, 200);
    serde_json::from_slice(&result.body).expect("mesh JSON")
}

/// Which of `names` is the shield of `path` (the same computation the
/// caches make).
pub fn shield_of(path: &str, names: &[&str]) -> String {
    shoal_core::rendezvous::first(&shoal_mesh::shield_key(path), names)
        .unwrap()
        .to_string()
}

/// A counter once it has stopped moving (same value 500 ms apart), for
/// assertions that must not race background work the test started.
pub fn stable_stat(cache_url: &str, name: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = stat(cache_url, name);
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = stat(cache_url, name);
        if now == last || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

/// A selector over a test mesh: one delivery service for every path with
/// `bitrate_mbps` committed; `extra_toml` adds top-level settings. Does not
/// wait for it to see the caches (see [`wait_for_selector`]).
pub fn start_selector(dir: &Path, seed: &str, bitrate_mbps: u32, extra_toml: &str) -> Proc {
    start_selector_service(dir, seed, bitrate_mbps, extra_toml, "")
}

/// [`start_selector`] with more settings of its one service
/// (`service_toml`, e.g. `min_sources = 3`).
pub fn start_selector_service(
    dir: &Path,
    seed: &str,
    bitrate_mbps: u32,
    extra_toml: &str,
    service_toml: &str,
) -> Proc {
    let config = dir.join("selector.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\n{extra_toml}\n[mesh]\ngossip = \"127.0.0.1:0\"\nseeds = [\"{seed}\"]\ngossip_interval_ms = 200\n[[service]]\nname = \"all\"\npath_prefix = \"/\"\nbitrate_mbps = {bitrate_mbps}\nheadroom = 1.5\n{service_toml}\n"
        ),
    )
    .unwrap();
    start_shoal(
        &["selector", "--config", config.to_str().unwrap()],
        &[("SHOAL_SELECTOR_MESH__CLUSTER_SECRET", CLUSTER_SECRET)],
    )
}

/// Waits until `selector` sees exactly `caches` caches.
pub fn wait_for_selector(selector: &Proc, caches: usize) {
    wait_until(
        "the selector sees the caches",
        Duration::from_secs(20),
        || {
            let mesh = curl(&format!("{}/_shoal/mesh", selector.url), &[]);
            serde_json::from_slice::<serde_json::Value>(&mesh.body)
                .ok()
                .and_then(|v| v["caches"].as_array().map(Vec::len))
                == Some(caches)
        },
    );
}

/// Sets a file's modification time (to change a file "in place", keeping
/// its validators).
pub fn set_mtime(file: &Path, mtime: std::time::SystemTime) {
    std::fs::File::options()
        .write(true)
        .open(file)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
}

/// Caches `(name, region)` in one mesh (the first is every other's
/// seed), each started with `extra` flags; waits until all see each other.
pub fn start_mesh(
    origin_url: &str,
    dir: &Path,
    names: &[(&str, &str)],
    extra: &[&str],
) -> Vec<Proc> {
    let mut caches: Vec<Proc> = Vec::new();
    for (name, region) in names {
        let seeds: Vec<String> = caches.first().map(gossip_addr).into_iter().collect();
        caches.push(start_mesh_cache(
            origin_url,
            &dir.join(name),
            name,
            region,
            &seeds,
            None,
            extra,
        ));
    }
    let urls: Vec<&str> = caches.iter().map(|c| c.url.as_str()).collect();
    wait_for_mesh(&urls, names.len() as u64);
    caches
}

/// [`start_mesh`] with every cache in region "eu".
pub fn start_eu_mesh(origin_url: &str, dir: &Path, names: &[&str], extra: &[&str]) -> Vec<Proc> {
    let named: Vec<(&str, &str)> = names.iter().map(|n| (*n, "eu")).collect();
    start_mesh(origin_url, dir, &named, extra)
}

/// Starts `shoal get` from `address` (`extra` flags added); returns the
/// child and where it writes.
pub fn start_peer(
    url: &str,
    dir: &Path,
    address: &str,
    extra: &[&str],
) -> (std::process::Child, std::path::PathBuf) {
    let out = dir.join(format!("peer-{address}.bin"));
    let mut args = vec![
        "get",
        url,
        "-o",
        out.to_str().unwrap(),
        "--json",
        "--quiet",
        "--local-address",
        address,
    ];
    args.extend_from_slice(extra);
    let child = Command::new(shoal_bin())
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn shoal get");
    (child, out)
}

/// Waits for a peer; its JSON summary (panics with its stderr if it failed).
pub fn finish_peer(child: std::process::Child) -> serde_json::Value {
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "shoal get failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("summary JSON")
}
