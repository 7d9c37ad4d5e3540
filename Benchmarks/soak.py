#!/usr/bin/python3
"""Soak: hours of an operator's week in minutes. Runs edgemux (--edgemux, a release binary) in
front of real backends for --minutes (default 10) with churn and trouble mixed in, and fails if
any well-behaved request failed or if descriptors or RSS grow without bound.

Well-behaved load, all the time: HTTP/1.1 clients on keep-alive and on a new TLS connection per
request (request mode, to Python's http.server), HTTP/2 bursts by h2load (request mode, to
nghttpd), gRPC unary calls on one channel (relay mode, to a grpcio server). Mixed in: clients
that stop half way through a head (slowloris), send garbage or half a ClientHello, open HTTP/2
connections and drop them; routes to a backend that never answers (edgemux must answer 504)
and to one that resets half way through a response (edgemux must end that client's response
and nobody else's). A reload (SIGHUP, the config changed) every --reload-every seconds.

Every 10 s it prints open descriptors, RSS and the counts so far. Bounded: every client has a
timeout, every loop ends at the deadline, every process started here is stopped by its PID."""
import argparse
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--edgemux", required=True)
p.add_argument("--certs", required=True, help="folder with ca.pem, localhost.pem, localhost.key")
p.add_argument("--minutes", type=float, default=10)
p.add_argument("--reload-every", type=float, default=10)
p.add_argument("--growth", type=float, default=0.20, help="allowed RSS growth from the first to the last third")
a = p.parse_args()
if not 0.2 <= a.minutes <= 240:
    sys.exit("--minutes must be 0.2..240")
PY = "/usr/bin/python3"
work = tempfile.mkdtemp(prefix="edgemux-soak-")
procs = []
stop = threading.Event()
lock = threading.Lock()
counts = {}


def count(key, n=1):
    with lock:
        counts[key] = counts.get(key, 0) + n


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start(args, **kw):
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=open(f"{work}/{os.path.basename(args[0])}-{len(procs)}.log", "w"), **kw)
    procs.append(proc)
    return proc


def wait_port(port, timeout=20):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"nothing listens on {port}")


# Backends: real servers.
www = f"{work}/www"
os.makedirs(www)
with open(f"{www}/index.html", "w") as f:
    f.write("soak\n" * 200)
h1_port, h2_port, grpc_port, silent_port, reset_port = (free_port() for _ in range(5))
start([PY, "-c", "import http.server, functools, sys\n"
       "http.server.SimpleHTTPRequestHandler.protocol_version = 'HTTP/1.1'\n"
       "h = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[2])\n"
       "http.server.SimpleHTTPRequestHandler.log_message = lambda *a: None\n"
       "http.server.ThreadingHTTPServer(('127.0.0.1', int(sys.argv[1])), h).serve_forever()", str(h1_port), www])
start(["nghttpd", "--no-tls", "-d", www, "-a", "127.0.0.1", str(h2_port)])
start([PY, "-c", "import grpc, sys, concurrent.futures as cf\n"
       "h = grpc.method_handlers_generic_handler('soak.Echo', {'Call': grpc.unary_unary_rpc_method_handler(lambda req, ctx: req)})\n"
       "s = grpc.server(cf.ThreadPoolExecutor(8)); s.add_generic_rpc_handlers((h,)); s.add_insecure_port('127.0.0.1:' + sys.argv[1]); s.start(); s.wait_for_termination()", str(grpc_port)])
# Misbehaving backends: one accepts and never speaks; one sends half a response and resets.
start([PY, "-c", "import socket, sys, time\n"
       "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen(512)\n"
       "held = []\n"
       "while True:\n"
       "    c, _ = s.accept(); held.append(c); held[:] = held[-400:]", str(silent_port)])
start([PY, "-c", "import socket, struct, sys, threading\n"
       "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen(512)\n"
       "def serve(c):\n"
       "    try:\n"
       "        c.settimeout(5); c.recv(65536)\n"
       "        c.sendall(b'HTTP/1.1 200 OK\\r\\nContent-Length: 100000\\r\\n\\r\\n' + b'x' * 5000)\n"
       "        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))\n"
       "    except OSError: pass\n"
       "    c.close()\n"
       "while True:\n"
       "    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()", str(reset_port)])
for port in (h1_port, h2_port, grpc_port, silent_port, reset_port):
    wait_port(port)

port, admin = free_port(), free_port()
config_path = f"{work}/edgemux.yaml"


