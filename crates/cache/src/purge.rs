//! Purges: an operator drops a path, or every path under a prefix, from
//! the whole mesh at once.
//!
//! A purge is an event with a random id and a time: the cache the operator
//! asks (`POST /_shoal/purge`, signed with the cluster secret) applies it,
//! keeps it in its purge log and passes it to every live member
//! (`/_shoal/peer/purge`), which does the same. Applying an event twice, or
//! one that a later fetch already made moot, is harmless (a purge only
//! drops what is held), so a member that was down catches up by asking a
//! live member for the events it has not seen (`/_shoal/peer/purges`)
//! before it serves anything it stored earlier.
//!
//! - **hard** (default): the record, every version of the path and their
//!   pieces are dropped; the next request fetches afresh.
//! - **soft**: the path's version becomes stale; the next request
//!   revalidates (pieces kept, only changed pieces fetched again). This is
//!   what `shoal publish --notify` sends.
//!
//! This module is the pure part (events, their query form, the bounded
//! log) plus the log's file; the resolver applies events.

use serde::{Deserialize, Serialize};
use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};

pub use shoal_proto::purge::{
    parse_request, PurgeEvent, PurgeParseError, PurgeTarget, PurgesSince,
    PURGE_TARGET_LEN_MAX_BYTES,
};
/// `POST /_shoal/purge?path=/p` or `?prefix=/dir/` (`&soft=1`), from
/// shoal-proto.
pub use shoal_proto::PURGE_PATH;
/// Events kept in a cache's log (oldest dropped first).
pub const PURGE_LOG_EVENTS_MAX: usize = 10_000;
/// A cache catching up asks for events from this long before the newest
/// it knows (clocks of the caches that made them may differ).
pub const CATCH_UP_SLACK_MS: u64 = 600_000;

/// The events a cache has applied, oldest first, bounded.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct PurgeLog {
    events: VecDeque<PurgeEvent>,
    /// Whether events were ever dropped to stay within the bound: then a
    /// cache that knows less than the oldest kept cannot tell what it
    /// missed.
    #[serde(default)]
    trimmed: bool,
    #[serde(skip)]
    ids: HashSet<u64>,
}

