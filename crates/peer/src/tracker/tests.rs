//! The tracker core: announce parsing, locality order, bounds, expiry.

use super::*;

fn query(info_hash: [u8; 20], peer_id: [u8; 20], port: u16, left: u64, event: &str) -> String {
    let enc = |b: &[u8]| -> String { b.iter().map(|x| format!("%{x:02X}")).collect() };
    format!(
        "info_hash={}&peer_id={}&port={port}&uploaded=0&downloaded=0&left={left}&compact=1&event={event}",
        enc(&info_hash),
        enc(&peer_id)
    )
}

fn here(zone: &str, region: &str) -> Locality {
    Locality {
        zone: Some(zone.into()),
        region: Some(region.into()),
    }
}

#[test]
fn an_announce_parses_binary_hashes_and_refuses_what_is_malformed() {
    let q = query([0xab; 20], *b"-SH0001-012345678901", 6881, 1000, "started");
    let a = Announce::parse(&q).unwrap();
    assert_eq!(a.info_hash, [0xab; 20]);
    assert_eq!(a.port, 6881);
    assert_eq!(a.left, 1000);
    assert_eq!(a.event, Some(AnnounceEvent::Started));
    for (bad, why) in [
        ("port=1&left=0", TrackerError::Missing("info_hash")),
        (
            "info_hash=%AB&peer_id=-SH0001-012345678901&port=1&left=0",
            TrackerError::Bad("info_hash"),
        ),
        (
            &q.replace("port=6881", "port=0")[..],
            TrackerError::Bad("port"),
        ),
        (
            &q.replace("port=6881", "port=70000")[..],
            TrackerError::Bad("port"),
        ),
        (
            &q.replace("left=1000", "left=-1")[..],
            TrackerError::Bad("left"),
        ),
        (
            &q.replace("event=started", "event=paused")[..],
            TrackerError::Bad("event"),
        ),
    ] {
        assert_eq!(Announce::parse(bad), Err(why), "{bad}");
    }
    assert_eq!(
        Announce::parse(&"a=b&".repeat(3000)),
        Err(TrackerError::TooLong)
    );
}

#[test]
fn peers_come_back_nearest_first_never_yourself_and_capped() {
    let limits = TrackerLimits {
        numwant_max: 3,
        ..TrackerLimits::default()
    };
    let mut tracker = Tracker::new(limits);
    let swarm = [7; 20];
    let join = |tracker: &mut Tracker, n: u8, locality: Locality| {
        let a = Announce::parse(&query(swarm, [n; 20], 6000 + u16::from(n), 5, "started")).unwrap();
        tracker
            .announce(&a, format!("127.0.0.{n}").parse().unwrap(), locality, 0)
            .unwrap()
    };
    join(&mut tracker, 1, here("far", "us"));
    join(&mut tracker, 2, here("z1", "eu"));
    join(&mut tracker, 3, here("z2", "eu"));
    join(&mut tracker, 4, here("z1", "eu"));
    let answer = join(&mut tracker, 5, here("z1", "eu"));
    let ports: Vec<u16> = answer.peers.iter().map(|p| p.port()).collect();
    assert_eq!(ports.len(), 3, "numwant is capped");
    assert!(!ports.contains(&6005), "not itself");
    let mut first_two = ports[..2].to_vec();
    first_two.sort();
    assert_eq!(first_two, [6002, 6004], "its zone first");
    assert_eq!(ports[2], 6003, "then its region");
    assert_eq!(answer.incomplete, 5);
    // The compact form: 6 bytes per IPv4 peer.
    let encoded = Value::decode(&answer.encode()).unwrap();
    assert_eq!(
        encoded
            .get("peers")
            .and_then(Value::as_bytes)
            .map(<[u8]>::len),
        Some(18)
    );
    assert_eq!(encoded.get("interval").and_then(Value::as_int), Some(60));
}

