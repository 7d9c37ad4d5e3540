#!/usr/bin/python3
"""HTTP/2 and gRPC test peers for edgemux's integration tests.

Clients that speak HTTP/2 to the proxy's front (TLS with ALPN h2 when --ca is given, otherwise
cleartext h2 with prior knowledge), some of them misbehaving on purpose (rapid reset, CONTINUATION
flood, slow reader, raw frames), plus a slow HTTP/1.1 backend and a named gRPC backend with its
client. Run with Debian's /usr/bin/python3 (python3-h2 4.1, python3-grpcio).

Conventions (as in peers.py): servers print "ready PORT" on stdout and stop by themselves after
--max-seconds; clients print one-line results on stdout, exit 0 on success and non-zero with a
reason on stderr otherwise (1: generic failure, 2: usage, 3: no SETTINGS ACK, 4: slow-reader's fast
stream incomplete, 5: many-streams incomplete). Every socket wait is bounded by the client's
--timeout, the bound of the whole run. Received HTTP/2 events are logged on stderr.
"""
import argparse
import collections
import socket
import ssl
import sys
import threading
import time

import h2.connection
import h2.events
import h2.exceptions
import hpack
from h2.config import H2Configuration
from h2.errors import ErrorCodes

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
NAMES = ["DATA", "HEADERS", "PRIORITY", "RST_STREAM", "SETTINGS", "PUSH_PROMISE", "PING", "GOAWAY",
         "WINDOW_UPDATE", "CONTINUATION"]
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
MIB = 1 << 20

Frame = collections.namedtuple("Frame", "type flags stream payload raw")
GoAway = collections.namedtuple("GoAway", "last_stream code")


def log(*parts):
    print(*parts, file=sys.stderr, flush=True)


def fail(reason, code=1):
    log(reason)
    sys.exit(code)


def ready(port):
    print(f"ready {port}", flush=True)


def stop_after(seconds):
    # A server must never outlive its test, even if the test forgets it.
    t = threading.Timer(seconds, lambda: __import__("os")._exit(0))
    t.daemon = True
    t.start()


def frame(ftype, flags, stream, payload=b""):
    """One raw HTTP/2 frame, for the probes that must send what h2 would refuse to."""
    return len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + (stream & 0x7FFFFFFF).to_bytes(4, "big") + payload


def goaway_of(payload):
    return GoAway(int.from_bytes(payload[0:4], "big") & 0x7FFFFFFF, int.from_bytes(payload[4:8], "big"))


class FrameSplitter:
    """Cuts the received byte stream into frames, so that GOAWAY can be seen (and kept from h2)
    and the raw probes can print what came back."""

    def __init__(self):
        self.buf = b""

    def feed(self, data):
        self.buf += data
        out = []
        while len(self.buf) >= 9:
            n = int.from_bytes(self.buf[:3], "big")
            if len(self.buf) < 9 + n:
                break
            raw, self.buf = self.buf[:9 + n], self.buf[9 + n:]
            out.append(Frame(raw[3], raw[4], int.from_bytes(raw[5:9], "big") & 0x7FFFFFFF, raw[9:], raw))
        return out


# MARK: the connection

def open_socket(args, timeout):
    """TCP to the proxy; TLS with ALPN h2 against --ca when given, else cleartext (prior knowledge)."""
    sock = socket.create_connection((args.host, args.port), timeout=max(timeout, 0.1))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if not args.ca:
        return sock
    ctx = ssl.create_default_context(cafile=args.ca)
    ctx.set_alpn_protocols(["h2"])
    tls = ctx.wrap_socket(sock, server_hostname="localhost")
    if tls.selected_alpn_protocol() != "h2":
        fail(f"ALPN chose {tls.selected_alpn_protocol()!r}, not h2")
    return tls


