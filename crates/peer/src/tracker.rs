//! The tracker's core (BEP 3 HTTP announce with BEP 23 compact peer lists,
//! and scrape) as pure functions and a bounded table: the selector serves
//! it over HTTP; time, the announcer's address and its locality come in as
//! arguments.
//!
//! Peers are returned nearest first: those in the announcer's coverage
//! zone, then its region, then the rest, each tier in an order that
//! differs per announcer (so peers do not all crowd the same few). Every
//! table is bounded: swarms, peers per swarm and the peers returned; the
//! stalest entries go first when one is full, and peers that stopped
//! announcing expire. A peer announcing more often than the minimum
//! interval gets a failure answer (its events — started, completed,
//! stopped — are always taken).

use crate::bencode::Value;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};

/// The tracker's limits.
#[derive(Clone, Copy, Debug)]
pub struct TrackerLimits {
    pub swarms_max: usize,
    pub peers_per_swarm_max: usize,
    /// Peers returned per announce, at most (and the default).
    pub numwant_max: u32,
    /// The re-announce interval told to peers.
    pub interval_s: u64,
    /// Announces (without an event) closer together than this are refused.
    pub min_interval_s: u64,
    /// A peer not heard from for this long is forgotten.
    pub peer_ttl_s: u64,
    /// Announces one address may make per minute (many peer ids from one
    /// address would otherwise fill the tables).
    pub announces_per_ip_per_minute: u32,
    /// Addresses whose announces are counted, at most.
    pub ips_tracked_max: usize,
}

impl Default for TrackerLimits {
    fn default() -> Self {
        Self {
            swarms_max: 100_000,
            peers_per_swarm_max: 2_000,
            numwant_max: 50,
            interval_s: 60,
            // Short: a viewer that knows few peers (one behind NAT, that
            // nobody can reach, above all) asks again soon; the per-address
            // limit still bounds what one host may send.
            min_interval_s: 5,
            peer_ttl_s: 180,
            announces_per_ip_per_minute: 120,
            ips_tracked_max: 100_000,
        }
    }
}

/// An announce's event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnnounceEvent {
    Started,
    Completed,
    Stopped,
}

/// A parsed announce (`GET /announce?…`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announce {
    pub info_hash: [u8; 20],
    pub peer_id: [u8; 20],
    pub port: u16,
    pub uploaded: u64,
    pub downloaded: u64,
    /// Bytes still missing (0: a seed).
    pub left: u64,
    pub event: Option<AnnounceEvent>,
    pub numwant: Option<u32>,
    /// shoal's own fields (stock trackers ignore them): bytes this peer
    /// got from caches and from peers so far, for peer efficiency.
    pub from_caches: Option<u64>,
    pub from_peers: Option<u64>,
}

/// Why an announce or scrape is refused (the sender's fault); sent back as
/// a bencoded `failure reason`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TrackerError {
    #[error("missing `{0}`")]
    Missing(&'static str),
    #[error("bad `{0}`")]
    Bad(&'static str),
    #[error("announcing too often: wait {0} s")]
    TooSoon(u64),
    #[error("the query string is too long")]
    TooLong,
    #[error("too many announces from this address: slow down")]
    RateLimited,
}

/// Longest label a swarm keeps.
pub const LABEL_LEN_MAX_BYTES: usize = 64;

/// Longest query string accepted (an announce is ~300 bytes; a scrape of
/// many hashes more).
pub const QUERY_BYTES_MAX: usize = 8 * 1024;

/// The key/value pairs of a query string, values percent-decoded to bytes
/// (an info-hash is binary).
fn pairs(query: &str) -> Result<Vec<(&str, Vec<u8>)>, TrackerError> {
    if query.len() > QUERY_BYTES_MAX {
        return Err(TrackerError::TooLong);
    }
    Ok(query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
            (key, percent_encoding::percent_decode_str(value).collect())
        })
        .collect())
}

fn twenty(value: &[u8], name: &'static str) -> Result<[u8; 20], TrackerError> {
    value.try_into().map_err(|_| TrackerError::Bad(name))
}

fn number<T: std::str::FromStr>(value: &[u8], name: &'static str) -> Result<T, TrackerError> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or(TrackerError::Bad(name))
}

