//! May a stored response be used for this request, now (RFC 9111 §4.2,
//! §5.2.1; RFC 5861)?
//!
//! Pure: the stored response's lifetime and times, the response's and the
//! request's directives, and `now` go in; a [`Use`] comes out. The cache
//! acts on it: answer from the store, answer and revalidate in the
//! background, or ask the origin first (and, if it fails, perhaps answer
//! stale after all).
//!
//! # Decisions
//!
//! - `no-cache` on the request or the response: always revalidate.
//! - A request's `max-age` and `min-fresh` narrow what counts as fresh;
//!   `max-stale` (with no value: any staleness) widens it, unless the
//!   response has `must-revalidate`, `proxy-revalidate` or `s-maxage`
//!   (RFC 9111 §5.2.2.2, §5.2.2.8, §5.2.2.10), which forbid serving it
//!   stale in any way (RFC 5861's extensions included).
//! - `stale-while-revalidate=N` (response): stale by at most N s, serve it
//!   and revalidate in the background.
//! - `stale-if-error=N` (response or request, the larger): stale by at
//!   most N s, it may be served when revalidation fails (a 5xx or no
//!   answer).
//! - `only-if-cached` (request): anything that would need the origin is a
//!   `504` (RFC 9111 §5.2.1.7).

use crate::cache_control::{CacheControl, RequestCacheControl};

/// What a stored response's timing is (RFC 9111 §4.2.3), all in Unix
/// seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoredTimes {
    /// When the cache sent the request that got this response.
    pub request_unix_s: u64,
    /// When the response arrived.
    pub response_unix_s: u64,
    /// The response's `Date`, if valid.
    pub date_unix_s: Option<u64>,
    /// The response's `Age`, if valid.
    pub age_s: Option<u64>,
}

/// The `Age` a response carries (RFC 9111 §5.1), in seconds; `None` when
/// it has none. A value that is not exactly one line of digits (a sign, a
/// fraction, a list, a second line) makes the response count as stale: it
/// reads as the largest age. Digits beyond 64 bits saturate.
pub fn age_field_s(headers: &http::HeaderMap) -> Option<u64> {
    let mut lines = headers.get_all(http::header::AGE).iter();
    let first = lines.next()?;
    if lines.next().is_some() {
        return Some(u64::MAX);
    }
    let digits = crate::syntax::trim_ows(first.as_bytes());
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Some(u64::MAX);
    }
    Some(digits.iter().fold(0u64, |age, digit| {
        age.saturating_mul(10)
            .saturating_add(u64::from(digit - b'0'))
    }))
}

/// The current age of a stored response (RFC 9111 §4.2.3): how long ago
/// the origin made it, counting the time upstream caches held it and the
/// time the request was in flight.
pub fn current_age_s(times: &StoredTimes, now_unix_s: u64) -> u64 {
    let apparent_age = times
        .date_unix_s
        .map_or(0, |date| times.response_unix_s.saturating_sub(date));
    let response_delay = times.response_unix_s.saturating_sub(times.request_unix_s);
    let corrected_age_value = times.age_s.unwrap_or(0).saturating_add(response_delay);
    let corrected_initial_age = apparent_age.max(corrected_age_value);
    let resident_time = now_unix_s.saturating_sub(times.response_unix_s);
    corrected_initial_age.saturating_add(resident_time)
}

/// What to do with a stored response for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Use {
    /// Fresh enough: answer from the store.
    Fresh,
    /// Stale, but the request accepts it (`max-stale`): answer from the
    /// store.
    StaleAccepted,
    /// Stale within `stale-while-revalidate`: answer from the store and
    /// revalidate in the background.
    StaleWhileRevalidate,
    /// Ask the origin first. `stale_if_error`: if it fails, the stored
    /// response may be served.
    Revalidate { stale_if_error: bool },
    /// `only-if-cached` and nothing usable without the origin: `504`.
    GatewayTimeout,
}

/// Decides how a stored response of `lifetime_s` and `age_s` may be used
/// for a request with `request` directives (see the module doc).
pub fn decide(
    lifetime_s: u64,
    age_s: u64,
    response: &CacheControl,
    request: &RequestCacheControl,
) -> Use {
    let revalidate = |stale_if_error: bool| {
        if request.only_if_cached {
            Use::GatewayTimeout
        } else {
            Use::Revalidate { stale_if_error }
        }
    };
    let strict = response.revalidate_when_stale();
    let staleness_s = age_s.saturating_sub(lifetime_s);
    let stale_if_error_s = response.stale_if_error_s.max(request.stale_if_error_s);
    let stale_if_error = !strict && stale_if_error_s.is_some_and(|limit| staleness_s <= limit);
    if request.no_cache || response.no_cache {
        return revalidate(false);
    }
    let fresh = age_s < lifetime_s;
    let too_old_for_the_client = request.max_age_s.is_some_and(|max_age| age_s > max_age);
    let not_fresh_long_enough = request
        .min_fresh_s
        .is_some_and(|min_fresh| lifetime_s.saturating_sub(age_s) < min_fresh);
    if fresh && !too_old_for_the_client && !not_fresh_long_enough {
        return Use::Fresh;
    }
    if too_old_for_the_client || not_fresh_long_enough || strict {
        return revalidate(stale_if_error);
    }
    // Stale, and nothing forbids serving it stale.
    match request.max_stale {
        Some(None) => return Use::StaleAccepted,
        Some(Some(limit_s)) if staleness_s <= limit_s => return Use::StaleAccepted,
        _ => {}
    }
    if response
        .stale_while_revalidate_s
        .is_some_and(|limit_s| staleness_s <= limit_s)
    {
        return Use::StaleWhileRevalidate;
    }
    revalidate(stale_if_error)
}