class Peer:
    """One client connection under the run's deadline: bounded sends and reads, raw frames, and
    every GOAWAY the server sent (in self.goaways)."""

    def __init__(self, args):
        self.args = args
        self.deadline = time.monotonic() + args.timeout
        try:
            self.sock = open_socket(args, self.left())
        except (OSError, ssl.SSLError) as e:
            fail(f"connect failed: {e!r}")
        self.closed = False
        self.splitter = FrameSplitter()
        self.goaways = []

    def left(self):
        return self.deadline - time.monotonic()

    def send(self, data):
        """Writes data; False once the socket refuses it (reset, closed, or stuck past the deadline)."""
        try:
            self.sock.settimeout(max(0.05, self.left()))
            self.sock.sendall(data)
            return True
        except (OSError, ssl.SSLError) as e:
            log(f"send failed: {e!r}")
            return False

    def recv(self, wait):
        """One read of at most `wait` seconds: bytes, b"" if nothing came, None once the server closed."""
        t = min(wait, self.left())
        if self.closed:
            return None
        if t <= 0:
            return b""
        self.sock.settimeout(t)
        try:
            data = self.sock.recv(1 << 16)
        except (socket.timeout, ssl.SSLWantReadError):
            return b""
        except (OSError, ssl.SSLError) as e:
            log(f"recv failed: {e!r}")
            data = b""
        if not data:
            self.closed = True
            return None
        return data

    def read_frames(self, wait):
        """The complete frames of one read (None once closed); GOAWAYs are also kept in self.goaways."""
        data = self.recv(wait)
        if data is None:
            return None
        frames = self.splitter.feed(data)
        for f in frames:
            if f.type == GOAWAY:
                self.goaways.append(goaway_of(f.payload))
                log(f"<- GOAWAY last-stream={self.goaways[-1].last_stream} code={self.goaways[-1].code} {f.payload[8:]!r}")
        return frames

    def linger(self, seconds):
        """Reads (and drops) whatever comes for a while, to see whether the server closes."""
        end = time.monotonic() + seconds
        while not self.closed and time.monotonic() < end and self.left() > 0:
            self.read_frames(end - time.monotonic())

    def closed_word(self):
        return "closed" if self.closed else "open"


class H2Client(Peer):
    """A Peer driven by h2. GOAWAY frames are kept from h2 (after one, h2 rejects every frame, yet
    a draining server still answers the streams below last-stream) and come out as GoAway events."""

    def __init__(self, args):
        super().__init__(args)
        self.conn = h2.connection.H2Connection(config=H2Configuration(client_side=True, header_encoding=None))
        self.broken = False

    def flush(self):
        data = self.conn.data_to_send()
        return self.send(data) if data else True

    def events(self, wait):
        frames = self.read_frames(wait)
        if frames is None:
            return None
        out = []
        for f in frames:
            if f.type == GOAWAY:
                out.append(goaway_of(f.payload))
            elif not self.broken:
                out.extend(self.feed(f.raw))
        self.flush()
        for ev in out:
            if not isinstance(ev, (h2.events.DataReceived, h2.events.WindowUpdated, GoAway)):
                log(f"<- {ev}")
        return out

    def feed(self, raw):
        # A server h2 finds at fault stops being parsed, but the socket is still watched.
        try:
            return self.conn.receive_data(raw)
        except h2.exceptions.ProtocolError as e:
            log(f"h2 rejected the server's frames: {e!r}")
            self.broken = True
            return []

    def handshake(self, until=h2.events.RemoteSettingsChanged):
        """Preface + our SETTINGS; True once an `until` event came (the server's SETTINGS by default)."""
        self.conn.initiate_connection()
        self.flush()
        while self.left() > 0:
            evs = self.events(self.left())
            if evs is None:
                return False
            if any(isinstance(e, until) for e in evs):
                return True
        return False

    def get(self, args, path, method="GET", extra=(), end=True):
        """Opens a stream with a request head; returns its id."""
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, request_headers(args, path, method, extra), end_stream=end)
        self.flush()
        return sid


def request_headers(args, path, method="GET", extra=()):
    scheme = "https" if args.ca else "http"
    return [(":method", method), (":scheme", scheme), (":path", path), (":authority", args.authority)] + list(extra)


def handshake_or_fail(client):
    if not client.handshake():
        fail("no SETTINGS from the server" + (" (closed)" if client.closed else ""))


# MARK: what each stream received

class Stream:
    def __init__(self):
        self.status, self.length, self.got, self.body = None, None, 0, b""
        self.ended, self.reset = False, None

    @property
    def finished(self):
        return self.ended or self.reset is not None


def apply(client, events, streams, hold=()):
    """Records events into streams (id -> Stream, only the first 64 KiB of each body kept) and
    acknowledges DATA, except on the streams in `hold`: for those only the connection window is
    reopened, so their own window closes while the connection stays usable."""
    for ev in events:
        s = streams.get(getattr(ev, "stream_id", None))
        if s is None:
            continue
        if isinstance(ev, h2.events.ResponseReceived):
            head = dict(ev.headers)
            s.status = int(head[b":status"])
            s.length = int(head[b"content-length"]) if b"content-length" in head else None
        elif isinstance(ev, h2.events.DataReceived):
            s.got += len(ev.data)
            s.body += ev.data[:max(0, 65536 - len(s.body))]
            n = ev.flow_controlled_length
            if ev.stream_id in hold:
                if n:
                    client.conn.increment_flow_control_window(n)
            else:
                client.conn.acknowledge_received_data(n, ev.stream_id)
        elif isinstance(ev, h2.events.StreamEnded):
            s.ended = True
        elif isinstance(ev, h2.events.StreamReset):
            s.reset = int(ev.error_code)
    client.flush()


