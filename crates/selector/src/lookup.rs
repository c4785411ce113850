//! What a path is, and who holds how much of it: the selector's only
//! questions to caches, asked with the cluster key like any peer request.
//!
//! - The object: its shield (rendezvous first for the path, as every cache
//!   computes it) answers a record-only lookup (id, size, piece size),
//!   resolving it from the origin if it must (that first fill is coming
//!   anyway). If the shield does not answer, or answers with a status about
//!   itself (408, 409, 421, 425, 429, 5xx), the next in the ranking is
//!   asked (at most [`SHIELDS_TRIED_MAX`]); any other 4xx is about the
//!   object and is passed on. One lookup per path at a time (others wait
//!   for it); answers are remembered for `object_ttl_ms` (never past the
//!   end of the shield's freshness for the path), misses and
//!   "nobody could say" for `missing_ttl_ms`, in a bounded map.
//! - Held fractions: of the caches whose gossiped summary lists the
//!   object, [`HOLDERS_PROBED_MAX`] (in the object's rendezvous order) are
//!   asked for their piece set, all at once, each within
//!   `piece_probe_timeout_ms`. A slow one, or one beyond the limit, counts
//!   as holding it all (its summary says so); one that holds none or
//!   refuses counts as none.

use shoal_core::ObjectId;
use shoal_mesh::{shield_key, Health, Member, MeshView};
use shoal_proto::link::{MeshLink, PeerError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Caches asked about a path before giving up.
pub const SHIELDS_TRIED_MAX: usize = 3;
/// Holders probed for their piece set per request.
pub const HOLDERS_PROBED_MAX: usize = 16;

/// What the mesh knows of a path.
#[derive(Clone, Debug, PartialEq)]
pub enum Known {
    Object {
        id: ObjectId,
        size_bytes: u64,
        piece_count: u64,
        /// The version's ETag, as every cache sends it.
        etag: String,
    },
    /// The origin forbids caching it.
    PassThrough,
    /// The mesh says there is no such object, or may not serve it (the
    /// status to pass on: 404, 410, 403…).
    Missing(u16),
    /// Nobody could say (remembered briefly so a dead shield is not asked
    /// by every request).
    Unknown(String),
}

#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("no cache is alive to ask")]
    NoCache,
    #[error("no cache could say what this path is: {0}")]
    Unavailable(String),
}

#[derive(Clone, Debug)]
pub struct LookupSettings {
    pub object_ttl_ms: u64,
    pub missing_ttl_ms: u64,
    pub entries_max: usize,
    pub piece_probe_timeout_ms: u64,
}

pub struct Directory {
    link: Arc<MeshLink>,
    settings: LookupSettings,
    entries: Mutex<HashMap<String, (Instant, Known)>>,
    /// One lookup per path at a time.
    in_flight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Shield answers about the shield itself, not the object: ask the next.
fn about_the_shield(status: u16) -> bool {
    matches!(status, 408 | 409 | 421 | 425 | 429) || status >= 500
}

/// Serving caches in the path's rendezvous order (healthy first): the
/// first is its shield.
pub fn shield_order<'a>(view: &'a MeshView, path: &str) -> Vec<&'a Member> {
    let key = shield_key(path);
    let mut ranked: Vec<(bool, u64, &Member)> = view
        .members
        .iter()
        .filter(|m| m.health != Health::Draining)
        .map(|m| {
            (
                m.health == Health::Ok,
                shoal_core::rendezvous::score(&key, &m.node_id),
                m,
            )
        })
        .collect();
    ranked.sort_by(|a, b| {
        b.0.cmp(&a.0)
            .then(b.1.cmp(&a.1))
            .then_with(|| b.2.node_id.cmp(&a.2.node_id))
    });
    ranked.into_iter().map(|(_, _, m)| m).collect()
}

impl Directory {
    pub fn new(link: Arc<MeshLink>, settings: LookupSettings) -> Self {
        Self {
            link,
            settings,
            entries: Mutex::default(),
            in_flight: Mutex::default(),
        }
    }

    /// Whether the selector's peer link still counts `node` as answering
    /// (not suspect after a failure, not quarantined).
    pub fn answering(&self, node: &str) -> bool {
        self.link.usable(node)
    }