impl Announce {
    /// Parses an announce's query string.
    pub fn parse(query: &str) -> Result<Self, TrackerError> {
        let mut info_hash = None;
        let mut peer_id = None;
        let mut port = None;
        let (mut uploaded, mut downloaded, mut left) = (0, 0, None);
        let mut event = None;
        let mut numwant = None;
        let (mut from_caches, mut from_peers) = (None, None);
        for (key, value) in pairs(query)? {
            match key {
                "info_hash" => info_hash = Some(twenty(&value, "info_hash")?),
                "peer_id" => peer_id = Some(twenty(&value, "peer_id")?),
                "port" => {
                    let p: u16 = number(&value, "port")?;
                    if p == 0 {
                        return Err(TrackerError::Bad("port"));
                    }
                    port = Some(p);
                }
                "uploaded" => uploaded = number(&value, "uploaded")?,
                "downloaded" => downloaded = number(&value, "downloaded")?,
                "left" => left = Some(number(&value, "left")?),
                "numwant" => numwant = Some(number(&value, "numwant")?),
                "shoal_from_caches" => from_caches = Some(number(&value, "shoal_from_caches")?),
                "shoal_from_peers" => from_peers = Some(number(&value, "shoal_from_peers")?),
                "event" => {
                    event = match &value[..] {
                        b"started" => Some(AnnounceEvent::Started),
                        b"completed" => Some(AnnounceEvent::Completed),
                        b"stopped" => Some(AnnounceEvent::Stopped),
                        b"" | b"empty" => None,
                        _ => return Err(TrackerError::Bad("event")),
                    }
                }
                // compact, key, supportcrypto, …: compact is all we answer.
                _ => {}
            }
        }
        Ok(Announce {
            info_hash: info_hash.ok_or(TrackerError::Missing("info_hash"))?,
            peer_id: peer_id.ok_or(TrackerError::Missing("peer_id"))?,
            port: port.ok_or(TrackerError::Missing("port"))?,
            uploaded,
            downloaded,
            left: left.ok_or(TrackerError::Missing("left"))?,
            event,
            numwant,
            from_caches,
            from_peers,
        })
    }

    /// The query string a peer sends (binary values percent-encoded).
    pub fn to_query(&self) -> String {
        let enc = |bytes: &[u8]| {
            percent_encoding::percent_encode(bytes, percent_encoding::NON_ALPHANUMERIC).to_string()
        };
        let mut query = format!(
            "info_hash={}&peer_id={}&port={}&uploaded={}&downloaded={}&left={}&compact=1",
            enc(&self.info_hash),
            enc(&self.peer_id),
            self.port,
            self.uploaded,
            self.downloaded,
            self.left
        );
        let event = match self.event {
            Some(AnnounceEvent::Started) => "&event=started",
            Some(AnnounceEvent::Completed) => "&event=completed",
            Some(AnnounceEvent::Stopped) => "&event=stopped",
            None => "",
        };
        query.push_str(event);
        if let Some(n) = self.numwant {
            query.push_str(&format!("&numwant={n}"));
        }
        if let Some(n) = self.from_caches {
            query.push_str(&format!("&shoal_from_caches={n}"));
        }
        if let Some(n) = self.from_peers {
            query.push_str(&format!("&shoal_from_peers={n}"));
        }
        query
    }
}

/// Why a tracker's answer was not understood (the tracker's fault).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    #[error("the tracker's answer is not bencode: {0}")]
    Bencode(String),
    #[error("the tracker refused: {0}")]
    Failure(String),
    #[error("the tracker's answer lacks `{0}` or has it malformed")]
    Malformed(&'static str),
}

/// Largest tracker answer read (200 peers of either kind fit many times).
pub const ANSWER_BYTES_MAX: usize = 64 << 10;
/// Most peers taken from one answer.
pub const ANSWER_PEERS_MAX: usize = 200;

/// The info-hashes of a scrape's query string (at most `max`).
pub fn parse_scrape(query: &str, max: usize) -> Result<Vec<[u8; 20]>, TrackerError> {
    let mut hashes = Vec::new();
    for (key, value) in pairs(query)? {
        if key == "info_hash" {
            if hashes.len() >= max {
                return Err(TrackerError::Bad("info_hash (too many)"));
            }
            hashes.push(twenty(&value, "info_hash")?);
        }
    }
    Ok(hashes)
}

/// Where a peer is, as the selector's coverage zones place its address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Locality {
    pub zone: Option<String>,
    pub region: Option<String>,
}

#[derive(Clone, Debug)]
struct Entry {
    addr: SocketAddr,
    locality: Locality,
    seed: bool,
    last_seen_s: u64,
    /// The byte counts it reported last (shoal's announce fields).
    from_caches: u64,
    from_peers: u64,
}

#[derive(Debug, Default)]
struct SwarmPeers {
    peers: HashMap<[u8; 20], Entry>,
    /// Peers that announced `completed`.
    downloaded: u64,
    last_seen_s: u64,
    /// Bytes its peers reported getting from caches and from each other
    /// (summed over what each reported since it joined).
    bytes_from_caches: u64,
    bytes_from_peers: u64,
    /// What the swarm belongs to (a delivery service), as first named.
    label: Option<String>,
}

