//! The cache's side of the inter-cache protocol: the mesh report for
//! operators and learning piece hashes a sibling vouches for. The signed
//! client itself ([`MeshLink`]) and the JSON bodies live in
//! `shoal_proto::link`, shared with the selector; they are re-exported here.
//!
//! Inter-cache endpoints (all under `/_shoal/peer/`, all requiring an
//! `x-shoal-auth` token signed with the cluster key):
//!
//! - `GET /_shoal/peer/object/<path>`: the receiver resolves `<path>` (as
//!   shield: from its store or from the origin) and answers a
//!   [`PeerObject`] as JSON: the record, and the manifest or the piece
//!   hashes it knows.
//! - `GET /_shoal/peer/pieces/<id hex>`: the `PieceSet` of pieces held.
//! - `GET /_shoal/peer/data/<id hex><path>` with a piece-aligned `Range`
//!   and `x-shoal-mode: have` (only from the store; 404 if the first
//!   piece is not held), `fill` (the receiver fetches what it lacks, as
//!   shield) or `relay`. 409 if the receiver's version of `<path>` is not
//!   `<id>`.
//!
//! Whatever a peer sends is checked like origin bytes: piece data against
//! the manifest or the hashes learnt from the shield, never trusted.

use crate::object::ObjectEntry;
use serde::Serialize;
use shoal_core::{Manifest, PieceHash, PieceIndex};

pub use shoal_proto::link::{
    decode_manifest, encode_manifest, DataAsk, MeshLink, PeerCounters, PeerError, PeerMode,
    PeerObject, PeerSettings, AUTH_TTL_MIN_S, PEER_OBJECT_BYTES_MAX, PEER_RECORD_BYTES_MAX,
    PIECE_SET_BYTES_MAX, TOKEN_LIFETIME_S,
};
pub use shoal_proto::{
    LAST_RESORT_HEADER, MODE_HEADER, PEER_DATA_PREFIX, PEER_OBJECT_PREFIX, PEER_PIECES_PREFIX,
    PEER_PREFIX, PEER_PURGES_PATH, PEER_PURGE_PATH, RECORD_MODE, STAY_HEADER, SWITCH_HEADER,
    TRY_HEADER,
};

/// `GET /_shoal/mesh`: this cache's view of the mesh, for operators.
#[derive(Debug, Serialize)]
pub struct MeshReport {
    pub self_id: String,
    pub members: Vec<MemberReport>,
    /// Live nodes whose gossiped state did not parse.
    pub malformed_members: usize,
    pub quarantined: Vec<String>,
    pub gossip_dropped_datagrams: u64,
    /// With `?path=`: the shield of that path in this cache's view.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shield: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct MemberReport {
    pub node_id: String,
    pub http: String,
    pub region: String,
    pub health: &'static str,
    /// Its egress cap, Mbit/s (0: none), as every operator-facing rate.
    pub egress_cap_mbps: f64,
    /// Its recent egress, Mbit/s.
    pub egress_mbps: f64,
    /// Its price, USD per GB sent.
    pub cost_per_gb: f64,
    pub has_summary: bool,
    /// Measured from this cache; absent until a request went there.
    pub rtt_ms: Option<f64>,
}

impl MeshReport {
    pub fn new(link: &MeshLink, path: Option<&shoal_http::path::RequestPath>) -> Self {
        let view = link.node.view();
        let shield = path.and_then(|p| {
            view.shield(&shoal_mesh::shield_key(p.as_str()))
                .map(|m| m.node_id.clone())
        });
        Self {
            shield,
            self_id: view.self_id.clone(),
            members: view
                .members
                .iter()
                .map(|m| MemberReport {
                    node_id: m.node_id.clone(),
                    http: m.base_url(),
                    region: m.region.clone(),
                    health: m.health.as_str(),
                    egress_cap_mbps: m.egress_cap_bps as f64 / 1e6,
                    egress_mbps: m.egress_bps as f64 / 1e6,
                    cost_per_gb: m.cost_per_gb_microusd as f64 / 1e6,
                    has_summary: m.summary.is_some(),
                    rtt_ms: link.rtt_ms(&m.node_id),
                })
                .collect(),
            malformed_members: view.malformed_members,
            quarantined: link.quarantined(),
            gossip_dropped_datagrams: link.node.dropped_datagrams(),
        }
    }
}

/// Learns piece hashes a cluster member vouches for (a built manifest or a
/// list of hex hashes): used only for objects without a published manifest,
/// whose hashes no publisher signed. Members are authenticated by the
/// cluster secret; bytes are still always checked against these hashes.
pub fn learn_hashes(entry: &ObjectEntry, built: Option<&Manifest>, hashes_hex: &[String]) {
    if entry.manifest.is_some() {
        return;
    }
    if let Some(built) = built.filter(|m| m.layout() == entry.layout) {
        for (index, hash) in built.piece_hashes().iter().enumerate() {
            entry.learn_hash(PieceIndex(index as u32), *hash);
        }
    }
    let count = entry.layout.piece_count() as usize;
    for (index, text) in hashes_hex.iter().enumerate().take(count) {
        if let Some(hash) = PieceHash::from_hex(text) {
            entry.learn_hash(PieceIndex(index as u32), hash);
        }
    }
}