#[test]
fn announcing_too_often_is_refused_but_events_are_taken() {
    let mut tracker = Tracker::new(TrackerLimits::default());
    let first = Announce::parse(&query([1; 20], [2; 20], 7000, 10, "started")).unwrap();
    let ip: IpAddr = "127.0.0.9".parse().unwrap();
    tracker
        .announce(&first, ip, Locality::default(), 100)
        .unwrap();
    let again = Announce {
        event: None,
        ..first.clone()
    };
    assert_eq!(
        tracker.announce(&again, ip, Locality::default(), 102),
        Err(TrackerError::TooSoon(3))
    );
    let done = Announce {
        event: Some(AnnounceEvent::Completed),
        left: 0,
        ..first.clone()
    };
    tracker
        .announce(&done, ip, Locality::default(), 106)
        .unwrap();
    assert_eq!(
        tracker.counts(&[1; 20]),
        SwarmCounts {
            complete: 1,
            incomplete: 0,
            downloaded: 1
        }
    );
    let stop = Announce {
        event: Some(AnnounceEvent::Stopped),
        ..first
    };
    tracker
        .announce(&stop, ip, Locality::default(), 107)
        .unwrap();
    assert_eq!(tracker.counts(&[1; 20]).complete, 0);
    let failure = Value::decode(&failure(&TrackerError::TooSoon(10))).unwrap();
    assert!(failure.get("failure reason").is_some());
}

#[test]
fn tables_are_bounded_and_silent_peers_expire() {
    let limits = TrackerLimits {
        swarms_max: 2,
        peers_per_swarm_max: 3,
        peer_ttl_s: 100,
        ..TrackerLimits::default()
    };
    let mut tracker = Tracker::new(limits);
    let ip: IpAddr = "127.0.0.1".parse().unwrap();
    for n in 0..5u8 {
        let a = Announce::parse(&query([1; 20], [n; 20], 6000, 1, "started")).unwrap();
        tracker
            .announce(&a, ip, Locality::default(), u64::from(n))
            .unwrap();
    }
    assert_eq!(tracker.counts(&[1; 20]).incomplete, 3, "peers per swarm");
    for hash in [[2; 20], [3; 20]] {
        let a = Announce::parse(&query(hash, [9; 20], 6000, 1, "started")).unwrap();
        tracker.announce(&a, ip, Locality::default(), 10).unwrap();
    }
    assert_eq!(tracker.swarm_count(), 2, "swarms");
    // Much later, an announce finds the others gone.
    let late = Announce::parse(&query([3; 20], [8; 20], 6000, 1, "started")).unwrap();
    let answer = tracker
        .announce(&late, ip, Locality::default(), 500)
        .unwrap();
    assert!(answer.peers.is_empty());
    let scrape = Value::decode(&tracker.scrape(&[[3; 20]])).unwrap();
    let files = scrape.get("files").unwrap();
    assert!(matches!(files, Value::Dict(d) if d.len() == 1));
}

#[test]
fn one_address_cannot_flood_the_tables() {
    let limits = TrackerLimits {
        announces_per_ip_per_minute: 5,
        ..TrackerLimits::default()
    };
    let mut tracker = Tracker::new(limits);
    let flood: IpAddr = "127.0.0.66".parse().unwrap();
    let mut refused = 0;
    for n in 0..20u8 {
        let a = Announce::parse(&query([4; 20], [n; 20], 6000, 1, "started")).unwrap();
        if tracker.announce(&a, flood, Locality::default(), 30) == Err(TrackerError::RateLimited) {
            refused += 1;
        }
    }
    assert_eq!(refused, 15);
    assert_eq!(tracker.counts(&[4; 20]).incomplete, 5);
    // Another address is not affected; the next minute the flood may go on.
    let other = Announce::parse(&query([4; 20], [99; 20], 6000, 1, "started")).unwrap();
    assert!(tracker
        .announce(
            &other,
            "127.0.0.7".parse().unwrap(),
            Locality::default(),
            30
        )
        .is_ok());
    let later = Announce::parse(&query([4; 20], [50; 20], 6000, 1, "started")).unwrap();
    assert!(tracker
        .announce(&later, flood, Locality::default(), 61)
        .is_ok());
}

