#!/usr/bin/python3
"""Real peers for edgemux's integration tests: HTTP/1.1, gRPC and WebSocket servers and clients.

Run with Debian's /usr/bin/python3 (python3-grpcio, python3-websockets). Each server prints
"ready PORT" on stdout once it listens, and stops by itself after --max-seconds.
"""
import argparse
import hashlib
import os
import random
import socket
import ssl
import struct
import sys
import threading
import time

CHUNK = 1 << 20


def blob(seed, size):
    """Deterministic bytes, generated in 1 MiB pieces."""
    rng = random.Random(seed)
    left = size
    while left > 0:
        n = min(CHUNK, left)
        yield rng.randbytes(n)
        left -= n


def blob_sha256(seed, size):
    h = hashlib.sha256()
    for piece in blob(seed, size):
        h.update(piece)
    return h.hexdigest()


def ready(port):
    print(f"ready {port}", flush=True)


def after_head(conn, buf=b""):
    """Reads until the end of a request head; returns the bytes after it (None: peer closed)."""
    while b"\r\n\r\n" not in buf:
        data = conn.recv(65536)
        if not data:
            return None
        buf += data
    return buf.split(b"\r\n\r\n", 1)[1]


def stop_after(seconds):
    t = threading.Timer(seconds, lambda: __import__("os")._exit(0))
    t.daemon = True
    t.start()


# MARK: HTTP/1.1 server

