// patchfeed web console. Plain JavaScript, no framework, no network but
// this server's /v1 API. Two views, chosen by the page's path:
//   /ui                  the resources, create and delete
//   /ui/resources/{id}   live document and feed (EventSource), time travel
//                        (history + document?at=), compare two points
// The token comes as ?access_token= once, then lives in sessionStorage.
'use strict';

const $ = (sel) => document.querySelector(sel);
const FEED_MAX = 200; // feed entries kept on screen
const HISTORY_PAGES = 50; // history pages read at most (1000 events each)
const HISTORY_KEEP = 10000; // newest events kept for the slider
const RENDER_MAX = 200000; // JSON characters rendered with per-path spans
const REFRESH_MS = 2000; // list and status refresh

// ---- token ----------------------------------------------------------

const TOKEN_KEY = 'patchfeed.token';

function takeTokenFromUrl() {
  const url = new URL(location.href);
  const t = url.searchParams.get('access_token');
  if (t === null) return;
  sessionStorage.setItem(TOKEN_KEY, t);
  url.searchParams.delete('access_token');
  history.replaceState(null, '', url.pathname + url.search + url.hash);
}

const token = () => sessionStorage.getItem(TOKEN_KEY) || '';

// ---- the API --------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
  toString() {
    return `${this.status} ${this.code}: ${this.message}`;
  }
}

// One request; the JSON error shape becomes an ApiError.
async function api(path, { method = 'GET', body } = {}) {
  const headers = {};
  if (token()) headers.Authorization = 'Bearer ' + token();
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let r;
  try {
    r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    throw new ApiError(0, 'unreachable', 'the server did not answer (' + e.message + ')');
  }
  const text = await r.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch { /* not JSON */ }
  if (!r.ok) {
    const err = (json && json.error) || {};
    throw new ApiError(r.status, err.code || 'http_' + r.status, err.message || text);
  }
  return { json, headers: r.headers };
}

const rpath = (id) => '/v1/resources/' + encodeURIComponent(id);

function notice(message) {
  const n = $('#notice');
  n.textContent = message || '';
  n.hidden = !message;
}

// A 401 asks for a token; anything else is shown as the server said it.
function showError(e) {
  if (e.status === 401) {
    notice(`${e}. This server needs a token: enter it at the top right.`);
    $('#token').focus();
  } else {
    notice(String(e));
  }
}

// ---- JSON Pointer and RFC 6902 --------------------------------------

class PatchError extends Error {}

function parsePointer(p) {
  if (p === '') return [];
  if (p[0] !== '/') throw new PatchError('not a JSON Pointer: ' + p);
  return p.slice(1).split('/').map((s) => s.replace(/~1/g, '/').replace(/~0/g, '~'));
}

const escapeToken = (k) => String(k).replace(/~/g, '~0').replace(/\//g, '~1');
const isObject = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);

function arrayIndex(arr, k, adding) {
  if (adding && k === '-') return arr.length;
  if (!/^(0|[1-9][0-9]*)$/.test(k)) throw new PatchError('not an array index: ' + k);
  const i = Number(k);
  if (i > arr.length || (!adding && i === arr.length)) throw new PatchError('index out of range: ' + k);
  return i;
}

function valueAt(doc, keys) {
  let v = doc;
  for (const k of keys) {
    if (Array.isArray(v)) v = v[arrayIndex(v, k, false)];
    else if (isObject(v) && Object.hasOwn(v, k)) v = v[k];
    else throw new PatchError('no value at /' + keys.map(escapeToken).join('/'));
  }
  return v;
}

// Sets a member without going through a setter (`__proto__` is a key too).
const setMember = (obj, k, value) =>
  Object.defineProperty(obj, k, { value, writable: true, enumerable: true, configurable: true });

