//! Who gets a connection slot.
//!
//! Silent or idle connections must not lock clients out. Three rules work
//! together with the first-request deadline in `serve`:
//!
//! - **Per address**: one client address holds at most
//!   [`ServerLimits::connections_per_address_max`] connections; beyond it a
//!   new one is admitted only in exchange for one of that address's idle
//!   connections (many users behind one NAT), else closed after `accept`.
//! - **Shedding near the cap**: from [`SHED_START_PERCENT`] of
//!   [`ServerLimits::connections_max`], each new connection asks the
//!   longest-idle connection that is not in a request (no handler running
//!   and no byte moved for [`SHED_IDLE_MS_MIN`]) to close, gracefully: a
//!   response still being written is finished first. Closing an idle
//!   keep-alive connection is always allowed (RFC 9112 §9.6), and a client
//!   that never sent a request loses nothing.
//! - **At the cap** a new connection is admitted only if one was shed for
//!   it; otherwise it is refused.
//!
//! The choice itself ([`choose_shed`]) is a pure function of the
//! connections' idle times; the [`Registry`] only keeps the table.
//!
//! [`ServerLimits::connections_per_address_max`]: crate::ServerLimits::connections_per_address_max
//! [`ServerLimits::connections_max`]: crate::ServerLimits::connections_max

use crate::io::Activity;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// Shedding starts when this share of `connections_max` is open.
pub const SHED_START_PERCENT: u64 = 90;
/// A connection idle for less than this is never shed: it may be a client
/// whose request head is on its way.
pub const SHED_IDLE_MS_MIN: u64 = 500;

/// What to do with a newly accepted connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    Accept {
        /// Connections asked to close to make room.
        shed: Vec<u64>,
    },
    /// Its address already holds its share.
    RefusePerAddress,
    /// The server is full and nothing could be shed.
    RefuseFull,
}

/// One open connection as shedding sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Candidate {
    pub id: u64,
    /// Milliseconds since it last read or wrote a byte.
    pub idle_ms: u64,
    /// A handler is running for one of its requests.
    pub busy: bool,
}

/// The `count` connections to shed: idle ones (not busy, idle for at least
/// [`SHED_IDLE_MS_MIN`]), longest idle first.
pub(crate) fn choose_shed(candidates: &[Candidate], count: usize) -> Vec<u64> {
    let mut idle: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| !c.busy && c.idle_ms >= SHED_IDLE_MS_MIN)
        .collect();
    idle.sort_by(|a, b| b.idle_ms.cmp(&a.idle_ms).then(a.id.cmp(&b.id)));
    idle.into_iter().take(count).map(|c| c.id).collect()
}

/// The admission rule: per-address share, then shedding near the cap.
/// `candidates(true)` lists the new connection's address's connections
/// only; `candidates(false)` every connection.
pub(crate) fn admit(
    open: u64,
    open_from_address: u64,
    connections_max: u64,
    per_address_max: u64,
    candidates: impl Fn(bool) -> Vec<Candidate>,
) -> Admission {
    if per_address_max > 0 && open_from_address >= per_address_max {
        // The address's own idle connections make room for it (many
        // users behind one NAT), else it has its share.
        let shed = choose_shed(&candidates(true), 1);
        if shed.is_empty() {
            return Admission::RefusePerAddress;
        }
        return Admission::Accept { shed };
    }
    let shed_start = connections_max.saturating_mul(SHED_START_PERCENT) / 100;
    if open < shed_start {
        return Admission::Accept { shed: Vec::new() };
    }
    let shed = choose_shed(&candidates(false), 1);
    if open >= connections_max && shed.is_empty() {
        return Admission::RefuseFull;
    }
    Admission::Accept { shed }
}

/// A connection's handles the shedder needs.
struct Slot {
    ip: IpAddr,
    activity: Arc<Activity>,
    handlers_running: Arc<AtomicU64>,
    shed: Arc<Notify>,
    /// Already asked to close (it is on its way out: not a candidate).
    shedding: bool,
}

#[derive(Default)]
struct Table {
    slots: HashMap<u64, Slot>,
    per_address: HashMap<IpAddr, u64>,
}

/// The open connections of one server.
#[derive(Default)]
pub(crate) struct Registry {
    table: Mutex<Table>,
}

/// What a connection task gets from the registry: the signal to close, and
/// the count of its running handlers. Dropping it frees the slot.
pub(crate) struct SlotHandle {
    registry: Arc<Registry>,
    id: u64,
    pub(crate) shed: Arc<Notify>,
    pub(crate) handlers_running: Arc<AtomicU64>,
}

