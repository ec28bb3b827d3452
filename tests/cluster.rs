//! The JetStream backend against a real 3-node NATS cluster on loopback
//! (`cluster::testing`: started here, stopped by pid): fencing between two
//! writers, and appends that go on while a NATS node is killed.
//!
//! Bounded: a fixed number of rounds and appends, every request under the
//! backend's own timeouts and retry budget.

use std::time::Duration;

use patchfeed::cluster::testing::{unique_prefix, NatsCluster};
use patchfeed::model::{EventId, Point, ResourceId, ResourceSpec};
use patchfeed::store::{open_cluster, At, ReadAfter, Store, StoreError};
use serde_json::{json, Value};

fn spec(id: &str, snapshot_every: u32) -> ResourceSpec {
    ResourceSpec {
        id: ResourceId::new(id).unwrap(),
        url: "http://127.0.0.1:9/unused".into(),
        interval: Duration::from_secs(1),
        headers: Default::default(),
        snapshot_every,
        retain: None,
        ad_hoc: false,
        push: false,
        pages: None,
    }
}

/// Replays `id`'s whole log from the horizon: every event follows the one
/// before (strictly increasing ids), every patch applies, and the chain
/// ends at the head. Returns the (id, document) of every version.
async fn replay(store: &Store, id: &ResourceId) -> Vec<(EventId, Value)> {
    let status = store.status(id).unwrap();
    let horizon = status.horizon.expect("a version");
    let At::Found { doc, .. } = store.document_at(id, Point::Id(horizon.0)).await.unwrap() else {
        panic!("no document at the horizon");
    };
    let mut versions = vec![(horizon, (*doc).clone())];
    let mut cursor = horizon;
    loop {
        let ReadAfter::Events(events) = store
            .read_after(id, cursor.0, 100, usize::MAX)
            .await
            .unwrap()
        else {
            panic!("read_after(horizon) is before the horizon");
        };
        for e in &events {
            assert!(e.id > cursor, "{} does not follow {cursor}", e.id);
            let mut d = versions.last().unwrap().1.clone();
            let patch: json_patch::Patch = serde_json::from_slice(&e.patch).unwrap();
            json_patch::patch(&mut d, &patch).unwrap();
            versions.push((e.id, d));
            cursor = e.id;
        }
        if events.len() < 100 {
            break;
        }
    }
    assert_eq!(
        Some(cursor),
        status.last_event_id,
        "the chain ends at the head"
    );
    assert_eq!(
        *store.head(id).unwrap().unwrap().doc,
        versions.last().unwrap().1
    );
    versions
}

/// Two writers (two stores on one prefix, as two nodes would be) race
/// from the same head, round after round: exactly one appends, the other
/// gets `Fenced` and nothing of it is stored; the log stays one chain of
/// the winners. A writer whose view is stale is refused, then follows
/// the log again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_14_two_writers_racing_on_one_expected_sequence_exactly_one_appends() {
    let cluster = NatsCluster::start(3);
    let cfg = cluster.config(&unique_prefix("fence"), 3);
    let mut a = open_cluster(&cfg).await.unwrap();
    let id = ResourceId::new("r").unwrap();
    a.create(spec("r", 3), 0).await.unwrap();
    a.append(&id, json!({"v": 0}), patchfeed::model::now_ms())
        .await
        .unwrap()
        .unwrap();
    let mut b = open_cluster(&cfg).await.unwrap();
    assert_eq!(
        b.head(&id).unwrap().unwrap().id,
        a.head(&id).unwrap().unwrap().id
    );

    const ROUNDS: u64 = 12;
    let mut winners = vec![json!({"v": 0})];
    for round in 1..=ROUNDS {
        let (da, db) = (
            json!({"v": round, "by": "a", "list": [round]}),
            json!({"v": round, "by": "b", "n": {"x": round}}),
        );
        let now = patchfeed::model::now_ms();
        let (ra, rb) = tokio::join!(
            a.append(&id, da.clone(), now),
            b.append(&id, db.clone(), now)
        );
        match (ra, rb) {
            (Ok(Some(_)), Err(StoreError::Fenced { .. })) => winners.push(da),
            (Err(StoreError::Fenced { .. }), Ok(Some(_))) => winners.push(db),
            other => panic!("round {round}: not exactly one append and one fenced: {other:?}"),
        }
        // The loser refreshed its view from the log when it was refused;
        // if it was refused on the snapshot, before the winner's event
        // landed, its view is still behind: it reopens (the next stage's
        // nodes follow the stream instead), so that both race from the
        // same head again.
        let want = winners.last().unwrap().clone();
        if *a.head(&id).unwrap().unwrap().doc != want {
            a = open_cluster(&cfg).await.unwrap();
        }
        if *b.head(&id).unwrap().unwrap().doc != want {
            b = open_cluster(&cfg).await.unwrap();
        }
        assert_eq!(*a.head(&id).unwrap().unwrap().doc, want, "round {round}");
        assert_eq!(*b.head(&id).unwrap().unwrap().doc, want, "round {round}");
    }

    // A writer that is behind (b, after a appended alone) is refused once.
    a.append(&id, json!({"v": "solo"}), patchfeed::model::now_ms())
        .await
        .unwrap()
        .unwrap();
    winners.push(json!({"v": "solo"}));
    let err = b
        .append(&id, json!({"v": "stale"}), patchfeed::model::now_ms())
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Fenced { .. }),
        "a stale writer is fenced: {err}"
    );
    assert!(
        err.to_string().contains("another writer appended first"),
        "{err}"
    );
    b.append(&id, json!({"v": "after"}), patchfeed::model::now_ms())
        .await
        .unwrap()
        .unwrap();
    winners.push(json!({"v": "after"}));

    // A fresh reader sees exactly the winners, in order, as one chain.
    drop((a, b));
    let c = open_cluster(&cfg).await.unwrap();
    let versions: Vec<Value> = replay(&c, &id).await.into_iter().map(|v| v.1).collect();
    assert_eq!(versions, winners);
}