function put(doc, keys, value, adding) {
  if (keys.length === 0) return value;
  const parent = valueAt(doc, keys.slice(0, -1));
  const k = keys[keys.length - 1];
  if (Array.isArray(parent)) {
    const i = arrayIndex(parent, k, adding);
    if (adding) parent.splice(i, 0, value);
    else parent[i] = value;
  } else if (isObject(parent)) {
    if (!adding && !Object.hasOwn(parent, k)) throw new PatchError('no member to replace: ' + k);
    setMember(parent, k, value);
  } else {
    throw new PatchError('cannot add below a scalar');
  }
  return doc;
}

function remove(doc, keys) {
  if (keys.length === 0) return null;
  const parent = valueAt(doc, keys.slice(0, -1));
  const k = keys[keys.length - 1];
  if (Array.isArray(parent)) parent.splice(arrayIndex(parent, k, false), 1);
  else if (isObject(parent) && Object.hasOwn(parent, k)) delete parent[k];
  else throw new PatchError('no member to remove: ' + k);
  return doc;
}

function equal(a, b) {
  if (a === b) return true;
  if (Array.isArray(a)) return Array.isArray(b) && a.length === b.length && a.every((x, i) => equal(x, b[i]));
  if (isObject(a) && isObject(b)) {
    const ka = Object.keys(a);
    return ka.length === Object.keys(b).length && ka.every((k) => Object.hasOwn(b, k) && equal(a[k], b[k]));
  }
  return false;
}

// Applies `ops` to a copy of `doc`: all of them or, on a PatchError, none.
function applyPatch(doc, ops) {
  let out = structuredClone(doc);
  for (const op of ops) {
    const keys = parsePointer(op.path);
    switch (op.op) {
      case 'add': out = put(out, keys, structuredClone(op.value), true); break;
      case 'replace': out = put(out, keys, structuredClone(op.value), false); break;
      case 'remove': out = remove(out, keys); break;
      case 'copy': out = put(out, keys, structuredClone(valueAt(out, parsePointer(op.from))), true); break;
      case 'move': {
        const from = parsePointer(op.from);
        const v = valueAt(out, from);
        out = put(remove(out, from), keys, v, true);
        break;
      }
      case 'test':
        if (!equal(valueAt(out, keys), op.value)) throw new PatchError('test failed at ' + op.path);
        break;
      default: throw new PatchError('unknown op ' + op.op);
    }
  }
  return out;
}

// The changes from `a` to `b` as RFC 6902 ops (objects member by member,
// arrays index by index; anything else replaced whole).
function diff(a, b, path = '', out = []) {
  if (equal(a, b)) return out;
  if (isObject(a) && isObject(b)) {
    for (const k of Object.keys(a)) {
      if (!Object.hasOwn(b, k)) out.push({ op: 'remove', path: path + '/' + escapeToken(k) });
    }
    for (const k of Object.keys(b)) {
      const p = path + '/' + escapeToken(k);
      if (!Object.hasOwn(a, k)) out.push({ op: 'add', path: p, value: b[k] });
      else diff(a[k], b[k], p, out);
    }
  } else if (Array.isArray(a) && Array.isArray(b)) {
    const common = Math.min(a.length, b.length);
    for (let i = 0; i < common; i++) diff(a[i], b[i], path + '/' + i, out);
    for (let i = a.length - 1; i >= common; i--) out.push({ op: 'remove', path: path + '/' + i });
    for (let i = common; i < b.length; i++) out.push({ op: 'add', path: path + '/' + i, value: b[i] });
  } else {
    out.push({ op: 'replace', path, value: b });
  }
  return out;
}

// ---- rendering ------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') e.className = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

