//! Time travel (`?at=` by event id, RFC 3339 and Unix ms) and audit
//! (`/history` with pagination), against versions recorded by a client.

use serde_json::json;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_travel_by_id_instant_and_unix_ms() {
    let up = Upstream::start(doc(0)).await;
    let s = Server::start(&config(&[("r", &up.url())], ""));
    // Before the first version: 404 not_yet.
    let (status, v) = s.get("/v1/resources/r/document?at=0").await;
    assert_eq!(
        (status, &v["error"]["code"]),
        (404, &json!("not_yet")),
        "{v}"
    );

    let mut versions = Vec::new();
    s.wait_document("r", &doc(0)).await;
    for i in 1..=7 {
        up.set(doc(i));
        s.wait_document("r", &doc(i)).await;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    for id in s.history_ids("r").await {
        let (status, v) = s.get(&format!("/v1/resources/r/document?at={id}")).await;
        assert_eq!(status, 200);
        versions.push((id, v));
    }
    assert_eq!(versions.len(), 8);
    for (i, (id, v)) in versions.iter().enumerate() {
        assert_eq!(v, &doc(i), "at={id}");
        let ms = ulid::Ulid::from_string(id).unwrap().timestamp_ms();
        // The last version at or before the instant (events in the same
        // millisecond: the newest of them).
        let want = versions
            .iter()
            .rev()
            .find(|(x, _)| ulid::Ulid::from_string(x).unwrap().timestamp_ms() <= ms)
            .unwrap();
        let (_, by_ms) = s.get(&format!("/v1/resources/r/document?at={ms}")).await;
        assert_eq!(&by_ms, &want.1, "at={ms}");
        let rfc = patchfeed::model::format_rfc3339_ms(ms);
        let (_, by_rfc) = s.get(&format!("/v1/resources/r/document?at={rfc}")).await;
        assert_eq!(&by_rfc, &want.1, "at={rfc}");
        // Any offset names the same instant.
        let t = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
            .unwrap()
            .to_offset(time::macros::offset!(+02:00));
        let shifted = t
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        let (_, by_offset) = s
            .get(&format!(
                "/v1/resources/r/document?at={}",
                shifted.replace('+', "%2B")
            ))
            .await;
        assert_eq!(&by_offset, &want.1, "at={shifted}");
    }
    // The document's headers name its event.
    let r = client()
        .get(s.url("/v1/resources/r/document"))
        .send()
        .await
        .unwrap();
    let last = &versions.last().unwrap().0;
    assert_eq!(r.headers()["patchfeed-event-id"], last.as_str());
    assert_eq!(r.headers()["etag"], format!("\"{last}\"").as_str());
    // A point after the newest event means now.
    let (_, now) = s.get("/v1/resources/r/document?at=9999999999999").await;
    assert_eq!(now, doc(7));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_with_next_after_cover_the_log_exactly_once() {
    let up = Upstream::start(doc(0)).await;
    let s = Server::start(&config(&[("r", &up.url())], ""));
    s.wait_document("r", &doc(0)).await;
    for i in 1..=9 {
        up.set(doc(i));
        s.wait_document("r", &doc(i)).await;
    }
    let all = s.history_ids("r").await;
    assert_eq!(all.len(), 10);
    // Pages of 3, following next_after; replaying them rebuilds the doc.
    let mut got = Vec::new();
    let mut rebuilt = serde_json::Value::Null;
    let mut after: Option<String> = None;
    for _ in 0..10 {
        let q = match &after {
            Some(a) => format!("/v1/resources/r/history?limit=3&after={a}"),
            None => "/v1/resources/r/history?limit=3".to_owned(),
        };
        let (status, page) = s.get(&q).await;
        assert_eq!(status, 200);
        let events = page["events"].as_array().unwrap();
        assert!(events.len() <= 3);
        for e in events {
            got.push(e["id"].as_str().unwrap().to_owned());
            let ms = ulid::Ulid::from_string(e["id"].as_str().unwrap())
                .unwrap()
                .timestamp_ms();
            assert_eq!(e["time"], patchfeed::model::format_rfc3339_ms(ms));
            let patch: json_patch::Patch = serde_json::from_value(e["patch"].clone()).unwrap();
            json_patch::patch(&mut rebuilt, &patch).unwrap();
        }
        match page["next_after"].as_str() {
            Some(n) => after = Some(n.to_owned()),
            None => break,
        }
    }
    assert_eq!(got, all);
    assert_eq!(rebuilt, doc(9));
    // after exclusive, before inclusive.
    let (_, page) = s
        .get(&format!(
            "/v1/resources/r/history?after={}&before={}",
            all[2], all[5]
        ))
        .await;
    let ids: Vec<&str> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        all[3..=5].iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert_eq!(page["next_after"], json!(null));
    // Bad values are 400s naming them.
    for q in [
        "limit=0",
        "limit=1001",
        "limit=abc",
        "after=yesterday",
        "before=01BX5ZZKBKACTAV9WEVGEMMVRZX",
    ] {
        let (status, v) = s.get(&format!("/v1/resources/r/history?{q}")).await;
        assert_eq!(status, 400, "{q}: {v}");
        let value = q.split('=').nth(1).unwrap();
        assert!(
            v["error"]["message"].as_str().unwrap().contains(value),
            "{q}: {v}"
        );
    }
}