def pump(client, streams, hold=(), wait=0.5):
    """One read applied to streams; None once the server closed."""
    evs = client.events(wait)
    if evs is not None:
        apply(client, evs, streams, hold)
    return evs


def read_until(client, streams, done, hold=()):
    """Reads until done() or close or the deadline; True if done()."""
    while not done():
        if client.left() <= 0 or pump(client, streams, hold) is None:
            return done()
    return True


# MARK: 1. settings-ack-wait

def settings_ack_wait(args):
    """A client that, like some strict ones, sends nothing until its SETTINGS are ACKed: a proxy
    that holds its ACK until the first request deadlocks it."""
    c = H2Client(args)
    if not c.handshake(until=h2.events.SettingsAcknowledged):
        print("no settings ack", flush=True)
        fail("the server did not ACK our SETTINGS" + (" (closed)" if c.closed else ""), 3)
    streams = {}
    sid = c.get(args, args.path)
    streams[sid] = Stream()
    if not read_until(c, streams, lambda: streams[sid].finished) or streams[sid].reset is not None:
        fail(f"response incomplete: got {streams[sid].got} bytes, reset {streams[sid].reset}, {c.closed_word()}")
    s = streams[sid]
    print(f"status {s.status} body-bytes {s.got}")
    print(s.body.split(b"\n", 1)[0].decode(errors="replace"))


# MARK: 2. rapid-reset (CVE-2023-44487)

def rapid_reset(args):
    """Opens and cancels --count streams as fast as possible; the server should answer with a
    GOAWAY (ENHANCE_YOUR_CALM) and close, not keep doing work for each cancelled stream."""
    c = H2Client(args)
    handshake_or_fail(c)
    sent = 0
    for i in range(args.count):
        sid = c.conn.get_next_available_stream_id()
        c.conn.send_headers(sid, request_headers(args, "/"), end_stream=True)
        c.conn.reset_stream(sid, ErrorCodes.CANCEL)
        sent += 1
        if sent % 50 == 0 or sent == args.count:  # ~100 frames a write
            # The server's answers are only watched for GOAWAY now (h2 would answer them itself).
            if not c.flush() or c.read_frames(0.001) is None or c.goaways:
                break
    log(f"sent {sent} of {args.count} streams")
    c.linger(c.left())
    for g in c.goaways:
        print(f"goaway {g.code} last-stream {g.last_stream}")
    print(c.closed_word())


# MARK: 3. continuation-flood (CVE-2024-27316 and kin)

def raw_handshake(peer, on_frame=lambda f: None):
    """Preface + SETTINGS (push off) in raw bytes; waits for the server's SETTINGS and ACKs it."""
    peer.send(PREFACE + frame(SETTINGS, 0, 0, (2).to_bytes(2, "big") + (0).to_bytes(4, "big")))
    while peer.left() > 0:
        frames = peer.read_frames(peer.left())
        if frames is None:
            fail("closed during the handshake")
        seen = False
        for f in frames:
            on_frame(f)
            if f.type == SETTINGS and not f.flags & ACK:
                peer.send(frame(SETTINGS, ACK, 0))
                seen = True
        if seen:
            return
    fail("no SETTINGS from the server")


def continuation_flood(args):
    """A header block that never ends: HEADERS without END_HEADERS and --count CONTINUATIONs.
    The server must bound what it buffers (GOAWAY and close), not accumulate forever."""
    p = Peer(args)
    raw_handshake(p)
    scheme = "https" if args.ca else "http"
    block = hpack.Encoder().encode([(":method", "GET"), (":scheme", scheme), (":path", "/"), (":authority", args.authority)])
    cont = frame(CONTINUATION, 0, 1, b"\x00\x07x-flood\x01a")  # literal, not indexed, new name
    ok = p.send(frame(HEADERS, END_STREAM, 1, block))
    sent = 0
    while ok and sent < args.count:
        n = min(500, args.count - sent)
        ok = p.send(cont * n)
        sent += n if ok else 0
        # Stop once the server has answered: more bytes only provoke an RST that may eat its GOAWAY.
        if p.read_frames(0.001) is None or p.goaways:
            break
    log(f"sent {sent} of {args.count} CONTINUATION frames")
    p.linger(p.left())
    for g in p.goaways:
        print(f"goaway {g.code}")
    print(p.closed_word())


