"""Issue 18: one poll of a paginated upstream, PAGES pages x ITEMS items,
from a loopback upstream served here.

usage: python3 benches/pages.py BINARY [ROUNDS] [PAGES] [ITEMS]

Starts BINARY (a patchfeed build) on a temp data dir under the current
directory with two paginated resources (`Link: rel="next"`, polled every
hour, so only `POST …/poll` polls them): `plain`, whose upstream sends no
validators (every page is fetched every poll), and `etag`, whose pages
carry an ETag each (only a changed page is fetched again). Each of ROUNDS
rounds (default 10) changes one item on a random page of both, then polls
`plain`, then `etag`, then `etag` again with nothing changed (every page
304), one at a time, waiting for each poll's verdict. For each kind of
poll it prints the median of the server's own `last_poll.duration_ms`
and of the server's CPU time over the poll (user + system, from
/proc/<pid>/stat), and checks the figures the view reports.

Every loop is bounded in count and time; the server is ended by its pid.
Figures in docs/BENCHMARKS.md ("Paginated upstreams").
"""
import http.server, json, os, random, socket, statistics, subprocess, sys, tempfile, threading, time, urllib.request
from urllib.parse import urlsplit, parse_qs

binary = sys.argv[1]
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 10
PAGES = int(sys.argv[3]) if len(sys.argv) > 3 else 100
ITEMS = int(sys.argv[4]) if len(sys.argv) > 4 else 1000

pages = [[{"id": p * ITEMS + i, "name": f"item {p * ITEMS + i}", "v": 0} for i in range(ITEMS)] for p in range(PAGES)]
versions = [0] * PAGES
bodies = [json.dumps(p).encode() for p in pages]
lock = threading.Lock()

class U(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_GET(self):
        u = urlsplit(self.path)
        n = int(parse_qs(u.query).get("page", ["0"])[0])
        etags = u.path == "/etag"
        with lock:
            body, tag = bodies[n], f'"p{n}v{versions[n]}"'
        if etags and self.headers.get("if-none-match") == tag:
            self.send_response(304)
            self.send_header("etag", tag)
            self.send_header("content-length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        if etags:
            self.send_header("etag", tag)
        if n + 1 < PAGES:
            self.send_header("link", f'<{u.path}?page={n + 1}>; rel="next"')
        self.end_headers()
        self.wfile.write(body)

srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), U)
threading.Thread(target=srv.serve_forever, daemon=True).start()
up = f"http://127.0.0.1:{srv.server_address[1]}"

d = tempfile.mkdtemp(dir=".")
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
cfg = f'listen = "127.0.0.1:{port}"\ndata_dir = "{d}/data"\nallow_private_upstreams = true\n'
for name in ("plain", "etag"):
    cfg += f'[[resource]]\nid = "{name}"\nurl = "{up}/{name}?page=0"\ninterval = "1h"\npages = {{ next = "link", max = {PAGES} }}\n'
open(f"{d}/c.toml", "w").write(cfg)
proc = subprocess.Popen([binary, "serve", "--config", f"{d}/c.toml"], stderr=subprocess.DEVNULL)
base = f"http://127.0.0.1:{port}"
tick = os.sysconf("SC_CLK_TCK")

def cpu():
    f = open(f"/proc/{proc.pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / tick

def view(rid):
    return json.load(urllib.request.urlopen(f"{base}/v1/resources/{rid}", timeout=10))

def poll(rid):
    """Triggers a poll of rid and waits (at most 120 s) for its verdict."""
    before = view(rid)["last_polled"]
    c0 = cpu()
    req = urllib.request.Request(f"{base}/v1/resources/{rid}/poll", method="POST")
    assert urllib.request.urlopen(req, timeout=10).status == 202
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        v = view(rid)
        if v["last_polled"] != before and v["polling"] is None:
            return v, cpu() - c0
        time.sleep(0.005)
    sys.exit(f"no verdict for {rid}")

try:
    for _ in range(300):
        try:
            urllib.request.urlopen(base + "/healthz", timeout=1); break
        except Exception:
            time.sleep(0.1)
    else:
        sys.exit("the server did not start")
    # The first poll of each (at start-up) fetches every page.
    for rid in ("plain", "etag"):
        deadline = time.monotonic() + 120
        while view(rid)["last_poll"] is None and time.monotonic() < deadline:
            time.sleep(0.05)
    out = {"plain, all pages fetched, one changed": [], "etag, one page changed, the rest 304": [], "etag, all 304": []}
    for r in range(rounds):
        p = random.randrange(PAGES)
        with lock:
            pages[p][random.randrange(ITEMS)]["v"] += 1
            bodies[p] = json.dumps(pages[p]).encode()
            versions[p] += 1
        for key, rid, want in (("plain, all pages fetched, one changed", "plain", ("changed", 0)),
                               ("etag, one page changed, the rest 304", "etag", ("changed", PAGES - 1)),
                               ("etag, all 304", "etag", ("not_modified", PAGES))):
            v, c = poll(rid)
            lp = v["last_poll"]
            assert (lp["outcome"], lp["not_modified"]) == want, (key, lp)
            assert lp["pages"] == PAGES and lp["items"] == PAGES * ITEMS, lp
            out[key].append((lp["duration_ms"], c, lp["bytes"]))
    print(f"{PAGES} pages x {ITEMS} items ({sum(map(len, bodies))} bytes), {rounds} rounds, load average {os.getloadavg()[0]:.2f}")
    for k, xs in out.items():
        print(f"{k:40s} median {statistics.median(x[0] for x in xs):7.1f} ms, CPU {1000 * statistics.median(x[1] for x in xs):7.1f} ms, {statistics.median(x[2] for x in xs):.0f} bytes received")
finally:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    srv.shutdown()
    subprocess.run(["rm", "-rf", d])
