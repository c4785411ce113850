//! The selector's answer to `/plan` ([`Decision`]): written by the
//! selector, read by `shoal get` and anyone scripting against the selector.
//! Every field has a default when absent, so an older or newer peer's
//! answer still parses; the client validates what it uses (URLs for the
//! path asked, sane rates) after parsing.

use serde::{Deserialize, Serialize};

/// What is known of the object behind the path.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ObjectFacts {
    /// Hex id (manifest id or the shield's id of an unpublished object).
    pub id: Option<String>,
    pub size_bytes: Option<u64>,
    /// False when the origin forbids caching (caches pass it through).
    pub cacheable: bool,
}

/// One chosen cache.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Source {
    pub node: String,
    /// The full URL of the object on that cache.
    pub url: String,
    /// Fraction of the planned rate this source carries.
    pub share: f64,
    pub mbps: f64,
    /// More it holds ready should another source fail, Mbit/s.
    pub standby_mbps: f64,
    pub region: String,
    /// Its price per GB for this request (egress + fill + transit +
    /// latency penalty).
    pub usd_per_gb: f64,
    /// Share of the object it already holds.
    pub held: f64,
    pub why: String,
}

/// A cache held in reserve: a client brings it on stream when a source
/// fails, before asking for a new plan. Not billed unless used.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct StandbySource {
    pub node: String,
    pub url: String,
    pub mbps: f64,
    pub region: String,
    pub usd_per_gb: f64,
    pub held: f64,
    pub why: String,
}

/// A cache that was not considered, and why.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct LeftOut {
    pub node: String,
    pub why: String,
}

/// The object's swarm of viewers, when the service shares pieces between
/// them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SwarmInfo {
    /// The swarm's key, hex (the 20 bytes of the BitTorrent handshake's
    /// `info_hash`).
    pub key: String,
    /// Where to announce (BEP 3 HTTP tracker).
    pub tracker: String,
    /// The delivery service's defaults for its viewers (their own flags
    /// win): upload cap and download pace in Mbit/s, peer connections.
    pub upload_mbps: Option<f64>,
    pub target_mbps: Option<f64>,
    pub peers_max: Option<u32>,
}

/// The answer to "where should this client get this object?".
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Decision {
    pub service: String,
    pub zone: String,
    pub object: ObjectFacts,
    pub committed_mbps: f64,
    pub target_mbps: f64,
    /// What the chosen sources can carry together.
    pub predicted_mbps: f64,
    pub shortfall_mbps: f64,
    pub bitrate_met: bool,
    pub survives_one_loss: bool,
    /// Standby held in all (sources' and standby caches'), Mbit/s.
    pub standby_mbps: f64,
    /// Expected price per GB delivered.
    pub usd_per_gb: f64,
    /// Expected price of the whole object (when its size is known).
    pub expected_usd: Option<f64>,
    /// In order of preference.
    pub sources: Vec<Source>,
    /// Caches held in reserve, cheapest first.
    pub standby: Vec<StandbySource>,
    /// The origin, when no cache can serve and the service allows it.
    pub origin_fallback: Option<String>,
    pub left_out: Vec<LeftOut>,
    pub reasons: Vec<String>,
    /// The viewers' swarm to join alongside the caches (none: the service
    /// has peer-to-peer off, or the object's id is not known yet).
    pub swarm: Option<SwarmInfo>,
}

impl Decision {
    /// The URLs to give a client, best first: the sources, else the origin.
    pub fn urls(&self) -> Vec<&str> {
        if self.sources.is_empty() {
            self.origin_fallback.iter().map(String::as_str).collect()
        } else {
            self.sources.iter().map(|s| s.url.as_str()).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decision_reads_back_as_written_and_missing_fields_default() {
        let decision = Decision {
            service: "video".into(),
            committed_mbps: 40.0,
            survives_one_loss: true,
            object: ObjectFacts {
                id: Some("ab".repeat(32)),
                size_bytes: Some(1 << 30),
                cacheable: true,
            },
            sources: vec![Source {
                node: "eu-1".into(),
                url: "http://127.0.0.2:8080/v.mp4".into(),
                share: 0.5,
                mbps: 20.0,
                ..Source::default()
            }],
            standby: vec![StandbySource {
                node: "eu-2".into(),
                mbps: 20.0,
                ..StandbySource::default()
            }],
            ..Decision::default()
        };
        let json = serde_json::to_vec(&decision).unwrap();
        let back: Decision = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, decision);
        // An answer from a selector that says less still parses.
        let sparse: Decision =
            serde_json::from_str(r#"{"sources":[{"node":"a","url":"http://x/p","share":1}]}"#)
                .unwrap();
        assert_eq!(sparse.sources[0].node, "a");
        assert_eq!(sparse.committed_mbps, 0.0);
        assert!(sparse.standby.is_empty());
    }
}