impl PurgeLog {
    pub fn contains(&self, id: u64) -> bool {
        self.ids.contains(&id)
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Adds an event; false if it was already there.
    pub fn insert(&mut self, event: PurgeEvent) -> bool {
        if !self.ids.insert(event.id) {
            return false;
        }
        self.events.push_back(event);
        while self.events.len() > PURGE_LOG_EVENTS_MAX {
            if let Some(old) = self.events.pop_front() {
                self.ids.remove(&old.id);
                self.trimmed = true;
            }
        }
        true
    }

    /// The id of the newest event (latest time; the larger id on a tie):
    /// what a cache announces in gossip.
    pub fn newest_id(&self) -> Option<u64> {
        self.events
            .iter()
            .max_by_key(|e| (e.at_unix_ms, e.id))
            .map(|e| e.id)
    }

    /// The latest time of any event (0 when empty).
    pub fn newest_at_ms(&self) -> u64 {
        self.events.iter().map(|e| e.at_unix_ms).max().unwrap_or(0)
    }

    /// The earliest time still kept, when events were ever dropped.
    pub fn trimmed_before_ms(&self) -> Option<u64> {
        self.trimmed
            .then(|| self.events.iter().map(|e| e.at_unix_ms).min().unwrap_or(0))
    }

    /// Events at or after `since_ms`, at most `max`.
    pub fn since(&self, since_ms: u64, max: usize) -> Vec<PurgeEvent> {
        self.events
            .iter()
            .filter(|e| e.at_unix_ms >= since_ms)
            .take(max)
            .cloned()
            .collect()
    }

    /// Reads the log a cache kept in `data_dir` (empty if none; a damaged
    /// file is reported and treated as empty, which only makes the cache
    /// ask its peers for more).
    pub fn load(data_dir: &Path) -> Self {
        let path = log_file(data_dir);
        let Ok(bytes) = std::fs::read(&path) else {
            return Self::default();
        };
        match serde_json::from_slice::<PurgeLog>(&bytes) {
            Ok(mut log) => {
                log.ids = log.events.iter().map(|e| e.id).collect();
                log
            }
            Err(error) => {
                tracing::warn!(path = %path.display(), error = %shoal_proto::Chain(&error), "unreadable purge log; starting an empty one");
                Self::default()
            }
        }
    }

    /// Writes the log atomically (temporary file, sync, rename).
    pub fn save(&self, data_dir: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        let mut file = tempfile::NamedTempFile::new_in(data_dir)?;
        std::io::Write::write_all(&mut file, &bytes)?;
        file.as_file().sync_all()?;
        file.persist(log_file(data_dir)).map_err(|e| e.error)?;
        Ok(())
    }
}

fn log_file(data_dir: &Path) -> PathBuf {
    data_dir.join("purges.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: u64, target: PurgeTarget, soft: bool) -> PurgeEvent {
        PurgeEvent {
            id,
            at_unix_ms: 1_700_000_000_000u64.saturating_add(id),
            target,
            soft,
        }
    }

    #[test]
    fn events_round_trip_through_their_query() {
        for e in [
            event(1, PurgeTarget::Path("/a b/ü.mp4".into()), false),
            event(u64::MAX, PurgeTarget::Prefix("/videos/".into()), true),
        ] {
            assert_eq!(PurgeEvent::from_query(&e.to_query()).unwrap(), e);
        }
    }

    #[test]
    fn operator_requests_name_one_target() {
        assert_eq!(
            parse_request("path=/a%20b.mp4&soft=1").unwrap(),
            (PurgeTarget::Path("/a b.mp4".into()), true)
        );
        assert_eq!(
            parse_request("prefix=/v/").unwrap(),
            (PurgeTarget::Prefix("/v/".into()), false)
        );
        assert_eq!(parse_request(""), Err(PurgeParseError::NoTarget));
        assert_eq!(
            parse_request("path=/a&prefix=/b"),
            Err(PurgeParseError::NoTarget)
        );
        assert!(parse_request("prefix=v/").is_err());
        assert!(parse_request("path=/../etc").is_err());
        // Directories are paths (their whole responses); `//` is not.
        let dir = |q| parse_request(q).map(|(t, _)| t);
        assert_eq!(dir("path=/docs/"), Ok(PurgeTarget::Path("/docs/".into())));
        assert_eq!(dir("path=/"), Ok(PurgeTarget::Path("/".into())));
        assert_eq!(dir("path=/a%20b/"), Ok(PurgeTarget::Path("/a b/".into())));
        assert!(parse_request("path=/docs//").is_err());
        assert!(parse_request("path=//").is_err());
        assert!(parse_request("nope=1").is_err());
        assert!(PurgeEvent::from_query("path=/a").is_err());
    }

    #[test]
    fn targets_match_paths_and_prefixes() {
        assert!(PurgeTarget::Path("/a".into()).matches("/a"));
        assert!(!PurgeTarget::Path("/a".into()).matches("/ab"));
        assert!(PurgeTarget::Prefix("/v/".into()).matches("/v/x.mp4"));
        assert!(!PurgeTarget::Prefix("/v/".into()).matches("/w/x.mp4"));
    }

    #[test]
    fn the_log_is_bounded_and_knows_when_it_forgot() {
        let mut log = PurgeLog::default();
        assert!(log.insert(event(7, PurgeTarget::Path("/a".into()), false)));
        assert!(!log.insert(event(7, PurgeTarget::Path("/a".into()), false)));
        assert_eq!(log.trimmed_before_ms(), None);
        for id in 100..100 + PURGE_LOG_EVENTS_MAX as u64 {
            log.insert(event(id, PurgeTarget::Prefix("/".into()), true));
        }
        assert_eq!(log.len(), PURGE_LOG_EVENTS_MAX);
        assert!(!log.contains(7));
        assert_eq!(log.trimmed_before_ms(), Some(1_700_000_000_100));
        assert_eq!(log.since(1_700_000_000_000 + 10_098, 10).len(), 2);
    }

    #[test]
    fn the_log_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = PurgeLog::default();
        log.insert(event(3, PurgeTarget::Path("/x".into()), false));
        log.save(dir.path()).unwrap();
        let back = PurgeLog::load(dir.path());
        assert!(back.contains(3));
        assert_eq!(back.len(), 1);
        std::fs::write(dir.path().join("purges.json"), b"{garbage").unwrap();
        assert!(PurgeLog::load(dir.path()).is_empty());
    }
}
