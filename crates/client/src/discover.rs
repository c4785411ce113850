//! Where to get an object: the URL given, parsed; the sources a selector
//! plans (or, for a plain URL, the server itself and any mirrors); the
//! manifest, checked against the object id.
//!
//! A signed URL (`shoal_core::url_sign`: `shoal-exp`, `shoal-kid`,
//! `shoal-scope`, `shoal-ip`, `shoal-sig`) keeps its signature, as given,
//! on every request made for it: the object and its ranges, the cache's
//! manifest and hashes, and the selector's `/plan` (beside `path=`). The
//! URLs a selector plans carry their own signature.
//!
//! Everything a server sends here is a stranger's input: plans are parsed
//! into typed values with bounded sizes, URLs must be `http://` with a
//! host, and a manifest is accepted only if its hash is the id the server
//! (and the plan) named, when they name one; a plain web server names
//! none, and its manifest then stands for itself (every piece must still
//! match it).

use crate::reference::Reference;
use crate::GetError;
use shoal_core::{Manifest, ObjectId};
use shoal_http::path::RequestPath;
use std::time::Duration;

/// Largest plan accepted from a selector.
pub const PLAN_BYTES_MAX: usize = 1 << 20;
/// Largest manifest accepted (1 TiB in 256 KiB pieces is 128 MiB of hashes;
/// objects that large use larger pieces).
pub const MANIFEST_BYTES_MAX: usize = 64 << 20;

// The names a cache and a selector use on the wire (shoal-proto).
pub use shoal_proto::{CACHE_STATUS_HEADER, MANIFEST_KIND_HEADER, OBJECT_ID_HEADER, PIN_PARAM};

/// A signed URL's query parameters (`shoal_core::url_sign`).
pub use shoal_core::url_sign::PARAMS as SIGNATURE_PARAMS;

/// Most sources taken from one plan.
pub const PLAN_SOURCES_MAX: usize = 16;

/// `http://host[:port]/path[?query]`, split. The query may hold only a
/// selector's version pin (`shoal-object=ID`) and a signed URL's
/// parameters ([`SIGNATURE_PARAMS`]), in any order.
#[derive(Clone, Debug, PartialEq)]
pub struct ObjectUrl {
    /// `http://host:port`
    pub base: String,
    pub path: RequestPath,
    /// The version a selector pinned this URL to: the cache serves exactly
    /// it or refuses.
    pub pin: Option<ObjectId>,
    /// A signed URL's parameters (`shoal-exp=…&…&shoal-sig=…`, without
    /// `?`), in the order and encoding they came in: they go with every
    /// request for the object.
    pub signature: Option<String>,
}

impl ObjectUrl {
    pub fn parse(url: &str) -> Result<Self, GetError> {
        let bad = |why: &str| GetError::BadUrl(format!("`{url}`: {why}"));
        let (scheme, rest) = match url.split_once("://") {
            Some(("http", rest)) => ("http", rest),
            Some(("https", rest)) => ("https", rest),
            _ => return Err(bad("only http:// and https:// URLs are supported")),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => return Err(bad("no object path after the host")),
        };
        if authority.is_empty()
            || authority.contains('@')
            || !authority
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
        {
            return Err(bad("the host is not a host[:port]"));
        }
        let (path, query) = match path.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (path, None),
        };
        if path.contains('#') || query.is_some_and(|q| q.contains('#')) {
            return Err(bad("fragments are not supported"));
        }
        let mut pin = None;
        let mut signature: Vec<&str> = Vec::new();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            if name == PIN_PARAM {
                let id = ObjectId::from_hex(value)
                    .ok_or_else(|| bad("the version pin is not an object id"))?;
                if pin.replace(id).is_some() {
                    return Err(bad("the version pin appears twice"));
                }
            } else if SIGNATURE_PARAMS.contains(&name) {
                if signature.iter().any(|p| p.split('=').next() == Some(name)) {
                    return Err(bad(&format!("signed URL: `{name}` appears twice")));
                }
                // Sent as it came: it must be plain URI characters.
                if !pair.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(bad(&format!(
                        "signed URL: `{name}` has characters a URL cannot carry"
                    )));
                }
                signature.push(pair);
            } else {
                return Err(bad(&format!(
                    "query parameter `{}` is not supported (only a selector's version pin, {PIN_PARAM}, and a signed URL's {})",
                    name.chars().take(64).collect::<String>(),
                    SIGNATURE_PARAMS.join(", ")
                )));
            }
        }
        let path = RequestPath::parse(path).map_err(|e| bad(&e.to_string()))?;
        Ok(Self {
            base: format!("{scheme}://{authority}"),
            path,
            pin,
            signature: (!signature.is_empty()).then(|| signature.join("&")),
        })
    }

    /// The object's URL: its path, then the pin and the signature.
    pub fn url(&self) -> String {
        format!("{}{}{}", self.base, self.path.to_uri_path(), self.query())
    }

    /// `?shoal-object=ID` when pinned, then the signature's parameters
    /// when signed (`&`-joined), else nothing: the query of every request
    /// for this version of the object (its ranges, manifest, hashes).
    pub fn query(&self) -> String {
        let pin = self.pin.map(|id| format!("{PIN_PARAM}={}", id.to_hex()));
        let pairs: Vec<&str> = pin
            .as_deref()
            .into_iter()
            .chain(self.signature.as_deref())
            .collect();
        if pairs.is_empty() {
            String::new()
        } else {
            format!("?{}", pairs.join("&"))
        }
    }

    /// `?` and the signature's parameters when signed, else nothing.
    pub fn signature_query(&self) -> String {
        self.signature
            .as_deref()
            .map(|s| format!("?{s}"))
            .unwrap_or_default()
    }
}

