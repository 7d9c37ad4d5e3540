#!/usr/bin/python3
"""Memory after a burst: opens N TLS connections to the proxy (--alpn h2 sends the preface),
holds them, closes them all, then samples the proxy's RSS (VmRSS of --pid) every second for
--watch seconds. Prints the baseline, the peak and the first second at which RSS is back within
--within (default 20 %) of the baseline, or "never". Bounded: --max-seconds for the burst."""
import argparse
import concurrent.futures as cf
import socket
import ssl
import sys
import threading
import time

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--port", type=int, required=True)
p.add_argument("--pid", type=int, required=True)
p.add_argument("--cafile", required=True)
p.add_argument("-n", type=int, default=8000)
p.add_argument("--alpn", default="h2", choices=["h2", "http/1.1"])
p.add_argument("--watch", type=float, default=60)
p.add_argument("--within", type=float, default=0.20)
p.add_argument("--max-seconds", type=float, default=90)
a = p.parse_args()
if not 1 <= a.n <= 9000:
    sys.exit("-n must be 1..9000")


def rss_kib():
    with open(f"/proc/{a.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


ctx = ssl.create_default_context(cafile=a.cafile)
ctx.set_alpn_protocols([a.alpn])
deadline = time.monotonic() + a.max_seconds
socks, lock, failed = [], threading.Lock(), [0]


def one(_):
    if time.monotonic() > deadline:
        return
    try:
        s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", a.port), timeout=10), server_hostname="localhost")
        if a.alpn == "h2":
            s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        with lock:
            socks.append(s)
    except OSError:
        with lock:
            failed[0] += 1


baseline = rss_kib()
with cf.ThreadPoolExecutor(max_workers=8) as ex:
    list(ex.map(one, range(a.n)))
time.sleep(2)
peak = rss_kib()
for s in socks:
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()
    except OSError:
        pass
closed_at = time.monotonic()
back_after = None
samples = []
while time.monotonic() - closed_at < a.watch:
    time.sleep(1)
    r = rss_kib()
    samples.append(r)
    if back_after is None and r <= baseline * (1 + a.within):
        back_after = time.monotonic() - closed_at
        break
final = samples[-1] if samples else peak
print(f"burst-memory opened={len(socks)} failed={failed[0]} baseline_kib={baseline} peak_kib={peak} "
      f"after_kib={final} back_within_{int(a.within * 100)}pct_after_s={'never' if back_after is None else f'{back_after:.0f}'}")
sys.exit(0 if back_after is not None else 1)