#[test]
fn a_peer_id_cannot_be_moved_or_stopped_from_another_address() {
    let mut tracker = Tracker::new(TrackerLimits::default());
    let owner: IpAddr = "127.0.0.5".parse().unwrap();
    let thief: IpAddr = "127.0.0.6".parse().unwrap();
    let joined = Announce::parse(&query([6; 20], [1; 20], 7000, 5, "started")).unwrap();
    tracker
        .announce(&joined, owner, Locality::default(), 0)
        .unwrap();
    let stop = Announce::parse(&query([6; 20], [1; 20], 7000, 5, "stopped")).unwrap();
    assert!(tracker
        .announce(&stop, thief, Locality::default(), 1)
        .is_err());
    assert_eq!(tracker.counts(&[6; 20]).incomplete, 1, "still there");
    // Completing twice counts one download.
    let done = Announce::parse(&query([6; 20], [1; 20], 7000, 0, "completed")).unwrap();
    tracker
        .announce(&done, owner, Locality::default(), 2)
        .unwrap();
    tracker
        .announce(&done, owner, Locality::default(), 3)
        .unwrap();
    assert_eq!(tracker.counts(&[6; 20]).downloaded, 1);
}

#[test]
fn an_announce_round_trips_and_answers_decode() {
    let announce = Announce {
        info_hash: [0xff; 20],
        peer_id: *b"-SH0001-abc&=%\x00\x01\x02\x03\x04\x05",
        port: 6881,
        uploaded: 5,
        downloaded: 7,
        left: 9,
        event: Some(AnnounceEvent::Started),
        numwant: Some(30),
        from_caches: Some(123),
        from_peers: Some(456),
    };
    assert_eq!(Announce::parse(&announce.to_query()), Ok(announce));
    let answer = AnnounceAnswer {
        interval_s: 60,
        min_interval_s: 15,
        complete: 1,
        incomplete: 2,
        peers: vec![
            "127.0.0.2:7000".parse().unwrap(),
            "[::1]:7001".parse().unwrap(),
        ],
    };
    assert_eq!(AnnounceAnswer::decode(&answer.encode()), Ok(answer));
    assert_eq!(
        AnnounceAnswer::decode(&failure(&TrackerError::RateLimited)),
        Err(AnswerError::Failure(TrackerError::RateLimited.to_string()))
    );
    assert!(
        AnnounceAnswer::decode(b"d5:peers5:abcdee").is_err(),
        "not 6-byte entries"
    );
    assert!(AnnounceAnswer::decode(b"not bencode").is_err());
}

#[test]
fn reported_bytes_are_summed_per_swarm_by_what_each_peer_added() {
    let mut tracker = Tracker::new(TrackerLimits::default());
    let hash = [7u8; 20];
    let mut announce = Announce::parse(&query(hash, [1; 20], 6001, 100, "started")).unwrap();
    announce.from_caches = Some(1_000);
    announce.from_peers = Some(0);
    let ip: IpAddr = "127.0.0.1".parse().unwrap();
    tracker
        .announce(&announce, ip, Locality::default(), 0)
        .unwrap();
    tracker.label(&hash, "games");
    tracker.label(&hash, "other");
    // Later: 1,500 from caches and 3,000 from peers in all.
    announce.event = Some(AnnounceEvent::Completed);
    announce.left = 0;
    announce.from_caches = Some(1_500);
    announce.from_peers = Some(3_000);
    tracker
        .announce(&announce, ip, Locality::default(), 20)
        .unwrap();
    // A second peer, then it leaves: its bytes stay counted.
    let mut other = Announce::parse(&query(hash, [2; 20], 6002, 0, "started")).unwrap();
    other.from_peers = Some(500);
    let ip2: IpAddr = "127.0.0.2".parse().unwrap();
    tracker
        .announce(&other, ip2, Locality::default(), 21)
        .unwrap();
    other.event = Some(AnnounceEvent::Stopped);
    tracker
        .announce(&other, ip2, Locality::default(), 22)
        .unwrap();
    let reports: Vec<SwarmReport> = tracker.reports().collect();
    assert_eq!(reports.len(), 1);
    assert_eq!(
        reports[0].label.as_deref(),
        Some("games"),
        "the first name sticks"
    );
    assert_eq!(reports[0].bytes_from_caches, 1_500);
    assert_eq!(reports[0].bytes_from_peers, 3_500);
    assert_eq!(reports[0].counts.complete, 1);
}
