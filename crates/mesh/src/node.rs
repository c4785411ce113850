//! A running mesh member: chitchat with the MAC transport, a task that
//! publishes this cache's state, and a task that turns gossip into a
//! [`MeshView`] snapshot readers can take at any time without locks held
//! across awaits.

use crate::summary::{ObjectSummary, SUMMARY_OBJECTS_MAX};
use crate::transport::{gossip_key, MacTransport};
use crate::view::{
    keys, Health, Member, MeshView, Traffic, ROLE_CACHE, ROLE_SELECTOR, SCHEMA_VERSION,
};
use chitchat::{
    spawn_chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig,
    ProtocolVersion,
};
use shoal_core::ObjectId;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Cluster id sent in clear in every SYN (not a secret: the MAC is).
const CLUSTER_ID: &str = "shoal";
/// How often the object summary is recomputed.
const SUMMARY_INTERVAL_MS: u64 = 2_000;
/// How often the traffic totals are published (dashboards sample them).
const TRAFFIC_INTERVAL_MS: u64 = 1_000;
/// How often load and health are published.
const STATE_INTERVAL_MS: u64 = 1_000;

/// What a node is in the mesh.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MeshRole {
    /// A cache: serves, holds objects, may be chosen.
    Cache,
    /// A control-plane observer (`shoal selector`): listens to the gossip
    /// and publishes only who it is; never a shield, holder or source.
    Selector,
}

#[derive(Clone, Debug)]
pub struct MeshConfig {
    pub role: MeshRole,
    /// Unique, stable name of this cache (A-Z a-z 0-9 - _, ≤ 64).
    pub node_id: String,
    /// UDP address gossip binds.
    pub gossip_listen: SocketAddr,
    /// UDP address peers reach us at (default: the bound address; required
    /// when listening on an unspecified address).
    pub gossip_advertise: Option<SocketAddr>,
    /// `host:port` of members to contact first.
    pub seeds: Vec<String>,
    pub cluster_secret: String,
    pub region: String,
    /// Where peers reach our HTTP service.
    pub http_advertise: SocketAddr,
    /// Where clients reach our HTTPS service, if we have one (selectors
    /// send HTTPS clients there).
    pub https_advertise: Option<String>,
    /// 0 means uncapped.
    pub egress_cap_bps: u64,
    pub cost_per_gb_microusd: u64,
    pub gossip_interval_ms: u64,
    /// Failure detector threshold (chitchat's phi: dead after about
    /// threshold × the mean heartbeat interval).
    pub phi_threshold: f64,
}

impl MeshConfig {
    /// Checks what the types cannot; messages name the setting.
    pub fn validate(&self) -> Result<(), MeshError> {
        let bad = |what: String| Err(MeshError::Config(what));
        if !shoal_core::auth::valid_node_name(&self.node_id) {
            return bad(format!(
                "node id `{}` must be 1-64 characters of A-Z a-z 0-9 - _",
                self.node_id
            ));
        }
        if self.cluster_secret.len() < shoal_core::auth::CLUSTER_SECRET_LEN_MIN_BYTES {
            return bad(format!(
                "the cluster secret must be at least {} bytes",
                shoal_core::auth::CLUSTER_SECRET_LEN_MIN_BYTES
            ));
        }
        if self.role == MeshRole::Cache
            && (self.region.is_empty() || self.region.len() > crate::view::REGION_LEN_MAX_BYTES)
        {
            return bad("region must be 1-64 characters".into());
        }
        if let Some(https) = &self.https_advertise {
            if !crate::view::valid_authority(https) {
                return bad(format!(
                    "https_advertise `{https}` must be host:port (a DNS name or an address, and a port)"
                ));
            }
        }
        if self.gossip_listen.ip().is_unspecified() && self.gossip_advertise.is_none() {
            return bad(format!(
                "gossip listens on {}: set gossip_advertise to the address peers should use",
                self.gossip_listen
            ));
        }
        if self.http_advertise.ip().is_unspecified() || self.http_advertise.port() == 0 {
            return bad(format!(
                "the advertised HTTP address {} is not reachable by peers",
                self.http_advertise
            ));
        }
        if !(50..=60_000).contains(&self.gossip_interval_ms) {
            return bad("gossip_interval_ms must be within 50..=60000".into());
        }
        if !(self.phi_threshold >= 2.0 && self.phi_threshold <= 50.0) {
            return bad("phi_threshold must be within 2..=50".into());
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("invalid mesh configuration: {0}")]
    Config(String),
    #[error("cannot bind gossip to {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("gossip failed to start: {0}")]
    Start(String),
}

/// What the cache tells the mesh about itself, read periodically.
pub trait LocalState: Send + Sync + 'static {
    /// Recent egress, bits per second.
    fn egress_bps(&self) -> u64;
    /// Ids of objects held, most bytes first, at most `max`.
    fn held_objects(&self, max: usize) -> Vec<ObjectId>;
    fn health(&self) -> Health;
    /// Totals since start, for dashboards (`None`: not gossiped).
    fn traffic(&self) -> Option<Traffic> {
        None
    }
}