/// One swarm's figures for reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SwarmReport {
    pub label: Option<String>,
    pub counts: SwarmCounts,
    pub bytes_from_caches: u64,
    pub bytes_from_peers: u64,
}

/// What an announce gets back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnounceAnswer {
    pub interval_s: u64,
    pub min_interval_s: u64,
    pub complete: u64,
    pub incomplete: u64,
    /// Nearest first.
    pub peers: Vec<SocketAddr>,
}

impl AnnounceAnswer {
    /// The bencoded answer with compact peer lists (`peers`: 6 bytes per
    /// IPv4 peer, `peers6`: 18 bytes per IPv6 peer; BEP 23, BEP 7).
    pub fn encode(&self) -> Vec<u8> {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for peer in &self.peers {
            match peer {
                SocketAddr::V4(a) => {
                    v4.extend_from_slice(&a.ip().octets());
                    v4.extend_from_slice(&a.port().to_be_bytes());
                }
                SocketAddr::V6(a) => {
                    v6.extend_from_slice(&a.ip().octets());
                    v6.extend_from_slice(&a.port().to_be_bytes());
                }
            }
        }
        let mut dict = BTreeMap::new();
        let int = |n: u64| Value::Int(i64::try_from(n).unwrap_or(i64::MAX));
        dict.insert(b"complete".to_vec(), int(self.complete));
        dict.insert(b"incomplete".to_vec(), int(self.incomplete));
        dict.insert(b"interval".to_vec(), int(self.interval_s));
        dict.insert(b"min interval".to_vec(), int(self.min_interval_s));
        dict.insert(b"peers".to_vec(), Value::Bytes(v4));
        if !v6.is_empty() {
            dict.insert(b"peers6".to_vec(), Value::Bytes(v6));
        }
        Value::Dict(dict).encode()
    }
}

impl AnnounceAnswer {
    /// Parses a tracker's bencoded answer: compact peer lists (`peers`,
    /// `peers6`; the dictionary form is not accepted), at most
    /// [`ANSWER_PEERS_MAX`] peers, and a `failure reason` as an error.
    pub fn decode(bytes: &[u8]) -> Result<Self, AnswerError> {
        if bytes.len() > ANSWER_BYTES_MAX {
            return Err(AnswerError::Malformed("size"));
        }
        let value = Value::decode(bytes).map_err(|e| AnswerError::Bencode(e.to_string()))?;
        if let Some(reason) = value.get("failure reason").and_then(Value::as_bytes) {
            let reason: String = String::from_utf8_lossy(reason).chars().take(200).collect();
            return Err(AnswerError::Failure(reason));
        }
        let count = |key: &'static str| -> Result<u64, AnswerError> {
            match value.get(key) {
                None => Ok(0),
                Some(v) => v
                    .as_int()
                    .and_then(|n| u64::try_from(n).ok())
                    .ok_or(AnswerError::Malformed(key)),
            }
        };
        let interval_s = count("interval")?.clamp(1, 24 * 3600);
        let min_interval_s = count("min interval")?.min(interval_s);
        let mut peers = Vec::new();
        if let Some(v4) = value.get("peers") {
            let bytes = v4.as_bytes().ok_or(AnswerError::Malformed("peers"))?;
            if bytes.len() % 6 != 0 {
                return Err(AnswerError::Malformed("peers"));
            }
            for chunk in bytes.chunks_exact(6).take(ANSWER_PEERS_MAX) {
                let ip = std::net::Ipv4Addr::new(chunk[0], chunk[1], chunk[2], chunk[3]);
                let port = u16::from_be_bytes([chunk[4], chunk[5]]);
                peers.push(SocketAddr::new(IpAddr::V4(ip), port));
            }
        }
        if let Some(v6) = value.get("peers6") {
            let bytes = v6.as_bytes().ok_or(AnswerError::Malformed("peers6"))?;
            if bytes.len() % 18 != 0 {
                return Err(AnswerError::Malformed("peers6"));
            }
            for chunk in bytes.chunks_exact(18) {
                if peers.len() >= ANSWER_PEERS_MAX {
                    break;
                }
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&chunk[..16]);
                let port = u16::from_be_bytes([chunk[16], chunk[17]]);
                peers.push(SocketAddr::new(IpAddr::V6(octets.into()), port));
            }
        }
        // Port 0 cannot be dialled.
        peers.retain(|p| p.port() != 0);
        Ok(AnnounceAnswer {
            interval_s,
            min_interval_s,
            complete: count("complete")?,
            incomplete: count("incomplete")?,
            peers,
        })
    }
}

