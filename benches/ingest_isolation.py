"""Issue 17: a control resource's patches per window, beside a hostile one.

usage: python3 benches/ingest_isolation.py BINARY WITH_HOSTILE(0|1) [SECONDS]

Starts BINARY (a patchfeed build) on a temp data dir against a loopback
upstream served from this script: `/control` is {"tick": n}, n the 100 ms
periods since start; `/hostile` alternates two versions of a 1 MB document
nested 120 arrays deep around 500,000 elements that all flip. Both are
polled every 100 ms. Once the hostile resource has its first version, it
counts the control's `event: patch` frames over SECONDS (default 10) and
prints them with the budget fallbacks from /metrics. Figures in
docs/BENCHMARKS.md ("Ingest isolation").
"""
import http.server, json, os, socket, subprocess, sys, tempfile, threading, time, urllib.request

binary, with_hostile = sys.argv[1], sys.argv[2] == "1"
secs = float(sys.argv[3]) if len(sys.argv) > 3 else 10.0
n = 500_000
def hostile(v):
    core = ",".join(str((i + v) % 2) for i in range(n))
    return ("[" * 120 + "[" + core + "]" + "]" * 120).encode()
H = [hostile(0), hostile(1)]
start = time.time()
count = [0]
class U(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_GET(self):
        if self.path == "/hostile":
            body = H[count[0] % 2]; count[0] += 1
        else:
            body = json.dumps({"tick": int((time.time() - start) * 10)}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), U)
threading.Thread(target=srv.serve_forever, daemon=True).start()
up = f"http://127.0.0.1:{srv.server_address[1]}"
d = tempfile.mkdtemp()
cfg = "allow_private_upstreams = true\n"
res = [("control", up + "/control")] + ([("hostile", up + "/hostile")] if with_hostile else [])
for rid, url in res:
    cfg += f'[[resource]]\nid = "{rid}"\nurl = "{url}"\ninterval = "100ms"\nsnapshot_every = 3\n'
open(f"{d}/c.toml", "w").write(cfg)
p = subprocess.Popen([binary, "serve", "--listen", "127.0.0.1:0", "--config", f"{d}/c.toml", "--data-dir", f"{d}/data"],
                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
try:
    base = p.stdout.readline().strip().split(" on ")[1]
    def get(path):
        return json.loads(urllib.request.urlopen(base + path, timeout=20).read())
    if with_hostile:
        for _ in range(600):
            if get("/v1/resources/hostile")["last_event_id"]: break
            time.sleep(0.05)
    r = urllib.request.urlopen(base + "/v1/resources/control/events", timeout=secs + 5)
    while not r.readline().startswith(b"event: snapshot"): pass
    patches, t0 = 0, time.time()
    try:
        while time.time() - t0 < secs:
            line = r.readline()
            if line.startswith(b"event: patch"): patches += 1
    except (socket.timeout, TimeoutError):
        pass
    m = urllib.request.urlopen(base + "/metrics", timeout=20).read().decode()
    fb = [l for l in m.splitlines() if l.startswith("patchfeed_diff_budget_exceeded_total ")]
    print(f"hostile={int(with_hostile)} control_patches={patches} in {secs}s hostile_requests={count[0]} {fb[0] if fb else ''}")
finally:
    p.terminate(); p.wait()