// The document as `JSON.stringify(v, null, 2)` would print it, with each
// value in a span that knows its JSON Pointer (for highlighting).
function renderJson(pre, value) {
  pre.replaceChildren();
  const text = JSON.stringify(value, null, 2);
  if (text === undefined || text.length > RENDER_MAX) {
    pre.textContent = text === undefined ? '' : text;
    return;
  }
  const walk = (parent, v, path, depth) => {
    const span = el('span', { 'data-path': path });
    parent.append(span);
    const pad = '  '.repeat(depth + 1);
    const entries = Array.isArray(v) ? v.map((x, i) => [i, x]) : isObject(v) ? Object.entries(v) : null;
    if (entries === null) {
      span.className = 'v-' + (v === null ? 'null' : typeof v);
      span.textContent = JSON.stringify(v);
      return;
    }
    const [open, close] = Array.isArray(v) ? ['[', ']'] : ['{', '}'];
    if (entries.length === 0) {
      span.textContent = open + close;
      return;
    }
    span.append(open);
    entries.forEach(([k, x], i) => {
      span.append('\n' + pad);
      if (!Array.isArray(v)) span.append(el('span', { class: 'key' }, JSON.stringify(k)), ': ');
      walk(span, x, path + '/' + escapeToken(k), depth + 1);
      if (i < entries.length - 1) span.append(',');
    });
    span.append('\n' + '  '.repeat(depth) + close);
  };
  walk(pre, value, '', 0);
}

// Marks the values a patch touched (for a removal, the parent) for a moment.
function highlight(pre, ops) {
  const spans = new Map([...pre.querySelectorAll('[data-path]')].map((s) => [s.dataset.path, s]));
  for (const op of ops) {
    let p = op.op === 'remove' ? op.path.replace(/\/[^/]*$/, '') : op.path;
    while (!spans.has(p) && p !== '') p = p.replace(/\/[^/]*$/, '');
    const s = spans.get(p);
    if (s) s.classList.add('changed');
  }
}

const short = (v) => {
  const t = JSON.stringify(v);
  return t.length > 80 ? t.slice(0, 77) + '…' : t;
};

// One op, readable: "replace /price = 12.5".
function describe(op) {
  const path = op.path === '' ? '(whole document)' : op.path;
  switch (op.op) {
    case 'add': return ['add', path, '= ' + short(op.value)];
    case 'replace': return ['replace', path, '= ' + short(op.value)];
    case 'remove': return ['remove', path, ''];
    case 'move': return ['move', path, '← ' + op.from];
    case 'copy': return ['copy', path, '← ' + op.from];
    default: return [op.op, path, op.value === undefined ? '' : short(op.value)];
  }
}

function renderOps(list, ops) {
  list.replaceChildren(...ops.map((op) => {
    const [name, path, rest] = describe(op);
    return el('li', { class: 'op op-' + name }, el('span', { class: 'op-name' }, name), ' ', el('code', {}, path), ' ', rest);
  }));
  if (ops.length === 0) list.append(el('li', { class: 'muted' }, 'no change'));
}

// An event id's time (the first 10 characters of a ULID, Crockford base32).
function ulidTime(id) {
  const B32 = '0123456789ABCDEFGHJKMNPQRSTVWXYZ';
  let t = 0;
  for (const c of id.slice(0, 10).toUpperCase()) t = t * 32 + B32.indexOf(c);
  return new Date(t);
}

const fmtTime = (d) => d.toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'medium' });

// A Date as a datetime-local value, in local time, to the millisecond.
function localInput(d) {
  const z = (n, w = 2) => String(n).padStart(w, '0');
  return `${d.getFullYear()}-${z(d.getMonth() + 1)}-${z(d.getDate())}T${z(d.getHours())}:${z(d.getMinutes())}:${z(d.getSeconds())}.${z(d.getMilliseconds(), 3)}`;
}

// A resource's state: a short label, and the upstream's error if failing.
function stateOf(r) {
  if (r.quarantined) return { cls: 'failing', text: 'quarantined', detail: r.quarantined.reason };
  if (r.last_error) return { cls: 'failing', text: 'failing', detail: `${r.last_error.code}: ${r.last_error.message}` };
  if (r.push) return { cls: 'push', text: 'push' };
  return { cls: 'polling', text: `polling every ${r.interval_ms / 1000}s` };
}

