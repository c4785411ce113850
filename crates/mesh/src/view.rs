//! The mesh as one cache sees it: a pure snapshot of live members parsed
//! from gossip key-values, and the choices made from it (shield order,
//! holders of an object).
//!
//! Everything a peer gossips is untrusted text: a member whose keys are
//! missing or malformed is left out of the view (and counted), never a
//! panic. Choices are deterministic functions of the view.

use crate::summary::ObjectSummary;
use shoal_core::{rendezvous, ObjectId};
use std::net::SocketAddr;
use std::sync::Arc;

/// Gossip keys (short: they travel in every delta).
pub mod keys {
    /// Schema version; members without `v = 1` are not in the view.
    pub const VERSION: &str = "v";
    pub const HTTP: &str = "http";
    pub const REGION: &str = "region";
    pub const EGRESS_CAP_BPS: &str = "egress_cap_bps";
    pub const EGRESS_BPS: &str = "egress_bps";
    pub const COST_PER_GB_MICROUSD: &str = "cost_per_gb_microusd";
    pub const HEALTH: &str = "health";
    pub const OBJECTS: &str = "objs";
    /// `cache` (or absent) for a cache; `selector` for a control-plane
    /// observer, which is never a member of the view.
    pub const ROLE: &str = "role";
    /// The id (16 hex digits) of the newest purge a cache has applied: a
    /// member that sees one it does not know catches up from its peer.
    pub const PURGE_HEAD: &str = "purge";
    /// `https://ADDR` when the cache also serves HTTPS (optional).
    pub const HTTPS: &str = "https";
    /// What the cache has carried since it started ([`super::Traffic`],
    /// optional): dashboards take rates from its changes.
    pub const TRAFFIC: &str = "traffic";
}

/// Values of [`keys::ROLE`].
pub const ROLE_CACHE: &str = "cache";
pub const ROLE_SELECTOR: &str = "selector";

pub const SCHEMA_VERSION: &str = "1";
/// Longest region name.
pub const REGION_LEN_MAX_BYTES: usize = 64;

/// How a member says it is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Serving normally.
    Ok,
    /// Serving, but should be chosen last (e.g. disk errors, overload).
    Degraded,
    /// Shutting down: choose it for nothing new.
    Draining,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Ok => "ok",
            Health::Degraded => "degraded",
            Health::Draining => "draining",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "ok" => Some(Health::Ok),
            "degraded" => Some(Health::Degraded),
            "draining" => Some(Health::Draining),
            _ => None,
        }
    }
}

/// One live cache, as it describes itself.
#[derive(Clone, Debug)]
pub struct Member {
    pub node_id: String,
    /// Where its HTTP service listens (an address, never a URL a peer could
    /// point anywhere).
    pub http_addr: SocketAddr,
    /// `host:port` of its HTTPS listener as clients should name it (a DNS
    /// name its certificate covers, or an address), when it has one.
    pub https_authority: Option<String>,
    pub region: String,
    pub egress_cap_bps: u64,
    pub egress_bps: u64,
    pub cost_per_gb_microusd: u64,
    pub health: Health,
    pub summary: Option<Arc<ObjectSummary>>,
    /// The newest purge it has applied (see [`keys::PURGE_HEAD`]).
    pub purge_head: Option<u64>,
    /// Its process's generation in gossip (a restart makes a new one;
    /// 0 when not from gossip).
    pub generation: u64,
    /// Its totals since it started, when it gossips them.
    pub traffic: Option<Traffic>,
}

/// What a cache has carried since it started, gossiped every second.
/// Counters only grow within one process generation; a restart starts them
/// again from zero.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Object bytes sent to clients.
    pub client_bytes: u64,
    /// Of those, bytes whose pieces were already stored (hits).
    pub client_store_bytes: u64,
    /// Object bytes sent to sibling caches.
    pub peer_cache_bytes: u64,
    /// Object bytes fetched from the origin.
    pub origin_bytes: u64,
    /// Object bytes received from sibling caches.
    pub sibling_bytes: u64,
    /// HTTP requests being answered right now.
    pub requests_in_flight: u64,
}