/// After revalidation failed (the origin answered 5xx or did not answer):
/// may the stale stored response be served instead (RFC 5861 §4)?
pub fn may_serve_stale_on_error(use_was: Use) -> bool {
    matches!(
        use_was,
        Use::Revalidate {
            stale_if_error: true
        }
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn invalid_age_fields_read_as_stale() {
        let age = |lines: &[&str]| {
            let mut headers = http::HeaderMap::new();
            for line in lines {
                headers.append(http::header::AGE, line.parse().unwrap());
            }
            age_field_s(&headers)
        };
        assert_eq!(age(&[]), None);
        assert_eq!(age(&["0"]), Some(0));
        assert_eq!(age(&[" 7200 "]), Some(7200));
        assert_eq!(age(&["99999999999999999999999"]), Some(u64::MAX));
        for bad in [
            "abc", "-7200", "7200.0", "7200,0", "0, 7200", "7200;a=b", "",
        ] {
            assert_eq!(age(&[bad]), Some(u64::MAX), "{bad:?}");
        }
        assert_eq!(age(&["0", "7200"]), Some(u64::MAX));
    }

    use super::*;

    fn response(value: &str) -> CacheControl {
        CacheControl::parse(value.as_bytes())
    }

    fn request(value: &str) -> RequestCacheControl {
        RequestCacheControl::parse(value.as_bytes())
    }

    #[test]
    fn age_follows_rfc_9111_4_2_3() {
        // Sent at 100, received at 102, Date 101, Age 10: the response
        // was 10 s old at the upstream cache plus 2 s in flight.
        let times = StoredTimes {
            request_unix_s: 100,
            response_unix_s: 102,
            date_unix_s: Some(101),
            age_s: Some(10),
        };
        assert_eq!(current_age_s(&times, 102), 12);
        assert_eq!(current_age_s(&times, 150), 60);
        // A Date far in the past (a slow clock at the origin) dominates.
        let skewed = StoredTimes {
            date_unix_s: Some(50),
            age_s: None,
            ..times
        };
        assert_eq!(current_age_s(&skewed, 102), 52);
        // A Date in the future counts as no age.
        let future = StoredTimes {
            date_unix_s: Some(500),
            age_s: None,
            ..times
        };
        assert_eq!(current_age_s(&future, 102), 2);
    }

    /// (lifetime, age, response directives, request directives) → use.
    #[test]
    fn decisions() {
        let revalidate = Use::Revalidate {
            stale_if_error: false,
        };
        let rows: &[(u64, u64, &str, &str, Use)] = &[
            (60, 10, "max-age=60", "", Use::Fresh),
            (60, 60, "max-age=60", "", revalidate),
            (60, 10, "max-age=60, no-cache", "", revalidate),
            (60, 10, "max-age=60", "no-cache", revalidate),
            // The client's own limits.
            (60, 10, "max-age=60", "max-age=5", revalidate),
            (60, 10, "max-age=60", "max-age=10", Use::Fresh),
            (60, 10, "max-age=60", "min-fresh=50", Use::Fresh),
            (60, 10, "max-age=60", "min-fresh=51", revalidate),
            (60, 70, "max-age=60", "max-stale", Use::StaleAccepted),
            (60, 70, "max-age=60", "max-stale=10", Use::StaleAccepted),
            (60, 71, "max-age=60", "max-stale=10", revalidate),
            // The origin forbids stale answers.
            (
                60,
                70,
                "max-age=60, must-revalidate",
                "max-stale",
                revalidate,
            ),
            (60, 70, "s-maxage=60", "max-stale", revalidate),
            (
                60,
                70,
                "max-age=60, proxy-revalidate",
                "max-stale",
                revalidate,
            ),
            // RFC 5861.
            (
                60,
                80,
                "max-age=60, stale-while-revalidate=30",
                "",
                Use::StaleWhileRevalidate,
            ),
            (
                60,
                95,
                "max-age=60, stale-while-revalidate=30",
                "",
                revalidate,
            ),
            (
                60,
                95,
                "max-age=60, stale-if-error=60",
                "",
                Use::Revalidate {
                    stale_if_error: true,
                },
            ),
            (
                60,
                95,
                "max-age=60",
                "stale-if-error=40",
                Use::Revalidate {
                    stale_if_error: true,
                },
            ),
            (60, 200, "max-age=60, stale-if-error=60", "", revalidate),
            (
                60,
                95,
                "max-age=60, stale-if-error=60, must-revalidate",
                "",
                revalidate,
            ),
            (
                60,
                80,
                "max-age=60, stale-while-revalidate=30, must-revalidate",
                "",
                revalidate,
            ),
            // only-if-cached.
            (60, 10, "max-age=60", "only-if-cached", Use::Fresh),
            (60, 70, "max-age=60", "only-if-cached", Use::GatewayTimeout),
            (
                60,
                70,
                "max-age=60",
                "only-if-cached, max-stale",
                Use::StaleAccepted,
            ),
        ];
        for &(lifetime, age, on_response, on_request, expected) in rows {
            assert_eq!(
                decide(lifetime, age, &response(on_response), &request(on_request)),
                expected,
                "lifetime {lifetime}, age {age}, response `{on_response}`, request `{on_request}`"
            );
        }
        assert!(may_serve_stale_on_error(Use::Revalidate {
            stale_if_error: true
        }));
        assert!(!may_serve_stale_on_error(revalidate));
    }
}
