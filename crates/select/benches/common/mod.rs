//! Shared by the selection benchmarks: a tiny deterministic generator, so
//! every run sees the same instances without a random-number crate, and
//! the LP yardstick the planner is measured against.

use good_lp::{constraint, microlp, variable, Expression, ProblemVariables, Solution, SolverModel};
use shoal_select::{share_cap_mbps, unit_cost_usd_per_gb, Candidate, Request};

/// xorshift64.
pub struct Rng(pub u64);

#[allow(dead_code)] // each bench uses part of it
impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }
}

/// The LP optimum of the planner's problem without its integer parts (at
/// most 8 caches, no slivers), in Mbit/s and $/GB (microlp needs sane
/// scales); None if infeasible. Shares x and standby y per cache:
///
/// - minimise Σ unit_cost_i · x_i (standby is not billed);
/// - Σ x_i ≥ target; 0 ≤ x_i ≤ min(spare_i, target / min_sources);
/// - 0 ≤ y_i ≤ spare_i − standby_held_i, x_i + y_i ≤ spare_i;
/// - with `survive`: for every cache j, Σ_{i≠j} (x_i + y_i) ≥ bitrate
///   (written with T = Σ (x_i + y_i) as T − x_j − y_j ≥ bitrate, so each
///   row has three entries, not 2n).
#[allow(dead_code)] // each bench uses part of this module
pub fn lp_optimum(request: &Request, candidates: &[Candidate], survive: bool) -> Option<f64> {
    let cap = share_cap_mbps(request);
    let target = request.bitrate_mbps * request.headroom;
    let mut vars = ProblemVariables::new();
    let xs: Vec<_> = candidates
        .iter()
        .map(|c| vars.add(variable().min(0.0).max(c.spare_mbps.max(0.0).min(cap))))
        .collect();
    let ys: Vec<_> = candidates
        .iter()
        .map(|c| {
            vars.add(
                variable()
                    .min(0.0)
                    .max((c.spare_mbps - c.standby_held_mbps).max(0.0)),
            )
        })
        .collect();
    let total = vars.add(variable().min(0.0));
    let objective: Expression = xs
        .iter()
        .zip(candidates)
        .map(|(&x, c)| unit_cost_usd_per_gb(c, request) * x)
        .sum();
    let delivered: Expression = xs.iter().sum();
    let everything: Expression = xs.iter().chain(&ys).sum();
    let mut model = vars
        .minimise(objective.clone())
        .using(microlp)
        .with(constraint!(delivered >= target))
        .with(constraint!(total == everything));
    for ((&x, &y), c) in xs.iter().zip(&ys).zip(candidates) {
        model = model.with(constraint!(x + y <= c.spare_mbps.max(0.0)));
        if survive {
            model = model.with(constraint!(total - x - y >= request.bitrate_mbps));
        }
    }
    let solution = model.solve().ok()?;
    Some(solution.eval(&objective))
}