/// The [`LocalState`] of an observer: it holds nothing and sends nothing.
pub struct ObserverState;

impl LocalState for ObserverState {
    fn egress_bps(&self) -> u64 {
        0
    }
    fn held_objects(&self, _max: usize) -> Vec<ObjectId> {
        Vec::new()
    }
    fn health(&self) -> Health {
        Health::Ok
    }
}

pub struct MeshNode {
    handle: tokio::sync::Mutex<Option<ChitchatHandle>>,
    view: watch::Receiver<Arc<MeshView>>,
    gossip_addr: SocketAddr,
    dropped_datagrams: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    gossip_interval: Duration,
    draining: Arc<std::sync::atomic::AtomicBool>,
    egress_cap_bps: Arc<AtomicU64>,
    /// The newest purge applied here (0: none), gossiped.
    purge_head: Arc<AtomicU64>,
}

impl MeshNode {
    pub async fn start(
        config: MeshConfig,
        local: Arc<dyn LocalState>,
    ) -> Result<Arc<Self>, MeshError> {
        config.validate()?;
        let (socket, bound) = bind_gossip(config.gossip_listen).await?;
        let advertise = config.gossip_advertise.unwrap_or(bound);
        let interval = Duration::from_millis(config.gossip_interval_ms);
        let chitchat_config = chitchat_config(&config, bound, advertise, interval);
        let observer = config.role == MeshRole::Selector;
        let initial = initial_state(&config, observer);
        let transport = MacTransport::new(gossip_key(&config.cluster_secret), Some(socket));
        let dropped_datagrams = transport.dropped_counter();
        let handle = spawn_chitchat(chitchat_config, initial, &transport)
            .await
            .map_err(|e| MeshError::Start(format!("{e:#}")))?;

        let own_members = if observer {
            vec![]
        } else {
            vec![self_member(&config)]
        };
        let (view_sender, view) = watch::channel(Arc::new(MeshView::new(
            config.node_id.clone(),
            own_members,
            0,
        )));
        let chitchat = handle.chitchat();
        let draining = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let egress_cap_bps = Arc::new(AtomicU64::new(config.egress_cap_bps));
        let purge_head = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        if !observer {
            tasks.push(tokio::spawn(publish_state(
                chitchat.clone(),
                local,
                egress_cap_bps.clone(),
                draining.clone(),
                purge_head.clone(),
            )));
        }
        let watcher = spawn_view_builder(&chitchat, config.node_id.clone(), view_sender).await;
        Ok(Arc::new(Self {
            handle: tokio::sync::Mutex::new(Some(handle)),
            view,
            gossip_addr: advertise,
            dropped_datagrams,
            tasks: {
                tasks.push(watcher);
                tasks
            },
            gossip_interval: interval,
            draining,
            egress_cap_bps,
            purge_head,
        }))
    }

