//! The web console (`/ui`): its HTTP answers (cache headers, auth, no
//! token in the logs), and the page itself in Debian's headless Chromium
//! and Firefox ESR, driven by `tests/ui/console.test.js` (puppeteer-core)
//! against the real binary and real loopback upstreams.
//!
//! The browser tests need `/usr/bin/chromium` and `/usr/bin/firefox-esr`
//! (`apt-get install -y chromium firefox-esr`) and `npm ci` in `tests/ui`;
//! without them they fail and say so. With `PATCHFEED_SCREENSHOTS=<dir>`
//! the Chromium run saves a screenshot of each view there (`docs/images`
//! for the committed ones).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;

use common::{client, Mode, Server, Upstream};

const FULL: &str = "console-full-token-5b1f";
const READ: &str = "console-read-token-9c2e";
/// The whole browser run, at most.
const BROWSER_RUN: Duration = Duration::from_secs(240);

/// A ticker-like document: version `v` changes the price, the volume,
/// the time and grows the list of trades.
fn ticker(v: u64) -> Value {
    json!({
        "pair": "BTC-EUR",
        "price": 61_250.5 + (v as f64) * 12.25,
        "volume": 1_200 + v * 37,
        "updated": format!("2026-12-02T10:0{}:00Z", v % 10),
        "trades": (0..v).map(|k| json!({ "id": 100 + k, "side": if k % 2 == 0 { "buy" } else { "sell" } })).collect::<Vec<_>>(),
        "market": { "open": true, "venue": "loopback" },
    })
}

fn config(ticker_url: &str, flaky_url: &str) -> String {
    format!(
        "allow_private_upstreams = true\ntoken = \"{FULL}\"\nread_token = \"{READ}\"\n\
         [[resource]]\nid = \"ticker\"\nurl = \"{ticker_url}\"\ninterval = \"100ms\"\n\
         [[resource]]\nid = \"flaky\"\nurl = \"{flaky_url}\"\ninterval = \"100ms\"\n"
    )
}

/// Every log line the server may write about requests.
const VERBOSE: (&str, &str) = ("RUST_LOG", "trace");

