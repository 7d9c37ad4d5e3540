#!/usr/bin/python3
"""Memory of idle HTTP/2 connections in request mode after they served a request: opens N TLS
connections with ALPN h2 (python3-h2), makes one GET on each, keeps them open and idle, samples
the proxy's RSS (VmRSS of --pid), closes them. Prints KiB per connection above the RSS before.
The harness's idle test sends only the preface; this one measures what a connection costs once
its HTTP/2 session exists. Bounded: --max-seconds for the whole run."""
import argparse
import socket
import ssl
import sys
import time

import h2.config
import h2.connection
import h2.events

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--port", type=int, required=True)
p.add_argument("--pid", type=int, required=True)
p.add_argument("--cafile", required=True)
p.add_argument("-n", type=int, default=2000)
p.add_argument("--path", default="/small")
p.add_argument("--max-seconds", type=float, default=120)
p.add_argument("--settle", type=float, default=4,
               help="seconds between the last answer and the sample (edgemux gives an idle session's pages back after 2 s)")
p.add_argument("--hold", type=float, default=0, help="keep the connections open this long after the sample")
a = p.parse_args()
deadline = time.monotonic() + a.max_seconds


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


ctx = ssl.create_default_context(cafile=a.cafile)
ctx.set_alpn_protocols(["h2"])
before = rss_kib(a.pid)
conns = []
failed = 0
for i in range(a.n):
    if time.monotonic() > deadline:
        break
    try:
        s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", a.port), timeout=10), server_hostname="localhost")
        c = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
        c.initiate_connection()
        c.send_headers(1, [(":method", "GET"), (":scheme", "https"), (":authority", "localhost"), (":path", a.path)], end_stream=True)
        s.sendall(c.data_to_send())
        done = False
        while not done and time.monotonic() < deadline:
            data = s.recv(65536)
            if not data:
                break
            for ev in c.receive_data(data):
                if isinstance(ev, h2.events.StreamEnded):
                    done = True
            out = c.data_to_send()
            if out:
                s.sendall(out)
        if not done:
            failed += 1
        conns.append(s)
    except OSError:
        failed += 1
time.sleep(a.settle)
after = rss_kib(a.pid)
n = len(conns) - failed
print(f"sampled rss_after_kib={after}", flush=True)
time.sleep(min(a.hold, max(0, deadline - time.monotonic())))
for s in conns:
    s.close()
print(f"idle-after-request opened={len(conns)} failed={failed} rss_before_kib={before} rss_after_kib={after} "
      f"kib_per_conn={(after - before) / max(1, n):.2f}")
sys.exit(0 if failed == 0 else 1)