const plural = (n, word) => `${n} ${word}${n === 1 ? '' : 's'}`;

function crumbs(id) {
  const nav = $('#crumbs');
  nav.replaceChildren(el('a', { href: '/ui' }, 'Resources'));
  if (id !== undefined) nav.append(' / ', el('span', { 'aria-current': 'page' }, id));
}

// ---- the resources view ---------------------------------------------

async function listView() {
  crumbs();
  $('#list-view').hidden = false;
  document.title = 'Resources · patchfeed';
  const form = $('#create-form');
  const syncKind = () => {
    const push = form.kind.value === 'push';
    form.url.disabled = push;
    form.interval.disabled = push;
  };
  form.addEventListener('change', syncKind);
  syncKind();
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const out = $('#create-result');
    const body = {};
    if (form.id.value.trim()) body.id = form.id.value.trim();
    if (form.kind.value === 'push') body.push = true;
    else {
      body.url = form.url.value.trim();
      if (form.interval.value) body.interval_ms = Number(form.interval.value);
    }
    try {
      const { json } = await api('/v1/resources', { method: 'POST', body });
      out.className = 'result ok';
      out.textContent = `Created ${json.id}.`;
      form.id.value = '';
      await refreshList();
    } catch (e) {
      out.className = 'result refused';
      out.textContent = `Refused — ${e}`;
    }
  });
  for (;;) {
    await refreshList();
    await new Promise((r) => setTimeout(r, REFRESH_MS));
  }
}

async function refreshList() {
  let list;
  try {
    list = (await api('/v1/resources')).json.resources;
    notice('');
  } catch (e) {
    showError(e);
    return;
  }
  // Rows are kept and updated in place, so that a refresh neither moves
  // the keyboard focus nor replaces what is being clicked.
  const tbody = $('#resources tbody');
  const old = new Map([...tbody.rows].map((tr) => [tr.dataset.id, tr]));
  const rows = list.map((r) => {
    let tr = old.get(r.id);
    if (!tr) {
      const del = el('button', { type: 'button', class: 'danger', 'aria-label': 'Delete ' + r.id }, 'Delete');
      del.addEventListener('click', () => deleteResource(r.id));
      tr = el('tr', { 'data-id': r.id },
        el('th', { scope: 'row' }, el('a', { href: '/ui/resources/' + encodeURIComponent(r.id) }, r.id)),
        el('td', { class: 'url' }), el('td'), el('td'), el('td', { class: 'num' }), el('td', { class: 'num' }),
        el('td', {}, del));
    }
    const st = stateOf(r);
    const last = r.last_event_time ? el('time', { datetime: r.last_event_time }, fmtTime(new Date(r.last_event_time))) : '—';
    const cells = [
      [r.url ?? '(push)'],
      [el('span', { class: 'state ' + st.cls }, st.text), st.detail ? el('div', { class: 'error-text' }, st.detail) : ''],
      [last],
      [String(r.retained_events ?? '—')],
      [String(r.subscribers)],
    ];
    cells.forEach((content, i) => {
      const td = tr.cells[i + 1];
      const next = el('td', {}, ...content);
      if (td.innerHTML !== next.innerHTML) td.replaceChildren(...next.childNodes);
    });
    return tr;
  });
  const same = rows.length === tbody.rows.length && rows.every((tr, i) => tbody.rows[i] === tr);
  if (!same) tbody.replaceChildren(...rows);
  $('#empty').hidden = list.length > 0;
}

async function deleteResource(id) {
  if (!confirm(`Delete resource "${id}" and its whole history?`)) return;
  const out = $('#action-result');
  try {
    await api(rpath(id), { method: 'DELETE' });
    out.className = 'result ok';
    out.textContent = `Deleted ${id}.`;
    await refreshList();
  } catch (e) {
    out.className = 'result refused';
    out.textContent = `Could not delete ${id} — ${e}`;
  }
}