def write_config(generation):
    with open(config_path + ".new", "w") as f:
        f.write(f"""# soak generation {generation}
workers: 2
admin: {{ listen: 127.0.0.1:{admin} }}
drain_timeout: 5s
listeners:
  - name: public
    listen: 127.0.0.1:{port}
    handshake_timeout: 2s
    request_timeout: 2s
    tls:
      certificates:
        - {{ cert: {a.certs}/localhost.pem, key: {a.certs}/localhost.key }}
    routes:
      - name: grpc
        match: {{ alpn: h2, content_type: application/grpc }}
        backend: grpc
      - name: silent
        match: {{ path_prefix: /silent }}
        backend: silent
        mode: request
        response_timeout: 1s
      - name: reset
        match: {{ path_prefix: /reset }}
        backend: reset
        mode: request
      - name: web-h2
        match: {{ alpn: h2 }}
        backend: web-h2
        mode: request
      - name: web
        backend: web
        mode: request
backends:
  web: {{ endpoints: {{ http1: ["127.0.0.1:{h1_port}"] }} }}
  web-h2: {{ endpoints: {{ h2c: ["127.0.0.1:{h2_port}"] }} }}
  grpc: {{ endpoints: {{ h2c: ["127.0.0.1:{grpc_port}"] }} }}
  silent: {{ endpoints: {{ http1: ["127.0.0.1:{silent_port}"] }} }}
  reset: {{ endpoints: {{ http1: ["127.0.0.1:{reset_port}"] }} }}
""")
    os.replace(config_path + ".new", config_path)


write_config(0)
check = subprocess.run([a.edgemux, "check", "--config", config_path], capture_output=True, text=True)
if check.returncode != 0:
    sys.exit(f"config refused: {check.stdout}{check.stderr}")
edgemux = start([a.edgemux, "run", "--config", config_path, "--log-level", "warning"])
wait_port(port)
wait_port(admin)
deadline = time.monotonic() + a.minutes * 60
ctx = ssl.create_default_context(cafile=f"{a.certs}/ca.pem")


def tls(alpn):
    c = ssl.create_default_context(cafile=f"{a.certs}/ca.pem")
    c.set_alpn_protocols([alpn])
    return c


def loop(name, body, pause=0.0):
    def run():
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                body()
            except Exception as e:  # a well-behaved client's failure is counted, then reported
                count(f"{name} failed")
                with lock:
                    counts.setdefault("first failures", [])
                    if len(counts["first failures"]) < 10:
                        counts["first failures"].append(f"{name}: {e!r}")
            if pause:
                time.sleep(pause)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


# Well-behaved clients.
def keepalive():
    conn = http.client.HTTPSConnection("localhost", port, context=tls("http/1.1"), timeout=10)
    for _ in range(50):
        conn.request("GET", "/index.html")
        r = conn.getresponse()
        body = r.read()
        if r.status != 200 or len(body) != 1000:
            raise RuntimeError(f"status {r.status}, {len(body)} bytes")
        count("h1 keep-alive ok")
    conn.close()


def new_connection():
    conn = http.client.HTTPSConnection("localhost", port, context=tls("http/1.1"), timeout=10)
    conn.request("GET", "/index.html", headers={"Connection": "close"})
    r = conn.getresponse()
    if r.status != 200 or len(r.read()) != 1000:
        raise RuntimeError(f"status {r.status}")
    conn.close()
    count("h1 new-connection ok")


def h2load():
    r = subprocess.run(["h2load", "-n", "2000", "-c", "8", "-m", "16", "--connect-to", f"127.0.0.1:{port}",
                        f"https://localhost:{port}/index.html"], capture_output=True, text=True, timeout=60)
    line = next((l for l in r.stdout.splitlines() if l.startswith("requests:")), "")
    # requests: 2000 total, 2000 started, 2000 done, 2000 succeeded, 0 failed, 0 errored, 0 timeout
    fields = {w.split()[1]: int(w.split()[0]) for w in line.replace("requests:", "").split(",") if w.strip()}
    if fields.get("succeeded") != 2000:
        raise RuntimeError(f"h2load: {line or r.stderr[-300:]}")
    count("h2 ok", 2000)


def grpc_calls():
    r = subprocess.run([PY, "-c", "import grpc, sys\n"
                        "creds = grpc.ssl_channel_credentials(open(sys.argv[2], 'rb').read())\n"
                        "ch = grpc.secure_channel('localhost:' + sys.argv[1], creds)\n"
                        "call = ch.unary_unary('/soak.Echo/Call')\n"
                        "for i in range(200): assert call(b'ping %d' % i, timeout=10) == b'ping %d' % i\n"
                        "print('ok')", str(port), f"{a.certs}/ca.pem"], capture_output=True, text=True, timeout=120)
    if r.stdout.strip() != "ok":
        raise RuntimeError(f"grpc: {r.stderr[-300:]}")
    count("grpc ok", 200)


# Misbehaving clients (their answers are checked where the spec says what they must be).
def slowloris():
    socks = []
    for _ in range(50):
        s = tls("http/1.1").wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="localhost")
        s.sendall(b"GET / HTTP/1.1\r\nHost: localh")
        socks.append(s)
    time.sleep(3)
    for s in socks:
        s.close()
    count("slowloris rounds")