/// Longest [`keys::TRAFFIC`] value a member may gossip.
const TRAFFIC_LEN_MAX_BYTES: usize = 256;

impl Traffic {
    /// `c=… s=… p=… o=… m=… a=…`: short, since it travels in deltas.
    pub fn encode(&self) -> String {
        format!(
            "c={} s={} p={} o={} m={} a={}",
            self.client_bytes,
            self.client_store_bytes,
            self.peer_cache_bytes,
            self.origin_bytes,
            self.sibling_bytes,
            self.requests_in_flight
        )
    }

    /// The inverse of [`Traffic::encode`]; `None` if a field is missing,
    /// repeated or not a number. Unknown fields are skipped (a newer
    /// cache may add some).
    pub fn parse(text: &str) -> Option<Self> {
        if text.len() > TRAFFIC_LEN_MAX_BYTES {
            return None;
        }
        let mut fields: [Option<u64>; 6] = [None; 6];
        for pair in text.split(' ').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=')?;
            let slot = match key {
                "c" => 0,
                "s" => 1,
                "p" => 2,
                "o" => 3,
                "m" => 4,
                "a" => 5,
                _ => continue,
            };
            if fields[slot].is_some() {
                return None;
            }
            fields[slot] = Some(value.parse().ok()?);
        }
        let [c, s, p, o, m, a] = fields;
        Some(Traffic {
            client_bytes: c?,
            client_store_bytes: s?,
            peer_cache_bytes: p?,
            origin_bytes: o?,
            sibling_bytes: m?,
            requests_in_flight: a?,
        })
    }
}

impl Member {
    /// `http://ADDR`, the base of its URLs.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    /// `https://ADDR` when it serves HTTPS.
    pub fn https_base_url(&self) -> Option<String> {
        self.https_authority
            .as_ref()
            .map(|authority| format!("https://{authority}"))
    }

    /// Fraction of its egress capacity not in use, 0..=1 (1 when uncapped).
    pub fn spare_fraction(&self) -> f64 {
        if self.egress_cap_bps == 0 {
            return 1.0;
        }
        let used = self.egress_bps.min(self.egress_cap_bps) as f64;
        1.0 - used / self.egress_cap_bps as f64
    }

    /// Parses a member from its key-values; `None` if anything required is
    /// missing or malformed. `summary` is decoded by the caller (it caches).
    pub fn from_key_values<'a>(
        node_id: &str,
        get: impl Fn(&str) -> Option<&'a str>,
        summary: Option<Arc<ObjectSummary>>,
    ) -> Option<Member> {
        if get(keys::VERSION)? != SCHEMA_VERSION || !shoal_core::auth::valid_node_name(node_id) {
            return None;
        }
        if get(keys::ROLE).is_some_and(|role| role != ROLE_CACHE) {
            return None;
        }
        let http_addr: SocketAddr = get(keys::HTTP)?.strip_prefix("http://")?.parse().ok()?;
        // Optional: a malformed one is ignored, not fatal.
        let https_authority = get(keys::HTTPS)
            .and_then(|v| v.strip_prefix("https://"))
            .filter(|v| valid_authority(v))
            .map(str::to_string);
        let region = get(keys::REGION)?;
        if region.is_empty() || region.len() > REGION_LEN_MAX_BYTES {
            return None;
        }
        let number = |key: &str| get(key).and_then(|v| v.parse::<u64>().ok());
        Some(Member {
            node_id: node_id.to_string(),
            http_addr,
            https_authority,
            region: region.to_string(),
            egress_cap_bps: number(keys::EGRESS_CAP_BPS)?,
            egress_bps: number(keys::EGRESS_BPS).unwrap_or(0),
            cost_per_gb_microusd: number(keys::COST_PER_GB_MICROUSD)?,
            health: Health::parse(get(keys::HEALTH)?)?,
            summary,
            // Optional: a malformed one is ignored, not fatal.
            purge_head: get(keys::PURGE_HEAD).and_then(|v| u64::from_str_radix(v, 16).ok()),
            generation: 0,
            traffic: get(keys::TRAFFIC).and_then(Traffic::parse),
        })
    }
}