// ---- one resource ---------------------------------------------------

const view = {
  id: '',
  live: undefined, // the live document (undefined until the snapshot)
  events: [], // retained events, oldest first: {id, time, patch}
  index: -1, // the slider's event, or -1 while showing "now"
  a: null, // compare from (event id)
  b: null, // compare to (event id)
  seq: 0, // the newest time-travel request; older answers are dropped
  started: false, // history loaded, the time-travel view shown
};

async function resourceView(id) {
  view.id = id;
  crumbs(id);
  document.title = id + ' · patchfeed';
  $('#r-title').textContent = id;
  $('#resource-view').hidden = false;
  // A stream opened before `load` would count as part of loading the page
  // for some browsers (Firefox), which then report it cut on leaving.
  if (document.readyState !== 'complete') await new Promise((r) => addEventListener('load', r, { once: true }));
  openLive();
  wireTravel();
  refreshStatus();
  await loadHistory();
  view.started = true;
  const at = new URL(location.href).searchParams.get('at');
  if (at) await goTo(at);
  else showNow();
}

// The status line, every REFRESH_MS or sooner when woken (a new event);
// one request at a time, until the resource is gone.
let wakeStatus = () => {};
async function refreshStatus() {
  for (;;) {
    try {
      const r = (await api(rpath(view.id))).json;
      const st = stateOf(r);
      $('#r-state').className = 'state ' + st.cls;
      $('#r-state').textContent = st.detail ? `${st.text}: ${st.detail}` : st.text;
      const parts = [r.url ?? 'push resource', plural(r.retained_events, 'event') + ' retained', plural(r.subscribers, 'subscriber')];
      if (r.horizon) parts.push('history from ' + fmtTime(ulidTime(r.horizon)));
      $('#r-meta').textContent = parts.join(' · ');
      if (!r.last_error) $('#r-error').hidden = true;
    } catch (e) {
      showError(e);
      if (e.status === 404) return; // deleted: stop asking
    }
    await new Promise((r) => {
      const t = setTimeout(r, REFRESH_MS);
      wakeStatus = () => { clearTimeout(t); setTimeout(r, 200); };
    });
  }
}

function feedEntry(kind, id, ops, error) {
  const time = id ? ulidTime(id) : new Date();
  const feed = $('#feed');
  const top = feed.firstElementChild;
  const text = error && `${error.code}${error.status ? ' (' + error.status + ')' : ''}: ${error.message}`;
  if (error && top && top.dataset.error === text) {
    // The same failure again (each retry): one entry, counted.
    top.dataset.count = String(Number(top.dataset.count) + 1);
    top.querySelector('time').textContent = time.toLocaleTimeString();
    top.querySelector('.count').textContent = ` ×${top.dataset.count}`;
    return;
  }
  const li = el('li', { class: 'feed-' + kind },
    el('time', { datetime: time.toISOString() }, time.toLocaleTimeString()), ' ',
    el('span', { class: 'kind' }, kind));
  if (id) {
    const a = el('a', { href: '?at=' + id, class: 'id' }, id);
    a.addEventListener('click', (ev) => { ev.preventDefault(); goTo(id); });
    li.append(' ', a);
  }
  if (ops) {
    const list = el('ol', { class: 'ops' });
    renderOps(list, ops);
    li.append(list);
  }
  if (error) {
    li.dataset.error = text;
    li.dataset.count = '1';
    li.append(el('span', { class: 'count' }), el('div', { class: 'error-text' }, text));
  }
  feed.prepend(li);
  while (feed.children.length > FEED_MAX) feed.lastElementChild.remove();
}

