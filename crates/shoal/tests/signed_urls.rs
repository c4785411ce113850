//! Signed URLs at the cache: a delivery service with `[service.signing]`
//! serves only requests whose signature holds (the battery: missing,
//! expired, unknown key, tampered path, another client, scope, rotation),
//! and its signature parameters reach neither the cache key nor the origin.
//! `shoal get` of a signed URL (from a cache, and through a selector)
//! downloads the object; of an unsigned one, fails saying why.

mod support;

use std::process::Command;
use support::any_origin::AnyOrigin;
use support::*;

const OLD_SECRET: &str = "the old secret, sixteen+ bytes";
const NEW_SECRET: &str = "the new secret, sixteen+ bytes";

fn now_unix_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `shoal sign URL ARGS…` with `secret`.
fn sign(url: &str, key_id: &str, secret: &str, extra: &[&str]) -> String {
    let output = Command::new(shoal_bin())
        .args(["sign", url, "--key-id", key_id])
        .args(extra)
        .env("SHOAL_SIGN_SECRET", secret)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

fn start_signing_cache(origin: &str, dir: &std::path::Path, keys: &str) -> Proc {
    let config = dir.join("cache.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\norigin = \"{origin}\"\ndata_dir = \"{}\"\n\
             [[service]]\nname = \"paid\"\npath_prefix = \"/paid/\"\n[service.signing]\nkeys = {{ {keys} }}\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    start_shoal(&["cache", "--config", config.to_str().unwrap()], &[])
}

/// `shoal get URL -o OUT --json --quiet`.
fn shoal_get(url: &str, out: &std::path::Path) -> std::process::Output {
    Command::new(shoal_bin())
        .args(["get", url, "-o", out.to_str().unwrap(), "--json", "--quiet"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

/// `shoal get` succeeded and wrote exactly `data`; its JSON summary.
fn got_exactly(
    output: &std::process::Output,
    out: &std::path::Path,
    data: &[u8],
) -> serde_json::Value {
    assert!(
        output.status.success(),
        "shoal get failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let written = std::fs::read(out).unwrap();
    assert_eq!(written.len(), data.len());
    assert_eq!(
        blake3::hash(&written),
        blake3::hash(data),
        "the file differs"
    );
    serde_json::from_slice(&output.stdout).expect("summary JSON")
}

/// `shoal get` failed naming the 403 and `words`, and wrote nothing.
fn get_refused(output: &std::process::Output, out: &std::path::Path, words: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "shoal get succeeded: {stderr}");
    assert!(
        stderr.contains("403") && stderr.contains(words),
        "`{stderr}` should name the 403 and say `{words}`"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!out.exists());
}

fn refused(url: &str, words: &str) {
    let got = curl(url, &[]);
    let body = String::from_utf8_lossy(&got.body);
    assert_eq!(got.status, 403, "{url}: {body}");
    assert!(body.contains(words), "{url}: `{body}` should say `{words}`");
}

#[test]
fn a_signed_service_serves_only_good_signatures_and_keeps_them_from_the_key_and_origin() {
    let origin = AnyOrigin::start();
    origin.set("/paid/film.bin", "size=3000000&etag=f1");
    origin.set("/paid/other.bin", "size=1000&etag=o1");
    origin.set("/free/a.txt", "body=free");
    let dir = tempfile::tempdir().unwrap();
    let cache = start_signing_cache(
        &origin.url,
        dir.path(),
        &format!("k1 = \"{OLD_SECRET}\", k2 = \"{NEW_SECRET}\""),
    );
    let film = format!("{}/paid/film.bin", cache.url);

    // Good signatures with either key (rotation in progress) are served,
    // the same stored object both times.
    let with_new = sign(&film, "k2", NEW_SECRET, &[]);
    let got = curl(&with_new, &[]);
    assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));
    assert_eq!(got.body.len(), 3_000_000);
    let origin_gets = origin.count("GET", "/paid/film.bin");
    let with_old = sign(&film, "k1", OLD_SECRET, &["--expires-in-s", "600"]);
    let again = curl(&with_old, &[]);
    assert_eq!(again.status, 200);
    assert!(again.body == got.body);
    assert_eq!(
        origin.count("GET", "/paid/film.bin"),
        origin_gets,
        "a second signature is the same cache key"
    );
    // A scope covers every path under it.
    let scoped = sign(&film, "k2", NEW_SECRET, &["--scope", "/paid/"]);
    let other = scoped.replace("/paid/film.bin", "/paid/other.bin");
    assert_eq!(curl(&other, &[]).status, 200);

    // The battery.
    refused(&film, "needs a signed URL");
    let query = shoal_core::url_sign::signed_query(
        "/paid/film.bin",
        &shoal_core::url_sign::Claims {
            expires_unix_s: now_unix_s() - 10,
            key_id: "k2".into(),
            scope: None,
            client: None,
        },
        NEW_SECRET.as_bytes(),
    );
    refused(&format!("{film}?{query}"), "expired");
    refused(
        &sign(&film, "k9", "some other secret, long enough", &[]),
        "`k9`",
    );
    refused(
        &with_new.replace("/paid/film.bin", "/paid/other.bin"),
        "does not match",
    );
    refused(
        &sign(&film, "k2", "not the service's secret!!", &[]),
        "does not match",
    );
    refused(
        &sign(&film, "k2", NEW_SECRET, &["--client", "192.0.2.99"]),
        "another client",
    );
    assert_eq!(
        curl(
            &sign(&film, "k2", NEW_SECRET, &["--client", "127.0.0.1"]),
            &["-r", "0-9"]
        )
        .status,
        206
    );
    // Outside the service nothing is asked.
    assert_eq!(curl(&format!("{}/free/a.txt", cache.url), &[]).status, 200);

    // The origin never saw a signature parameter.
    for seen in origin.seen() {
        assert!(
            !seen.target.contains("shoal-"),
            "the origin got {}",
            seen.target
        );
    }
    let metrics = String::from_utf8(curl(&format!("{}/metrics", cache.url), &[]).body).unwrap();
    let refusals: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("shoal_cache_signed_url_refusals_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(refusals, 6.0);

    // The rotation ends: the old key is removed, its URLs stop working.
    drop(cache);
    let cache = start_signing_cache(&origin.url, dir.path(), &format!("k2 = \"{NEW_SECRET}\""));
    let film = format!("{}/paid/film.bin", cache.url);
    refused(&sign(&film, "k1", OLD_SECRET, &[]), "`k1`");
    assert_eq!(curl(&sign(&film, "k2", NEW_SECRET, &[]), &[]).status, 200);
}

#[test]
fn shoal_get_downloads_a_signed_url_and_says_why_an_unsigned_one_is_refused() {
    let root = tempfile::tempdir().unwrap();
    // Several pieces, published: the manifest comes from the cache.
    let data = content((3 << 20) + 4_321, 61);
    write_file(root.path(), "paid/film.bin", &data);
    publish(root.path());
    let origin = start_origin(root.path());
    let dir = tempfile::tempdir().unwrap();
    let cache = start_signing_cache(&origin.url, dir.path(), &format!("k2 = \"{NEW_SECRET}\""));
    let film = format!("{}/paid/film.bin", cache.url);

    let out = dir.path().join("film.bin");
    let summary = got_exactly(
        &shoal_get(&sign(&film, "k2", NEW_SECRET, &[]), &out),
        &out,
        &data,
    );
    assert_eq!(summary["bytes"], data.len() as u64, "{summary}");
    // The object's manifest and piece hashes are guarded like the object:
    // the signature for the object's path opens them.
    for endpoint in ["manifest", "hashes"] {
        let guarded = format!("{}/_shoal/{endpoint}/paid/film.bin", cache.url);
        refused(&guarded, "needs a signed URL");
        let signed = sign(&film, "k2", NEW_SECRET, &[]).replace(
            "/paid/film.bin",
            &format!("/_shoal/{endpoint}/paid/film.bin"),
        );
        let answer = curl(&signed, &[]);
        assert_ne!(
            answer.status,
            403,
            "{endpoint}: {}",
            String::from_utf8_lossy(&answer.body)
        );
    }
    assert_ne!(
        curl(&format!("{}/_shoal/manifest/free/x.bin", cache.url), &[]).status,
        403,
        "paths outside the signed service stay open"
    );
    // A scoped signature works the same.
    let scoped = dir.path().join("scoped.bin");
    got_exactly(
        &shoal_get(
            &sign(&film, "k2", NEW_SECRET, &["--scope", "/paid/"]),
            &scoped,
        ),
        &scoped,
        &data,
    );

    // An unsigned mirror (another signing cache) takes the URL's signature.
    let dir2 = tempfile::tempdir().unwrap();
    let cache2 = start_signing_cache(&origin.url, dir2.path(), &format!("k2 = \"{NEW_SECRET}\""));
    let mirrored = dir.path().join("mirrored.bin");
    let summary = got_exactly(
        &Command::new(shoal_bin())
            .args(["get", &sign(&film, "k2", NEW_SECRET, &[])])
            .args(["--mirror", &format!("{}/paid/film.bin", cache2.url)])
            .args(["-o", mirrored.to_str().unwrap(), "--json", "--quiet"])
            .output()
            .unwrap(),
        &mirrored,
        &data,
    );
    let mirror = summary["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["url"].as_str().unwrap().starts_with(&cache2.url))
        .unwrap_or_else(|| panic!("no mirror source: {summary}"));
    assert!(
        mirror["url"].as_str().unwrap().contains("shoal-sig=")
            && !mirror["state"].as_str().unwrap().starts_with("dropped"),
        "{summary}"
    );

    // Unsigned or tampered with: the cache's reason, not just its status.
    let refused_out = dir.path().join("refused.bin");
    get_refused(
        &shoal_get(&film, &refused_out),
        &refused_out,
        "needs a signed URL",
    );
    get_refused(
        &shoal_get(
            &sign(&film, "k2", "not the service's secret!!", &[]),
            &refused_out,
        ),
        &refused_out,
        "does not match",
    );
    // Any other query is refused before anything is asked.
    let output = shoal_get(&format!("{film}?token=x"), &refused_out);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("`token`"), "{stderr}");
}

#[test]
fn signing_settings_are_checked_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cache.toml");
    std::fs::write(
        &config,
        "origin = \"http://127.0.0.1:9\"\n[[service]]\nname = \"paid\"\npath_prefix = \"/paid/\"\n[service.signing]\nkeys = { k1 = \"short\" }\n",
    )
    .unwrap();
    let output = Command::new(shoal_bin())
        .args(["cache", "--config", config.to_str().unwrap(), "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(
        text.contains("service `paid`: signing.keys") && text.contains("k1"),
        "{text}"
    );
    // --print-config hides the secrets.
    std::fs::write(
        &config,
        "origin = \"http://127.0.0.1:9\"\n[[service]]\nname = \"paid\"\npath_prefix = \"/paid/\"\n[service.signing]\nkeys = { k1 = \"a secret that stays hidden\" }\n",
    )
    .unwrap();
    let output = Command::new(shoal_bin())
        .args([
            "cache",
            "--config",
            config.to_str().unwrap(),
            "--print-config",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        text.contains("k1") && !text.contains("stays hidden"),
        "{text}"
    );
}

#[test]
fn in_a_mesh_the_signature_is_checked_once_at_the_edge() {
    let origin = AnyOrigin::start();
    // Small pages are whole responses, fetched through the path's shield.
    for i in 0..6 {
        origin.set(
            &format!("/paid/page{i}.html"),
            "body=paid%20page&h=Cache-Control:max-age%3D60",
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let service = format!(
        "[{{name=\"paid\",path_prefix=\"/paid/\",signing={{keys={{k2=\"{NEW_SECRET}\"}}}}}}]"
    );
    let mut caches = Vec::new();
    for name in ["sa", "sb"] {
        let seeds: Vec<String> = caches.first().map(gossip_addr).into_iter().collect();
        let mut args = vec![
            "cache".to_string(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--origin".into(),
            origin.url.clone(),
            "--data-dir".into(),
            dir.path().join(name).display().to_string(),
            "--gossip".into(),
            "127.0.0.1:0".into(),
            "--node-id".into(),
            name.into(),
        ];
        for seed in seeds {
            args.push("--seed".into());
            args.push(seed);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        caches.push(start_shoal(
            &args,
            &[
                ("SHOAL_CACHE_MESH__CLUSTER_SECRET", CLUSTER_SECRET),
                ("SHOAL_CACHE_MESH__GOSSIP_INTERVAL_MS", "200"),
                ("SHOAL_CACHE_SERVICE", &service),
            ],
        ));
    }
    let urls: Vec<&str> = caches.iter().map(|c| c.url.as_str()).collect();
    wait_for_mesh(&urls, 2);
    // Through both caches: whichever is a page's shield, the other asks it
    // (signed with the cluster key) and is answered.
    for i in 0..6 {
        for cache in &caches {
            let url = sign(
                &format!("{}/paid/page{i}.html", cache.url),
                "k2",
                NEW_SECRET,
                &[],
            );
            let got = curl(&url, &[]);
            assert_eq!(
                got.status,
                200,
                "{url}: {}",
                String::from_utf8_lossy(&got.body)
            );
            assert_eq!(got.body, b"paid page");
            refused(
                &format!("{}/paid/page{i}.html", cache.url),
                "needs a signed URL",
            );
        }
    }
    // A stranger cannot pass as a sibling with the tier header alone.
    let got = curl(
        &format!("{}/paid/page0.html", caches[0].url),
        &["-H", "x-shoal-tier: 1"],
    );
    assert_eq!(got.status, 403);
    // A selector of the same service checks the signature itself and
    // carries it in its redirect and its plan.
    origin.set("/paid/film.bin", "size=2000000&etag=film");
    let selector = start_selector_service(
        dir.path(),
        &gossip_addr(&caches[0]),
        8,
        "",
        &format!("[service.signing]\nkeys = {{ k2 = \"{NEW_SECRET}\" }}"),
    );
    wait_for_selector(&selector, 2);
    let signed = sign(
        &format!("{}/paid/film.bin", selector.url),
        "k2",
        NEW_SECRET,
        &[],
    );
    let redirect = curl(&signed, &[]);
    assert_eq!(
        redirect.status,
        302,
        "{}",
        String::from_utf8_lossy(&redirect.body)
    );
    let location = redirect.header("location").unwrap().to_string();
    assert!(location.contains("shoal-sig="), "{location}");
    let followed = curl(&signed, &["-L"]);
    assert_eq!(followed.status, 200);
    assert_eq!(followed.body.len(), 2_000_000);
    let unsigned = curl(&format!("{}/paid/film.bin", selector.url), &[]);
    assert_eq!(unsigned.status, 403);
    assert!(String::from_utf8_lossy(&unsigned.body).contains("needs a signed URL"));
    let query = signed.split_once('?').unwrap().1;
    let plan = curl(
        &format!("{}/plan?path=/paid/film.bin&{query}", selector.url),
        &[],
    );
    assert_eq!(plan.status, 200, "{}", String::from_utf8_lossy(&plan.body));
    let plan: serde_json::Value = serde_json::from_slice(&plan.body).unwrap();
    let source = plan["sources"][0]["url"].as_str().unwrap();
    assert!(source.contains("shoal-sig="), "{source}");
    assert_eq!(curl(source, &["-r", "0-9"]).status, 206);
    assert_eq!(
        curl(&format!("{}/plan?path=/paid/film.bin", selector.url), &[]).status,
        403
    );
    // `shoal get` of the signed selector URL: the plan is asked with the
    // signature (its sources are the caches by name, not the redirect's
    // URL), and every piece comes through them signed.
    let out = dir.path().join("film.bin");
    let summary = got_exactly(&shoal_get(&signed, &out), &out, &content(2_000_000, 7));
    let sources = summary["sources"].as_array().unwrap();
    assert!(
        !sources.is_empty()
            && sources
                .iter()
                .all(|s| ["sa", "sb"].contains(&s["name"].as_str().unwrap())),
        "{summary}"
    );
    let refused_out = dir.path().join("refused.bin");
    get_refused(
        &shoal_get(&format!("{}/paid/film.bin", selector.url), &refused_out),
        &refused_out,
        "needs a signed URL",
    );

    for seen in origin.seen() {
        assert!(
            !seen.target.contains("shoal-"),
            "the origin got {}",
            seen.target
        );
    }
}
