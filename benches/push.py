"""Issue 18: durable PUTs per second from an external client, and the time
from an upstream change to an SSE client with `POST …/poll` against the
poll timer alone.

usage: python3 benches/push.py BINARY [SECONDS] [ROUNDS]

Starts BINARY (a patchfeed build) on a temp data dir under the current
directory (a real disk, not tmpfs) with 1,000 push resources and two
resources polled every second from a loopback upstream served here.

1. PUT throughput: CONNS keep-alive connections, each sending
   `PUT …/document` one after another (each answered only once durable),
   for SECONDS (default 10) against one resource, then against 1,000
   (round robin). Prints 200s per second and the median latency.
2. Change to client: ROUNDS (default 20) times, after a random pause
   (0–1 s, so changes fall anywhere in the poll period), both upstream
   documents change at once; `/trig` is then triggered with
   `POST …/poll`, `/timer` is left to its timer. An SSE client on each
   notes when the patch arrives. Prints the medians side by side.

Every loop is bounded in count and time; the server is ended by its pid.
Figures in docs/BENCHMARKS.md ("Push and poll now").
"""
import asyncio, http.server, json, os, random, signal, socket, statistics, subprocess, sys, tempfile, threading, time, urllib.request

binary = sys.argv[1]
secs = float(sys.argv[2]) if len(sys.argv) > 2 else 10.0
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 20
CONNS = 64
N = 1000

docs = {"/timer": {"v": 0}, "/trig": {"v": 0}}
class U(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_GET(self):
        body = json.dumps(docs.get(self.path, {})).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), U)
threading.Thread(target=srv.serve_forever, daemon=True).start()
up = f"http://127.0.0.1:{srv.server_address[1]}"

d = tempfile.mkdtemp(dir=".")
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
cfg = f'listen = "127.0.0.1:{port}"\ndata_dir = "{d}/data"\nallow_private_upstreams = true\n'
for name in ("timer", "trig"):
    cfg += f'[[resource]]\nid = "{name}"\nurl = "{up}/{name}"\ninterval = "1s"\n'
for i in range(N):
    cfg += f'[[resource]]\nid = "p{i}"\npush = true\n'
open(f"{d}/c.toml", "w").write(cfg)
proc = subprocess.Popen([binary, "serve", "--config", f"{d}/c.toml"], stderr=subprocess.DEVNULL)
base = f"http://127.0.0.1:{port}"
try:
    for _ in range(300):
        try:
            urllib.request.urlopen(base + "/healthz", timeout=1); break
        except Exception:
            time.sleep(0.1)
    else:
        sys.exit("the server did not start")

    async def writer(ids, stop, lat, k):
        r, w = await asyncio.open_connection("127.0.0.1", port)
        n = 0
        while time.monotonic() < stop:
            rid = ids[(k + n * CONNS) % len(ids)]
            body = json.dumps({"n": n, "k": k}).encode()
            t = time.monotonic()
            w.write(f"PUT /v1/resources/{rid}/document HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n".encode() + body)
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
            length = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")][0].split(b":")[1])
            await asyncio.wait_for(r.readexactly(length), 10)
            assert head.startswith(b"HTTP/1.1 200"), head
            lat.append(time.monotonic() - t)
            n += 1
        w.close()

    async def load(ids):
        lat = []
        stop = time.monotonic() + secs
        t0 = time.monotonic()
        await asyncio.gather(*(writer(ids, stop, lat, k) for k in range(CONNS)))
        return len(lat) / (time.monotonic() - t0), statistics.median(lat) * 1000

    for label, ids in (("1 resource", ["p0"]), (f"{N} resources", [f"p{i}" for i in range(N)])):
        rate, p50 = asyncio.run(load(ids))
        print(f"PUT {label}: {rate:,.0f} durable PUTs/s, median {p50:.2f} ms ({CONNS} connections, {secs:.0f} s)")

    def sse(rid):
        c = socket.create_connection(("127.0.0.1", port), timeout=10)
        c.sendall(f"GET /v1/resources/{rid}/events HTTP/1.1\r\nhost: x\r\n\r\n".encode())
        return c.makefile("rb")
    def wait_patch(f, want, out, i):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            line = f.readline()
            if not line:
                return
            if line.startswith(b"data: ") and f'"value":{want}}}'.encode() in line.replace(b" ", b""):
                out[i] = time.monotonic(); return
    streams = {name: sse(name) for name in ("timer", "trig")}
    time.sleep(1.5)  # both have their first version and the snapshot is read
    lat = {"timer": [], "trig": []}
    for r in range(1, rounds + 1):
        time.sleep(random.random())
        got = {}
        th = [threading.Thread(target=wait_patch, args=(streams[n], r, got, n)) for n in streams]
        for t in th: t.start()
        t0 = time.monotonic()
        docs["/timer"] = {"v": r}; docs["/trig"] = {"v": r}
        urllib.request.urlopen(urllib.request.Request(base + "/v1/resources/trig/poll", method="POST"), timeout=5)
        for t in th: t.join(12)
        for n in streams:
            if n in got:
                lat[n].append((got[n] - t0) * 1000)
    for n, label in (("trig", "POST …/poll"), ("timer", "timer alone (1 s)")):
        v = lat[n]
        print(f"change to client, {label}: median {statistics.median(v):.1f} ms, max {max(v):.1f} ms ({len(v)}/{rounds} rounds)")
finally:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    srv.shutdown()
    subprocess.run(["rm", "-rf", d])