def garbage():
    for junk in (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", b"GET / HTTP/1.1\r\n\r\n", os.urandom(300)):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        try:
            s.sendall(junk)
            s.recv(1024)
        except OSError:
            pass
        s.close()
    count("garbage rounds")


def dropped_h2():
    for _ in range(20):
        s = tls("h2").wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="localhost")
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        s.close()
    count("dropped h2 rounds")


def silent_backend():
    conn = http.client.HTTPSConnection("localhost", port, context=tls("http/1.1"), timeout=10)
    conn.request("GET", "/silent")
    r = conn.getresponse()
    r.read()
    conn.close()
    if r.status != 504:
        raise RuntimeError(f"a silent backend gave {r.status}, not 504")
    count("504 from silent backend")


def reset_backend():
    conn = http.client.HTTPSConnection("localhost", port, context=tls("http/1.1"), timeout=10)
    conn.request("GET", "/reset")
    r = conn.getresponse()
    try:
        r.read()
        raise RuntimeError("a response cut by its backend arrived whole")
    except http.client.IncompleteRead:
        count("reset backend cut short")
    conn.close()


def rss_and_fds():
    with open(f"/proc/{edgemux.pid}/status") as f:
        rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
    return rss, len(os.listdir(f"/proc/{edgemux.pid}/fd"))


threads = [loop("h1 keep-alive", keepalive), loop("h1 keep-alive", keepalive), loop("h1 new-connection", new_connection),
           loop("h2", h2load, 0.5), loop("grpc", grpc_calls), loop("silent backend", silent_backend, 0.5),
           loop("reset backend", reset_backend, 0.2)]
misbehaving = [loop("slowloris", slowloris), loop("garbage", garbage, 0.2), loop("dropped h2", dropped_h2, 0.5)]
samples = []
generation = 0
next_reload = time.monotonic() + a.reload_every
next_sample = time.monotonic()
start_time = time.monotonic()
try:
    while time.monotonic() < deadline:
        now = time.monotonic()
        if edgemux.poll() is not None:
            count("edgemux exited")
            break
        if now >= next_reload:
            generation += 1
            write_config(generation)
            edgemux.send_signal(signal.SIGHUP)
            count("reloads")
            next_reload += a.reload_every
        if now >= next_sample:
            rss, fds = rss_and_fds()
            samples.append((now - start_time, rss, fds))
            with lock:
                shown = {k: v for k, v in counts.items() if k != "first failures"}
            print(f"[{now - start_time:6.0f} s] rss {rss / 1024:6.1f} MiB, fds {fds:5d}, {json.dumps(shown)}", flush=True)
            next_sample += 10
        time.sleep(0.2)
finally:
    stop.set()
    for t in threads + misbehaving:
        t.join(timeout=70)
    time.sleep(3)
    final = rss_and_fds() if edgemux.poll() is None else (0, 0)
    reloads_failed = 0
    try:
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5).read().decode()
        for line in metrics.splitlines():
            if line.startswith("edgemux_config_reload_failures_total"):
                reloads_failed = int(float(line.split()[-1]))
    except OSError as e:
        metrics = f"(no metrics: {e})"
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()

problems = []
failures = {k: v for k, v in counts.items() if k.endswith("failed") or k == "edgemux exited"}
if failures:
    problems.append(f"well-behaved requests failed: {failures}; first: {counts.get('first failures')}")
if reloads_failed:
    problems.append(f"{reloads_failed} reloads refused")
if len(samples) >= 6:
    third = len(samples) // 3
    first_rss = max(s[1] for s in samples[third:2 * third])
    last_rss = max(s[1] for s in samples[2 * third:])
    first_fds = max(s[2] for s in samples[third:2 * third])
    last_fds = max(s[2] for s in samples[2 * third:])
    print(f"RSS peak {first_rss / 1024:.1f} MiB in the middle third, {last_rss / 1024:.1f} MiB in the last; "
          f"fds {first_fds} / {last_fds}; after the load: {final[0] / 1024:.1f} MiB, {final[1]} fds")
    if last_rss > first_rss * (1 + a.growth) + 4096:
        problems.append(f"RSS grows: {first_rss} KiB -> {last_rss} KiB")
    if last_fds > first_fds * (1 + a.growth) + 32:
        problems.append(f"descriptors grow: {first_fds} -> {last_fds}")
baseline_fds = samples[0][2] if samples else 0
if final[1] > baseline_fds + 32:
    problems.append(f"{final[1]} descriptors open after the load stopped (at the start: {baseline_fds})")
print(f"counts: {json.dumps({k: v for k, v in counts.items() if k != 'first failures'})}")
if problems:
    print("SOAK FAILED:\n  " + "\n  ".join(problems))
    print(f"logs in {work}")
    sys.exit(1)
print(f"soak passed: {a.minutes:g} minutes, {generation} reloads")