/// Replicas 3: SIGKILL the node that leads the log stream in the middle
/// of appends to several resources. Appends go on (the client fails over,
/// the stream elects a new leader within the retry budget), and every
/// acknowledged event is in the log afterwards, in gap-free chains, read
/// through a new connection to the surviving nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_14_killing_a_nats_node_mid_appends_loses_nothing_acknowledged() {
    let mut cluster = NatsCluster::start(3);
    let prefix = unique_prefix("kill");
    let cfg = cluster.config(&prefix, 3);
    let store = open_cluster(&cfg).await.unwrap();
    const RESOURCES: usize = 4;
    const APPENDS: u64 = 60;
    const KILL_AT: u64 = 20;
    let ids: Vec<ResourceId> = (0..RESOURCES)
        .map(|r| ResourceId::new(&format!("k{r}")).unwrap())
        .collect();
    for id in &ids {
        store.create(spec(id.as_str(), 4), 0).await.unwrap();
    }

    // The node leading the log stream: the one whose death hurts most.
    let client = async_nats::connect(cluster.urls()[0].as_str())
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream(format!("{prefix}_LOG")).await.unwrap();
    let leader = stream
        .info()
        .await
        .unwrap()
        .cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .expect("the stream has a leader");
    drop(stream);
    drop(js);
    let victim: usize = leader.trim_start_matches('n').parse().unwrap();

    let mut acked: Vec<Vec<(EventId, u64)>> = vec![Vec::new(); RESOURCES];
    for seq in 0..APPENDS {
        if seq == KILL_AT {
            cluster.kill(victim);
        }
        let mut tasks = Vec::new();
        for (r, id) in ids.iter().enumerate() {
            let (store, id) = (store.clone(), id.clone());
            tasks.push(tokio::spawn(async move {
                let doc = json!({"r": r, "seq": seq, "pad": "x".repeat(seq as usize)});
                store.append(&id, doc, patchfeed::model::now_ms()).await
            }));
        }
        for (r, t) in tasks.into_iter().enumerate() {
            let (e, _) = t
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("append {seq} of k{r} after the kill: {e}"))
                .expect("every version differs");
            acked[r].push((e.id, seq));
        }
    }
    drop(store);

    let survivor = cluster.config(&prefix, 3);
    let reader = open_cluster(&survivor).await.unwrap();
    for (r, id) in ids.iter().enumerate() {
        let versions = replay(&reader, id).await;
        assert_eq!(versions.len() as u64, APPENDS, "k{r}: no gap, no duplicate");
        for ((got_id, doc), (want_id, seq)) in versions.iter().zip(&acked[r]) {
            assert_eq!(got_id, want_id, "k{r}: acknowledged event {seq} is stored");
            assert_eq!(doc["seq"], json!(seq));
        }
        for (e, _) in &acked[r] {
            assert!(reader.contains(id, *e).await.unwrap());
        }
    }
}

/// The real binary with `[cluster]`: the log lives in NATS (no data dir is
/// created), a pushed document is served, and after a SIGKILL and a
/// restart the same version is served from the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_14_the_server_with_a_cluster_table_keeps_its_log_in_nats() {
    let cluster = NatsCluster::start(3);
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("never-created");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let urls: Vec<String> = cluster.urls().iter().map(|u| format!("{u:?}")).collect();
    let config = dir.path().join("patchfeed.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = {:?}\n\n[cluster]\nnats = [{}]\nreplicas = 3\nprefix = {:?}\n\n[[resource]]\nid = \"p\"\npush = true\n",
            data_dir.display().to_string(),
            urls.join(", "),
            unique_prefix("server"),
        ),
    )
    .unwrap();
    let start = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_patchfeed"))
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let ready = |http: reqwest::Client, base: String| async move {
        for _ in 0..300 {
            if let Ok(r) = http.get(format!("{base}/healthz")).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the server did not come up within 30 s");
    };

    let mut server = start();
    ready(http.clone(), base.clone()).await;
    let doc = json!({"hello": "cluster", "list": [1, 2, 3]});
    let r = http
        .put(format!("{base}/v1/resources/p/document"))
        .json(&doc)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let put: Value = r.json().await.unwrap();
    let event_id = put["event_id"].as_str().unwrap().to_owned();
    server.kill().unwrap(); // SIGKILL
    server.wait().unwrap();

    let mut server = start();
    ready(http.clone(), base.clone()).await;
    let r = http
        .get(format!("{base}/v1/resources/p/document"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["patchfeed-event-id"].to_str().unwrap(),
        event_id
    );
    assert_eq!(r.json::<Value>().await.unwrap(), doc);
    server.kill().unwrap();
    server.wait().unwrap();
    assert!(!data_dir.exists(), "sled was not opened");
}