/// Longest `host:port` a member may gossip for its HTTPS listener.
pub const AUTHORITY_LEN_MAX_BYTES: usize = 260;

/// Whether `text` is `host:port` with a DNS name (letters, digits, `-`,
/// dots), an IPv4 address or a bracketed IPv6 address, and a port 1-65535:
/// what may follow `https://` in a URL the selector hands out.
pub fn valid_authority(text: &str) -> bool {
    if text.len() > AUTHORITY_LEN_MAX_BYTES {
        return false;
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return false;
    };
    let port_ok = port.parse::<u16>().is_ok_and(|p| p > 0) && !port.starts_with('+');
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            !host.is_empty()
                && host.len() <= 253
                && host.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && !label.starts_with('-')
                        && !label.ends_with('-')
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                })
        }
    };
    port_ok && host_ok
}

/// The rendezvous key of a request path: every cache computes the same
/// shield for a path without knowing the object version behind it.
pub fn shield_key(path: &str) -> ObjectId {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"shoal shield key v1\0");
    hasher.update(path.as_bytes());
    ObjectId(*hasher.finalize().as_bytes())
}

/// A consistent snapshot of the live mesh.
#[derive(Clone, Debug, Default)]
pub struct MeshView {
    pub self_id: String,
    /// Live members that parsed, self included, sorted by node id.
    pub members: Vec<Member>,
    /// Live nodes left out because their state did not parse.
    pub malformed_members: usize,
    /// Live control-plane observers (selectors): in the gossip, never
    /// chosen for anything.
    pub observers: usize,
    /// Those observers that gossip an HTTP address, sorted by node id
    /// (selectors find each other here: one is each swarm's tracker home).
    pub selectors: Vec<SelectorNode>,
}

/// How a member changed between two views (for the logs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberChange {
    Joined {
        node_id: String,
        region: String,
        url: String,
    },
    /// Left the gossip, or stopped answering it.
    Left { node_id: String },
    Health {
        node_id: String,
        from: Health,
        to: Health,
    },
}

impl MemberChange {
    /// Logs the change: joins and recoveries at `info`, the rest at
    /// `warn`. Every join or leave moves the shields of some paths.
    pub fn log(&self, self_id: &str) {
        match self {
            MemberChange::Joined {
                node_id,
                region,
                url,
            } => tracing::info!(
                member = %node_id,
                %region,
                %url,
                "mesh: {node_id} joined; the paths it now ranks first for move their shield to it"
            ),
            MemberChange::Left { node_id } => tracing::warn!(
                member = %node_id,
                "mesh: {node_id} left or stopped answering gossip; the paths it shielded move to their next cache"
            ),
            MemberChange::Health { node_id, from, to } => {
                let text = format!(
                    "mesh: {node_id} is {} (was {}){}",
                    to.as_str(),
                    from.as_str(),
                    if node_id == self_id {
                        " (this node)"
                    } else {
                        ""
                    }
                );
                // Back to normal, or a planned stop: news, not a warning.
                if matches!(to, Health::Ok | Health::Draining) {
                    tracing::info!(member = %node_id, "{text}");
                } else {
                    tracing::warn!(member = %node_id, "{text}");
                }
            }
        }
    }
}

/// A live selector: its node id and HTTP address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelectorNode {
    pub node_id: String,
    pub http_addr: SocketAddr,
}

impl MeshView {
    /// What changed among the members from `before` to this view, by node
    /// id (both lists are sorted).
    pub fn changes_since(&self, before: &MeshView) -> Vec<MemberChange> {
        let mut changes = Vec::new();
        for member in &self.members {
            match before.member(&member.node_id) {
                None => changes.push(MemberChange::Joined {
                    node_id: member.node_id.clone(),
                    region: member.region.clone(),
                    url: member.base_url(),
                }),
                Some(old) if old.health != member.health => changes.push(MemberChange::Health {
                    node_id: member.node_id.clone(),
                    from: old.health,
                    to: member.health,
                }),
                Some(_) => {}
            }
        }
        for old in &before.members {
            if self.member(&old.node_id).is_none() {
                changes.push(MemberChange::Left {
                    node_id: old.node_id.clone(),
                });
            }
        }
        changes
    }

