//! Real gossip between nodes on 127.0.0.1: membership, state, failure
//! detection, and intruders without the secret.

use shoal_core::ObjectId;
use shoal_mesh::{Health, LocalState, MeshConfig, MeshNode, MeshRole, ObserverState};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Fixed(Vec<ObjectId>);

impl LocalState for Fixed {
    fn egress_bps(&self) -> u64 {
        42_000_000
    }
    fn held_objects(&self, max: usize) -> Vec<ObjectId> {
        self.0.iter().take(max).copied().collect()
    }
    fn health(&self) -> Health {
        Health::Ok
    }
}

fn config(name: &str, secret: &str, seeds: Vec<String>) -> MeshConfig {
    MeshConfig {
        role: shoal_mesh::MeshRole::Cache,
        node_id: name.into(),
        gossip_listen: "127.0.0.1:0".parse().unwrap(),
        gossip_advertise: None,
        seeds,
        cluster_secret: secret.into(),
        region: if name.ends_with('0') { "eu" } else { "us" }.into(),
        http_advertise: "127.0.0.1:9".parse().unwrap(),
        https_advertise: None,
        egress_cap_bps: 1_000_000_000,
        cost_per_gb_microusd: 5_000,
        gossip_interval_ms: 200,
        phi_threshold: 8.0,
    }
}

async fn wait_until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    start.elapsed()
}

const SECRET: &str = "a test secret of enough length";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_see_each_other_and_notice_a_dead_one() {
    let object = ObjectId([3; 32]);
    let first = MeshNode::start(config("n0", SECRET, vec![]), Arc::new(Fixed(vec![object])))
        .await
        .unwrap();
    let seed = first.gossip_addr().to_string();
    let mut nodes = vec![first];
    for i in 1..4 {
        let node = MeshNode::start(
            config(&format!("n{i}"), SECRET, vec![seed.clone()]),
            Arc::new(Fixed(vec![])),
        )
        .await
        .unwrap();
        nodes.push(node);
    }
    // An intruder with the right cluster id but the wrong secret.
    let intruder = MeshNode::start(
        config("evil", "some other secret entirely", vec![seed.clone()]),
        Arc::new(Fixed(vec![])),
    )
    .await
    .unwrap();

    // A selector: it listens and is seen as an observer, never a member.
    let mut observer_config = config("sel", SECRET, vec![seed.clone()]);
    observer_config.role = MeshRole::Selector;
    observer_config.region = String::new();
    let observer = MeshNode::start(observer_config, Arc::new(ObserverState))
        .await
        .unwrap();

    wait_until("full membership", Duration::from_secs(10), || {
        nodes
            .iter()
            .all(|n| n.view().members.len() == 4 && n.view().observers == 1)
            && observer.view().members.len() == 4
    })
    .await;
    assert!(observer.view().member("sel").is_none());
    for node in &nodes {
        let view = node.view();
        assert!(
            view.member("sel").is_none(),
            "an observer is never a member"
        );
        assert_eq!(view.malformed_members, 0);
    }
    wait_until("state and summaries", Duration::from_secs(10), || {
        nodes.iter().all(|n| {
            let view = n.view();
            let n0 = view.member("n0");
            n0.is_some_and(
                |m| m.egress_bps == 40_000_000 /* rounded to 1 % of the cap */ && m.region == "eu",
            ) && view.holders(&object).iter().any(|m| m.node_id == "n0") == (view.self_id != "n0")
        })
    })
    .await;
    for node in &nodes {
        assert!(node.view().member("evil").is_none());
    }
    assert_eq!(
        intruder.view().members.len(),
        1,
        "the intruder learnt nothing"
    );
    assert!(
        nodes[0].dropped_datagrams() > 0,
        "the intruder's datagrams were dropped"
    );

    // Kill one member without a goodbye (abort: no draining state sent).
    let victim = nodes.pop().unwrap();
    drop(victim);
    let took = wait_until("failure detection", Duration::from_secs(10), || {
        nodes.iter().all(|n| n.view().member("n3").is_none())
    })
    .await;
    eprintln!("dead member noticed after {took:?}");

    // A leaving member is first seen draining, then gone.
    let leaving = nodes.pop().unwrap();
    let leave = tokio::spawn(async move { leaving.leave().await });
    wait_until("draining state", Duration::from_secs(5), || {
        nodes.iter().all(|n| {
            n.view()
                .member("n2")
                .is_none_or(|m| m.health == Health::Draining)
        })
    })
    .await;
    leave.await.unwrap();
}
