//! Which of a plan's standby caches to bring on stream when a source is
//! lost: a pure function of the rates the plan gave, so it is tested
//! without sockets.
//!
//! The selector plans each source's share (`mbps`) and what it holds
//! ready beyond it (`standby_mbps`), and standby caches with the rate they
//! hold. After a loss, the sources still in use can carry their shares
//! plus their standby; only if that is less than the committed bitrate are
//! standby caches brought in, in the plan's order (cheapest first), until
//! it is covered.

/// Rate a source can carry (its share and its standby), Mbit/s.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Capacity {
    pub mbps: f64,
    pub standby_mbps: f64,
}

impl Capacity {
    fn total(self) -> f64 {
        self.mbps.max(0.0) + self.standby_mbps.max(0.0)
    }
}

/// How many of `pool` (in order) to bring on stream so that `in_use` and
/// those carry `committed_mbps`. Without a committed bitrate or without
/// rates in the plan (a plain server, mirrors), one, as a replacement.
pub fn standby_to_bring(
    committed_mbps: Option<f64>,
    in_use: &[Capacity],
    pool: &[Capacity],
) -> usize {
    let known = in_use
        .iter()
        .chain(pool)
        .all(|c| c.mbps > 0.0 || c.standby_mbps > 0.0);
    let Some(committed) = committed_mbps.filter(|c| c.is_finite() && *c > 0.0 && known) else {
        return pool.len().min(1);
    };
    let mut cover: f64 = in_use.iter().map(|c| c.total()).sum();
    let mut n = 0;
    while cover < committed * (1.0 - 1e-9) && n < pool.len() {
        cover += pool[n].total();
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(mbps: f64, standby_mbps: f64) -> Capacity {
        Capacity { mbps, standby_mbps }
    }

    #[test]
    fn the_survivors_own_standby_is_used_before_any_standby_cache() {
        // 6 + 2 of standby carry the committed 8: no standby cache.
        assert_eq!(
            standby_to_bring(Some(8.0), &[c(6.0, 2.0)], &[c(0.0, 5.0)]),
            0
        );
        // 90 + 10 of 120: the gap of 20 is split over two standby caches.
        let pool = [c(12.0, 0.0), c(8.0, 0.0), c(50.0, 0.0)];
        assert_eq!(standby_to_bring(Some(120.0), &[c(90.0, 10.0)], &pool), 2);
        // Not enough in the whole pool: all of it.
        assert_eq!(standby_to_bring(Some(500.0), &[c(90.0, 10.0)], &pool), 3);
        assert_eq!(standby_to_bring(Some(120.0), &[c(90.0, 10.0)], &[]), 0);
    }

    #[test]
    fn without_rates_one_standby_replaces_the_lost_source() {
        assert_eq!(
            standby_to_bring(None, &[c(6.0, 2.0)], &[c(8.0, 0.0), c(8.0, 0.0)]),
            1
        );
        assert_eq!(
            standby_to_bring(Some(8.0), &[c(0.0, 0.0)], &[c(8.0, 0.0)]),
            1
        );
        assert_eq!(
            standby_to_bring(Some(f64::NAN), &[c(6.0, 2.0)], &[c(8.0, 0.0)]),
            1
        );
        assert_eq!(standby_to_bring(None, &[], &[]), 0);
    }
}