/// One source to pull from.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PlannedSource {
    /// The cache's name (node id) when a selector named it, else the URL.
    pub name: String,
    /// Full URL of the object on that source.
    pub url: String,
    /// Planned share (relative).
    pub share: f64,
    /// The rate the selector planned on it, Mbit/s (0: not said; for a
    /// standby cache, the rate it holds ready).
    pub mbps: f64,
    /// What it holds ready beyond its share should another source fail.
    pub standby_mbps: f64,
}

/// What the selector (if any) said.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub sources: Vec<PlannedSource>,
    /// Caches holding capacity in reserve: brought on stream when a source
    /// fails, before the selector is asked again.
    pub standby: Vec<PlannedSource>,
    /// The selector holds standby so that losing any one source leaves
    /// the committed bitrate: the first loss needs no new plan.
    pub survives_one_loss: bool,
    pub committed_mbps: Option<f64>,
    pub object_id: Option<ObjectId>,
    pub object_size: Option<u64>,
    /// The viewers' swarm to join (none: peer-to-peer is off for the
    /// service, or there is no selector).
    pub swarm: Option<PlannedSwarm>,
}

/// A swarm a plan names.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedSwarm {
    pub key: shoal_peer::SwarmKey,
    /// `http://host[:port]/announce`, perhaps with `?service=NAME`.
    pub tracker: String,
    /// The delivery service's defaults (flags win); out-of-range values
    /// are dropped.
    pub upload_mbps: Option<f64>,
    pub target_mbps: Option<f64>,
    pub peers_max: Option<usize>,
}

/// Checks a plan's swarm: its key must be the object's, its tracker a
/// plain `http://host[:port]/announce` URL of bounded length, with at most
/// a `service=NAME` query (the selector's name for the delivery service).
fn planned_swarm(
    info: Option<shoal_proto::plan::SwarmInfo>,
    object_id: Option<ObjectId>,
) -> Result<Option<PlannedSwarm>, String> {
    let (Some(info), Some(id)) = (info, object_id) else {
        return Ok(None);
    };
    let key = shoal_peer::SwarmKey::for_object(&id);
    if info.key != key.to_hex() {
        return Err(format!("plan: swarm key {} is not the object's", info.key));
    }
    let refused = || {
        format!(
            "plan: tracker `{}` is not http://host/announce[?service=NAME]",
            info.tracker.chars().take(100).collect::<String>()
        )
    };
    let (url, service) = match info.tracker.split_once('?') {
        Some((url, query)) => {
            let name = query.strip_prefix("service=").ok_or_else(refused)?;
            let valid = !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !valid {
                return Err(refused());
            }
            (url, Some(name))
        }
        None => (info.tracker.as_str(), None),
    };
    // A selector reached over HTTPS names an https tracker.
    let (scheme, rest) = match url.strip_prefix("https://") {
        Some(rest) => ("https", Some(rest)),
        None => ("http", url.strip_prefix("http://")),
    };
    let host = rest
        .and_then(|rest| rest.strip_suffix("/announce"))
        .filter(|host| {
            !host.is_empty() && host.len() <= 255 && !host.contains(['/', '?', '#', '@'])
        })
        .ok_or_else(refused)?;
    let tracker = match service {
        Some(name) => format!("{scheme}://{host}/announce?service={name}"),
        None => format!("{scheme}://{host}/announce"),
    };
    let rate = |mbps: Option<f64>| mbps.filter(|m| m.is_finite() && *m > 0.0 && *m <= 1e6);
    Ok(Some(PlannedSwarm {
        key,
        tracker,
        upload_mbps: rate(info.upload_mbps),
        target_mbps: rate(info.target_mbps),
        peers_max: info
            .peers_max
            .filter(|n| (1..=1_000).contains(n))
            .map(|n| n as usize),
    }))
}

