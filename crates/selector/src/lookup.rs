//! What a path is, and who holds how much of it: the selector's only
//! questions to caches, asked with the cluster key like any peer request.
//!
//! - The object: its shield (rendezvous first for the path, as every cache
//!   computes it) answers a record-only lookup (id, size, piece size),
//!   resolving it from the origin if it must (that first fill is coming
//!   anyway). If the shield does not answer, the next in the ranking is
//!   asked (at most [`SHIELDS_TRIED_MAX`]). Answers are remembered for
//!   `object_ttl_ms` (misses for `missing_ttl_ms`) in a bounded map.
//! - Held fractions: caches whose gossiped summary says they hold the
//!   object are asked for their piece set, all at once, each within
//!   `piece_probe_timeout_ms`; a slow one counts as holding it all (its
//!   summary says so), one that holds none counts as none.

use shoal_cache::peer::{MeshLink, PeerError};
use shoal_core::ObjectId;
use shoal_mesh::{shield_key, Health, Member, MeshView};
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
    },
    /// The origin forbids caching it.
    PassThrough,
    /// The origin says there is no such object (status to pass on).
    Missing(u16),
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
        }
    }

    fn remembered(&self, path: &str) -> Option<Known> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let (at, known) = entries.get(path)?;
        let ttl_ms = match known {
            Known::Missing(_) => self.settings.missing_ttl_ms,
            _ => self.settings.object_ttl_ms,
        };
        (at.elapsed() < Duration::from_millis(ttl_ms)).then(|| known.clone())
    }

    fn remember(&self, path: &str, known: &Known) {
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
        entries.insert(path.to_string(), (Instant::now(), known.clone()));
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
                    };
                    self.remember(path, &known);
                    return Ok(known);
                }
                Ok(None) => {
                    self.remember(path, &Known::PassThrough);
                    return Ok(Known::PassThrough);
                }
                Err(error) if error.is_definitive() => {
                    let status = error.status().map_or(404, |s| s.as_u16());
                    let known = Known::Missing(status);
                    self.remember(path, &known);
                    return Ok(known);
                }
                Err(PeerError::Status(node, status)) if status.as_u16() == 403 => {
                    failures.push(format!(
                        "{node} refused our token (is the cluster secret the same as the caches'?)"
                    ));
                }
                Err(PeerError::Status(node, status)) if status.is_client_error() => {
                    // The shield rejects the path itself (e.g. 400): say so.
                    let known = Known::Missing(status.as_u16());
                    tracing::debug!(%node, %status, path, "shield rejected the path");
                    return Ok(known);
                }
                Err(error) => failures.push(error.to_string()),
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
        let holders: Vec<Member> = view
            .members
            .iter()
            .filter(|m| m.summary.as_ref().is_some_and(|s| s.contains(id)))
            .take(HOLDERS_PROBED_MAX)
            .cloned()
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
        let mut held = HashMap::new();
        while let Some(result) = probes.join_next().await {
            if let Ok((node, fraction)) = result {
                held.insert(node, fraction);
            }
        }
        held
    }
}
