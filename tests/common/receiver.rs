//! A loopback webhook receiver: records every request (headers, body, when)
//! and answers from a script of statuses (then `default`), or hangs.
//! `verify` checks the recorded signatures with the reference Standard
//! Webhooks implementation (PyPI `standardwebhooks`, run by
//! `tests/webhooks/verify.py`), independent of patchfeed's own code.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde_json::Value;

/// How the receiver answers one request.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    Status(u16),
    /// A status with `Retry-After: <secs>`.
    RetryAfter(u16, u64),
    /// No answer for 60 s (the sender's timeout cuts it).
    Hang,
}

/// One request as received.
#[derive(Clone, Debug)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
    pub json: Value,
    pub at: std::time::Instant,
    /// What it was answered.
    pub answer: Answer,
}

impl Received {
    pub fn msg_id(&self) -> String {
        self.headers["webhook-id"].to_str().unwrap().to_owned()
    }
    pub fn ok(&self) -> bool {
        matches!(self.answer, Answer::Status(s) if (200..300).contains(&s))
    }
}

#[derive(Default)]
pub struct ReceiverState {
    pub script: VecDeque<Answer>,
    pub default: Option<Answer>,
    pub received: Vec<Received>,
}

#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<ReceiverState>>,
}

fn lock(s: &Mutex<ReceiverState>) -> std::sync::MutexGuard<'_, ReceiverState> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

async fn hook(
    State(s): State<Arc<Mutex<ReceiverState>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let answer = {
        let mut st = lock(&s);
        let answer = st
            .script
            .pop_front()
            .or_else(|| st.default.clone())
            .unwrap_or(Answer::Status(200));
        let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
        st.received.push(Received {
            headers,
            body,
            json,
            at: std::time::Instant::now(),
            answer: answer.clone(),
        });
        answer
    };
    match answer {
        Answer::Status(s) => StatusCode::from_u16(s).unwrap().into_response(),
        Answer::RetryAfter(s, secs) => (
            StatusCode::from_u16(s).unwrap(),
            [("retry-after", secs.to_string())],
        )
            .into_response(),
        Answer::Hang => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            StatusCode::OK.into_response()
        }
    }
}

impl Receiver {
    /// Listens on 127.0.0.1, on a port of its own, until the runtime ends.
    pub async fn start() -> Receiver {
        let state = Arc::new(Mutex::new(ReceiverState::default()));
        let app = Router::new()
            .route("/hook", post(hook))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { addr, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Answers for the next requests, one each.
    pub fn script(&self, answers: &[Answer]) {
        lock(&self.state).script.extend(answers.iter().cloned());
    }

    /// The answer once the script is used up (200 if never set).
    pub fn set_default(&self, a: Answer) {
        lock(&self.state).default = Some(a);
    }

    pub fn received(&self) -> Vec<Received> {
        lock(&self.state).received.clone()
    }

    /// The messages that got a 2xx, in arrival order.
    pub fn delivered(&self) -> Vec<Value> {
        self.received()
            .into_iter()
            .filter(|r| r.ok())
            .map(|r| r.json)
            .collect()
    }

    /// Waits (bounded) until `pred` holds of the delivered messages.
    pub async fn wait_for(&self, what: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let pred = &pred;
        super::eventually(super::WAIT, what, || {
            let d = self.delivered();
            let ok = pred(&d);
            async move { ok.then_some(d) }
        })
        .await
    }

    /// Checks every recorded request's signature with the reference
    /// implementation; panics on the first that fails. Returns how many.
    pub fn verify(&self, secret: &str) -> usize {
        let received = self.received();
        let mut input = String::new();
        for r in &received {
            let headers: serde_json::Map<String, Value> = r
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        Value::String(v.to_str().unwrap().to_owned()),
                    )
                })
                .collect();
            input.push_str(
                &serde_json::json!({
                    "secret": secret,
                    "headers": headers,
                    "body": String::from_utf8(r.body.to_vec()).unwrap(),
                })
                .to_string(),
            );
            input.push('\n');
        }
        let out = run_verifier(&input);
        assert_eq!(out.trim(), format!("verified {}", received.len()), "{out}");
        received.len()
    }
}

/// The Python with `standardwebhooks` that `.ci/run` installs (its venv),
/// else `python3` from the PATH.
fn python() -> std::path::PathBuf {
    let venv =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/webhook-venv/bin/python3");
    if venv.exists() {
        venv
    } else {
        "python3".into()
    }
}

fn run_verifier(input: &str) -> String {
    use std::io::Write as _;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/webhooks/verify.py");
    let mut child = std::process::Command::new(python())
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run the Python verifier (see .ci/run for its venv)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() || !out.stdout.is_empty(),
        "the verifier failed to run (is standardwebhooks installed? see .ci/run): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