    /// Forgets every path's answer (a purge may have changed any of them).
    pub fn forget_all(&self) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    fn remembered(&self, path: &str) -> Option<Known> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let (expires, known) = entries.get(path)?;
        (Instant::now() < *expires).then(|| known.clone())
    }

    /// Remembers what `path` is for the configured time, or less when the
    /// shield's record says the version may change sooner (`fresh_for`):
    /// a selector never names a version longer than the shield keeps it.
    fn remember(&self, path: &str, known: &Known, fresh_for: Option<Duration>) {
        let ttl_ms = match known {
            Known::Missing(_) | Known::Unknown(_) => self.settings.missing_ttl_ms,
            _ => self.settings.object_ttl_ms,
        };
        let ttl = Duration::from_millis(ttl_ms).min(fresh_for.unwrap_or(Duration::MAX));
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= self.settings.entries_max && !entries.contains_key(path) {
            // Drop the oldest tenth: amortised, and lookups are cheap to redo.
            let mut ages: Vec<(Instant, String)> = entries
                .iter()
                .map(|(p, (at, _))| (*at, p.clone()))
                .collect();
            ages.sort();
            let drop_count = (entries.len() / 10).max(1);
            for (_, path) in ages.into_iter().take(drop_count) {
                entries.remove(&path);
            }
        }
        entries.insert(path.to_string(), (Instant::now() + ttl, known.clone()));
    }

    /// What `path` (canonical, decoded) is; `uri_path` is its wire form.
    pub async fn object(
        &self,
        view: &MeshView,
        path: &str,
        uri_path: &str,
    ) -> Result<Known, LookupError> {
        if let Some(known) = self.remembered(path) {
            return Ok(known);
        }
        let gate = self
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(path.to_string())
            .or_default()
            .clone();
        let _turn = gate.lock().await;
        // Whoever held the gate may have just answered.
        if let Some(known) = self.remembered(path) {
            return Ok(known);
        }
        let answer = self.ask_shields(view, path, uri_path).await;
        self.in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(path);
        if let Err(LookupError::Unavailable(why)) = &answer {
            self.remember(path, &Known::Unknown(why.clone()), None);
        }
        answer
    }

    async fn ask_shields(
        &self,
        view: &MeshView,
        path: &str,
        uri_path: &str,
    ) -> Result<Known, LookupError> {
        let order = shield_order(view, path);
        if order.is_empty() {
            return Err(LookupError::NoCache);
        }
        let mut failures = Vec::new();
        for member in order.into_iter().take(SHIELDS_TRIED_MAX) {
            match self.link.object_record(member, uri_path).await {
                Ok(Some(record)) => {
                    let Some(id) = ObjectId::from_hex(&record.id) else {
                        failures.push(format!("{} sent a malformed object id", member.node_id));
                        continue;
                    };
                    let piece_bytes = 1u64.checked_shl(u32::from(record.piece_size_log2));
                    let Some(piece_bytes) = piece_bytes.filter(|b| *b > 0) else {
                        failures.push(format!("{} sent a bad piece size", member.node_id));
                        continue;
                    };
                    let known = Known::Object {
                        id,
                        size_bytes: record.size,
                        piece_count: record.size.div_ceil(piece_bytes),
                        etag: shoal_proto::record::served_etag(&record),
                    };
                    // Whole seconds: the version may change up to a
                    // second before `fresh_until` says.
                    let fresh_for_s = record
                        .fresh_until_unix_s
                        .saturating_sub(shoal_core::now_unix_s())
                        .saturating_sub(1);
                    self.remember(path, &known, Some(Duration::from_secs(fresh_for_s)));
                    return Ok(known);
                }
                Ok(None) => {
                    self.remember(path, &Known::PassThrough, None);
                    return Ok(Known::PassThrough);
                }
                Err(PeerError::Status(node, status))
                    if status.is_client_error() && !about_the_shield(status.as_u16()) =>
                {
                    // About the object (404, 410, an origin's 403…).
                    tracing::debug!(%node, %status, path, "the shield answered for the object");
                    let known = Known::Missing(status.as_u16());
                    self.remember(path, &known, None);
                    return Ok(known);
                }
                Err(error) => failures.push(shoal_proto::error_chain(&error)),
            }
        }
        Err(LookupError::Unavailable(failures.join("; ")))
    }

    /// How much of `id` each cache holds, from its summary and piece set.
    pub async fn held(
        &self,
        view: &MeshView,
        id: &ObjectId,
        piece_count: u64,
    ) -> HashMap<String, f64> {
        let mut holders: Vec<(u64, &Member)> = view
            .members
            .iter()
            .filter(|m| m.health != Health::Draining)
            .filter(|m| m.summary.as_ref().is_some_and(|s| s.contains(id)))
            .map(|m| (shoal_core::rendezvous::score(id, &m.node_id), m))
            .collect();
        holders.sort_by_key(|h| std::cmp::Reverse(h.0));
        let mut held = HashMap::new();
        // Beyond the probe limit, the summary's word.
        for (_, member) in holders.iter().skip(HOLDERS_PROBED_MAX) {
            held.insert(member.node_id.clone(), 1.0);
        }
        let holders: Vec<Member> = holders
            .into_iter()
            .take(HOLDERS_PROBED_MAX)
            .map(|(_, m)| m.clone())
            .collect();
        let timeout = Duration::from_millis(self.settings.piece_probe_timeout_ms);
        let mut probes = tokio::task::JoinSet::new();
        for member in holders {
            let link = self.link.clone();
            let id = *id;
            probes.spawn(async move {
                let fraction =
                    match tokio::time::timeout(timeout, link.piece_set(&member, &id)).await {
                        Err(_) => 1.0,
                        Ok(None) => 0.0,
                        Ok(Some(set)) if piece_count == 0 => f64::from(u8::from(!set.is_empty())),
                        Ok(Some(set)) => (f64::from(set.len()) / piece_count as f64).min(1.0),
                    };
                (member.node_id, fraction)
            });
        }
        while let Some(result) = probes.join_next().await {
            if let Ok((node, fraction)) = result {
                held.insert(node, fraction);
            }
        }
        held
    }
}
