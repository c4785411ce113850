//! Version affinity: a client keeps the version it was first sent while
//! it keeps asking.
//!
//! Every URL a selector hands out is pinned to one version, so the
//! connections of one redirect never mix versions. But a multi-connection
//! client (aria2c) opens later connections on the *original* URL, the
//! selector's: after a republish those would be redirected to the new
//! version and stitched onto ranges of the old one. So the selector
//! remembers, per client address and path, the version it named, and
//! names it again while that client keeps asking within
//! `version_affinity_s` of its last request (at most
//! [`AFFINITY_HELD_MAX`] in all, so a busy NAT address moves on too).
//! Soft state: bounded, lost on restart (then the client simply gets the
//! current version), time passed in (no clock inside).

use shoal_core::ObjectId;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Longest a client keeps a version however often it asks.
pub const AFFINITY_HELD_MAX: Duration = Duration::from_secs(900);
/// Clients (address, path) remembered at once.
pub const AFFINITY_ENTRIES_MAX: usize = 100_000;

struct Held {
    id: ObjectId,
    first: Instant,
    last: Instant,
}

pub struct VersionAffinity {
    window: Duration,
    entries: Mutex<HashMap<(IpAddr, String), Held>>,
}

impl VersionAffinity {
    /// `window`: how long after its last request a client keeps its
    /// version (zero: no affinity).
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            entries: Mutex::default(),
        }
    }

    /// The version to name to `client` for `path`, whose current version
    /// is `current`: the one it was given before if it is still asking
    /// within the window, else `current` (remembered from now on).
    pub fn version_for(
        &self,
        client: IpAddr,
        path: &str,
        current: ObjectId,
        now: Instant,
    ) -> ObjectId {
        if self.window.is_zero() {
            return current;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let key = (client, path.to_string());
        if let Some(held) = entries.get_mut(&key) {
            let asking = now.saturating_duration_since(held.last) < self.window;
            let young = now.saturating_duration_since(held.first) < AFFINITY_HELD_MAX;
            if held.id == current || !(asking && young) {
                if held.id != current {
                    *held = Held {
                        id: current,
                        first: now,
                        last: now,
                    };
                }
                held.last = now;
                return current;
            }
            held.last = now;
            return held.id;
        }
        if entries.len() >= AFFINITY_ENTRIES_MAX {
            let window = self.window;
            entries.retain(|_, h| now.saturating_duration_since(h.last) < window);
            if entries.len() >= AFFINITY_ENTRIES_MAX {
                return current;
            }
        }
        entries.insert(
            key,
            Held {
                id: current,
                first: now,
                last: now,
            },
        );
        current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(byte: u8) -> ObjectId {
        ObjectId([byte; 32])
    }

    #[test]
    fn a_client_that_keeps_asking_keeps_its_version() {
        let affinity = VersionAffinity::new(Duration::from_secs(60));
        let client: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        assert_eq!(affinity.version_for(client, "/a", id(1), t0), id(1));
        // Republished: the same client, still downloading, keeps v1 ...
        let t1 = t0 + Duration::from_secs(30);
        assert_eq!(affinity.version_for(client, "/a", id(2), t1), id(1));
        let t2 = t1 + Duration::from_secs(50);
        assert_eq!(affinity.version_for(client, "/a", id(2), t2), id(1));
        // ... another client, or another path, gets the new one.
        assert_eq!(affinity.version_for(other, "/a", id(2), t2), id(2));
        assert_eq!(affinity.version_for(client, "/b", id(7), t2), id(7));
        // After a minute of silence the client moves on, and stays moved.
        let t3 = t2 + Duration::from_secs(61);
        assert_eq!(affinity.version_for(client, "/a", id(2), t3), id(2));
        assert_eq!(affinity.version_for(client, "/a", id(2), t3), id(2));
    }

    #[test]
    fn no_client_keeps_a_version_past_the_cap_or_without_a_window() {
        let affinity = VersionAffinity::new(Duration::from_secs(60));
        let client: IpAddr = "10.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        let mut now = t0;
        affinity.version_for(client, "/a", id(1), now);
        let mut last = id(1);
        // Asking every 30 s keeps v1 until the cap, then v2.
        while last == id(1) {
            now += Duration::from_secs(30);
            last = affinity.version_for(client, "/a", id(2), now);
        }
        let held = now.duration_since(t0);
        assert!(held >= AFFINITY_HELD_MAX && held <= AFFINITY_HELD_MAX + Duration::from_secs(30));
        let off = VersionAffinity::new(Duration::ZERO);
        off.version_for(client, "/a", id(1), now);
        assert_eq!(off.version_for(client, "/a", id(2), now), id(2));
    }
}