    /// The latest snapshot of the mesh.
    pub fn view(&self) -> Arc<MeshView> {
        self.view.borrow().clone()
    }

    /// A receiver that sees every new snapshot.
    pub fn watch(&self) -> watch::Receiver<Arc<MeshView>> {
        self.view.clone()
    }

    pub fn gossip_addr(&self) -> SocketAddr {
        self.gossip_addr
    }

    /// Announces a new egress capacity (0: uncapped), published with the
    /// next state update (within a second).
    pub fn set_egress_cap_bps(&self, bps: u64) {
        self.egress_cap_bps.store(bps, Ordering::Relaxed);
    }

    /// Announces the newest purge applied here (published within a
    /// second).
    pub fn set_purge_head(&self, id: u64) {
        self.purge_head.store(id, Ordering::Relaxed);
    }

    /// Gossip datagrams dropped as unauthentic or malformed.
    pub fn dropped_datagrams(&self) -> u64 {
        self.dropped_datagrams.load(Ordering::Relaxed)
    }

    /// Says we are draining and gives peers two gossip rounds to stop
    /// choosing us. Call while still serving.
    pub async fn drain(&self) {
        if self.draining.swap(true, Ordering::Relaxed) {
            return;
        }
        let handle = self.handle.lock().await;
        if let Some(handle) = handle.as_ref() {
            handle
                .with_chitchat(|c| {
                    c.self_node_state()
                        .set(keys::HEALTH, Health::Draining.as_str())
                })
                .await;
        }
        drop(handle);
        tokio::time::sleep(self.gossip_interval * 2).await;
    }