/// A rate from a plan, Mbit/s: anything but a sane number is "not said".
fn rate(mbps: f64) -> f64 {
    if mbps.is_finite() && (0.0..=1e6).contains(&mbps) {
        mbps
    } else {
        0.0
    }
}

/// A cache a plan names (`what`: source or standby): its URL must be for
/// the path asked and its name a cache name.
fn planned_url(node: &str, url: &str, path: &RequestPath, what: &str) -> Result<ObjectUrl, String> {
    let parsed = ObjectUrl::parse(url).map_err(|e| format!("plan: {e}"))?;
    if parsed.path != *path {
        return Err(format!("plan: {what} {url} is for another path"));
    }
    if !shoal_core::auth::valid_node_name(node) {
        return Err(format!("plan: `{node}` is not a cache name"));
    }
    Ok(parsed)
}

/// Parses a selector's `/plan` answer (see `shoal-selector`).
pub fn parse_plan(body: &[u8], path: &RequestPath) -> Result<Plan, String> {
    if body.len() > PLAN_BYTES_MAX {
        return Err(format!("plan larger than {PLAN_BYTES_MAX} bytes"));
    }
    let json: shoal_proto::plan::Decision =
        serde_json::from_slice(body).map_err(|e| format!("plan: {e}"))?;
    let mut sources = Vec::new();
    for source in json.sources.into_iter().take(PLAN_SOURCES_MAX) {
        let url = planned_url(&source.node, &source.url, path, "source")?;
        let share = if source.share.is_finite() && source.share > 0.0 {
            source.share
        } else {
            0.01
        };
        sources.push(PlannedSource {
            name: source.node,
            url: url.url(),
            share,
            mbps: rate(source.mbps),
            standby_mbps: rate(source.standby_mbps),
        });
    }
    let mut standby = Vec::new();
    for reserve in json.standby.into_iter().take(PLAN_SOURCES_MAX) {
        let url = planned_url(&reserve.node, &reserve.url, path, "standby")?;
        standby.push(PlannedSource {
            name: reserve.node,
            url: url.url(),
            share: 0.0,
            mbps: rate(reserve.mbps),
            standby_mbps: 0.0,
        });
    }
    let object_id = match json.object.id {
        Some(hex) => Some(ObjectId::from_hex(&hex).ok_or("plan: bad object id")?),
        None => None,
    };
    let swarm = planned_swarm(json.swarm, object_id)?;
    Ok(Plan {
        swarm,
        sources,
        standby,
        survives_one_loss: json.survives_one_loss,
        committed_mbps: Some(json.committed_mbps)
            .filter(|m| m.is_finite() && *m > 0.0 && *m <= 1e6),
        object_id,
        object_size: json.object.size_bytes,
    })
}

/// The `<url>` of each `Link: <url>; rel=duplicate` header value.
pub fn duplicate_links<'a>(values: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut out = Vec::new();
    for value in values {
        for link in value.split(',') {
            let link = link.trim();
            let Some(rest) = link.strip_prefix('<') else {
                continue;
            };
            let Some((url, params)) = rest.split_once('>') else {
                continue;
            };
            let duplicate = params
                .split(';')
                .any(|p| p.trim().eq_ignore_ascii_case("rel=duplicate"));
            if duplicate && out.len() < PLAN_SOURCES_MAX {
                out.push(url.to_string());
            }
        }
    }
    out
}

/// Where the object's plan comes from.
#[derive(Clone, Debug)]
pub enum Origin {
    /// A selector at this base URL: ask it for replacements.
    Selector(String),
    /// A cache or plain server: no one to ask.
    Direct,
}

