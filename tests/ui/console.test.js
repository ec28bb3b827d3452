// Drives the web console in Debian's headless Chromium (puppeteer-core, no
// browser download) against the real patchfeed binary that
// tests/console.rs started. Each check waits at most WAIT ms.
//
// Talks to its Rust driver over lines of JSON: it writes {"ask": ...} on
// stdout and reads the answer on stdin (the upstream is Rust's), {"step"}
// as it goes, and exits 0 after {"done": true}, 1 after {"fail": "..."}.
//
//   node console.test.js BASE FULL_TOKEN READ_TOKEN UPSTREAM_URL [SHOTS_DIR]
'use strict';

const fs = require('fs');
const os = require('os');
const path = require('path');
const readline = require('readline');
const puppeteer = require('puppeteer-core');

const [base, FULL, READ, upstreamUrl, shots] = process.argv.slice(2);
// Chromium by default; PATCHFEED_BROWSER=firefox drives Firefox ESR over
// WebDriver BiDi instead (the same checks).
const FIREFOX = process.env.PATCHFEED_BROWSER === 'firefox';
const BROWSER = FIREFOX ? process.env.PATCHFEED_FIREFOX || '/usr/bin/firefox-esr'
  : process.env.PATCHFEED_CHROMIUM || '/usr/bin/chromium';
const WAIT = 20000;

const say = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');
const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();

// Asks the Rust side to act on the upstream; resolves to its answer.
async function ask(what) {
  say({ ask: what });
  const { value, done } = await lines.next();
  if (done) throw new Error('the driver went away');
  return JSON.parse(value);
}

function check(cond, message) {
  if (!cond) throw new Error(message);
}

// The API itself, for what the page must show.
async function apiGet(p, token = FULL) {
  const r = await fetch(base + p, { headers: { Authorization: 'Bearer ' + token } });
  const body = await r.json();
  return { status: r.status, body, eventId: r.headers.get('patchfeed-event-id') };
}

// A screenshot of the window (scrolled to `sel`), when asked for.
async function shot(page, name, sel) {
  if (!shots) return;
  if (sel) await page.$eval(sel, (e) => e.scrollIntoView({ block: 'start' }));
  await new Promise((r) => setTimeout(r, 300)); // let the highlight settle in
  await page.screenshot({ path: path.join(shots, `console-${name}.png`) });
}

// Evaluates `fn(...args)` in the page every 100 ms until it is true, for
// at most WAIT ms. (puppeteer's waitForFunction builds its poller with
// `new Function`, which the page's Content-Security-Policy forbids in
// Firefox; a plain evaluate is not page script.)
async function until(page, fn, ...args) {
  const deadline = Date.now() + WAIT;
  for (;;) {
    if (await page.evaluate(fn, ...args).catch(() => false)) return;
    if (Date.now() > deadline) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 100));
  }
}

const present = (page, sel) => until(page, (s) => document.querySelector(s) !== null, sel);

// What the page shows in `sel`, parsed as the JSON it prints.
const shown = (page, sel) => page.$eval(sel, (e) => (e.textContent ? JSON.parse(e.textContent) : undefined));

async function waitShown(page, sel, want, what) {
  const wantText = JSON.stringify(want);
  try {
    await until(page,
      (s, w) => {
        const t = document.querySelector(s).textContent;
        try { return t !== '' && JSON.stringify(JSON.parse(t)) === w; } catch { return false; }
      },
      sel, wantText);
  } catch {
    const got = await page.$eval(sel, (e) => e.textContent);
    throw new Error(`${what}: ${sel} shows ${got.slice(0, 400)}, want ${wantText.slice(0, 400)}`);
  }
}

async function waitText(page, sel, needle, what) {
  try {
    await until(page,
      (s, n) => { const e = document.querySelector(s); return e && !e.hidden && e.textContent.includes(n); },
      sel, needle);
  } catch {
    const got = await page.$eval(sel, (e) => e.textContent).catch(() => '(missing)');
    throw new Error(`${what}: ${sel} shows ${JSON.stringify(got)}, want it to contain ${JSON.stringify(needle)}`);
  }
}

async function waitEventShown(page, id, what) {
  try {
    await until(page, (i) => document.querySelector('#at-label').dataset.eventId === i, id);
  } catch {
    const got = await page.$eval('#at-label', (e) => e.textContent);
    throw new Error(`${what}: the time-travel label says ${JSON.stringify(got)}, want event ${id}`);
  }
}

// The slider shows exactly `document?at=<event id>` and that event's patch.
async function checkPoint(page, ev, index, what) {
  await waitEventShown(page, ev.id, what);
  const want = await apiGet(`/v1/resources/ticker/document?at=${ev.id}`);
  check(want.status === 200 && want.eventId === ev.id, `${what}: document?at= answered ${want.status}`);
  await waitShown(page, '#at-doc', want.body, what);
  const ops = await page.$$eval('#at-patch li', (l) => l.map((e) => e.querySelector('code').textContent));
  check(JSON.stringify(ops) === JSON.stringify(ev.patch.map((o) => o.path === '' ? '(whole document)' : o.path)),
    `${what}: the patch beside it shows ${JSON.stringify(ops)}, want the paths of ${JSON.stringify(ev.patch)}`);
  const slider = await page.$eval('#slider', (s) => Number(s.value));
  check(slider === index, `${what}: the slider is at ${slider}, want ${index}`);
}

