//! `shoal demo` run as a newcomer runs it: its first words are the live
//! dashboard's URL, it tells its story (checking every byte itself), then
//! keeps a steady workload running that the dashboard shows moving, and
//! Ctrl-C stops it cleanly.

mod support;

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

fn dashboard_json(url: &str) -> serde_json::Value {
    let answer = curl(url, &[]);
    assert_eq!(answer.status, 200);
    serde_json::from_slice(&answer.body).expect("dashboard JSON")
}

/// Bytes the caches say they fetched from the origin, in all.
fn origin_bytes(dashboard: &serde_json::Value) -> f64 {
    dashboard["caches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["origin_gb"].as_f64().unwrap_or(0.0) * 1e9)
        .sum()
}

#[test]
fn the_demo_opens_with_its_dashboard_and_keeps_it_moving() {
    let logs = tempfile::NamedTempFile::new().unwrap();
    let mut demo = Command::new(shoal_bin())
        .args(["demo", "--size", "32MiB"])
        .stdout(Stdio::piped())
        .stderr(logs.reopen().unwrap())
        .stdin(Stdio::null())
        .spawn()
        .expect("start shoal demo");
    let log_tail = || {
        let text = std::fs::read_to_string(logs.path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    };
    let (sender, lines) = std::sync::mpsc::channel::<String>();
    let stdout = demo.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let wait_for = |seen: &mut Vec<String>, what: &str, limit: Duration| -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    seen.push(line.clone());
                    if line.contains(what) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "the demo never printed `{what}`; it printed:\n{}\nlog:\n{}",
                    seen.join("\n"),
                    log_tail()
                ),
            }
        }
    };

    // Its first words: the dashboard.
    let first = wait_for(&mut seen, "dashboard:", Duration::from_secs(60));
    assert!(
        seen.iter().filter(|l| !l.trim().is_empty()).count() <= 2,
        "the dashboard URL opens the output: {seen:?}"
    );
    let page = first
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap()
        .to_string();
    assert!(page.ends_with("/dashboard"), "{page}");
    let api = page.replace("/dashboard", "/_shoal/dashboard");
    assert_eq!(
        curl(&page, &[]).status,
        200,
        "the page is up from the start"
    );

    wait_for(&mut seen, "serving until Ctrl-C", Duration::from_secs(300));
    let before = dashboard_json(&api);
    assert_eq!(before["totals"]["caches"], 4);
    assert_eq!(before["regions"].as_array().unwrap().len(), 2);
    // The workload keeps it moving: viewers in both regions, and new live
    // segments fetched from the origin.
    let mut regions_busy = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(40);
    let after = loop {
        std::thread::sleep(Duration::from_secs(2));
        let now = dashboard_json(&api);
        if let Some(point) = now["points"].as_array().unwrap().last() {
            for (region, mbps) in point["region_egress_mbps"].as_object().unwrap() {
                if mbps.as_f64().unwrap_or(0.0) > 0.0 {
                    regions_busy.insert(region.clone());
                }
            }
        }
        let moving = now["totals"]["caches_mbps"].as_f64().unwrap_or(0.0) > 0.0;
        if moving && regions_busy.len() == 2 && origin_bytes(&now) > origin_bytes(&before) {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "the dashboard did not move: regions busy {regions_busy:?}, now {}\nlog:\n{}",
            now["totals"],
            log_tail()
        );
    };
    assert!(
        after["totals"]["decisions"].as_u64().unwrap()
            > before["totals"]["decisions"].as_u64().unwrap()
    );

    // Ctrl-C: a clean stop.
    let status = Command::new("kill")
        .args(["-INT", &demo.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    let exit = loop {
        if let Some(exit) = demo.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "the demo did not stop on Ctrl-C");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(exit.success(), "{exit:?}\nlog:\n{}", log_tail());
    let log = std::fs::read_to_string(logs.path()).unwrap();
    assert!(!log.contains("panicked"), "{}", log_tail());
    assert!(
        !log.contains("workload:"),
        "the workload ran without errors:\n{}",
        log_tail()
    );
}