/// Finds the sources for `url`: a selector's plan, a redirect's Location
/// and duplicates, or the URL itself.
pub async fn discover(
    client: &reqwest::Client,
    url: &ObjectUrl,
    timeout: Duration,
) -> Result<(Origin, Plan), GetError> {
    let target = url.url();
    let response = tokio::time::timeout(timeout, client.head(&target).send())
        .await
        .map_err(|_| GetError::Unreachable {
            url: target.clone(),
            why: format!("no answer within {} ms", timeout.as_millis()),
        })?
        .map_err(|e| GetError::Unreachable {
            url: target.clone(),
            why: error_chain(&e),
        })?;
    let status = response.status();
    if status.is_redirection() {
        // A selector: its plan has the shares; its redirect the same URLs.
        if let Ok(plan) = fetch_plan(client, &url.base, url, &[], true, timeout).await {
            if !plan.sources.is_empty() {
                return Ok((Origin::Selector(url.base.clone()), plan));
            }
        }
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| GetError::Failed(format!("{target}: a redirect without Location")))?;
        let links = duplicate_links(
            response
                .headers()
                .get_all(reqwest::header::LINK)
                .iter()
                .filter_map(|v| v.to_str().ok()),
        );
        let mut sources = Vec::new();
        for link in std::iter::once(location.to_string()).chain(links) {
            let parsed = ObjectUrl::parse(&link)?;
            sources.push(PlannedSource {
                name: parsed.base.trim_start_matches("http://").to_string(),
                url: parsed.url(),
                share: 1.0,
                ..PlannedSource::default()
            });
        }
        return Ok((
            Origin::Direct,
            Plan {
                sources,
                ..Plan::default()
            },
        ));
    }
    if status == reqwest::StatusCode::NOT_FOUND || status == reqwest::StatusCode::GONE {
        return Err(GetError::NotFound(target));
    }
    if !status.is_success() {
        // A HEAD answer has no body: a GET asks for the reason (a 403's
        // says what is wrong with a signed URL).
        let why = refusal_reason(client, &target, timeout).await;
        return Err(GetError::Failed(format!(
            "{target}: the server answered {status}{why}"
        )));
    }
    Ok((
        Origin::Direct,
        Plan {
            sources: vec![PlannedSource {
                name: url.base.trim_start_matches("http://").to_string(),
                url: target,
                share: 1.0,
                ..PlannedSource::default()
            }],
            object_size: response.content_length(),
            ..Plan::default()
        },
    ))
}

/// Asks a selector for a plan for `object` (its path, and its signature
/// if signed), leaving out `exclude` (caches reported degraded);
/// `reserve`: the shares will be drawn now.
pub async fn fetch_plan(
    client: &reqwest::Client,
    selector: &str,
    object: &ObjectUrl,
    exclude: &[String],
    reserve: bool,
    timeout: Duration,
) -> Result<Plan, GetError> {
    let url = plan_url(selector, object, exclude, reserve);
    let body = get_small(client, &url, PLAN_BYTES_MAX, timeout).await?;
    parse_plan(&body, &object.path).map_err(GetError::Failed)
}

/// The selector's `/plan` URL for `object` (see [`fetch_plan`]).
fn plan_url(selector: &str, object: &ObjectUrl, exclude: &[String], reserve: bool) -> String {
    // A client about to download asks the selector to count its shares
    // against the caches (monitoring, and a plan kept only as standby,
    // do not).
    let mut url = format!(
        "{selector}/plan?path={}&reserve={}",
        object.path.to_uri_path(),
        u8::from(reserve)
    );
    if !exclude.is_empty() {
        url.push_str("&exclude=");
        url.push_str(&exclude.join(","));
    }
    // Beside `path=` (inside it, their `&` would split the plan's query):
    // the selector checks them and puts them in its source URLs.
    if let Some(signature) = &object.signature {
        url.push('&');
        url.push_str(signature);
    }
    url
}

/// `": "` and the start of what a GET of `url` answers when it is refused
/// (within `timeout`), else nothing.
async fn refusal_reason(client: &reqwest::Client, url: &str, timeout: Duration) -> String {
    let ask = async {
        // One byte, should it be served after all.
        let mut response = client
            .get(url)
            .header(reqwest::header::RANGE, "bytes=0-0")
            .send()
            .await
            .ok()?;
        if response.status().is_success() {
            return None;
        }
        Some(start_of_body(&mut response).await)
    };
    match tokio::time::timeout(timeout, ask).await {
        Ok(Some(text)) if !text.is_empty() => format!(": {text}"),
        _ => String::new(),
    }
}

/// The first line or so of a refusal's body (no more is read).
async fn start_of_body(response: &mut reqwest::Response) -> String {
    let mut text = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        text.extend_from_slice(&chunk);
        if text.len() >= 4096 {
            break;
        }
    }
    let text = String::from_utf8_lossy(&text);
    text.trim().chars().take(300).collect()
}