# MARK: 4. slow-reader

def slow_reader(args):
    """Stream A downloads without ever reopening its stream window (only the connection window is
    kept open); stream B on the same connection must still complete: the proxy's flow control must
    be per stream, not stall the connection behind a slow reader."""
    c = H2Client(args)
    handshake_or_fail(c)  # h2 sends SETTINGS_INITIAL_WINDOW_SIZE 65535, the default
    streams = {}
    a = c.get(args, args.slow_path)
    streams[a] = Stream()
    first = time.monotonic() + 2
    while streams[a].got < 65535 and time.monotonic() < first and not streams[a].finished:
        if c.left() <= 0 or pump(c, streams, hold={a}, wait=first - time.monotonic()) is None:
            break
    log(f"stream A has {streams[a].got} bytes; opening B")
    b = c.get(args, args.fast_path)
    streams[b] = Stream()
    start = time.monotonic()
    if not read_until(c, streams, lambda: streams[b].finished, hold={a}) or streams[b].reset is not None:
        fail(f"fast stream incomplete: {streams[b].got} bytes, reset {streams[b].reset}, {c.closed_word()}", 4)
    print(f"fast ok status {streams[b].status} bytes {streams[b].got} in {time.monotonic() - start:.2f} s")
    print(f"slow got {streams[a].got} bytes")


# MARK: 5. cancel

def grpc_frame(text):
    """One gRPC length-prefixed message, uncompressed."""
    msg = text.encode()
    return b"\x00" + len(msg).to_bytes(4, "big") + msg


def cancel(args):
    """Cancels a response mid-way with RST_STREAM CANCEL: the proxy must pass the cancel on to the
    backend (a gRPC backend sees its call cancelled) and keep the connection usable."""
    c = H2Client(args)
    handshake_or_fail(c)
    streams = {}
    if args.grpc:
        sid = c.get(args, args.path, "POST", [("content-type", "application/grpc"), ("te", "trailers")], end=False)
        c.conn.send_data(sid, grpc_frame(args.grpc_message), end_stream=True)
        c.flush()
    else:
        sid = c.get(args, args.path)
    s = streams[sid] = Stream()
    read_until(c, streams, lambda: s.got >= args.after_bytes or s.finished)
    if s.got < args.after_bytes:
        fail(f"only {s.got} bytes before the stream ended (status {s.status}, reset {s.reset}, {c.closed_word()})")
    got = s.got
    if args.close:
        # No RST_STREAM: the connection goes away under the open stream (a client killed, a
        # network gone); the proxy must cancel the backend's side all the same.
        c.sock.close()
        print(f"closed after {got} bytes status {s.status}")
        return
    c.conn.reset_stream(sid, ErrorCodes.CANCEL)
    c.flush()
    c.linger(1.0)
    c.sock.close()
    print(f"cancelled after {got} bytes status {s.status}")


# MARK: 6. many-streams

def open_more(c, args, streams):
    """Opens streams up to --count, within the server's MAX_CONCURRENT_STREAMS, never after a GOAWAY."""
    while len(streams) < args.count and not c.goaways:
        if c.conn.open_outbound_streams >= c.conn.remote_settings.max_concurrent_streams:
            return
        streams[c.get(args, args.path)] = Stream()


def many_streams(args):
    """--count concurrent slow requests on one connection, typically while the proxy drains
    (reload or shutdown): every stream it accepted must complete before it closes."""
    c = H2Client(args)
    handshake_or_fail(c)
    streams = {}
    open_more(c, args, streams)
    shown = 0
    while owed(c, args, streams):
        if c.left() <= 0 or pump(c, streams) is None:
            break
        shown = print_goaways(c, shown)
        open_more(c, args, streams)
    if args.expect_goaway:
        while not c.closed and c.left() > 0:  # the drain ends with the server closing
            pump(c, streams)
            shown = print_goaways(c, shown)
    else:
        c.linger(0.5)
    print_goaways(c, shown)
    completed = sum(1 for s in streams.values() if s.ended and s.status == 200 and s.length in (None, s.got))
    refused = sum(1 for sid, s in streams.items() if s.reset == ErrorCodes.REFUSED_STREAM or refused_by_goaway(c, sid, s))
    reset = sum(1 for s in streams.values() if s.reset is not None and s.reset != ErrorCodes.REFUSED_STREAM)
    print(f"completed {completed} of {args.count}, reset {reset}, refused {refused}")
    print(c.closed_word())
    log(f"opened {len(streams)} streams")
    sys.exit(0 if completed == args.count else 5)


