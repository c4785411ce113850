//! What a cache does with what it just learnt about a path, as pure
//! functions: the origin's probe or the shield's answer comes in with the
//! version the cache knows, a [`Transition`] comes out, and `resolve` only
//! carries it out (stores records, moves pieces, counts).

use crate::object::ObjectRecord;
use shoal_core::ObjectId;

/// The version a cache knows for a path.
#[derive(Clone, Copy, Debug)]
pub struct Known {
    pub id: ObjectId,
    /// Two sources named different hashes for one of its pieces: the
    /// version cannot be trusted as is, even if the id is unchanged.
    pub hash_conflict: bool,
}

/// What was learnt about the path.
#[derive(Clone, Copy, Debug)]
pub enum Learnt {
    /// The origin forbids storing it (or it is over the size limit).
    NotStorable,
    Version(ObjectId),
}

/// What to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// Nothing known yet: start the version.
    Install,
    /// The same version: keep its pieces, take the new freshness and
    /// validators ([`kept_record`]).
    Keep,
    /// Another version: retire the old one (servable to pinned requests,
    /// its pieces carried over where equal) and start the new.
    Replace,
    /// Not storable now: forget what was known and pass requests through.
    Forget,
    /// Not storable, nothing known: pass through.
    PassThrough,
}

pub fn transition(known: Option<Known>, learnt: Learnt) -> Transition {
    match (known, learnt) {
        (None, Learnt::NotStorable) => Transition::PassThrough,
        (Some(_), Learnt::NotStorable) => Transition::Forget,
        (None, Learnt::Version(_)) => Transition::Install,
        (Some(old), Learnt::Version(id)) if old.id == id && !old.hash_conflict => Transition::Keep,
        (Some(_), Learnt::Version(_)) => Transition::Replace,
    }
}

/// The record a kept version continues with: its own identity and layout,
/// the fresh answer's freshness, validators and cache policy.
pub fn kept_record(old: &ObjectRecord, fresh: &ObjectRecord) -> ObjectRecord {
    let mut kept = old.clone();
    kept.fresh_until_unix_s = fresh.fresh_until_unix_s;
    kept.manifest_etag = fresh.manifest_etag.clone();
    kept.manifest_last_modified = fresh.manifest_last_modified.clone();
    kept.manifest_validators_strong = fresh.manifest_validators_strong;
    kept.cache_control = fresh.cache_control.clone();
    kept.origin_validators_strong = fresh.origin_validators_strong;
    kept.headers = fresh.headers.clone();
    kept.variant_key = fresh.variant_key.clone();
    kept.validated_unix_s = fresh.validated_unix_s;
    kept
}

/// Whether a published manifest describes the file the origin serves now:
/// same size, and the same modification time when both are known. A
/// manifest that does not is stale (the file changed, not republished):
/// the object is treated as unpublished rather than served against it.
pub fn manifest_describes_file(
    manifest_size: u64,
    manifest_modified_unix_s: Option<u64>,
    file_size: u64,
    file_modified_unix_s: Option<u64>,
) -> bool {
    let time_ok = match (manifest_modified_unix_s, file_modified_unix_s) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    };
    manifest_size == file_size && time_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ObjectId {
        ObjectId([n; 32])
    }

    fn record(id: &str, size: u64, fresh_until_unix_s: u64) -> ObjectRecord {
        ObjectRecord {
            format: crate::object::RECORD_FORMAT,
            id: id.into(),
            size,
            piece_size_log2: 18,
            published: true,
            origin_etag: None,
            origin_last_modified: None,
            content_type: None,
            cache_control: None,
            fresh_until_unix_s,
            manifest_etag: None,
            manifest_last_modified: None,
            manifest_validators_strong: false,
            origin_validators_strong: false,
            headers: Vec::new(),
            validated_unix_s: 0,
            variant_key: None,
        }
    }

    #[test]
    fn every_pair_of_known_and_learnt_has_one_transition() {
        let known = |n, conflict| {
            Some(Known {
                id: id(n),
                hash_conflict: conflict,
            })
        };
        assert_eq!(
            transition(None, Learnt::NotStorable),
            Transition::PassThrough
        );
        assert_eq!(
            transition(None, Learnt::Version(id(1))),
            Transition::Install
        );
        assert_eq!(
            transition(known(1, false), Learnt::NotStorable),
            Transition::Forget
        );
        assert_eq!(
            transition(known(1, false), Learnt::Version(id(1))),
            Transition::Keep
        );
        assert_eq!(
            transition(known(1, false), Learnt::Version(id(2))),
            Transition::Replace
        );
        // A version whose pieces disagree is started afresh even if the id
        // is unchanged.
        assert_eq!(
            transition(known(1, true), Learnt::Version(id(1))),
            Transition::Replace
        );
    }

    #[test]
    fn a_kept_version_takes_the_new_freshness_and_validators_only() {
        let old = record("aa", 100, 10);
        let mut fresh = record("bb", 999, 20);
        fresh.manifest_etag = Some("\"m2\"".into());
        fresh.cache_control = Some("max-age=5".into());
        fresh.origin_validators_strong = true;
        let kept = kept_record(&old, &fresh);
        assert_eq!(kept.id, "aa");
        assert_eq!(kept.size, 100);
        assert_eq!(kept.fresh_until_unix_s, 20);
        assert_eq!(kept.manifest_etag.as_deref(), Some("\"m2\""));
        assert_eq!(kept.cache_control.as_deref(), Some("max-age=5"));
        assert!(kept.origin_validators_strong);
    }

    #[test]
    fn a_manifest_describes_a_file_of_its_size_and_time() {
        assert!(manifest_describes_file(10, Some(5), 10, Some(5)));
        assert!(manifest_describes_file(10, None, 10, Some(5)));
        assert!(manifest_describes_file(10, Some(5), 10, None));
        assert!(!manifest_describes_file(10, Some(5), 10, Some(6)));
        // A file caught empty mid-rewrite is not the published version.
        assert!(!manifest_describes_file(10, Some(5), 0, Some(5)));
    }
}