async function main() {
  check(fs.existsSync(BROWSER), `no browser at ${BROWSER}: apt-get install -y ${FIREFOX ? 'firefox-esr' : 'chromium'}`);
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'patchfeed-ui-'));
  const browser = await puppeteer.launch(FIREFOX ? {
    browser: 'firefox',
    executablePath: BROWSER,
    headless: true,
    userDataDir: profile,
    defaultViewport: { width: 1280, height: 860 },
  } : {
    executablePath: BROWSER,
    headless: true,
    userDataDir: profile,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--disable-dev-shm-usage'],
    defaultViewport: { width: 1280, height: 860 },
  });
  const errors = [];
  const newPage = async () => {
    const p = await browser.newPage();
    p.on('pageerror', (e) => {
      // Firefox reports every EventSource that a navigation ends as an
      // error of the page ("… was interrupted while the page was
      // loading"), even one the page closed on `pagehide`: not ours.
      if (FIREFOX && /was interrupted while the page was loading/.test(String(e))) return;
      errors.push(String(e));
    });
    p.on('dialog', (d) => d.accept());
    return p;
  };
  try {
    const page = await newPage();

    say({ step: 'the list shows the resources; the token leaves the address bar' });
    await page.goto(`${base}/ui?access_token=${FULL}`);
    const list = (await apiGet('/v1/resources')).body.resources;
    for (const r of list) await present(page, `#resources tr[data-id="${r.id}"]`);
    const rows = await page.$$eval('#resources tbody tr', (t) => t.map((r) => r.dataset.id));
    check(JSON.stringify(rows) === JSON.stringify(list.map((r) => r.id)), `rows ${rows} vs ${list.map((r) => r.id)}`);
    const loc = await page.evaluate(() => location.href);
    check(!loc.includes('access_token') && !loc.includes(FULL), `the token stayed in the address bar: ${loc}`);
    check(await page.evaluate(() => sessionStorage.getItem('patchfeed.token')) === FULL, 'the token is not in sessionStorage');
    const retained = await page.$eval('#resources tr[data-id="ticker"] td:nth-of-type(4)', (e) => e.textContent);
    check(retained === String(list.find((r) => r.id === 'ticker').retained_events), `events retained shows ${retained}`);

    say({ step: 'the live view reaches the upstream document after changes' });
    await page.goto(`${base}/ui/resources/ticker`);
    await waitShown(page, '#live-doc', (await ask({ doc: 'ticker' })).doc, 'first snapshot');
    for (let v = 1; v <= 5; v++) {
      const { doc } = await ask({ set: 'ticker', version: v });
      await waitShown(page, '#live-doc', doc, `after upstream version ${v}`);
    }
    check(await page.$('#live-doc .changed') !== null, 'the changed paths are not highlighted');
    const patches = await page.$$eval('#feed .feed-patch', (l) => l.length);
    check(patches >= 5, `the feed shows ${patches} patches, want at least 5`);
    await shot(page, 'live');

    say({ step: 'the slider, moved with the keyboard, shows exactly document?at=' });
    const events = (await apiGet('/v1/resources/ticker/history?limit=1000')).body.events;
    check(events.length === 6, `history has ${events.length} events, want 6`);
    await until(page, (n) => Number(document.querySelector('#slider').max) === n - 1, events.length);
    // Before anyone moves it, time travel follows the newest event.
    await checkPoint(page, events[5], 5, 'following now');
    check((await page.evaluate(() => location.search)) === '', 'following now puts a point in the address bar');
    await page.focus('#slider');
    await page.keyboard.press('Home');
    await page.keyboard.press('ArrowRight');
    await page.keyboard.press('ArrowRight');
    await checkPoint(page, events[2], 2, 'slider at event 3');
    await shot(page, 'time-travel', '#travel');
    check((await page.evaluate(() => location.search)) === `?at=${events[2].id}`, 'the address bar does not name the point');
    await page.keyboard.press('ArrowLeft');
    await checkPoint(page, events[1], 1, 'slider back to event 2');
    await page.click('#set-a');
    await page.focus('#slider');
    await page.keyboard.press('End');
    await checkPoint(page, events[5], 5, 'slider at the newest event');
    await page.click('#set-b');

    say({ step: 'A to B shows what changed between two points' });
    await waitText(page, '#compare-label', events[5].id, 'compare label');
    const a = (await apiGet(`/v1/resources/ticker/document?at=${events[1].id}`)).body;
    const b = (await apiGet(`/v1/resources/ticker/document?at=${events[5].id}`)).body;
    const ops = JSON.parse(await page.$eval('#compare-patch', (e) => e.textContent));
    const touched = [...new Set(ops.map((o) => o.path.split('/')[1]))].sort();
    const differ = Object.keys(b).filter((k) => JSON.stringify(a[k]) !== JSON.stringify(b[k])).sort();
    check(JSON.stringify(touched) === JSON.stringify(differ), `A→B touches ${touched}, the documents differ in ${differ}`);
    for (const o of ops.filter((o) => o.op !== 'remove')) {
      const want = o.path.split('/').slice(1).reduce((v, k) => v[k.replace(/~1/g, '/').replace(/~0/g, '~')], b);
      check(JSON.stringify(want) === JSON.stringify(o.value), `A→B ${o.op} ${o.path}: ${JSON.stringify(o.value)} is not B's`);
    }
    await page.$eval('#compare details', (d) => { d.open = true; });
    await shot(page, 'compare', '#compare');

    say({ step: 'a deep link restores the view, in this tab and a fresh one' });
    await page.goto(`${base}/ui/resources/ticker?at=${events[3].id}`);
    await checkPoint(page, events[3], 3, 'deep link');
    const fresh = await newPage();
    await fresh.goto(`${base}/ui/resources/ticker?access_token=${FULL}&at=${events[4].id}`);
    await checkPoint(fresh, events[4], 4, 'deep link with the token');
    const freshLoc = await fresh.evaluate(() => location.search);
    check(freshLoc === `?at=${events[4].id}`, `the fresh tab's address is ${freshLoc}`);
    await fresh.close();

    say({ step: 'the date-time input picks the point of that instant' });
    const when = Number(new Date(events[2].time));
    await page.$eval('#at-time', (e, ms) => {
      const d = new Date(ms);
      const z = (n, w = 2) => String(n).padStart(w, '0');
      e.value = `${d.getFullYear()}-${z(d.getMonth() + 1)}-${z(d.getDate())}T${z(d.getHours())}:${z(d.getMinutes())}:${z(d.getSeconds())}.${z(d.getMilliseconds(), 3)}`;
      e.dispatchEvent(new Event('change', { bubbles: true }));
    }, when);
    const byTime = await apiGet(`/v1/resources/ticker/document?at=${new Date(when).toISOString()}`);
    check(byTime.eventId === events[2].id, `document?at=<time of event 3> is ${byTime.eventId}`);
    await checkPoint(page, events[2], 2, 'date-time input');

    say({ step: 'a failing upstream shows its error as it happens' });
    await page.goto(`${base}/ui/resources/flaky`);
    await waitShown(page, '#live-doc', (await ask({ doc: 'flaky' })).doc, 'flaky snapshot');
    await ask({ fail: 'flaky', status: 503 });
    await waitText(page, '#r-error', 'upstream_status', 'the upstream error banner');
    await waitText(page, '#r-error', '503', 'the upstream error banner');
    await waitText(page, '#feed .feed-error', 'upstream_status', 'the feed');
    await waitText(page, '#r-state', 'failing', 'the state line');
    await shot(page, 'error');
    await page.goto(`${base}/ui`);
    await waitText(page, '#resources tr[data-id="flaky"]', 'upstream_status', 'the list');
    await shot(page, 'resources');

    say({ step: 'create and delete with the full token' });
    await page.type('#create-form [name=id]', 'made-here');
    await page.type('#create-form [name=url]', upstreamUrl);
    await page.$eval('#create-form [name=interval]', (e) => { e.value = '200'; });
    await page.click('#create-form button[type=submit]');
    await present(page, '#resources tr[data-id="made-here"]');
    await waitText(page, '#create-result', 'Created made-here', 'the create result');
    check((await apiGet('/v1/resources/made-here')).status === 200, 'made-here was not created');
    await page.click('#resources tr[data-id="made-here"] button.danger');
    await until(page, () => !document.querySelector('#resources tr[data-id="made-here"]'));
    check((await apiGet('/v1/resources/made-here')).status === 404, 'made-here was not deleted');

    say({ step: 'the read token may look, not create or delete: the refusal is shown' });
    const reader = await newPage();
    await reader.goto(`${base}/ui?access_token=${READ}`);
    await present(reader, '#resources tr[data-id="ticker"]');
    await reader.type('#create-form [name=id]', 'not-allowed');
    await reader.type('#create-form [name=url]', upstreamUrl);
    await reader.click('#create-form button[type=submit]');
    await waitText(reader, '#create-result', '403 forbidden', 'the refused create');
    check((await apiGet('/v1/resources/not-allowed')).status === 404, 'the read token created a resource');
    await reader.click('#resources tr[data-id="ticker"] button.danger');
    await waitText(reader, '#action-result', '403 forbidden', 'the refused delete');
    check((await apiGet('/v1/resources/ticker')).status === 200, 'the read token deleted a resource');
    await shot(reader, 'read-token');
    await reader.close();

    say({ step: 'without a token the page says what it needs' });
    const anon = await browser.createBrowserContext();
    const nobody = await anon.newPage();
    await nobody.goto(`${base}/ui`);
    await waitText(nobody, '#notice', '401 unauthorized', 'no token');
    await anon.close();

    check(errors.length === 0, 'errors in the page: ' + errors.join('; '));
  } finally {
    await browser.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
}

main().then(
  () => { say({ done: true }); process.exit(0); },
  (e) => { say({ fail: String(e && e.stack || e) }); process.exit(1); },
);