function openLive() {
  const q = token() ? '?access_token=' + encodeURIComponent(token()) : '';
  const es = new EventSource(rpath(view.id) + '/events' + q);
  // Leaving the page ends the stream (rather than the browser cutting it).
  addEventListener('pagehide', () => es.close(), { once: true });
  const status = $('#live-status');
  const show = (ops) => {
    renderJson($('#live-doc'), view.live);
    highlight($('#live-doc'), ops);
  };
  es.addEventListener('open', () => { status.textContent = 'live'; wakeStatus(); });
  es.addEventListener('snapshot', (e) => {
    view.live = JSON.parse(e.data);
    $('#live-id').textContent = e.lastEventId;
    show([]);
    feedEntry('snapshot', e.lastEventId, null, null);
  });
  es.addEventListener('patch', (e) => {
    const ops = JSON.parse(e.data);
    try {
      view.live = applyPatch(view.live, ops);
    } catch (err) {
      // Never shown wrong: start again from a snapshot.
      status.textContent = 'a patch did not apply (' + err.message + '); reconnecting';
      es.close();
      setTimeout(openLive, 1000);
      return;
    }
    $('#live-id').textContent = e.lastEventId;
    $('#r-error').hidden = true;
    show(ops);
    wakeStatus();
    feedEntry('patch', e.lastEventId, ops, null);
    addEvent({ id: e.lastEventId, time: ulidTime(e.lastEventId).toISOString(), patch: ops });
  });
  es.addEventListener('error', (e) => {
    if (e.data !== undefined) {
      // The upstream failed: in-band, the stream goes on.
      const err = JSON.parse(e.data);
      const box = $('#r-error');
      box.textContent = `Upstream failing — ${err.code}${err.status ? ' (HTTP ' + err.status + ')' : ''}: ${err.message}`;
      box.hidden = false;
      feedEntry('error', null, null, err);
      return;
    }
    if (es.readyState === EventSource.CLOSED) {
      status.textContent = 'stream closed';
      api(rpath(view.id)).catch(showError);
    } else {
      status.textContent = 'reconnecting…';
    }
  });
}

// Every retained event, in bounded pages; the newest HISTORY_KEEP stay.
async function loadHistory() {
  let after = null;
  const events = [];
  try {
    for (let page = 0; page < HISTORY_PAGES; page++) {
      const q = 'limit=1000' + (after ? '&after=' + after : '');
      const { json } = await api(rpath(view.id) + '/history?' + q);
      events.push(...json.events);
      if (events.length > HISTORY_KEEP) events.splice(0, events.length - HISTORY_KEEP);
      after = json.next_after;
      if (!after) break;
    }
  } catch (e) {
    showError(e);
  }
  // Live patches that arrived meanwhile are newer than the pages read.
  const newer = view.events.filter((e) => !events.length || e.id > events[events.length - 1].id);
  view.events = events.concat(newer);
  syncSlider();
}

function addEvent(ev) {
  const last = view.events[view.events.length - 1];
  if (last && ev.id <= last.id) return;
  view.events.push(ev);
  if (view.events.length > HISTORY_KEEP) {
    view.events.shift();
    if (view.index > 0) view.index--;
  }
  if (view.index === -1 && view.started) goTo(ev.id, true);
  else syncSlider();
}

function syncSlider() {
  const s = $('#slider');
  const n = view.events.length;
  s.disabled = n === 0;
  s.max = String(Math.max(n - 1, 0));
  s.value = String(view.index >= 0 ? view.index : Math.max(n - 1, 0));
  const ev = view.events[Number(s.value)];
  s.setAttribute('aria-valuetext', ev ? `event ${Number(s.value) + 1} of ${n}, ${fmtTime(ulidTime(ev.id))}` : 'no events yet');
}

function wireTravel() {
  const s = $('#slider');
  let timer = 0;
  s.addEventListener('input', () => {
    clearTimeout(timer);
    const ev = view.events[Number(s.value)];
    if (ev) timer = setTimeout(() => goTo(ev.id), 120);
  });
  $('#at-time').addEventListener('change', (e) => {
    if (e.target.value) goTo(new Date(e.target.value).toISOString());
  });
  $('#to-live').addEventListener('click', showNow);
  $('#set-a').addEventListener('click', () => { view.a = currentId(); compare(); });
  $('#set-b').addEventListener('click', () => { view.b = currentId(); compare(); });
}

