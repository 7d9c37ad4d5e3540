#!/usr/bin/python3
"""Records what a real client sends first: listens on 127.0.0.1:PORT, takes one connection,
saves the bytes it receives until the client has been quiet for --quiet seconds (or --max bytes)
to OUT, then answers as --answer says so the client does not retry or hang. Prints the port,
then waits for the connection for at most --wait seconds. Used by capture-seeds.sh."""
import argparse, socket, sys, time

p = argparse.ArgumentParser()
p.add_argument("out")
p.add_argument("--answer", choices=["none", "h2-settings", "connect-200", "http-200"], default="none")
p.add_argument("--quiet", type=float, default=0.5)
p.add_argument("--max", type=int, default=65536)
p.add_argument("--wait", type=float, default=20)
p.add_argument("--port-file")
a = p.parse_args()

server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", 0))
server.listen(1)
port = server.getsockname()[1]
if a.port_file:
    with open(a.port_file, "w") as f:
        f.write(str(port))
print(port, flush=True)
server.settimeout(a.wait)
conn, _ = server.accept()
got = b""
if a.answer == "h2-settings":
    conn.sendall(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
conn.settimeout(a.quiet)
deadline = time.time() + a.wait
while len(got) < a.max and time.time() < deadline:
    try:
        chunk = conn.recv(65536)
    except socket.timeout:
        break
    if not chunk:
        break
    got += chunk
    if a.answer == "connect-200" and b"\r\n\r\n" in got:
        break
with open(a.out, "wb") as f:
    f.write(got[: a.max])
if a.answer == "connect-200":
    conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
elif a.answer == "http-200":
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
conn.close()
print(f"{a.out}: {len(got)} bytes", file=sys.stderr)