/// GETs a small body (at most `limit` bytes) within `timeout`.
async fn get_small(
    client: &reqwest::Client,
    url: &str,
    limit: usize,
    timeout: Duration,
) -> Result<Vec<u8>, GetError> {
    let fetch = async {
        let mut response = client
            .get(url)
            .send()
            .await
            .map_err(|e| GetError::Unreachable {
                url: url.to_string(),
                why: error_chain(&e),
            })?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(GetError::NotFound(url.to_string()));
        }
        if !status.is_success() {
            // The start of the body says why.
            let text = start_of_body(&mut response).await;
            return Err(GetError::Failed(format!("{url}: {status}: {text}")));
        }
        read_limited(&mut response, limit)
            .await
            .map_err(|why| GetError::Failed(format!("{url}: {why}")))
    };
    tokio::time::timeout(timeout, fetch)
        .await
        .map_err(|_| GetError::Unreachable {
            url: url.to_string(),
            why: format!("no answer within {} ms", timeout.as_millis()),
        })?
}

/// What pieces are checked against: the object's manifest from the first
/// source that has one (checked against the id that source names and the
/// id the plan named), else — an unpublished object — the piece hashes a
/// cache learnt (`/_shoal/hashes/<path>`), with the same id checks.
pub async fn fetch_reference(
    client: &reqwest::Client,
    sources: &[PlannedSource],
    path: &RequestPath,
    plan_id: Option<ObjectId>,
    timeout: Duration,
) -> Result<Reference, GetError> {
    let mut why = Vec::new();
    let mut refusals = Vec::new();
    for place in manifest_places(sources, path) {
        match manifest_reference(client, &place, plan_id, timeout).await {
            Attempt::Found(reference) => return Ok(reference),
            // Another source may hold the right version.
            Attempt::Refused(refused) => refusals.push(refused),
            Attempt::Failed(error) => why.push(error),
        }
    }
    if !refusals.is_empty() {
        return Err(GetError::Manifest(refusals.join("; ")));
    }
    // No manifest anywhere: the hashes the caches learnt from the origin.
    for source in sources {
        let Ok(parsed) = ObjectUrl::parse(&source.url) else {
            continue;
        };
        match hash_list_reference(client, source, &parsed, path, plan_id, timeout).await {
            Attempt::Found(reference) => return Ok(reference),
            Attempt::Refused(refused) => refusals.push(refused),
            Attempt::Failed(error) => why.push(error),
        }
    }
    if !refusals.is_empty() {
        return Err(GetError::Manifest(refusals.join("; ")));
    }
    Err(GetError::Manifest(format!(
        "no source has a manifest or piece hashes for {} ({}); publish the object (`shoal publish`) or fetch it through a shoal cache",
        path.as_str(),
        why.join("; ")
    )))
}

/// What one place gave [`fetch_reference`]: a reference to check pieces
/// against, a refusal (the object there is not the one named), or why it
/// gave nothing.
enum Attempt {
    Found(Reference),
    Refused(String),
    Failed(String),
}

/// A URL a manifest may be found at, and the source it belongs to.
struct ManifestPlace<'a> {
    url: String,
    source: &'a PlannedSource,
    /// A cache's manifest (`/_shoal/manifest/<path>`), whose id header
    /// names the object; not a publisher's manifest file.
    names_id: bool,
}

/// Where each source may hold the manifest, in the order they are tried.
fn manifest_places<'a>(sources: &'a [PlannedSource], path: &RequestPath) -> Vec<ManifestPlace<'a>> {
    // A cache names the manifest at `/_shoal/manifest/<path>` (with the id
    // in a header); a publisher's web server at
    // `/.shoal/manifests/<path>.shoalmf` (`shoal publish`).
    // The first place is a cache's (`names_id`); the second a publisher's
    // file, which a cache serves as an object with an id of its own.
    // A cache's manifest takes the source's pin and signature; the file
    // is another path, which the object's signature does not cover (and
    // a cache passes the query of a path no signature guards on to the
    // origin): it goes unsigned.
    sources
        .iter()
        .filter_map(|source| {
            let parsed = ObjectUrl::parse(&source.url).ok()?;
            Some((parsed.base.clone(), parsed.query(), source))
        })
        .flat_map(|(base, query, source)| {
            [
                ManifestPlace {
                    url: format!("{base}/_shoal/manifest{}{query}", path.to_uri_path()),
                    source,
                    names_id: true,
                },
                ManifestPlace {
                    url: format!("{base}/.shoal/manifests{}.shoalmf", path.to_uri_path()),
                    source,
                    names_id: false,
                },
            ]
        })
        .collect()
}