const currentId = () => (view.events[view.index] || view.events[view.events.length - 1] || {}).id || null;

// Shows the document as of `point` (an event id or a time) and the patch
// of the event that made it; puts the point in the address bar, unless
// `follow` (showing "now", moving on with each new event).
async function goTo(point, follow = false) {
  const seq = ++view.seq;
  const url = new URL(location.href);
  if (follow) url.searchParams.delete('at');
  else url.searchParams.set('at', point);
  history.replaceState(null, '', url.pathname + url.search);
  const label = $('#at-label');
  try {
    const { json, headers } = await api(rpath(view.id) + '/document?at=' + encodeURIComponent(point));
    if (seq !== view.seq) return;
    const id = headers.get('Patchfeed-Event-Id');
    let i = view.events.findIndex((e) => e.id === id);
    if (i < 0 && id) {
      await loadHistory(); // older or newer than what the slider holds
      if (seq !== view.seq) return;
      i = view.events.findIndex((e) => e.id === id);
    }
    view.index = follow ? -1 : i;
    syncSlider();
    renderJson($('#at-doc'), json);
    const ev = view.events[i];
    renderOps($('#at-patch'), ev ? ev.patch : []);
    if (ev) highlight($('#at-doc'), ev.patch);
    const when = ulidTime(id);
    $('#at-time').value = localInput(when);
    const which = i >= 0 ? ` — ${i + 1} of ${view.events.length}` : '';
    label.textContent = follow ? `Now: event ${id} (${fmtTime(when)})${which}, following new events`
      : `As of ${point === id ? 'event' : point + ', that is event'} ${id} (${fmtTime(when)})${which}`;
    label.dataset.eventId = id;
  } catch (e) {
    if (seq !== view.seq) return;
    $('#at-doc').textContent = '';
    $('#at-patch').replaceChildren();
    label.textContent = e.code === 'not_yet' ? `${point} is before the first version.`
      : e.code === 'compacted' ? `${point} is before the retained history (compacted).` : String(e);
    delete label.dataset.eventId;
  }
}

// The newest event, and every one after it as it arrives.
function showNow() {
  view.index = -1;
  const last = view.events[view.events.length - 1];
  if (last) goTo(last.id, true);
  else syncSlider();
}

async function compare() {
  const label = $('#compare-label');
  if (!view.a || !view.b) {
    label.textContent = `A = ${view.a || '…'}, B = ${view.b || '…'}: pick both with the slider.`;
    return;
  }
  try {
    const [a, b] = await Promise.all([view.a, view.b].map((p) => api(rpath(view.id) + '/document?at=' + p)));
    const ops = diff(a.json, b.json);
    const between = view.events.filter((e) => e.id > view.a && e.id <= view.b).length;
    label.textContent = `From A = ${view.a} (${fmtTime(ulidTime(view.a))}) to B = ${view.b} (${fmtTime(ulidTime(view.b))}): ` +
      `${ops.length} change${ops.length === 1 ? '' : 's'}` + (view.a < view.b ? `, over ${between} event${between === 1 ? '' : 's'}` : '');
    renderOps($('#compare-ops'), ops);
    $('#compare-patch').textContent = JSON.stringify(ops, null, 2);
  } catch (e) {
    label.textContent = String(e);
  }
}

// ---- start ----------------------------------------------------------

function start() {
  takeTokenFromUrl();
  $('#token').value = token();
  $('#token-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $('#token').value);
    location.reload();
  });
  const m = location.pathname.match(/^\/ui\/resources\/([^/]+)$/);
  if (m) resourceView(decodeURIComponent(m[1]));
  else listView();
}

start();