impl Drop for SlotHandle {
    fn drop(&mut self) {
        let mut table = self.registry.lock();
        if let Some(slot) = table.slots.remove(&self.id) {
            if let Some(count) = table.per_address.get_mut(&slot.ip) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    table.per_address.remove(&slot.ip);
                }
            }
        }
    }
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Decides on a connection from `ip` and, when it is accepted,
    /// registers it as `id` and asks the shed ones to close.
    pub(crate) fn admit(
        self: &Arc<Self>,
        id: u64,
        ip: IpAddr,
        activity: Arc<Activity>,
        connections_max: u64,
        per_address_max: u64,
    ) -> Result<(SlotHandle, usize), Admission> {
        let mut table = self.lock();
        let open = table.slots.len() as u64;
        let from_address = table.per_address.get(&ip).copied().unwrap_or(0);
        // An address swaps one of its idle connections for a new one at a
        // time: while one is on its way out, it is at its share.
        let address_shedding = table.slots.values().any(|s| s.ip == ip && s.shedding);
        let decision = admit(
            open,
            from_address,
            connections_max,
            per_address_max,
            |same| {
                if same && address_shedding {
                    return Vec::new();
                }
                table
                    .slots
                    .iter()
                    .filter(|(_, slot)| !slot.shedding && (!same || slot.ip == ip))
                    .map(|(&id, slot)| Candidate {
                        id,
                        idle_ms: slot.activity.idle_ms(),
                        busy: slot.handlers_running.load(Ordering::Relaxed) > 0,
                    })
                    .collect()
            },
        );
        let Admission::Accept { shed } = decision else {
            return Err(decision);
        };
        for id in &shed {
            if let Some(slot) = table.slots.get_mut(id) {
                slot.shedding = true;
                slot.shed.notify_one();
            }
        }
        let handle = SlotHandle {
            registry: self.clone(),
            id,
            shed: Arc::new(Notify::new()),
            handlers_running: Arc::new(AtomicU64::new(0)),
        };
        table.slots.insert(
            id,
            Slot {
                ip,
                activity,
                handlers_running: handle.handlers_running.clone(),
                shed: handle.shed.clone(),
                shedding: false,
            },
        );
        *table.per_address.entry(ip).or_default() += 1;
        Ok((handle, shed.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(id: u64, idle_ms: u64, busy: bool) -> Candidate {
        Candidate { id, idle_ms, busy }
    }

    #[test]
    fn sheds_the_longest_idle_connection_not_in_a_request() {
        let candidates = [
            candidate(1, 9_000, true),
            candidate(2, 3_000, false),
            candidate(3, 7_000, false),
            candidate(4, 100, false),
        ];
        assert_eq!(choose_shed(&candidates, 1), vec![3]);
        assert_eq!(choose_shed(&candidates, 5), vec![3, 2]);
    }

    #[test]
    fn admission_rules() {
        let none = |_| Vec::new();
        // Below the shedding threshold: accepted, nothing shed.
        assert_eq!(
            admit(10, 0, 100, 0, none),
            Admission::Accept { shed: vec![] }
        );
        // Per-address share reached: one of its own idle connections
        // makes room, else it is refused.
        assert_eq!(admit(10, 5, 100, 5, none), Admission::RefusePerAddress);
        assert_eq!(
            admit(10, 5, 100, 5, |same| if same {
                vec![candidate(3, 900, false)]
            } else {
                vec![]
            }),
            Admission::Accept { shed: vec![3] }
        );
        // Near the cap: one idle connection is shed, the new one accepted.
        assert_eq!(
            admit(95, 0, 100, 0, |_| vec![candidate(7, 1_000, false)]),
            Admission::Accept { shed: vec![7] }
        );
        // Near the cap with nothing idle: still accepted.
        assert_eq!(
            admit(95, 0, 100, 0, none),
            Admission::Accept { shed: vec![] }
        );
        // At the cap: accepted only in exchange for a shed one.
        assert_eq!(admit(100, 0, 100, 0, none), Admission::RefuseFull);
        assert_eq!(
            admit(100, 0, 100, 0, |_| vec![candidate(7, 1_000, true)]),
            Admission::RefuseFull
        );
        assert_eq!(
            admit(100, 0, 100, 0, |_| vec![candidate(8, 600, false)]),
            Admission::Accept { shed: vec![8] }
        );
    }
}