def owed(c, args, streams):
    """Whether answers are still due: open streams below every GOAWAY, or streams left to open."""
    pending = any(not s.finished and not refused_by_goaway(c, sid, s) for sid, s in streams.items())
    return pending or (len(streams) < args.count and not c.goaways)


def refused_by_goaway(c, sid, s):
    """A stream above a GOAWAY's last-stream that got no answer: refused without an RST."""
    return not s.finished and s.status is None and any(sid > g.last_stream for g in c.goaways)


def print_goaways(c, shown):
    for g in c.goaways[shown:]:
        print(f"goaway last-stream {g.last_stream} code {g.code}", flush=True)
    return len(c.goaways)


# MARK: 7. frames

class FramePrinter:
    """Prints each received frame on a line; header blocks decoded with the connection's HPACK state."""

    def __init__(self):
        self.decoder = hpack.Decoder()
        self.block = b""

    def __call__(self, f):
        name = NAMES[f.type] if f.type < len(NAMES) else f"TYPE_{f.type}"
        line = f"{name} stream={f.stream} flags=0x{f.flags:02x} len={len(f.payload)}"
        if f.type == RST_STREAM:
            line += f" code={int.from_bytes(f.payload[:4], 'big')}"
        elif f.type == GOAWAY:
            g = goaway_of(f.payload)
            line += f" code={g.code} last-stream={g.last_stream}"
        elif f.type in (HEADERS, CONTINUATION):
            line += self.headers(f)
        print(line, flush=True)

    def headers(self, f):
        p = f.payload
        if f.type == HEADERS:
            pad = p[0] if f.flags & PADDED else 0
            start = (1 if f.flags & PADDED else 0) + (5 if f.flags & PRIORITY_FLAG else 0)
            p = p[start:len(p) - pad]
            self.block = b""
        self.block += p
        if not f.flags & END_HEADERS:
            return ""
        try:
            pairs = self.decoder.decode(self.block, raw=True)
        except hpack.HPACKError as e:
            return f" hpack-error={e!r}"
        return "".join(f" {k.decode(errors='replace')}={v.decode(errors='replace')}" for k, v in pairs)


def spec_frames(spec, args):
    """The raw bytes for a --send SPEC (see the frames subcommand's help)."""
    enc = hpack.Encoder()
    out = b""
    for item in spec.split(","):
        kind, *rest = item.split(":")
        if kind == "headers":
            flags = END_HEADERS | (END_STREAM if rest[1:] == ["end"] else 0)
            out += frame(HEADERS, flags, int(rest[0]), enc.encode(request_headers(args, "/")))
        elif kind == "data":
            out += frame(DATA, END_STREAM if rest[2:] == ["end"] else 0, int(rest[0]), b"d" * int(rest[1]))
        elif kind == "rst":
            out += frame(RST_STREAM, 0, int(rest[0]), int(rest[1]).to_bytes(4, "big"))
        elif kind == "ping":
            out += frame(PING, 0, 0, b"h2peers!")
        elif kind == "priority":
            out += frame(PRIORITY, 0, int(rest[0]), int(rest[1]).to_bytes(4, "big") + b"\x0f")
        elif kind == "window":
            out += frame(WINDOW_UPDATE, 0, int(rest[0]), int(rest[1]).to_bytes(4, "big"))
        elif kind == "settings-ack":
            out += frame(SETTINGS, ACK, 0)
        elif kind == "goaway":
            out += frame(GOAWAY, 0, 0, bytes(8))
        elif kind == "raw":
            out += bytes.fromhex(rest[0])
        else:
            fail(f"unknown frame spec {item!r}", 2)
    return out


def frames_probe(args):
    """Sends arbitrary frames after a normal handshake and prints every frame that came back, to
    check the proxy's answers to protocol errors (RST_STREAM vs GOAWAY, and their codes)."""
    p = Peer(args)
    show = FramePrinter()
    payload = spec_frames(args.send, args)
    raw_handshake(p, show)
    p.send(payload)
    print(f"sent {args.send}", flush=True)
    while not p.closed and p.left() > 0:
        for f in p.read_frames(p.left()) or []:
            show(f)
            if f.type == SETTINGS and not f.flags & ACK:
                p.send(frame(SETTINGS, ACK, 0))  # a later SETTINGS is ACKed too: no SETTINGS_TIMEOUT
    print(p.closed_word())