/// A refusal as a tracker sends it.
pub fn failure(error: &TrackerError) -> Vec<u8> {
    let mut dict = BTreeMap::new();
    dict.insert(
        b"failure reason".to_vec(),
        Value::Bytes(error.to_string().into_bytes()),
    );
    Value::Dict(dict).encode()
}

/// A swarm's counts, for scrape and the selector's statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SwarmCounts {
    pub complete: u64,
    pub incomplete: u64,
    pub downloaded: u64,
}

/// Every swarm's peers.
#[derive(Debug, Default)]
pub struct Tracker {
    limits: TrackerLimits,
    swarms: HashMap<[u8; 20], SwarmPeers>,
    /// Per address: the minute counted and announces in it.
    by_ip: HashMap<IpAddr, (u64, u32)>,
}

impl Tracker {
    pub fn new(limits: TrackerLimits) -> Self {
        Self {
            limits,
            swarms: HashMap::new(),
            by_ip: HashMap::new(),
        }
    }

    /// Counts an announce from `ip`; `Err` past the per-minute limit.
    fn count_announce(&mut self, ip: IpAddr, now_s: u64) -> Result<(), TrackerError> {
        let minute = now_s / 60;
        if !self.by_ip.contains_key(&ip) && self.by_ip.len() >= self.limits.ips_tracked_max {
            self.by_ip.retain(|_, (at, _)| *at == minute);
            if self.by_ip.len() >= self.limits.ips_tracked_max {
                // Every slot busy this very minute: start counting afresh
                // rather than refuse everyone new.
                self.by_ip.clear();
            }
        }
        let (at, count) = self.by_ip.entry(ip).or_insert((minute, 0));
        if *at != minute {
            *at = minute;
            *count = 0;
        }
        if *count >= self.limits.announces_per_ip_per_minute {
            return Err(TrackerError::RateLimited);
        }
        *count += 1;
        Ok(())
    }

    /// Records an announce from `ip` (the connection's address, not what
    /// the peer claims) placed at `locality`, and picks peers for it.
    pub fn announce(
        &mut self,
        announce: &Announce,
        ip: IpAddr,
        locality: Locality,
        now_s: u64,
    ) -> Result<AnnounceAnswer, TrackerError> {
        let limits = self.limits;
        self.count_announce(ip, now_s)?;
        if !self.swarms.contains_key(&announce.info_hash) && self.swarms.len() >= limits.swarms_max
        {
            self.forget_stalest_swarm(now_s);
        }
        let swarm = self.swarms.entry(announce.info_hash).or_default();
        swarm
            .peers
            .retain(|_, e| now_s.saturating_sub(e.last_seen_s) < limits.peer_ttl_s);
        swarm.last_seen_s = now_s;
        let was_seed = swarm.peers.get(&announce.peer_id).is_some_and(|e| e.seed);
        let (reported_caches, reported_peers) = swarm
            .peers
            .get(&announce.peer_id)
            .map_or((0, 0), |e| (e.from_caches, e.from_peers));
        if let Some(known) = swarm.peers.get(&announce.peer_id) {
            // A peer id is its announcer's: another address may not move
            // it or stop it (peer ids are no secret between peers).
            if known.addr.ip() != ip {
                return Err(TrackerError::Bad("peer_id (in use from another address)"));
            }
            let since = now_s.saturating_sub(known.last_seen_s);
            if announce.event.is_none() && since < limits.min_interval_s {
                return Err(TrackerError::TooSoon(limits.min_interval_s - since));
            }
        }
        // What it got since it last reported (counts only grow; a peer
        // that restarts from zero starts a new tally).
        let from_caches = announce.from_caches.unwrap_or(reported_caches);
        let from_peers = announce.from_peers.unwrap_or(reported_peers);
        swarm.bytes_from_caches = swarm
            .bytes_from_caches
            .saturating_add(from_caches.saturating_sub(reported_caches));
        swarm.bytes_from_peers = swarm
            .bytes_from_peers
            .saturating_add(from_peers.saturating_sub(reported_peers));
        match announce.event {
            Some(AnnounceEvent::Stopped) => {
                swarm.peers.remove(&announce.peer_id);
            }
            event => {
                // Counted once per peer that finished, not per announce.
                if event == Some(AnnounceEvent::Completed) && !was_seed {
                    swarm.downloaded += 1;
                }
                if !swarm.peers.contains_key(&announce.peer_id)
                    && swarm.peers.len() >= limits.peers_per_swarm_max
                {
                    // Full: the peer heard from longest ago makes room.
                    if let Some(stalest) = swarm
                        .peers
                        .iter()
                        .min_by_key(|(id, e)| (e.last_seen_s, **id))
                        .map(|(id, _)| *id)
                    {
                        swarm.peers.remove(&stalest);
                    }
                }
                swarm.peers.insert(
                    announce.peer_id,
                    Entry {
                        addr: SocketAddr::new(ip, announce.port),
                        locality: locality.clone(),
                        seed: announce.left == 0,
                        last_seen_s: now_s,
                        from_caches,
                        from_peers,
                    },
                );
            }
        }
        let wanted = announce
            .numwant
            .unwrap_or(limits.numwant_max)
            .min(limits.numwant_max) as usize;
        let mut others: Vec<(&[u8; 20], &Entry)> = swarm
            .peers
            .iter()
            .filter(|(id, _)| **id != announce.peer_id)
            // A seed gains nothing from other seeds.
            .filter(|(_, e)| !(announce.left == 0 && e.seed))
            .collect();
        others.sort_by_cached_key(|(id, e)| {
            let tier = if locality.zone.is_some() && e.locality.zone == locality.zone {
                0
            } else if locality.region.is_some() && e.locality.region == locality.region {
                1
            } else {
                2
            };
            let mut mixed = [0u8; 20];
            for (k, byte) in mixed.iter_mut().enumerate() {
                *byte = id[k] ^ announce.peer_id[k];
            }
            (tier, blake3::hash(&mixed).as_bytes()[..8].to_vec())
        });
        let counts = counts(swarm);
        Ok(AnnounceAnswer {
            interval_s: limits.interval_s,
            min_interval_s: limits.min_interval_s,
            complete: counts.complete,
            incomplete: counts.incomplete,
            peers: others
                .into_iter()
                .take(wanted)
                .map(|(_, e)| e.addr)
                .collect(),
        })
    }