/// The manifest at `place`, within `timeout`, as a reference if its id is
/// the one the source and the plan named.
async fn manifest_reference(
    client: &reqwest::Client,
    place: &ManifestPlace<'_>,
    plan_id: Option<ObjectId>,
    timeout: Duration,
) -> Attempt {
    let url = &place.url;
    let answer =
        match tokio::time::timeout(timeout, fetch_manifest(client, url, place.names_id)).await {
            Ok(Ok(found)) => found,
            Ok(Err(error)) => return Attempt::Failed(format!("{url}: {error}")),
            Err(_) => return Attempt::Failed(format!("{url}: no answer")),
        };
    let manifest = match Manifest::decode(&answer.body) {
        Ok(manifest) => manifest,
        Err(error) => return Attempt::Failed(format!("{url}: not a manifest ({error})")),
    };
    // A built manifest is the hashes a cache learnt, under the id the
    // cache names (trusted like `/_shoal/hashes`).
    let id = match (answer.built, answer.named) {
        (true, Some(named)) => named,
        (true, None) => {
            return Attempt::Failed(format!("{url}: a built manifest without an object id"))
        }
        (false, _) => manifest.id(),
    };
    if let Some(refused) = manifest_id_mismatch(&place.source.name, id, answer.named, plan_id) {
        return Attempt::Refused(refused);
    }
    Attempt::Found(if answer.built {
        Reference::from_built_manifest(manifest, id)
    } else {
        Reference::from_manifest(manifest)
    })
}

/// What a manifest place answered.
struct ManifestAnswer {
    /// The object id the server named for the manifest, if any.
    named: Option<ObjectId>,
    /// A cache built the manifest (the object was not published).
    built: bool,
    body: Vec<u8>,
}

/// GETs the manifest at `url` (at most [`MANIFEST_BYTES_MAX`]) with the id
/// the server names for it; `names_id` is [`ManifestPlace::names_id`].
async fn fetch_manifest(
    client: &reqwest::Client,
    url: &str,
    names_id: bool,
) -> Result<ManifestAnswer, String> {
    let response = client.get(url).send().await.map_err(|e| error_chain(&e))?;
    if !response.status().is_success() {
        return Err(format!("{}", response.status()));
    }
    // Through a shoal cache, the publisher's manifest file is an
    // object of its own, and the id the cache names is the file's.
    let file_through_cache = !names_id && response.headers().contains_key(CACHE_STATUS_HEADER);
    let named = response
        .headers()
        .get(OBJECT_ID_HEADER)
        .filter(|_| !file_through_cache)
        .and_then(|v| v.to_str().ok())
        .and_then(ObjectId::from_hex);
    // A cache builds a manifest for an object its publisher did
    // not publish: its hash is not the object's id.
    let built = response
        .headers()
        .get(MANIFEST_KIND_HEADER)
        .is_some_and(|v| v.as_bytes() == b"built");
    let mut response = response;
    let body = read_limited(&mut response, MANIFEST_BYTES_MAX).await?;
    Ok(ManifestAnswer { named, built, body })
}

/// Why a manifest from `source` that hashes to `id` is refused: the source
/// or the selector's plan named another object. `None`: it is the one.
fn manifest_id_mismatch(
    source: &str,
    id: ObjectId,
    named: Option<ObjectId>,
    plan_id: Option<ObjectId>,
) -> Option<String> {
    [("the source", named), ("the selector's plan", plan_id)]
        .into_iter()
        .find_map(|(who, expected)| {
            expected.filter(|e| *e != id).map(|e| {
                format!(
                    "the manifest from {source} hashes to {} but {who} named {}: refused",
                    &id.to_hex()[..16],
                    &e.to_hex()[..16]
                )
            })
        })
}

/// The piece hashes `source` (parsed as `parsed`) learnt for `path`, as a
/// reference if its id is the one the plan named.
async fn hash_list_reference(
    client: &reqwest::Client,
    source: &PlannedSource,
    parsed: &ObjectUrl,
    path: &RequestPath,
    plan_id: Option<ObjectId>,
    timeout: Duration,
) -> Attempt {
    let url = format!(
        "{}/_shoal/hashes{}{}",
        parsed.base,
        path.to_uri_path(),
        parsed.query()
    );
    let list = match crate::reference::fetch_hash_list(client, &url, timeout).await {
        Ok(list) => list,
        Err(error) => return Attempt::Failed(format!("{url}: {error}")),
    };
    // Asked again later (of whichever cache sent a piece): signed too.
    let again = format!("{}{}", path.to_uri_path(), parsed.signature_query());
    let reference = match Reference::from_hash_list(&list, client.clone(), again) {
        Ok(reference) => reference,
        Err(error) => return Attempt::Failed(format!("{url}: {error}")),
    };
    if plan_id.is_some_and(|id| id != reference.id()) {
        return Attempt::Refused(format!(
            "{} names object {} but the selector's plan named another: refused",
            source.name,
            &reference.id().to_hex()[..16]
        ));
    }
    Attempt::Found(reference)
}