# MARK: 7b. idle-gaps

def idle_gaps(args):
    """Rounds of requests on one connection with idle gaps between them, long enough for the
    server to give its idle session memory back (edgemux: 2 s), so each round runs on pages that
    were released. Headers change per round (HPACK tables in use both ways); --priority first
    sends PRIORITY frames for streams not yet opened (a server keeps them as idle streams)."""
    c = H2Client(args)
    handshake_or_fail(c)
    next_idle = 1001
    for r in range(args.rounds):
        if args.priority:
            # More than nghttp2 keeps (100): older idle streams are looked up and destroyed.
            for _ in range(110):
                c.send(frame(PRIORITY, 0, next_idle, (0).to_bytes(4, "big") + b"\x0f"))
                next_idle += 2
        streams = {}
        for i in range(args.requests):
            extra = [("x-round", str(r)), ("x-request", f"{r}-{i}-" + "v" * (r * 40)), ("user-agent", "h2peers idle-gaps")]
            streams[c.get(args, f"{args.path}?round={r}&i={i}", extra=extra)] = Stream()
        if not read_until(c, streams, lambda: all(s.finished for s in streams.values())):
            fail(f"round {r}: {sum(1 for s in streams.values() if s.finished)} of {len(streams)} answered, {c.closed_word()}")
        bad = [(sid, s.status, s.reset) for sid, s in streams.items() if s.status != 200 or s.reset is not None or not s.ended]
        if bad:
            fail(f"round {r}: failed streams {bad}")
        want = f"round={r}".encode()
        if not all(want in s.body for s in streams.values()):
            fail(f"round {r}: a body does not name its request: {[s.body[:80] for s in streams.values()]}")
        print(f"round {r} ok {len(streams)}", flush=True)
        if r + 1 < args.rounds:
            c.linger(args.gap)
            if c.closed:
                fail(f"closed by the server after round {r}")
    print(f"rounds ok {args.rounds}")


# MARK: 8. slow-http1 backend

def serve_slow_http1(args):
    """An HTTP/1.1 backend whose answers take --delay-ms: keeps requests in flight while the proxy
    drains. GET /big?size=N sends N bytes of b"x" in 64 KiB writes, for the slow-reader test."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def do_GET(self):
            time.sleep(args.delay_ms / 1000)
            try:
                self.big() if self.path.startswith("/big") else self.small()
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the proxy gave up on this answer: fine

        def small(self):
            body = f"slow {self.path}\n".encode()
            self.head(len(body))
            self.wfile.write(body)

        def big(self):
            q = dict(p.split("=", 1) for p in self.path.partition("?")[2].split("&") if "=" in p)
            size = int(q.get("size", MIB))
            self.head(size)
            piece = b"x" * 65536
            for off in range(0, size, len(piece)):
                self.wfile.write(piece[:size - off])

        def head(self, length):
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(length))
            self.end_headers()

    class Server(ThreadingHTTPServer):
        # socketserver's default backlog of 5 overflows under a proxy's burst of connects
        # (the kernel then drops handshakes and the client retries for seconds).
        request_queue_size = 1024

    server = Server(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    stop_after(args.max_seconds)
    ready(server.server_address[1])
    server.serve_forever()


# MARK: 9. grpc-named backend and grpc-call client

GRPC_OPTS = [("grpc.max_receive_message_length", 32 * MIB), ("grpc.max_send_message_length", 32 * MIB)]


def serve_grpc_named(args):
    """A gRPC backend (generic handlers, service test.Svc) that signs its answers with --name, so
    a test sees which backend served each call, and logs cancelled Stream calls to --log."""
    import grpc
    from concurrent import futures
    lock = threading.Lock()

    def note(line):
        with lock, open(args.log, "a") as f:  # append + close: flushed on every write
            f.write(line + "\n")

    def unary(request, context):
        return args.name.encode() + b":" + request

    def stream(request, context):
        count, interval = (int(x) for x in request.decode().split(","))
        state = {"done": False, "noted": False}

        def on_end():
            # Runs when the call ends for any reason; only an unfinished one was cancelled.
            with lock:
                first = not state["done"] and not state["noted"]
                state["noted"] = True
            if first:
                note("cancelled Stream")

        context.add_callback(on_end)
        for i in range(count):
            if not context.is_active():
                return
            yield f"tick {i}".encode()
            if interval:
                time.sleep(interval / 1000)
        state["done"] = True

    def echo(request_iterator, context):
        for message in request_iterator:
            yield message

    def big(request, context):
        yield b"y" * int(request.decode())

    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
        "Echo": grpc.stream_stream_rpc_method_handler(echo),
        "Big": grpc.unary_stream_rpc_method_handler(big),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=GRPC_OPTS)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Svc", handlers),))
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    stop_after(args.max_seconds)
    ready(port)
    server.wait_for_termination()


def grpc_channel(args):
    """One channel, pick_first (a single connection): any spreading over backends is the proxy's."""
    import grpc
    opts = GRPC_OPTS + [("grpc.lb_policy_name", "pick_first")]
    if not args.ca:
        return grpc.insecure_channel(args.target, options=opts)
    creds = grpc.ssl_channel_credentials(open(args.ca, "rb").read())
    return grpc.secure_channel(args.target, creds, options=opts + [("grpc.ssl_target_name_override", "localhost")])