def serve_http1(args):
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def do_GET(self):
            if args.www:
                local = os.path.join(args.www, self.path.split("?", 1)[0].lstrip("/"))
                if os.path.isfile(local):
                    types = {".html": "text/html", ".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml", ".json": "application/json"}
                    with open(local, "rb") as f:
                        body = f.read()
                    self.send_response(200)
                    self.send_header("Content-Type", types.get(os.path.splitext(local)[1], "application/octet-stream"))
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
            if self.path.startswith("/blob"):
                q = dict(p.split("=") for p in self.path.split("?", 1)[1].split("&"))
                size, seed = int(q["size"]), int(q.get("seed", "1"))
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(size))
                self.end_headers()
                for piece in blob(seed, size):
                    self.wfile.write(piece)
                return
            if self.path.startswith("/headers"):
                # Every request field as received, one "name: value" line each.
                self.reply("".join(f"{k.lower()}: {v}\n" for k, v in self.headers.items()).encode())
                return
            if self.path.endswith("/conn"):
                # Which backend connection served this: the proxy's source port.
                self.reply(f"{args.name} conn={self.client_address[1]}\n".encode())
                return
            if self.path.startswith("/chunked"):
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Transfer-Encoding", "chunked")
                self.send_header("Trailer", "X-Checksum")
                self.end_headers()
                for i in range(5):
                    piece = f"piece {i} conn={self.client_address[1]};".encode() * (i * 300 + 1)
                    self.wfile.write(b"%x;ext=%d\r\n%s\r\n" % (len(piece), i, piece))
                self.wfile.write(b"0\r\nX-Checksum: done\r\n\r\n")
                return
            if self.path.endswith("/unframed"):
                # No Content-Length: the body ends with the connection. The last bytes and the
                # FIN leave in one segment (corked), and over TLS with no close_notify.
                self.close_connection = True
                sock = self.connection
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
                self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n" + f"{args.name} unframed\n".encode())
                self.wfile.flush()
                raw = socket.socket(fileno=os.dup(sock.fileno()))
                raw.shutdown(socket.SHUT_WR)
                raw.close()
                return
            if self.path == "/nocontent":
                self.send_response(204)
                self.end_headers()
                return
            client = ""
            if hasattr(self.connection, "getpeercert") and self.connection.getpeercert():
                subject = dict(x[0] for x in self.connection.getpeercert()["subject"])
                client = f" client-cert={subject.get('commonName')}"
            body = f"{args.name} {self.command} {self.path} host={self.headers.get('Host')}{client}\n".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Served-By", args.name)
            self.end_headers()
            self.wfile.write(body)

        def do_HEAD(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", "12345")
            self.end_headers()

        def reply(self, body):
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            h = hashlib.sha256()
            n = 0
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                while True:
                    size = int(self.rfile.readline().split(b";")[0], 16)
                    if size == 0:
                        self.rfile.readline()
                        break
                    data = self.rfile.read(size)
                    h.update(data)
                    n += len(data)
                    self.rfile.readline()
            else:
                left = int(self.headers.get("Content-Length", "0"))
                while left > 0:
                    data = self.rfile.read(min(CHUNK, left))
                    if not data:
                        break
                    h.update(data)
                    n += len(data)
                    left -= len(data)
            body = f"{h.hexdigest()} {n}\n".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    class Server(ThreadingHTTPServer):
        # The default backlog of 5 overflows under a proxy's burst of connects (request mode
        # opens one per concurrent request): the kernel drops handshakes and clients stall.
        request_queue_size = 1024

    server = Server(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    if args.cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.cert, args.key)
        ctx.set_alpn_protocols(["http/1.1"])
        if args.client_ca:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(args.client_ca)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    stop_after(args.max_seconds)
    ready(server.server_address[1])
    server.serve_forever()


# MARK: HTTP/1.1 servers that misbehave on kept connections

def serve_raw_http1(args):
    """One response per connection, then: `drop-second` closes the connection when the next
    request arrives, without answering (what a backend's keep-alive timeout does when it races
    a proxy's reuse); `close-idle` closes it 1 s after answering (a short keep-alive timeout);
    `bad-status` answers with a malformed status line; `dribble` sends a 103 and then the final
    head in pieces; `reset-mid-body` resets the connection 5,000 bytes into a 100,000-byte body."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", args.port))
    srv.listen(64)
    counter = [0]

    def handle(conn):
        served = 0
        buf = b""
        with conn:
            while True:
                buf = after_head(conn, buf)
                if buf is None:
                    return
                if args.behaviour == "bad-status":
                    conn.sendall(b"HTTP/1.1 2x0 Fine\r\nContent-Length: 2\r\n\r\nok")
                    continue
                if args.behaviour == "chunked-and-length":
                    # Both framings (RFC 9112 section 6.3: chunked wins, the length is ignored).
                    counter[0] += 1
                    body = f"answer {counter[0]} framed by chunks, not by its length\n".encode()
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
                    continue
                if args.behaviour == "reset-mid-body":
                    # Promises 100,000 bytes, sends 5,000, then resets the connection (RST).
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 5000)
                    time.sleep(0.2)
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                if args.behaviour == "dribble":
                    # A 103, then the final head in three pieces, each its own segment.
                    counter[0] += 1
                    body = f"answer {counter[0]}\n".encode()
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    for piece in (b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n",
                                  b"HTTP/1.1 200 OK\r\nContent-", b"Length: %d\r\nX-Piece: 2\r\n" % len(body)):
                        conn.sendall(piece)
                        time.sleep(0.05)
                    conn.sendall(b"\r\n" + body)
                    continue
                if served == 1:
                    return  # close without answering
                counter[0] += 1
                body = f"answer {counter[0]}\n".encode()
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                served += 1
                if args.behaviour == "close-idle":
                    time.sleep(1.0)
                    return

    stop_after(args.max_seconds)
    ready(srv.getsockname()[1])
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


# MARK: gRPC server and client (generic handlers: raw bytes, no generated code)

def serve_grpc(args):
    import grpc
    from concurrent import futures

    def unary(request, context):
        return b"grpc-backend:" + request

    def stream(request, context):
        count, interval = (int(x) for x in request.decode().split(","))
        for i in range(count):
            yield f"tick {i}".encode()
            if interval:
                time.sleep(interval / 1000)

    def upload(request_iterator, context):
        h = hashlib.sha256()
        n = 0
        for piece in request_iterator:
            h.update(piece)
            n += len(piece)
        return f"{h.hexdigest()} {n}".encode()

    def download(request, context):
        seed, size = (int(x) for x in request.decode().split(","))
        yield from blob(seed, size)

    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
        "Upload": grpc.stream_unary_rpc_method_handler(upload),
        "Download": grpc.unary_stream_rpc_method_handler(download),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8),
                         options=[("grpc.max_receive_message_length", 4 * CHUNK),
                                  ("grpc.max_send_message_length", 4 * CHUNK)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Svc", handlers),))
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    stop_after(args.max_seconds)
    ready(port)
    server.wait_for_termination()


def grpc_client(args):
    import grpc
    opts = [("grpc.max_receive_message_length", 4 * CHUNK),
            ("grpc.max_send_message_length", 4 * CHUNK)]
    if args.ca:
        creds = grpc.ssl_channel_credentials(open(args.ca, "rb").read())
        channel = grpc.secure_channel(args.target, creds, options=opts + [("grpc.ssl_target_name_override", "localhost")])
    else:
        channel = grpc.insecure_channel(args.target, options=opts)
    timeout = args.timeout
    if args.mode == "expect-unavailable":
        try:
            channel.unary_unary("/test.Svc/Unary")(b"x", timeout=timeout)
            print("unexpected success")
        except grpc.RpcError as e:
            print(f"status {e.code().name} details {e.details()}")
        return
    if args.mode == "unary":
        f = channel.unary_unary("/test.Svc/Unary")
        for i in range(args.count):
            r = f(f"ping {i}".encode(), timeout=timeout)
            assert r == f"grpc-backend:ping {i}".encode(), r
        print(f"ok unary {args.count}")
    elif args.mode == "stream":
        f = channel.unary_stream("/test.Svc/Stream")
        got = [m.decode() for m in f(f"{args.count},{args.interval}".encode(), timeout=timeout)]
        assert got == [f"tick {i}" for i in range(args.count)], got
        print(f"ok stream {len(got)}")
    elif args.mode == "upload":
        f = channel.stream_unary("/test.Svc/Upload")
        r = f(blob(args.seed, args.size), timeout=timeout).decode()
        want = f"{blob_sha256(args.seed, args.size)} {args.size}"
        assert r == want, (r, want)
        print(f"ok upload {args.size} {r.split()[0]}")
    elif args.mode == "download":
        f = channel.unary_stream("/test.Svc/Download")
        h = hashlib.sha256()
        n = 0
        for piece in f(f"{args.seed},{args.size}".encode(), timeout=timeout):
            h.update(piece)
            n += len(piece)
        want = blob_sha256(args.seed, args.size)
        assert (h.hexdigest(), n) == (want, args.size), (h.hexdigest(), n, want)
        print(f"ok download {n} {want}")


# MARK: WebSocket

def serve_ws(args):
    import asyncio
    import websockets

    async def echo(ws, path=None):
        async for message in ws:
            await ws.send(f"echo:{message}")

    async def main():
        async with websockets.serve(echo, "127.0.0.1", args.port) as server:
            ready(server.sockets[0].getsockname()[1])
            await asyncio.sleep(args.max_seconds)

    asyncio.run(main())


def ws_client(args):
    import asyncio
    import websockets

    async def main():
        ctx = ssl.create_default_context(cafile=args.ca)
        async with websockets.connect(args.url, ssl=ctx, server_hostname="localhost") as ws:
            for i in range(args.count):
                await ws.send(f"message {i}")
                r = await asyncio.wait_for(ws.recv(), args.timeout)
                assert r == f"echo:message {i}", r
        print(f"ok websocket {args.count}")

    asyncio.run(main())


# MARK: raw TCP backend and client for half-close

def serve_tcp_sink(args):
    """Mode sink-then-reply: reads until the client's FIN, then answers with the sha256 and length
    of everything after the request head (plus --reply-size bytes) and closes.
    Mode reply-then-sink: answers right after the head, shuts its sending side, then reads
    until the client's FIN and prints "received N SHA" on stdout."""
    srv = socket.create_server(("127.0.0.1", args.port))
    stop_after(args.max_seconds)
    ready(srv.getsockname()[1])

    def handle(conn):
        rest = after_head(conn)
        if rest is None:
            return
        h = hashlib.sha256(rest)
        n = len(rest)

        def reply(text):
            payload = text.encode()
            size = args.reply_size
            conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {len(payload) + size}\r\nConnection: close\r\n\r\n".encode() + payload)
            for piece in blob(9, size):
                conn.sendall(piece)

        if args.mode == "sink-then-reply":
            while True:
                chunk = conn.recv(1 << 20)
                if not chunk:
                    break
                h.update(chunk)
                n += len(chunk)
            reply(f"{h.hexdigest()} {n}\n")
            conn.close()
        else:
            reply("reply first\n")
            conn.shutdown(socket.SHUT_WR)
            while True:
                chunk = conn.recv(1 << 20)
                if not chunk:
                    break
                h.update(chunk)
                n += len(chunk)
            print(f"received {n} {h.hexdigest()}", flush=True)
            conn.close()

    while True:
        conn, _ = srv.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def connect_through(sock, target):
    """Sends CONNECT target to the proxy on sock and reads its answer; raises unless 200."""
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        if not chunk:
            raise SystemExit(f"proxy closed: {head!r}")
        head += chunk
    if not head.startswith(b"HTTP/1.1 200"):
        raise SystemExit(f"proxy refused: {head!r}")


def tls_fin_client(args):
    """One keep-alive HTTP/1.1 request whose last TLS record and the client's FIN leave in one
    segment (TCP_CORK, then shutdown), with no close_notify: what a client that simply closes its
    socket right after writing does. The proxy sees the bytes and the FIN in one event; it must
    still pass the FIN on, so the keep-alive backend closes and the answer ends. Prints the answer
    and "eof" once the connection ends."""
    ctx = ssl.create_default_context(cafile=args.ca)
    ctx.set_alpn_protocols(["http/1.1"])
    sock = socket.create_connection(("127.0.0.1", args.port), timeout=args.timeout)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            sock.sendall(outgoing.read())
            chunk = sock.recv(1 << 16)
            if not chunk:
                raise SystemExit("closed during the handshake")
            incoming.write(chunk)
    sock.sendall(outgoing.read())  # the client Finished, on its own
    time.sleep(0.2)  # the proxy has finished its handshake before the request comes
    tls.write(f"GET {args.path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
    sock.sendall(outgoing.read())
    sock.shutdown(socket.SHUT_WR)  # the FIN joins the corked request: one segment
    answer = b""
    while True:
        chunk = sock.recv(1 << 16)  # a proxy that missed the FIN leaves this waiting: timeout
        if chunk:
            incoming.write(chunk)
        try:
            while piece := tls.read(1 << 16):  # b"" once close_notify has come
                answer += piece
        except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
            pass
        if not chunk:
            break
    print(answer.decode(errors="replace"))
    print("eof")


def halfclose_client(args):
    sock = socket.create_connection(("127.0.0.1", args.port), timeout=args.timeout)
    if args.proxy_header:
        sock.sendall(eval(args.proxy_header))
    if args.connect:
        connect_through(sock, args.connect)
    if args.ca:
        ctx = ssl.create_default_context(cafile=args.ca)
        ctx.set_alpn_protocols(["http/1.1"])
        sock = ctx.wrap_socket(sock, server_hostname="localhost")
    sock.sendall(b"POST /upload HTTP/1.1\r\nHost: localhost\r\n\r\n")

    def read_all():
        data = b""
        while True:
            chunk = sock.recv(1 << 20)
            if not chunk:
                return data
            data += chunk

    if args.mode == "sink-then-reply":
        for piece in blob(args.seed, args.size):
            sock.sendall(piece)
        if args.ca:
            raise SystemExit("a TLS socket cannot half-close from Python")
        sock.shutdown(socket.SHUT_WR)
        data = read_all()
    else:
        data = read_all()
        for piece in blob(args.seed, args.size):
            sock.sendall(piece)
        if not args.ca:
            sock.shutdown(socket.SHUT_WR)
        else:
            sock = sock.unwrap()
            sock.shutdown(socket.SHUT_WR)
    head, _, body = data.partition(b"\r\n\r\n")
    line, _, payload = body.partition(b"\n")
    tail_sha = hashlib.sha256(payload).hexdigest()
    print(f"reply {line.decode()} payload {len(payload)} {tail_sha}")
    sock.close()


# MARK: an endpoint that never completes a connect

def serve_blackhole(args):
    """Listens with a backlog of 0 and never accepts; its accept queue is filled at once, so the
    kernel drops further SYNs and a connect to it hangs until the connector's own timeout."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", args.port))
    srv.listen(0)
    port = srv.getsockname()[1]
    fillers = []
    for _ in range(4):
        c = socket.socket()
        c.setblocking(False)
        c.connect_ex(("127.0.0.1", port))
        fillers.append(c)
    time.sleep(0.5)
    stop_after(args.max_seconds)
    ready(port)
    time.sleep(args.max_seconds)


# MARK: several requests on one kept-alive connection

def keepalive_client(args):
    """Sends --count GETs on one TLS connection, --gap seconds apart, printing each body."""
    ctx = ssl.create_default_context(cafile=args.ca)
    ctx.set_alpn_protocols(["http/1.1"])
    sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", args.port), timeout=10), server_hostname="localhost")
    f = sock.makefile("rb")
    for i in range(args.count):
        if i:
            time.sleep(args.gap)
        sock.sendall(f"GET /keepalive/{i} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        length = 0
        while True:
            line = f.readline()
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
            if line in (b"\r\n", b""):
                break
        print(f.read(length).decode().strip(), flush=True)


# MARK: a TLS client whose ClientHello is cut into many records and segments

def fragmented_hello(args):
    """A real TLS handshake (Python's ssl over memory BIOs) whose ClientHello is re-framed into
    TLS records of --record-size bytes and written in pieces of --piece bytes with pauses, as a
    ClientHello with large (post-quantum) key shares arrives. Then one HTTP/1.1 request."""
    ctx = ssl.create_default_context(cafile=args.ca)
    if args.cert:
        ctx.load_cert_chain(args.cert, args.key)
    ctx.set_alpn_protocols(["http/1.1"])
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=args.servername)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    first = outgoing.read()
    handshake = b""
    i = 0
    while i < len(first):
        length = int.from_bytes(first[i + 3:i + 5], "big")
        handshake += first[i + 5:i + 5 + length]
        i += 5 + length
    records = b""
    for j in range(0, len(handshake), args.record_size):
        piece = handshake[j:j + args.record_size]
        records += b"\x16\x03\x01" + len(piece).to_bytes(2, "big") + piece
    sock = socket.create_connection(("127.0.0.1", args.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for j in range(0, len(records), args.piece):
        sock.sendall(records[j:j + args.piece])
        time.sleep(0.01)

    def pump():
        data = outgoing.read()
        if data:
            sock.sendall(data)

    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            pump()
            data = sock.recv(65536)
            if not data:
                raise SystemExit("closed during the handshake")
            incoming.write(data)
    pump()
    tls.write(f"GET /fragmented HTTP/1.1\r\nHost: {args.servername}\r\nConnection: close\r\n\r\n".encode())
    pump()
    body = b""
    while True:
        try:
            body += tls.read(65536)
        except ssl.SSLWantReadError:
            data = sock.recv(65536)
            if not data:
                break
            incoming.write(data)
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            break
    print(f"records {len(handshake) // args.record_size + 1} hello {len(handshake)}")
    print(body.decode(errors="replace").split("\r\n\r\n", 1)[-1].strip())


# MARK: a raw TLS client for misbehaving on purpose

def raw_tls(args):
    """Connects (TLS unless --plain), sends --send (Python bytes literal), optionally --then after
    --pause seconds, and reads until the server closes or --timeout. Prints how long the server
    took to close and the start of what it sent."""
    start = time.monotonic()
    sock = socket.create_connection(("127.0.0.1", args.port), timeout=args.timeout)
    if args.proxy_header:
        sock.sendall(eval(args.proxy_header))
    if not args.plain:
        ctx = ssl.create_default_context(cafile=args.ca)
        if args.alpn:
            ctx.set_alpn_protocols(args.alpn.split(","))
        sock = ctx.wrap_socket(sock, server_hostname="localhost")
        start = time.monotonic()
    data = b""
    try:
        if args.send:
            sock.sendall(eval(args.send))
        if args.then:
            time.sleep(args.pause)
            sock.sendall(eval(args.then))
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except (socket.timeout, TimeoutError):
        print(f"timeout after {time.monotonic() - start:.1f}s received {data[:args.show]!r}")
        return
    except (ConnectionResetError, ssl.SSLError, BrokenPipeError) as e:
        print(f"closed after {time.monotonic() - start:.1f}s error {type(e).__name__} received {data[:args.show]!r}")
        return
    print(f"closed after {time.monotonic() - start:.1f}s received {data[:args.show]!r}")


# MARK: raw HTTP/2 probe of a backend's strictness

def stray_ack_probe(args):
    """Sends a client preface, SETTINGS and an unsolicited SETTINGS ACK straight to an h2c server
    and prints what it answered: GOAWAY with its error code, or nothing."""
    s = socket.create_connection(("127.0.0.1", args.port), timeout=5)
    s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
    time.sleep(0.2)
    s.sendall(b"\x00\x00\x00\x04\x01\x00\x00\x00\x00" * 2)
    data = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except socket.timeout:
        pass
    i = 0
    while i + 9 <= len(data):
        length = int.from_bytes(data[i:i + 3], "big")
        ftype = data[i + 3]
        if ftype == 7:
            code = int.from_bytes(data[i + 13:i + 17], "big")
            print(f"goaway {code}")
            return
        i += 9 + length
    print("no goaway")


# MARK: raw TCP peers for passthrough routes

def serve_first_bytes(args):
    """Accepts connections; prints, for each, the first bytes it received (within 0.5 s of the
    first one) as "got LEN HEX" (HEX: the first 64 bytes), answers --reply and closes."""
    srv = socket.create_server(("127.0.0.1", args.port))
    stop_after(args.max_seconds)
    ready(srv.getsockname()[1])

    def handle(conn):
        with conn:
            conn.settimeout(5)
            try:
                data = conn.recv(65536)
                conn.settimeout(0.5)
                while True:
                    more = conn.recv(65536)
                    if not more:
                        break
                    data += more
            except socket.timeout:
                pass
            except OSError:
                return
            print(f"got {len(data)} {data[:64].hex()}", flush=True)
            try:
                conn.sendall(args.reply.encode())
            except OSError:
                pass

    while True:
        conn, _ = srv.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def split_hello_client(args):
    """A TLS client whose first flight (the ClientHello) goes out in --pieces TCP segments,
    0.1 s apart; then an HTTP/1.1 request. Prints the server certificate's CN and the status line."""
    ctx = ssl.create_default_context(cafile=args.ca)
    if args.cert:
        ctx.load_cert_chain(args.cert, args.key)
    ctx.set_alpn_protocols(["http/1.1"])
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=args.servername)
    sock = socket.create_connection(("127.0.0.1", args.port), timeout=args.timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    first = True
    while True:
        try:
            tls.do_handshake()
            done = True
        except ssl.SSLWantReadError:
            done = False
        data = outgoing.read()
        if data and first:
            first = False
            step = max(1, len(data) // args.pieces + 1)
            for i in range(0, len(data), step):
                sock.sendall(data[i:i + step])
                time.sleep(0.1)
        elif data:
            sock.sendall(data)
        if done:
            break
        chunk = sock.recv(65536)
        if not chunk:
            print("closed during the handshake")
            return
        incoming.write(chunk)
    cn = dict(x[0] for x in tls.getpeercert()["subject"]).get("commonName")
    tls.write(f"GET /split HTTP/1.1\r\nHost: {args.servername}\r\nConnection: close\r\n\r\n".encode())
    sock.sendall(outgoing.read())
    answer = b""
    while b"\r\n" not in answer:
        try:
            answer += tls.read(65536)
        except ssl.SSLWantReadError:
            chunk = sock.recv(65536)
            if not chunk:
                break
            incoming.write(chunk)
        except ssl.SSLError:
            break
    status = answer.split(b"\r\n", 1)[0].decode(errors="replace")
    print(f"peer CN={cn} status={status}")


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("http1", "grpc", "ws", "blackhole"):
        sp = sub.add_parser(name)
        sp.add_argument("--port", type=int, default=0)
        sp.add_argument("--name", default=name)
        sp.add_argument("--max-seconds", type=float, default=300)
        sp.add_argument("--cert")
        sp.add_argument("--key")
        sp.add_argument("--client-ca")
        sp.add_argument("--www", help="http1: serve the files of this folder (GET), before the built-in paths")
    rh = sub.add_parser("raw-http1")
    rh.add_argument("--port", type=int, default=0)
    rh.add_argument("--behaviour", choices=["drop-second", "close-idle", "bad-status", "dribble", "chunked-and-length", "reset-mid-body"], required=True)
    rh.add_argument("--max-seconds", type=float, default=300)
    g = sub.add_parser("grpc-client")
    g.add_argument("--target", required=True)
    g.add_argument("--ca", help="TLS with this CA; without it, cleartext HTTP/2")
    g.add_argument("--mode", required=True)
    g.add_argument("--count", type=int, default=1)
    g.add_argument("--interval", type=int, default=100)
    g.add_argument("--seed", type=int, default=7)
    g.add_argument("--size", type=int, default=1 << 20)
    g.add_argument("--timeout", type=float, default=60)
    w = sub.add_parser("ws-client")
    w.add_argument("--url", required=True)
    w.add_argument("--ca", required=True)
    w.add_argument("--count", type=int, default=5)
    w.add_argument("--timeout", type=float, default=10)
    b = sub.add_parser("blob-sha256")
    b.add_argument("--seed", type=int, default=7)
    b.add_argument("--size", type=int, required=True)
    b.add_argument("--out")
    fb = sub.add_parser("first-bytes")
    fb.add_argument("--port", type=int, default=0)
    fb.add_argument("--reply", default="")
    fb.add_argument("--max-seconds", type=float, default=300)
    sh = sub.add_parser("split-hello")
    sh.add_argument("--port", type=int, required=True)
    sh.add_argument("--ca", required=True)
    sh.add_argument("--servername", required=True)
    sh.add_argument("--cert")
    sh.add_argument("--key")
    sh.add_argument("--pieces", type=int, default=3)
    sh.add_argument("--timeout", type=float, default=10)
    t = sub.add_parser("tcp-sink")
    t.add_argument("--port", type=int, default=0)
    t.add_argument("--mode", default="sink-then-reply")
    t.add_argument("--reply-size", type=int, default=0)
    t.add_argument("--max-seconds", type=float, default=300)
    hc = sub.add_parser("halfclose-client")
    hc.add_argument("--port", type=int, required=True)
    hc.add_argument("--mode", default="sink-then-reply")
    hc.add_argument("--ca")
    hc.add_argument("--proxy-header")
    hc.add_argument("--connect", help="CONNECT this host:port through the proxy first")
    hc.add_argument("--seed", type=int, default=4)
    hc.add_argument("--size", type=int, default=1 << 20)
    hc.add_argument("--timeout", type=float, default=30)
    tf = sub.add_parser("tls-fin-client")
    tf.add_argument("--port", type=int, required=True)
    tf.add_argument("--ca", required=True)
    tf.add_argument("--path", default="/fin")
    tf.add_argument("--timeout", type=float, default=5)
    k = sub.add_parser("keepalive-client")
    k.add_argument("--port", type=int, required=True)
    k.add_argument("--ca", required=True)
    k.add_argument("--count", type=int, default=2)
    k.add_argument("--gap", type=float, default=1)
    fh = sub.add_parser("fragmented-hello")
    fh.add_argument("--port", type=int, required=True)
    fh.add_argument("--ca", required=True)
    fh.add_argument("--cert")
    fh.add_argument("--key")
    fh.add_argument("--servername", default="localhost")
    fh.add_argument("--record-size", type=int, default=64)
    fh.add_argument("--piece", type=int, default=7)
    r = sub.add_parser("raw-tls")
    r.add_argument("--port", type=int, required=True)
    r.add_argument("--ca")
    r.add_argument("--alpn")
    r.add_argument("--plain", action="store_true")
    r.add_argument("--proxy-header")
    r.add_argument("--send")
    r.add_argument("--then")
    r.add_argument("--pause", type=float, default=0)
    r.add_argument("--timeout", type=float, default=10)
    r.add_argument("--show", type=int, default=120, help="bytes of the answer to print")
    s = sub.add_parser("stray-ack-probe")
    s.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    if args.cmd == "http1":
        serve_http1(args)
    elif args.cmd == "grpc":
        serve_grpc(args)
    elif args.cmd == "blackhole":
        serve_blackhole(args)
    elif args.cmd == "ws":
        serve_ws(args)
    elif args.cmd == "grpc-client":
        grpc_client(args)
    elif args.cmd == "ws-client":
        ws_client(args)
    elif args.cmd == "blob-sha256":
        if args.out:
            with open(args.out, "wb") as f:
                for piece in blob(args.seed, args.size):
                    f.write(piece)
        print(blob_sha256(args.seed, args.size))
    elif args.cmd == "first-bytes":
        serve_first_bytes(args)
    elif args.cmd == "split-hello":
        split_hello_client(args)
    elif args.cmd == "tcp-sink":
        serve_tcp_sink(args)
    elif args.cmd == "tls-fin-client":
        tls_fin_client(args)
    elif args.cmd == "halfclose-client":
        halfclose_client(args)
    elif args.cmd == "keepalive-client":
        keepalive_client(args)
    elif args.cmd == "fragmented-hello":
        fragmented_hello(args)
    elif args.cmd == "raw-tls":
        raw_tls(args)
    elif args.cmd == "stray-ack-probe":
        stray_ack_probe(args)
    elif args.cmd == "raw-http1":
        serve_raw_http1(args)


if __name__ == "__main__":
    main()
