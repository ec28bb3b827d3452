//! `GET …/ws`: the feed over a WebSocket, against the real binary with a
//! real client (tokio-tungstenite): messages applied in order reproduce the
//! upstream's document; resume; pings; close 1000 on delete and 1001 on
//! shutdown; a client that never answers pings is dropped.

use std::time::Duration;

use futures_util::StreamExt as _;
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(s: &Server, query: &str) -> Ws {
    let url = s
        .url(&format!("/v1/resources/r/ws{query}"))
        .replacen("http://", "ws://", 1);
    let (ws, resp) = tokio_tungstenite::connect_async(url)
        .await
        .expect("WebSocket handshake");
    assert_eq!(resp.status().as_u16(), 101);
    ws
}

/// What came next: a JSON message, a ping, or the close frame's code.
#[derive(Debug)]
enum Got {
    Json(Value),
    Ping,
    Closed(Option<CloseCode>),
}

async fn next(ws: &mut Ws) -> Got {
    loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame within WAIT");
        match m {
            Some(Ok(Message::Text(t))) => return Got::Json(serde_json::from_str(&t).unwrap()),
            Some(Ok(Message::Ping(_))) => return Got::Ping,
            Some(Ok(Message::Close(f))) => return Got::Closed(f.map(|f| f.code)),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return Got::Closed(None),
        }
    }
}

/// Applies messages until the copy equals `want`; ids must increase.
async fn until_doc(ws: &mut Ws, copy: &mut Option<Value>, last: &mut Option<String>, want: &Value) {
    while copy.as_ref() != Some(want) {
        let m = match next(ws).await {
            Got::Json(m) => m,
            Got::Ping => continue,
            Got::Closed(c) => panic!("closed early: {c:?}"),
        };
        match m["type"].as_str() {
            Some("snapshot") => *copy = Some(m["data"].clone()),
            Some("patch") => {
                let p: json_patch::Patch = serde_json::from_value(m["data"].clone()).unwrap();
                json_patch::patch(copy.as_mut().expect("a snapshot first"), &p).unwrap();
            }
            Some("error") => continue,
            other => panic!("unexpected {other:?}"),
        }
        let id = m["id"].as_str().unwrap().to_owned();
        if let Some(l) = last.as_ref() {
            assert!(id > *l, "ids strictly increase");
        }
        *last = Some(id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_snapshot_patches_resume_pings_and_close_1000_on_delete() {
    let up = Upstream::start(doc(0)).await;
    let s = Server::start(&config(
        &[("r", &up.url())],
        "[limits]\nkeep_alive = \"1s\"\n",
    ));
    s.wait_document("r", &doc(0)).await;

    let mut ws = connect(&s, "").await;
    let Got::Json(first) = next(&mut ws).await else {
        panic!("a snapshot first")
    };
    assert_eq!(first["type"], "snapshot");
    assert_eq!(first["data"], doc(0));
    let snap_id = first["id"].as_str().unwrap().to_owned();
    let (mut copy, mut last) = (Some(first["data"].clone()), Some(snap_id.clone()));
    for i in 1..4 {
        up.set(doc(i));
        until_doc(&mut ws, &mut copy, &mut last, &doc(i)).await;
    }

    // Idle: a ping at least every keep_alive.
    let t = std::time::Instant::now();
    loop {
        match next(&mut ws).await {
            Got::Ping => break,
            Got::Json(_) => continue,
            Got::Closed(c) => panic!("closed: {c:?}"),
        }
    }
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "ping after {:?}",
        t.elapsed()
    );

    // Resume from the snapshot's id: the missed patches, no snapshot.
    let mut again = connect(&s, &format!("?since={snap_id}")).await;
    let Got::Json(m) = next(&mut again).await else {
        panic!("a message")
    };
    assert_eq!(m["type"], "patch", "{m}");
    let mut copy2 = Some(doc(0));
    let p: json_patch::Patch = serde_json::from_value(m["data"].clone()).unwrap();
    json_patch::patch(copy2.as_mut().unwrap(), &p).unwrap();
    let mut last2 = m["id"].as_str().map(str::to_owned);
    until_doc(&mut again, &mut copy2, &mut last2, &doc(3)).await;

    // Client data frames are ignored.
    use futures_util::SinkExt as _;
    ws.send(Message::Text("hello".into())).await.unwrap();

    assert_eq!(s.delete("/v1/resources/r").await, 204);
    for w in [&mut ws, &mut again] {
        let code = loop {
            match next(w).await {
                Got::Closed(c) => break c,
                _ => continue,
            }
        };
        assert_eq!(
            code,
            Some(CloseCode::Normal),
            "1000 when the resource is deleted"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_closes_1001_on_shutdown() {
    let up = Upstream::start(doc(0)).await;
    let mut s = Server::start(&config(&[("r", &up.url())], ""));
    s.wait_document("r", &doc(0)).await;
    let mut ws = connect(&s, "").await;
    let Got::Json(first) = next(&mut ws).await else {
        panic!("a snapshot first")
    };
    assert_eq!(first["type"], "snapshot");
    s.signal("-TERM");
    let code = loop {
        match next(&mut ws).await {
            Got::Closed(c) => break c,
            _ => continue,
        }
    };
    assert_eq!(code, Some(CloseCode::Away), "1001 on shutdown");
    assert!(s.wait_exit(WAIT).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_client_that_never_answers_pings_is_dropped() {
    let up = Upstream::start(doc(0)).await;
    let s = Server::start(&config(
        &[("r", &up.url())],
        "[limits]\nkeep_alive = \"1s\"\n",
    ));
    s.wait_document("r", &doc(0)).await;
    // A raw handshake, then silence: no pong, ever.
    let addr = s.base.trim_start_matches("http://").to_owned();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let req = format!(
        "GET /v1/resources/r/ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    // Read (without answering) until the server closes the connection.
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let t = std::time::Instant::now();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
            Err(_) => panic!("still open {WAIT:?} without a single pong"),
        }
    }
    assert!(
        seen.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&seen)
    );
    // Pings were sent (opcode 0x9), and the close came after a few keep-alives.
    assert!(seen.windows(2).any(|w| w == [0x89, 0x00]), "no ping seen");
    assert!(
        t.elapsed() >= Duration::from_secs(2),
        "dropped too soon: {:?}",
        t.elapsed()
    );
}