    pub fn new(self_id: String, mut members: Vec<Member>, malformed_members: usize) -> Self {
        members.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        members.dedup_by(|a, b| a.node_id == b.node_id);
        Self {
            self_id,
            members,
            malformed_members,
            observers: 0,
            selectors: Vec::new(),
        }
    }

    pub fn member(&self, node_id: &str) -> Option<&Member> {
        self.members
            .binary_search_by(|m| m.node_id.as_str().cmp(node_id))
            .ok()
            .map(|i| &self.members[i])
    }

    /// Members that should take new work.
    fn serving(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(|m| m.health != Health::Draining)
    }

    /// The members that rank above this cache for `key`, best first: the
    /// first is the shield; the rest are the fallbacks in order. Empty when
    /// this cache is the shield.
    ///
    /// Only members with a higher rendezvous score than ours are returned,
    /// and scores are the same in every cache's view, so a request that each
    /// cache forwards "up" can never come back round, however much views
    /// disagree while membership changes.
    pub fn shields_above_self(&self, key: &ObjectId) -> Vec<&Member> {
        let own = (rendezvous::score(key, &self.self_id), self.self_id.as_str());
        let mut above: Vec<(u64, &Member)> = self
            .serving()
            .filter(|m| m.node_id != self.self_id)
            .map(|m| (rendezvous::score(key, &m.node_id), m))
            .filter(|(score, m)| (*score, m.node_id.as_str()) > own)
            .collect();
        above.sort_by(|a, b| {
            // Degraded members go after healthy ones of any score above us.
            let a_ok = a.1.health == Health::Ok;
            let b_ok = b.1.health == Health::Ok;
            b_ok.cmp(&a_ok)
                .then(b.0.cmp(&a.0))
                .then_with(|| b.1.node_id.cmp(&a.1.node_id))
        });
        above.into_iter().map(|(_, m)| m).collect()
    }

    /// The shield of `key` among the serving members (may be self).
    pub fn shield(&self, key: &ObjectId) -> Option<&Member> {
        let names: Vec<&str> = self
            .serving()
            .filter(|m| m.health == Health::Ok)
            .map(|m| m.node_id.as_str())
            .collect();
        let first = rendezvous::first(key, &names)?;
        self.member(first)
    }