def grpc_call(args):
    import grpc
    channel = grpc_channel(args)
    deadline = time.monotonic() + args.timeout
    left = lambda: max(0.1, deadline - time.monotonic())
    try:
        if args.method == "Unary":
            by = collections.Counter()
            f = channel.unary_unary("/test.Svc/Unary")
            for i in range(args.count):
                name, _, echoed = f(f"ping {i}".encode(), timeout=left()).partition(b":")
                if echoed != f"ping {i}".encode():
                    fail(f"unexpected answer {name!r}:{echoed!r}")
                by[name.decode()] += 1
            print(f"ok unary {args.count} by " + ",".join(f"{k}={v}" for k, v in sorted(by.items())))
        elif args.method == "Big":
            got = list(channel.unary_stream("/test.Svc/Big")(str(args.size).encode(), timeout=left()))
            if got != [b"y" * args.size]:
                fail(f"unexpected answer: {len(got)} messages, sizes {[len(m) for m in got][:5]}")
            print(f"ok big {args.size}")
        else:
            sent = (bytes(range(251)) * (args.size // 251 + 1))[:args.size]  # not all one byte
            got = list(channel.stream_stream("/test.Svc/Echo")(iter([sent]), timeout=left()))
            if got != [sent]:
                fail(f"unexpected echo: {len(got)} messages, sizes {[len(m) for m in got][:5]}")
            print(f"ok echo {args.size}")
    except grpc.RpcError as e:
        fail(f"rpc failed: {e.code().name} {e.details()}")


# MARK: 10. h2c-digest backend

def serve_h2c_digest(args):
    """A strict HTTP/2 (h2c, prior knowledge) backend, one thread per connection: a POST/PUT is
    answered with the SHA-256 and size of its body; anything else with "NAME METHOD PATH
    authority=AUTHORITY"; both with no content-length (the body's end is END_STREAM) and a
    trailer x-digest-done, so a proxy must frame them itself."""
    import hashlib

    def handle(sock):
        conn = h2.connection.H2Connection(config=H2Configuration(client_side=False, header_encoding="utf-8"))
        conn.initiate_connection()
        sock.sendall(conn.data_to_send())
        streams = {}
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    return
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.RequestReceived):
                        streams[ev.stream_id] = [dict(ev.headers), hashlib.sha256(), 0]
                    elif isinstance(ev, h2.events.DataReceived):
                        st = streams.get(ev.stream_id)
                        if st:
                            st[1].update(ev.data)
                            st[2] += len(ev.data)
                        conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    elif isinstance(ev, h2.events.StreamEnded):
                        hd, digest, n = streams.pop(ev.stream_id)
                        if hd[":method"] in ("POST", "PUT"):
                            body = f"{digest.hexdigest()} {n}\n".encode()
                        else:
                            body = f"{args.name} {hd[':method']} {hd[':path']} authority={hd.get(':authority')}\n".encode()
                        conn.send_headers(ev.stream_id, [(":status", "200"), ("content-type", "text/plain")])
                        conn.send_data(ev.stream_id, body)
                        conn.send_headers(ev.stream_id, [("x-digest-done", "1")], end_stream=True)
                sock.sendall(conn.data_to_send())
        except (OSError, h2.exceptions.ProtocolError):
            return
        finally:
            sock.close()

    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", args.port))
    srv.listen(1024)
    stop_after(args.max_seconds)
    ready(srv.getsockname()[1])
    while True:
        c, _ = srv.accept()
        threading.Thread(target=handle, args=(c,), daemon=True).start()


# MARK: command line

def client_parser(sub, name, help):
    sp = sub.add_parser(name, help=help)
    sp.add_argument("--port", type=int, required=True)
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("--ca", help="TLS with ALPN h2 against this CA; without it, cleartext h2 (prior knowledge)")
    sp.add_argument("--timeout", type=float, default=10, help="bound of the whole run, seconds")
    sp.add_argument("--authority", default="localhost")
    return sp


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sp = client_parser(sub, "settings-ack-wait", "GET once the server has ACKed our SETTINGS")
    sp.add_argument("--path", default="/")
    sp = client_parser(sub, "rapid-reset", "open and RST_STREAM CANCEL many streams")
    sp.add_argument("--count", type=int, default=1000)
    sp = client_parser(sub, "continuation-flood", "HEADERS without END_HEADERS, then endless CONTINUATION")
    sp.add_argument("--count", type=int, default=10000)
    sp = client_parser(sub, "slow-reader", "a stream that never reopens its window, and a fast one beside it")
    sp.add_argument("--slow-path", required=True)
    sp.add_argument("--fast-path", required=True)
    sp = client_parser(sub, "cancel", "cancel a response after some bytes")
    sp.add_argument("--path", default="/")
    sp.add_argument("--after-bytes", type=int, default=1)
    sp.add_argument("--grpc", action="store_true", help="a gRPC POST carrying --grpc-message")
    sp.add_argument("--grpc-message", default="1000,50")
    sp.add_argument("--close", action="store_true", help="close the connection instead of resetting the stream")
    sp = client_parser(sub, "many-streams", "many concurrent slow requests on one connection")
    sp.add_argument("--count", type=int, default=100)
    sp.add_argument("--path", required=True)
    sp.add_argument("--expect-goaway", action="store_true", help="after the streams, wait for the server to close")
    sp = client_parser(sub, "idle-gaps", "rounds of requests on one connection with idle gaps between them")
    sp.add_argument("--rounds", type=int, default=3)
    sp.add_argument("--requests", type=int, default=5)
    sp.add_argument("--gap", type=float, default=2.5)
    sp.add_argument("--path", default="/gap")
    sp.add_argument("--priority", action="store_true", help="PRIORITY frames for idle streams before each round")
    sp = client_parser(sub, "frames", "send raw frames, print what comes back")
    sp.add_argument("--send", required=True, help="comma-separated: headers:ID[:end] data:ID:LEN[:end] rst:ID:CODE "
                    "ping priority:ID:DEP window:ID:INC settings-ack goaway raw:HEX")
    sp = sub.add_parser("slow-http1", help="HTTP/1.1 backend answering after --delay-ms")
    sp.add_argument("--port", type=int, default=0)
    sp.add_argument("--delay-ms", type=int, default=1000)
    sp.add_argument("--max-seconds", type=float, default=300)
    sp = sub.add_parser("grpc-named", help="gRPC backend test.Svc signing answers with --name")
    sp.add_argument("--port", type=int, default=0)
    sp.add_argument("--name", required=True)
    sp.add_argument("--log", required=True)
    sp.add_argument("--max-seconds", type=float, default=300)
    sp = sub.add_parser("h2c-digest", help="h2c backend answering with the SHA-256 of request bodies")
    sp.add_argument("--port", type=int, default=0)
    sp.add_argument("--name", default="h2c-digest")
    sp.add_argument("--max-seconds", type=float, default=300)
    sp = sub.add_parser("grpc-call", help="gRPC client for grpc-named")
    sp.add_argument("--target", required=True)
    sp.add_argument("--ca")
    sp.add_argument("--method", choices=["Unary", "Big", "EchoBig"], required=True)
    sp.add_argument("--count", type=int, default=10)
    sp.add_argument("--size", type=int, default=MIB)
    sp.add_argument("--timeout", type=float, default=30)
    args = p.parse_args()
    {
        "settings-ack-wait": settings_ack_wait, "rapid-reset": rapid_reset,
        "continuation-flood": continuation_flood, "slow-reader": slow_reader, "cancel": cancel,
        "many-streams": many_streams, "idle-gaps": idle_gaps, "frames": frames_probe, "slow-http1": serve_slow_http1, "h2c-digest": serve_h2c_digest,
        "grpc-named": serve_grpc_named, "grpc-call": grpc_call,
    }[args.cmd](args)


if __name__ == "__main__":
    main()