    /// A swarm's counts (zeros for an unknown one).
    pub fn counts(&self, info_hash: &[u8; 20]) -> SwarmCounts {
        self.swarms.get(info_hash).map(counts).unwrap_or_default()
    }

    /// The bencoded scrape answer for `hashes`.
    pub fn scrape(&self, hashes: &[[u8; 20]]) -> Vec<u8> {
        let files = hashes
            .iter()
            .map(|hash| {
                let c = self.counts(hash);
                let int = |n: u64| Value::Int(i64::try_from(n).unwrap_or(i64::MAX));
                let entry: BTreeMap<Vec<u8>, Value> = [
                    (b"complete".to_vec(), int(c.complete)),
                    (b"downloaded".to_vec(), int(c.downloaded)),
                    (b"incomplete".to_vec(), int(c.incomplete)),
                ]
                .into();
                (hash.to_vec(), Value::Dict(entry))
            })
            .collect();
        Value::Dict([(b"files".to_vec(), Value::Dict(files))].into()).encode()
    }

    pub fn swarm_count(&self) -> usize {
        self.swarms.len()
    }

    /// Names what a swarm belongs to (the first name sticks; at most
    /// [`LABEL_LEN_MAX_BYTES`]). Unknown swarms are not created.
    pub fn label(&mut self, info_hash: &[u8; 20], label: &str) {
        if label.len() > LABEL_LEN_MAX_BYTES {
            return;
        }
        if let Some(swarm) = self.swarms.get_mut(info_hash) {
            swarm.label.get_or_insert_with(|| label.to_string());
        }
    }

    /// Every swarm's figures.
    pub fn reports(&self) -> impl Iterator<Item = SwarmReport> + '_ {
        self.swarms.values().map(|swarm| SwarmReport {
            label: swarm.label.clone(),
            counts: counts(swarm),
            bytes_from_caches: swarm.bytes_from_caches,
            bytes_from_peers: swarm.bytes_from_peers,
        })
    }

    fn forget_stalest_swarm(&mut self, _now_s: u64) {
        if let Some(stalest) = self
            .swarms
            .iter()
            .min_by_key(|(hash, s)| (s.last_seen_s, **hash))
            .map(|(hash, _)| *hash)
        {
            self.swarms.remove(&stalest);
        }
    }
}

fn counts(swarm: &SwarmPeers) -> SwarmCounts {
    let complete = swarm.peers.values().filter(|e| e.seed).count() as u64;
    SwarmCounts {
        complete,
        incomplete: swarm.peers.len() as u64 - complete,
        downloaded: swarm.downloaded,
    }
}

#[cfg(test)]
mod tests;