    /// Other members whose summary says they (probably) hold `object`, in
    /// order of preference: same region as us first, then most spare
    /// egress, then cheapest.
    pub fn holders(&self, object: &ObjectId) -> Vec<&Member> {
        let own_region = self.member(&self.self_id).map(|m| m.region.as_str());
        let mut holders: Vec<&Member> = self
            .members
            .iter()
            .filter(|m| m.node_id != self.self_id && m.health == Health::Ok)
            .filter(|m| m.summary.as_ref().is_some_and(|s| s.contains(object)))
            .collect();
        holders.sort_by(|a, b| {
            let a_near = Some(a.region.as_str()) == own_region;
            let b_near = Some(b.region.as_str()) == own_region;
            b_near
                .cmp(&a_near)
                .then(b.spare_fraction().total_cmp(&a.spare_fraction()))
                .then(a.cost_per_gb_microusd.cmp(&b.cost_per_gb_microusd))
                .then_with(|| a.node_id.cmp(&b.node_id))
        });
        holders
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn member(id: &str, region: &str, health: Health) -> Member {
        Member {
            node_id: id.into(),
            http_addr: "127.0.0.1:1".parse().unwrap(),
            https_authority: None,
            region: region.into(),
            egress_cap_bps: 1000,
            egress_bps: 0,
            cost_per_gb_microusd: 10,
            health,
            summary: None,
            purge_head: None,
            generation: 0,
            traffic: None,
        }
    }

    #[test]
    fn members_parse_only_when_complete_and_sane() {
        let mut kv: HashMap<&str, &str> = [
            ("v", "1"),
            ("http", "http://127.0.0.1:8081"),
            ("region", "eu"),
            ("egress_cap_bps", "800000000"),
            ("egress_bps", "5"),
            ("cost_per_gb_microusd", "20000"),
            ("health", "ok"),
        ]
        .into_iter()
        .collect();
        let parse = |kv: &HashMap<&str, &'static str>| {
            Member::from_key_values("a", |k| kv.get(k).copied(), None)
        };
        let m = parse(&kv).unwrap();
        assert_eq!(m.http_addr.port(), 8081);
        assert_eq!(m.base_url(), "http://127.0.0.1:8081");
        for (key, bad) in [
            ("v", "2"),
            ("http", "http://example.com/x"),
            ("http", "ftp://127.0.0.1:1"),
            ("egress_cap_bps", "-1"),
            ("health", "great"),
            ("region", ""),
        ] {
            let old = kv.insert(key, bad).unwrap();
            assert!(parse(&kv).is_none(), "{key}={bad}");
            kv.insert(key, old);
        }
        kv.remove("region");
        assert!(parse(&kv).is_none());
        assert!(Member::from_key_values("bad name!", |_| Some("1"), None).is_none());
    }