    /// Drains (if not done yet), then leaves: chitchat has no leave
    /// message, peers' failure detectors notice.
    pub async fn leave(&self) {
        self.drain().await;
        let handle = self.handle.lock().await.take();
        if let Some(handle) = handle {
            if let Err(error) = handle.shutdown().await {
                tracing::warn!(%error, "gossip shutdown");
            }
        }
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Drop for MeshNode {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Binds the gossip socket; returns it with the address it is bound to.
async fn bind_gossip(listen: SocketAddr) -> Result<(tokio::net::UdpSocket, SocketAddr), MeshError> {
    let socket = tokio::net::UdpSocket::bind(listen)
        .await
        .map_err(|source| MeshError::Bind {
            addr: listen,
            source,
        })?;
    let bound = socket.local_addr().map_err(|source| MeshError::Bind {
        addr: listen,
        source,
    })?;
    Ok((socket, bound))
}

/// Chitchat's settings: this node as a new generation at `advertise`,
/// gossiping every `interval`, and alive only while on our schema version.
fn chitchat_config(
    config: &MeshConfig,
    bound: SocketAddr,
    advertise: SocketAddr,
    interval: Duration,
) -> ChitchatConfig {
    // A restart is a new generation: peers replace our old state.
    let generation = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    ChitchatConfig {
        chitchat_id: ChitchatId::new(config.node_id.clone(), generation, advertise),
        cluster_id: CLUSTER_ID.to_string(),
        gossip_interval: interval,
        listen_addr: bound,
        seed_nodes: config.seeds.clone(),
        failure_detector_config: FailureDetectorConfig {
            phi_threshold: config.phi_threshold,
            // Must match the gossip interval: the default (5 s) prior
            // makes detection take ~10 s instead of ~2.5 s.
            initial_interval: interval,
            dead_node_grace_period: Duration::from_secs(600),
            ..Default::default()
        },
        marked_for_deletion_grace_period: Duration::from_secs(600),
        catchup_callback: None,
        extra_liveness_predicate: Some(Box::new(|state| {
            state.get(keys::VERSION) == Some(SCHEMA_VERSION)
        })),
        protocol_version: ProtocolVersion::V0,
    }
}

/// The keys this node gossips from the start: version, role and HTTP
/// address; a cache adds its region, capacity, cost, load and health.
fn initial_state(config: &MeshConfig, observer: bool) -> Vec<(String, String)> {
    let mut initial = vec![
        (keys::VERSION.to_string(), SCHEMA_VERSION.to_string()),
        (
            keys::ROLE.to_string(),
            if observer { ROLE_SELECTOR } else { ROLE_CACHE }.to_string(),
        ),
        (
            keys::HTTP.to_string(),
            format!("http://{}", config.http_advertise),
        ),
    ];
    let cache_keys = [
        (keys::REGION.to_string(), config.region.clone()),
        (
            keys::EGRESS_CAP_BPS.to_string(),
            config.egress_cap_bps.to_string(),
        ),
        (keys::EGRESS_BPS.to_string(), "0".to_string()),
        (
            keys::COST_PER_GB_MICROUSD.to_string(),
            config.cost_per_gb_microusd.to_string(),
        ),
        (keys::HEALTH.to_string(), Health::Ok.as_str().to_string()),
    ];
    if !observer {
        initial.extend(cache_keys);
        if let Some(https) = &config.https_advertise {
            initial.push((keys::HTTPS.to_string(), format!("https://{https}")));
        }
    }
    initial
}

/// This cache as a member of its own first view, before any gossip.
fn self_member(config: &MeshConfig) -> Member {
    Member {
        node_id: config.node_id.clone(),
        http_addr: config.http_advertise,
        https_authority: config.https_advertise.clone(),
        region: config.region.clone(),
        egress_cap_bps: config.egress_cap_bps,
        egress_bps: 0,
        cost_per_gb_microusd: config.cost_per_gb_microusd,
        health: Health::Ok,
        summary: None,
        purge_head: None,
        generation: 0,
        traffic: None,
    }
}

/// Starts the task that turns every change of the live nodes into a new
/// [`MeshView`] on `view_sender`; it ends when no one watches the view or
/// chitchat stops.
async fn spawn_view_builder(
    chitchat: &Arc<tokio::sync::Mutex<chitchat::Chitchat>>,
    self_id: String,
    view_sender: watch::Sender<Arc<MeshView>>,
) -> tokio::task::JoinHandle<()> {
    let mut watcher = chitchat.lock().await.live_nodes_watcher();
    tokio::spawn(async move {
        let mut summaries: HashMap<String, (u64, Option<Arc<ObjectSummary>>)> = HashMap::new();
        let mut before = Arc::new(MeshView::default());
        loop {
            let next = {
                let live = watcher.borrow_and_update();
                Arc::new(build_view(&self_id, &live, &mut summaries))
            };
            for change in next.changes_since(&before) {
                // (This node "joining" its own view is not news.)
                if !matches!(&change, crate::view::MemberChange::Joined { node_id, .. } if *node_id == self_id)
                {
                    change.log(&self_id);
                }
            }
            before = next.clone();
            if view_sender.send(next).is_err() {
                return;
            }
            if watcher.changed().await.is_err() {
                return;
            }
        }
    })
}

fn build_view(
    self_id: &str,
    live: &std::collections::BTreeMap<ChitchatId, chitchat::NodeState>,
    summaries: &mut HashMap<String, (u64, Option<Arc<ObjectSummary>>)>,
) -> MeshView {
    // A restarted node may briefly appear under two generations: keep the
    // newest.
    let mut newest: HashMap<&str, (&ChitchatId, &chitchat::NodeState)> = HashMap::new();
    for (id, state) in live {
        let entry = newest.entry(&*id.node_id).or_insert((id, state));
        if id.generation_id > entry.0.generation_id {
            *entry = (id, state);
        }
    }
    let mut members = Vec::with_capacity(newest.len());
    let mut malformed = 0;
    let mut observers = 0;
    let mut selectors = Vec::new();
    for (node_id, (id, state)) in &newest {
        if state.get(keys::ROLE) == Some(ROLE_SELECTOR) {
            observers += 1;
            let http = state
                .get(keys::HTTP)
                .and_then(|v| v.strip_prefix("http://"))
                .and_then(|v| v.parse().ok());
            if let (Some(http_addr), true) = (http, shoal_core::auth::valid_node_name(node_id)) {
                selectors.push(crate::view::SelectorNode {
                    node_id: node_id.to_string(),
                    http_addr,
                });
            }
            continue;
        }
        let summary = match state.get_versioned(keys::OBJECTS) {
            Some(value) if !value.is_deleted() => {
                let cached = summaries.get(*node_id).filter(|(v, _)| *v == value.version);
                match cached {
                    Some((_, summary)) => summary.clone(),
                    None => {
                        let decoded = ObjectSummary::decode(&value.value).ok().map(Arc::new);
                        summaries.insert(node_id.to_string(), (value.version, decoded.clone()));
                        decoded
                    }
                }
            }
            _ => None,
        };
        match Member::from_key_values(node_id, |k| state.get(k), summary) {
            Some(member) => members.push(Member {
                generation: id.generation_id,
                ..member
            }),
            None => malformed += 1,
        }
    }
    summaries.retain(|id, _| newest.contains_key(id.as_str()));
    let mut view = MeshView::new(self_id.to_string(), members, malformed);
    view.observers = observers;
    selectors.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    view.selectors = selectors;
    view
}

/// Publishes load and health every second and the object summary every
/// few seconds (chitchat ignores a `set` that does not change the value,
/// so an idle cache sends nothing new).
async fn publish_state(
    chitchat: Arc<tokio::sync::Mutex<chitchat::Chitchat>>,
    local: Arc<dyn LocalState>,
    egress_cap_bps: Arc<AtomicU64>,
    draining: Arc<std::sync::atomic::AtomicBool>,
    purge_head: Arc<AtomicU64>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(STATE_INTERVAL_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let summary_every = (SUMMARY_INTERVAL_MS / STATE_INTERVAL_MS).max(1);
    let traffic_every = (TRAFFIC_INTERVAL_MS / STATE_INTERVAL_MS).max(1);
    let mut round: u64 = 0;
    loop {
        tick.tick().await;
        // Round to 1 % of capacity (or 1 Mbit/s uncapped) so small
        // wobbles do not bump our version every second.
        let cap = egress_cap_bps.load(Ordering::Relaxed);
        let quantum = (cap / 100).max(1_000_000);
        let egress = local.egress_bps() / quantum * quantum;
        let health = if draining.load(Ordering::Relaxed) {
            Health::Draining
        } else {
            local.health()
        };
        let traffic = round
            .is_multiple_of(traffic_every)
            .then(|| local.traffic())
            .flatten();
        let summary = if round.is_multiple_of(summary_every) {
            let local = local.clone();
            tokio::task::spawn_blocking(move || {
                let ids = local.held_objects(SUMMARY_OBJECTS_MAX);
                (!ids.is_empty()).then(|| ObjectSummary::build(&ids).encode())
            })
            .await
            .ok()
        } else {
            None
        };
        round += 1;
        let mut chitchat = chitchat.lock().await;
        let me = chitchat.self_node_state();
        me.set(keys::EGRESS_BPS, egress);
        me.set(keys::EGRESS_CAP_BPS, cap);
        me.set(keys::HEALTH, health.as_str());
        if let Some(traffic) = traffic {
            me.set(keys::TRAFFIC, traffic.encode());
        }
        let purge = purge_head.load(Ordering::Relaxed);
        if purge != 0 {
            me.set(keys::PURGE_HEAD, format!("{purge:016x}"));
        }
        match summary {
            Some(Some(text)) => me.set(keys::OBJECTS, text),
            Some(None) if me.get(keys::OBJECTS).is_some() => me.delete(keys::OBJECTS),
            _ => {}
        }
    }
}