/// A response body of at most `limit` bytes.
pub async fn read_limited(
    response: &mut reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| error_chain(&e))? {
        if body.len() + chunk.len() > limit {
            return Err(format!("answer larger than {limit} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// An error and its causes on one line (shared with the other roles).
pub use shoal_proto::error_chain;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_http_with_a_host_and_a_path() {
        let url = ObjectUrl::parse("http://127.0.0.1:8070/video/a%20b.mp4").unwrap();
        assert_eq!(url.base, "http://127.0.0.1:8070");
        assert_eq!(url.path.as_str(), "/video/a b.mp4");
        assert_eq!(url.url(), "http://127.0.0.1:8070/video/a%20b.mp4");
        let tls = ObjectUrl::parse("https://cdn.example:8443/v/a.mp4").unwrap();
        assert_eq!(tls.base, "https://cdn.example:8443");
        for bad in [
            "http://x",
            "http:///a",
            "http://user@x/a",
            "http://x/a?b=1",
            "http://x/../a",
            "ftp://x/a",
            "x/a",
        ] {
            assert!(ObjectUrl::parse(bad).is_err(), "{bad}");
        }
    }

    /// A signature's parameters as `shoal sign` writes them (a scope
    /// percent-encoded), and an object id.
    fn signed() -> (String, String) {
        let signature = format!(
            "shoal-exp=1800000000&shoal-kid=k2&shoal-scope=/paid/a%20b/&shoal-sig={}",
            "0f".repeat(32)
        );
        (signature, "ab".repeat(32))
    }

    #[test]
    fn signed_urls_keep_their_signature_beside_the_pin() {
        let (signature, id) = signed();
        let canonical = format!("http://127.0.0.1:8070/paid/a.mp4?shoal-object={id}&{signature}");
        // The pin after the signature (as a selector's URLs have it), or
        // before it.
        for query in [
            format!("{signature}&shoal-object={id}"),
            format!("shoal-object={id}&{signature}"),
        ] {
            let url =
                ObjectUrl::parse(&format!("http://127.0.0.1:8070/paid/a.mp4?{query}")).unwrap();
            assert_eq!(url.pin, ObjectId::from_hex(&id));
            assert_eq!(url.signature.as_deref(), Some(signature.as_str()));
            assert_eq!(url.url(), canonical);
            assert_eq!(ObjectUrl::parse(&url.url()).unwrap(), url);
            assert_eq!(url.signature_query(), format!("?{signature}"));
        }
        // Signed, not pinned: the parameters in the order they came.
        let reordered = format!(
            "shoal-sig={}&shoal-ip=192.0.2.7&shoal-kid=k1&shoal-exp=1",
            "AB".repeat(32)
        );
        let given = format!("https://cdn.example/v/a%20b.mp4?{reordered}");
        let url = ObjectUrl::parse(&given).unwrap();
        assert_eq!(url.pin, None);
        assert_eq!(url.url(), given);
        assert_eq!(url.query(), format!("?{reordered}"));
        // Neither: no query at all.
        let plain = ObjectUrl::parse("http://x/v/a.mp4").unwrap();
        assert_eq!(
            (plain.query(), plain.signature_query()),
            (String::new(), String::new())
        );
        assert_eq!(plain.url(), "http://x/v/a.mp4");
    }

    #[test]
    fn other_query_parameters_are_refused_by_name() {
        let (signature, id) = signed();
        for (query, named) in [
            ("b=1".to_string(), "`b`"),
            (format!("{signature}&token=x"), "`token`"),
            (format!("shoal-objectx=1&{signature}"), "`shoal-objectx`"),
            (
                format!("{signature}&shoal-kid=k3"),
                "`shoal-kid` appears twice",
            ),
            (
                format!("shoal-object={id}&shoal-object={id}"),
                "pin appears twice",
            ),
            ("shoal-object=12".to_string(), "not an object id"),
            (
                "shoal-sig=a\u{1}b".to_string(),
                "`shoal-sig` has characters",
            ),
        ] {
            let error = ObjectUrl::parse(&format!("http://x/v/a.mp4?{query}"))
                .unwrap_err()
                .to_string();
            assert!(error.contains(named), "{query}: {error}");
        }
    }

    #[test]
    fn every_request_for_a_signed_object_carries_its_signature() {
        let (signature, id) = signed();
        let object = ObjectUrl::parse(&format!("http://sel:8070/paid/a.mp4?{signature}")).unwrap();
        // The selector's plan: the signature beside `path=`.
        assert_eq!(
            plan_url("http://sel:8070", &object, &["c1".into()], true),
            format!("http://sel:8070/plan?path=/paid/a.mp4&reserve=1&exclude=c1&{signature}")
        );
        let plain = ObjectUrl::parse("http://sel:8070/paid/a.mp4").unwrap();
        assert_eq!(
            plan_url("http://sel:8070", &plain, &[], false),
            "http://sel:8070/plan?path=/paid/a.mp4&reserve=0"
        );
        // The plan's sources are signed already: taken as they are, the
        // signature not doubled.
        let body = format!(
            r#"{{"sources":[{{"node":"c1","url":"http://127.0.0.1:1/paid/a.mp4?{signature}&shoal-object={id}","share":1}}]}}"#
        );
        let plan = parse_plan(body.as_bytes(), &object.path).unwrap();
        let source = &plan.sources[0].url;
        assert_eq!(
            source,
            &format!("http://127.0.0.1:1/paid/a.mp4?shoal-object={id}&{signature}")
        );
        assert_eq!(source.matches("shoal-sig=").count(), 1);
        // The cache's manifest: pinned and signed like the source; the
        // publisher's file (another path) unsigned.
        let places = manifest_places(&plan.sources, &object.path);
        assert_eq!(
            places[0].url,
            format!("http://127.0.0.1:1/_shoal/manifest/paid/a.mp4?shoal-object={id}&{signature}")
        );
        assert_eq!(
            places[1].url,
            "http://127.0.0.1:1/.shoal/manifests/paid/a.mp4.shoalmf"
        );
    }

    #[test]
    fn plans_are_parsed_into_typed_sources() {
        let path = RequestPath::parse("/v/a.mp4").unwrap();
        let body = br#"{"sources":[{"node":"c1","url":"http://127.0.0.1:1/v/a.mp4","share":0.6},
            {"node":"c2","url":"http://127.0.0.1:2/v/a.mp4","share":0.4}],
            "committed_mbps":8.0,"object":{"id":null,"size_bytes":10}}"#;
        let plan = parse_plan(body, &path).unwrap();
        assert_eq!(plan.sources.len(), 2);
        assert_eq!(plan.sources[0].name, "c1");
        assert_eq!(plan.committed_mbps, Some(8.0));
        assert_eq!(plan.object_size, Some(10));
        assert!(plan.standby.is_empty());
        let with_standby =
            br#"{"sources":[{"node":"c1","url":"http://127.0.0.1:1/v/a.mp4","share":1}],
            "standby":[{"node":"c9","url":"http://127.0.0.1:9/v/a.mp4","mbps":8.0}]}"#;
        let plan = parse_plan(with_standby, &path).unwrap();
        assert_eq!(plan.standby.len(), 1);
        assert_eq!(plan.standby[0].name, "c9");
        assert_eq!(plan.standby[0].mbps, 8.0);
        let absurd = br#"{"sources":[{"node":"c1","url":"http://127.0.0.1:1/v/a.mp4","share":1,"mbps":-3,"standby_mbps":1e300}]}"#;
        let plan = parse_plan(absurd, &path).unwrap();
        assert_eq!(
            (plan.sources[0].mbps, plan.sources[0].standby_mbps),
            (0.0, 0.0)
        );
        let stray = br#"{"sources":[],"standby":[{"node":"c9","url":"http://127.0.0.1:9/other","mbps":8.0}]}"#;
        assert!(parse_plan(stray, &path).is_err());
        let other = br#"{"sources":[{"node":"c1","url":"http://127.0.0.1:1/other","share":1}]}"#;
        assert!(parse_plan(other, &path).is_err());
        let evil = br#"{"sources":[{"node":"c 1","url":"http://127.0.0.1:1/v/a.mp4","share":1}]}"#;
        assert!(parse_plan(evil, &path).is_err());
        assert!(parse_plan(b"not json", &path).is_err());
    }

    #[test]
    fn duplicate_links_are_read_from_link_headers() {
        let links = duplicate_links(
            [
                "<http://a/x>; rel=duplicate; pri=2",
                "<http://b/x>; rel=describedby, <http://c/x>; rel=duplicate",
                "garbage",
            ]
            .into_iter(),
        );
        assert_eq!(links, ["http://a/x", "http://c/x"]);
    }
}