    #[test]
    fn optional_keys_parse_or_are_left_out_without_dropping_the_member() {
        let mut kv: HashMap<&str, &str> = [
            ("v", "1"),
            ("http", "http://127.0.0.1:8081"),
            ("region", "eu"),
            ("egress_cap_bps", "0"),
            ("cost_per_gb_microusd", "0"),
            ("health", "ok"),
            ("https", "https://127.0.0.1:8443"),
            ("traffic", "c=10 s=4 p=3 o=6 m=1 a=2"),
        ]
        .into_iter()
        .collect();
        let parse = |kv: &HashMap<&str, &'static str>| {
            Member::from_key_values("a", |k| kv.get(k).copied(), None).unwrap()
        };
        let m = parse(&kv);
        assert_eq!(
            m.https_base_url().as_deref(),
            Some("https://127.0.0.1:8443")
        );
        kv.insert("https", "https://cache-1.example.com:443");
        assert_eq!(
            parse(&kv).https_base_url().as_deref(),
            Some("https://cache-1.example.com:443")
        );
        let traffic = Traffic {
            client_bytes: 10,
            client_store_bytes: 4,
            peer_cache_bytes: 3,
            origin_bytes: 6,
            sibling_bytes: 1,
            requests_in_flight: 2,
        };
        assert_eq!(m.traffic, Some(traffic));
        assert_eq!(Traffic::parse(&traffic.encode()), Some(traffic));
        // A newer cache's extra field is skipped.
        assert_eq!(
            Traffic::parse("c=10 s=4 p=3 o=6 m=1 a=2 z=9"),
            Some(traffic)
        );
        for bad in [
            "c=1",
            "c=1 c=1 s=1 p=1 o=1 m=1 a=1",
            "c=-1 s=1 p=1 o=1 m=1 a=1",
            "nonsense",
        ] {
            assert_eq!(Traffic::parse(bad), None, "{bad}");
        }
        kv.insert("https", "http://127.0.0.1:8443");
        kv.insert("traffic", "c=x");
        let m = parse(&kv);
        assert_eq!((m.https_authority, m.traffic), (None, None));
        for good in [
            "cache-1.example.com:443",
            "10.0.0.5:8443",
            "[::1]:8443",
            "localhost:1",
        ] {
            assert!(valid_authority(good), "{good}");
        }
        for bad in [
            "cache.example.com",
            "cache.example.com:0",
            "cache.example.com:99999",
            "evil.com/x:443",
            "a@b:443",
            "-x.com:443",
            "[::1:443",
            ":443",
            "a..b:443",
        ] {
            assert!(!valid_authority(bad), "{bad}");
        }
    }

    #[test]
    fn forwarding_up_the_ranking_terminates_in_every_view() {
        let names: Vec<String> = (0..8).map(|i| format!("c{i}")).collect();
        for path in ["/a", "/b", "/video/1.mp4"] {
            let key = shield_key(path);
            // Each node sees a different subset of the others (views
            // disagree), yet following "the first above me" never cycles.
            for start in &names {
                let mut current = start.clone();
                let mut hops = 0;
                loop {
                    let members = names
                        .iter()
                        .enumerate()
                        .filter(|(i, n)| **n == current || (i + current.len() + hops) % 3 != 0)
                        .map(|(_, n)| member(n, "r", Health::Ok))
                        .collect();
                    let view = MeshView::new(current.clone(), members, 0);
                    match view.shields_above_self(&key).first() {
                        Some(next) => current = next.node_id.clone(),
                        None => break,
                    }
                    hops += 1;
                    assert!(hops < names.len(), "cycle");
                }
            }
            // With a full view everyone reaches the shield in one hop.
            let all: Vec<Member> = names.iter().map(|n| member(n, "r", Health::Ok)).collect();
            let shield = MeshView::new("c0".into(), all.clone(), 0)
                .shield(&key)
                .unwrap()
                .node_id
                .clone();
            for n in &names {
                let view = MeshView::new(n.clone(), all.clone(), 0);
                let above = view.shields_above_self(&key);
                if *n == shield {
                    assert!(above.is_empty());
                } else {
                    assert_eq!(above[0].node_id, shield);
                }
            }
        }
    }

    #[test]
    fn draining_members_are_never_shields_and_holders_prefer_the_region() {
        let key = shield_key("/x");
        let mut all: Vec<Member> = (0..5)
            .map(|i| {
                member(
                    &format!("c{i}"),
                    if i < 2 { "eu" } else { "us" },
                    Health::Ok,
                )
            })
            .collect();
        let view = MeshView::new("c0".into(), all.clone(), 0);
        let shield = view.shield(&key).unwrap().node_id.clone();
        for m in &mut all {
            if m.node_id == shield {
                m.health = Health::Draining;
            }
        }
        let view = MeshView::new("c0".into(), all.clone(), 0);
        assert_ne!(view.shield(&key).unwrap().node_id, shield);
        assert!(view
            .shields_above_self(&key)
            .iter()
            .all(|m| m.node_id != shield));

        let object = ObjectId([9; 32]);
        let summary = Arc::new(ObjectSummary::build([&object]));
        for m in &mut all {
            m.health = Health::Ok;
            if m.node_id != "c2" {
                m.summary = Some(summary.clone());
            }
        }
        all[3].egress_bps = 900; // c3 busy
        let view = MeshView::new("c0".into(), all, 0);
        let order: Vec<&str> = view
            .holders(&object)
            .iter()
            .map(|m| m.node_id.as_str())
            .collect();
        assert_eq!(order, ["c1", "c4", "c3"]);
    }

    #[test]
    fn changes_between_views_name_joins_leaves_and_health() {
        let before = MeshView::new(
            "a".into(),
            vec![member("a", "eu", Health::Ok), member("b", "eu", Health::Ok)],
            0,
        );
        let after = MeshView::new(
            "a".into(),
            vec![
                member("a", "eu", Health::Draining),
                member("c", "us", Health::Ok),
            ],
            0,
        );
        let changes = after.changes_since(&before);
        assert_eq!(changes.len(), 3, "{changes:?}");
        assert!(changes.contains(&MemberChange::Health {
            node_id: "a".into(),
            from: Health::Ok,
            to: Health::Draining
        }));
        assert!(changes.iter().any(|c| matches!(c, MemberChange::Joined { node_id, region, .. } if node_id == "c" && region == "us")));
        assert!(changes.contains(&MemberChange::Left {
            node_id: "b".into()
        }));
        assert!(after.changes_since(&after).is_empty());
    }
}