async fn status_of(server: &Server, path: &str) -> u16 {
    client()
        .get(server.url(path))
        .bearer_auth(FULL)
        .send()
        .await
        .expect("GET")
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_and_its_assets_are_cached_open_and_never_log_the_token() {
    let up = Upstream::start(ticker(0)).await;
    let server = Server::start_with_env(&config(&up.url(), &up.url()), &[VERBOSE]);
    let c = client();

    // The page: open without a token (it holds no data), never cached
    // without revalidation, locked to this origin.
    for path in ["/ui", "/ui/resources/ticker", "/ui/resources/no-such-one"] {
        let r = c.get(server.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let h = r.headers().clone();
        assert_eq!(h["content-type"], "text/html; charset=utf-8");
        assert_eq!(h["cache-control"], "no-cache");
        assert_eq!(h["referrer-policy"], "no-referrer");
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"),
            "{csp}"
        );
        let etag = h["etag"].to_str().unwrap().to_owned();
        let body = r.text().await.unwrap();
        // No data in it: no resource id, no upstream address.
        assert!(
            !body.contains("ticker") && !body.contains(&up.addr.to_string()),
            "{body}"
        );
        let again = c
            .get(server.url(path))
            .header("If-None-Match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304, "{path} revalidated");
    }
    // Data is not open: the same rules as ever on /v1.
    let r = c.get(server.url("/v1/resources")).send().await.unwrap();
    assert_eq!(r.status(), 401);

    // Assets: named with their hash by the page, cached for a year under
    // that name; under any other, revalidated.
    let page = c
        .get(server.url("/ui"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut named = 0;
    for part in page.split("\"/ui/assets/").skip(1) {
        let url = &part[..part.find('"').unwrap()];
        let r = c
            .get(server.url(&format!("/ui/assets/{url}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{url}");
        assert_eq!(
            r.headers()["cache-control"],
            "public, max-age=31536000, immutable",
            "{url}"
        );
        assert_eq!(r.headers()["x-content-type-options"], "nosniff");
        let name = &url[..url.find('?').unwrap()];
        let hash = &url[url.find("?v=").unwrap() + 3..];
        assert_eq!(r.headers()["etag"].to_str().unwrap(), format!("\"{hash}\""));
        let plain = c
            .get(server.url(&format!("/ui/assets/{name}")))
            .send()
            .await
            .unwrap();
        assert_eq!(plain.headers()["cache-control"], "no-cache", "{name}");
        let stale = c
            .get(server.url(&format!("/ui/assets/{name}?v=0000")))
            .send()
            .await
            .unwrap();
        assert_eq!(stale.headers()["cache-control"], "no-cache", "{name}");
        let cached = c
            .get(server.url(&format!("/ui/assets/{url}")))
            .header("If-None-Match", format!("\"{hash}\""))
            .send()
            .await
            .unwrap();
        assert_eq!(cached.status(), 304);
        named += 1;
    }
    assert_eq!(
        named, 4,
        "the page names the icon twice, the script and the stylesheet"
    );

    // Unknown assets and bad ids: the JSON error shape.
    for (path, status, code) in [
        ("/ui/assets/nope.js", 404, "not_found"),
        ("/ui/assets/..%2Fconsole.rs", 404, "not_found"),
        ("/ui/resources/a%20b", 400, "bad_request"),
        ("/ui/nope", 404, "not_found"),
    ] {
        let r = c.get(server.url(path)).send().await.unwrap();
        assert_eq!(r.status(), status, "{path}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], code, "{path}");
    }
    let r = c.post(server.url("/ui")).send().await.unwrap();
    assert_eq!(r.status(), 405);

    // The token in the page's address or on a /v1 call never reaches the
    // log, even at trace level.
    for path in [
        format!("/ui?access_token={FULL}"),
        format!("/ui/resources/ticker?access_token={READ}&at=now"),
        format!("/v1/resources?access_token={FULL}"),
    ] {
        c.get(server.url(&path)).send().await.unwrap();
    }
    assert_eq!(status_of(&server, "/v1/resources/ticker").await, 200);
    let log = server.stop().await;
    assert!(log.contains("/ui"), "requests to /ui are logged: {log}");
    assert!(
        !log.contains(FULL) && !log.contains(READ),
        "a token in the log:\n{log}"
    );
}

fn ui_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ui")
}

/// The browsers the test drives: Chromium, and Firefox ESR (over
/// WebDriver BiDi), each from Debian.
#[derive(Clone, Copy, PartialEq)]
enum Browser {
    Chromium,
    Firefox,
}

/// What the browser test needs, or a panic saying what to install.
fn browser_prerequisites(browser: Browser) {
    let (var, default, package) = match browser {
        Browser::Chromium => ("PATCHFEED_CHROMIUM", "/usr/bin/chromium", "chromium"),
        Browser::Firefox => ("PATCHFEED_FIREFOX", "/usr/bin/firefox-esr", "firefox-esr"),
    };
    let path = std::env::var(var).unwrap_or_else(|_| default.into());
    assert!(
        Path::new(&path).exists(),
        "the console test needs {package} at {path}: `apt-get install -y {package}` (or set {var})"
    );
    assert!(
        ui_dir()
            .join("node_modules/puppeteer-core/package.json")
            .exists(),
        "the console test needs its npm packages: `cd tests/ui && npm ci` (Node 20)"
    );
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|o| o.status.success()),
        "the console test needs Node 20 (`node` on PATH)"
    );
}

/// One browser at a time: two at once on a small machine would only make
/// each slower.
static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_a_real_browser() {
    drive_the_console(Browser::Chromium).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_a_real_browser_firefox() {
    drive_the_console(Browser::Firefox).await;
}

/// Runs `tests/ui/console.test.js` in `browser` against a fresh server;
/// Chromium takes the screenshots when asked.
async fn drive_the_console(browser: Browser) {
    browser_prerequisites(browser);
    let _one = ONE_BROWSER.lock().await;
    let ticker_up = Upstream::start(ticker(0)).await;
    let flaky_up = Upstream::start(json!({ "status": "fine", "checks": [1, 2, 3] })).await;
    let server = Server::start_with_env(&config(&ticker_up.url(), &flaky_up.url()), &[VERBOSE]);
    let extra_up = Upstream::start(json!({ "made": "in the browser" })).await;

    let shots = std::env::var("PATCHFEED_SCREENSHOTS")
        .ok()
        .filter(|_| browser == Browser::Chromium)
        .map(|d| {
            let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(d);
            std::fs::create_dir_all(&p).expect("the screenshots dir");
            p
        });
    let mut cmd = Command::new("node");
    cmd.arg(ui_dir().join("console.test.js"))
        .args([&server.base, FULL, READ, &extra_up.url()])
        .args(shots.iter())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if browser == Browser::Firefox {
        cmd.env("PATCHFEED_BROWSER", "firefox");
    }
    let mut child = cmd.spawn().expect("start node");
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });

    let deadline = Instant::now() + BROWSER_RUN;
    let mut steps = Vec::new();
    let outcome = loop {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            break Err(format!("the browser run took over {BROWSER_RUN:?}"));
        };
        let line = match lines.recv_timeout(left) {
            Ok(l) => l,
            Err(_) => break Err("the browser test ended without a verdict".into()),
        };
        let Ok(msg) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if let Some(step) = msg["step"].as_str() {
            eprintln!("console: {step}");
            steps.push(step.to_owned());
        } else if msg["done"] == true {
            break Ok(());
        } else if let Some(f) = msg["fail"].as_str() {
            break Err(f.to_owned());
        } else if let Some(ask) = msg.get("ask") {
            let answer = answer(ask, &ticker_up, &flaky_up, &server).await;
            writeln!(stdin, "{answer}").expect("answer the browser test");
            stdin.flush().expect("flush");
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    if let Err(e) = outcome {
        panic!("the console test failed after {steps:#?}:\n{e}");
    }
    assert_eq!(steps.len(), 10, "every step ran: {steps:#?}");
    let log = server.stop().await;
    assert!(
        !log.contains(FULL) && !log.contains(READ),
        "a token in the log"
    );
}

/// Does what the browser test asks of the upstreams; answers with the
/// upstream's document once the server has it.
async fn answer(ask: &Value, ticker_up: &Upstream, flaky_up: &Upstream, server: &Server) -> Value {
    let up = |id: &str| if id == "flaky" { flaky_up } else { ticker_up };
    if let Some(id) = ask["doc"].as_str() {
        return json!({ "doc": up(id).doc() });
    }
    if let Some(id) = ask["set"].as_str() {
        let v = ask["version"].as_u64().expect("a version");
        up(id).set(ticker(v));
        // Spaced out so that each version is its own event and the
        // browser sees it arrive.
        wait_for_document(server, id, &ticker(v)).await;
        return json!({ "doc": ticker(v) });
    }
    if let Some(id) = ask["fail"].as_str() {
        let status = u16::try_from(ask["status"].as_u64().expect("a status")).expect("a status");
        up(id).mode(Mode::Status(status));
        return json!({ "ok": true });
    }
    panic!("an unknown ask: {ask}");
}

async fn wait_for_document(server: &Server, id: &str, want: &Value) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = client()
            .get(server.url(&format!("/v1/resources/{id}/document")))
            .bearer_auth(FULL)
            .send()
            .await
            .expect("GET document");
        if r.status() == 200 && r.json::<Value>().await.ok().as_ref() == Some(want) {
            return;
        }
        assert!(Instant::now() < deadline, "the server never had {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
