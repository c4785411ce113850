//! shoal-proto: what crosses the wire between shoal's roles, defined once
//! so a cache, a selector and a client cannot drift apart: the endpoint
//! paths and header names (here), the JSON bodies ([`record`], [`purge`],
//! [`link::PeerObject`], [`plan::Decision`], [`HashList`]), the signed peer client ([`link::MeshLink`]) with
//! its pure peer-health machine ([`peer_health`]), and the checked body
//! reader both origin and peer fetches use ([`body`]). The selector and
//! the client depend on this crate, not on `shoal-cache`.

pub mod body;
pub mod link;
pub mod peer_health;
pub mod plan;
pub mod purge;
pub mod record;

/// The cause of an error that must be cloned (handed to every waiter of
/// a piece), kept as an error rather than flattened into its text.
pub type Cause = std::sync::Arc<dyn std::error::Error + Send + Sync>;

/// A cause that is only a description, with nothing underneath it.
pub fn reason(text: impl Into<String>) -> Cause {
    std::sync::Arc::from(Box::<dyn std::error::Error + Send + Sync>::from(
        text.into(),
    ))
}

/// Shows an error with its causes (`error = %Chain(&error)` in logs):
/// errors here keep their causes as sources, and their own message
/// says only what failed at their level.
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'a));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&error_chain(self.0))
    }
}

/// An error and its causes, outermost first, joined with `: ` — for logs
/// and for the text of an error that crosses a role boundary.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        let next = inner.to_string();
        // Some errors repeat their cause in their own message.
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        cause = inner.source();
    }
    text
}

/// Prefix of a cache's own endpoints; objects under it are not served.
pub const INTERNAL_PREFIX: &str = "/_shoal/";

/// `GET /_shoal/manifest/<path>`: the manifest of the object at `<path>`:
/// the published one, or the one the cache built while ingesting (404
/// until every piece has been seen). The id is in `X-Shoal-Object-Id`.
pub const MANIFEST_PREFIX: &str = "/_shoal/manifest/";

/// `GET /_shoal/hashes/<path>`: the piece hashes a cache knows for the
/// object at `<path>` as JSON (`id`, `size`, `piece_size_log2`,
/// `hashes_hex` with `""` where unknown, `complete`).
pub const HASHES_PREFIX: &str = "/_shoal/hashes/";

/// `POST /_shoal/warm/<path>` (signed): fill a whole object ahead of
/// demand.
pub const WARM_PREFIX: &str = "/_shoal/warm/";

/// `POST /_shoal/egress?bytes_per_s=N` (signed): change a running cache's
/// egress cap (0: none); answers the old and new cap.
pub const EGRESS_PATH: &str = "/_shoal/egress";

/// `POST /_shoal/purge?path=/p` or `?prefix=/dir/` (`&soft=1`): the
/// operator's purge endpoint (signed).
pub const PURGE_PATH: &str = "/_shoal/purge";

/// Inter-cache endpoints (signed), under this prefix.
pub const PEER_PREFIX: &str = "/_shoal/peer/";
/// `GET /_shoal/peer/object/<path>`: what a path is (record, manifest,
/// hashes), as the shield or a holder knows it.
pub const PEER_OBJECT_PREFIX: &str = "/_shoal/peer/object/";
/// `GET /_shoal/peer/pieces/<id>`: the pieces a cache holds of a version.
pub const PEER_PIECES_PREFIX: &str = "/_shoal/peer/pieces/";
/// `GET /_shoal/peer/data/<id>/<path>` with a Range: piece data.
pub const PEER_DATA_PREFIX: &str = "/_shoal/peer/data/";
/// `GET /_shoal/peer/purge?<event>`: apply a purge event.
pub const PEER_PURGE_PATH: &str = "/_shoal/peer/purge";
/// `GET /_shoal/peer/purges?since=MS`: the purge events a cache knows.
pub const PEER_PURGES_PATH: &str = "/_shoal/peer/purges";

/// Request header: `have`, `fill` or `relay` (or, for object metadata
/// only, [`RECORD_MODE`]).
pub const MODE_HEADER: &str = "x-shoal-mode";
/// Request header on a `fill` request (`1`): the shield must serve it,
/// not send the requester to a relay (its relay failed, or the request
/// is itself a relay's fill).
pub const LAST_RESORT_HEADER: &str = "x-shoal-last-resort";
/// Response header on a shield's `503` refusing a `fill` request during a
/// flash crowd: the node id of the cache to ask (`relay` mode) instead.
pub const TRY_HEADER: &str = "x-shoal-try";
/// Request header on a `fill` request: the requester already gets these
/// pieces from a relay or holder, which would take this many more
/// milliseconds; the shield takes the run over only if it would be much
/// sooner, and otherwise answers `503` with [`STAY_HEADER`].
pub const SWITCH_HEADER: &str = "x-shoal-switch-eta-ms";
/// Response header (`1`) on a shield's `503` declining a switch: keep the
/// source you have (not a sign of trouble at the shield).
pub const STAY_HEADER: &str = "x-shoal-stay";
/// `x-shoal-mode` of a selector asking a shield what a path is: resolved
/// as in `fill` mode, answered without the manifest or piece hashes.
pub const RECORD_MODE: &str = "record";

/// Response header: `HIT` when the response began from stored pieces,
/// `MISS` when its first piece had to be fetched.
pub const CACHE_STATUS_HEADER: &str = "x-shoal-cache";
/// How long a client keeps an idle pooled connection to a shoal server:
/// below the server's keep-alive limit (its `header_read_timeout_ms`,
/// 10 s by default), so a connection is never reused just as the server
/// closes it ("connection closed before message completed").
pub const POOL_IDLE_MS: u64 = 4_000;
/// Request header (`1`) on a whole-response fetch a cache sends to the
/// path's shield instead of the origin: the shield asks the origin itself
/// (never another cache), so views that disagree cannot make a loop.
pub const TIER_HEADER: &str = "x-shoal-tier";
/// Response header on an error the cache made up itself (never on an
/// origin's error passed through): whose fault it is — `client`,
/// `origin` (unreachable, too slow, unusable), `peer` or `local`.
pub const ERROR_HEADER: &str = "x-shoal-error";
/// Response header naming the object version a response came from.
pub const OBJECT_ID_HEADER: &str = "x-shoal-object-id";
/// Response header on a manifest: `published`, or `built` (from the pieces
/// of an object that has none: its own hash is not the object id; the id
/// is in `X-Shoal-Object-Id`).
pub const MANIFEST_KIND_HEADER: &str = "x-shoal-manifest";

/// Query parameter pinning a request to one object version
/// (`/path?shoal-object=<id hex>`): the version is served exactly, or the
/// request is refused with 409. Every URL a selector hands out carries it,
/// so a client blending several caches can never stitch two versions.
pub const PIN_PARAM: &str = "shoal-object";

/// The `/_shoal/hashes/<path>` answer: the piece hashes a cache knows of
/// the object at `<path>`, `""` where unknown.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HashList {
    /// Hex object id.
    pub id: String,
    pub size: u64,
    pub piece_size_log2: u8,
    pub hashes_hex: Vec<String>,
    /// Whether the hashes are a published manifest's.
    #[serde(default)]
    pub published: bool,
    /// Whether every hash is known.
    #[serde(default)]
    pub complete: bool,
}
