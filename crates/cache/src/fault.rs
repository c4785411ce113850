//! Whose fault a failure is, and whether trying again may help: one
//! classification for the errors the cache reports, so its logs, counters
//! and status codes agree and an operator knows where to look.

use crate::fill::FillError;
use crate::origin_client::OriginError;
use crate::resolve::ResolveError;
use http::StatusCode;

/// Who is to blame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The request (or a pin it carries) cannot be served as asked.
    Client,
    /// The origin failed, or sent something unusable.
    Origin,
    /// A sibling cache failed.
    Peer,
    /// This cache (its store, a task that ended).
    Local,
}

impl Fault {
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::Client => "client",
            Fault::Origin => "origin",
            Fault::Peer => "peer",
            Fault::Local => "local",
        }
    }
}

/// Errors that can say whose fault they are.
pub trait Blame {
    fn fault(&self) -> Fault;
    /// Whether the same request may succeed if tried again soon.
    fn retryable(&self) -> bool;
}

fn server_side(status: StatusCode) -> bool {
    status.is_server_error()
}

impl Blame for OriginError {
    fn fault(&self) -> Fault {
        Fault::Origin
    }

    fn retryable(&self) -> bool {
        match self {
            OriginError::Unreachable(_) | OriginError::Timeout(_) => true,
            OriginError::Status(status) => server_side(*status),
            OriginError::Protocol(_) | OriginError::Setup(_) => false,
        }
    }
}

impl Blame for FillError {
    fn fault(&self) -> Fault {
        match self {
            // (A sibling's bad piece is a `Peer` error naming it.)
            FillError::Origin { .. } | FillError::Corrupt(_) | FillError::VersionChanged => {
                Fault::Origin
            }
            FillError::Peer { .. } => Fault::Peer,
            // Pinned to a version the mesh no longer holds: ask again
            // without the pin.
            FillError::Retired(_) => Fault::Client,
            FillError::Abandoned | FillError::Store(_) => Fault::Local,
        }
    }

    fn retryable(&self) -> bool {
        match self {
            FillError::Origin { status, .. } => server_side(*status),
            FillError::Peer { .. } | FillError::VersionChanged | FillError::Abandoned => true,
            FillError::Corrupt(_) | FillError::Retired(_) | FillError::Store(_) => false,
        }
    }
}

impl Blame for ResolveError {
    fn fault(&self) -> Fault {
        match self {
            ResolveError::Origin(error) => error.fault(),
            ResolveError::BadManifest(_) => Fault::Origin,
            ResolveError::Store(_) => Fault::Local,
            ResolveError::Peer { .. } => Fault::Peer,
        }
    }

    fn retryable(&self) -> bool {
        match self {
            ResolveError::Origin(error) => error.retryable(),
            ResolveError::BadManifest(_) | ResolveError::Store(_) => false,
            ResolveError::Peer { status, .. } => server_side(*status),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_core::PieceIndex;

    #[test]
    fn every_error_names_who_is_to_blame_and_whether_to_retry() {
        let cases: Vec<(Box<dyn Blame>, Fault, bool)> = vec![
            (Box::new(OriginError::Timeout(5)), Fault::Origin, true),
            (
                Box::new(OriginError::Status(StatusCode::NOT_FOUND)),
                Fault::Origin,
                false,
            ),
            (
                Box::new(OriginError::Status(StatusCode::BAD_GATEWAY)),
                Fault::Origin,
                true,
            ),
            (
                Box::new(OriginError::Protocol("x".into())),
                Fault::Origin,
                false,
            ),
            (
                Box::new(FillError::Peer {
                    node: "c2".into(),
                    cause: shoal_proto::reason("gone"),
                }),
                Fault::Peer,
                true,
            ),
            (
                Box::new(FillError::Corrupt(PieceIndex(3))),
                Fault::Origin,
                false,
            ),
            (
                Box::new(FillError::Retired(PieceIndex(3))),
                Fault::Client,
                false,
            ),
            (
                Box::new(FillError::Store(shoal_proto::reason("full"))),
                Fault::Local,
                false,
            ),
            (Box::new(FillError::Abandoned), Fault::Local, true),
            (
                Box::new(ResolveError::Peer {
                    status: StatusCode::BAD_GATEWAY,
                    cause: shoal_proto::reason("shield"),
                }),
                Fault::Peer,
                true,
            ),
            (
                Box::new(ResolveError::Store(shoal_proto::reason("x"))),
                Fault::Local,
                false,
            ),
            (
                Box::new(ResolveError::Origin(OriginError::Unreachable(
                    shoal_proto::reason("x"),
                ))),
                Fault::Origin,
                true,
            ),
        ];
        for (error, fault, retryable) in cases {
            assert_eq!(error.fault(), fault);
            assert_eq!(error.retryable(), retryable, "{:?}", error.fault());
        }
        assert_eq!(Fault::Peer.as_str(), "peer");
    }

    #[test]
    fn causes_are_kept_as_sources_and_a_peer_is_never_blamed_on_the_origin() {
        use crate::peer::PeerError;
        use shoal_proto::{error_chain, reason};
        let origin = FillError::from(OriginError::Unreachable(reason("connection refused")));
        assert_eq!(origin.fault(), Fault::Origin);
        assert!(std::error::Error::source(&origin).is_some());
        assert_eq!(
            error_chain(&origin),
            "fetching from the origin failed: origin unreachable: connection refused"
        );
        let peer = FillError::peer(PeerError::Unreachable {
            node: "c2".into(),
            cause: reason("connection reset"),
        });
        assert_eq!(peer.fault(), Fault::Peer);
        assert!(peer.retryable());
        let text = error_chain(&peer);
        assert!(!text.contains("origin"), "{text}");
        assert_eq!(
            text,
            "sibling cache c2 failed: peer c2 unreachable: connection reset"
        );
        // A body broken off by a sibling is the sibling's fault too.
        let broken = FillError::Peer {
            node: "c3".into(),
            cause: std::sync::Arc::new(shoal_proto::body::BodyError::Stalled(500)),
        };
        assert_eq!(broken.fault(), Fault::Peer);
        assert_eq!(
            error_chain(&broken),
            "sibling cache c3 failed: no body bytes for 500 ms"
        );
    }
}
