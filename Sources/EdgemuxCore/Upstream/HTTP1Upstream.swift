import CEdgemux
import Glibc

/// One request of request mode over an HTTP/1.1 backend connection: a kept one from the worker's
/// pool, or a new one. The request head is written as HTTP/1.1 (translated from HTTP/2 where the
/// client spoke that), its body streamed behind it (chunked when its length is unknown), and the
/// response head and body parsed and decoded into the request's response queue. Afterwards the
/// connection goes back to the pool when both messages ended cleanly.
///
/// The backend is read only while the response queue holds less than `ProxyRequest.highWater`,
/// and request body bytes are taken from the client only while what waits for the socket stays
/// under it: one request holds at most about two chunks, whatever the peers do.
final class HTTP1Upstream: EventHandler, RequestUpstream {
    /// What the connection waits for.
    enum State: Equatable {
        /// The TCP connect (and the TLS handshake) of a new connection.
        case connecting
        /// The response head (the request is being written meanwhile).
        case awaitingHead
        /// The rest of the response body.
        case receivingBody
        /// Nothing: released to the pool or closed.
        case done
    }

    unowned(unsafe) let worker: Worker  // workers live as long as the process: no check per access
    private var request: ProxyRequest?
    let backend: BackendConfig
    let endpoint: Endpoint
    private var transport: Transport?
    private var dial: BackendDial
    private(set) var state: State = .connecting
    /// The connection came from the pool (a failure before any answer may be retried).
    private var reused = false
    /// When its own connect started (edgemux_backend_connect_duration_seconds).
    private var connectStartedAt: Int64 = 0
    private var timer: TimerHandle?

    /// Framed request bytes (head, chunk framing, body) the socket has not taken yet.
    private var out = ByteQueue()
    private var headQueued = false
    private var chunkedRequest = false
    /// The request, terminator included, is all in `out` (or written).
    private var requestComplete = false
    private var wroteAny = false

    private let parser: HTTP1ResponseParser
    private var headBuffer: [UInt8] = []
    private var framing: BodyFraming = .none
    private var remaining = 0
    private var chunked = ChunkedBodyScanner()
    private var reusable = true
    private var headRequest = false

    private init(request: ProxyRequest, backend: BackendConfig, endpoint: Endpoint, worker: Worker) {
        self.request = request
        self.backend = backend
        self.endpoint = endpoint
        self.worker = worker
        self.dial = BackendDial(alpn: .http1, proxied: request.client.proxied)
        self.parser = HTTP1ResponseParser(cap: max(BufferPool.chunkSize, request.listener.maxRequestHeadBytes))
        self.headRequest = request.head.method == "HEAD"
    }

    /// Starts `request` on a kept connection to `endpoint`, or a new one (throws when no socket
    /// could be had). Progress and failures are reported on the loop's next pass, never from
    /// inside this call.
    static func start(_ request: ProxyRequest, backend: BackendConfig, endpoint: Endpoint, worker: Worker) throws -> HTTP1Upstream {
        let u = HTTP1Upstream(request: request, backend: backend, endpoint: endpoint, worker: worker)
        if let kept = worker.upstreams.take(backend: backend, endpoint: endpoint, client: request.client.proxied, for: u) {
            u.transport = kept
            u.reused = true
            u.state = .awaitingHead
            // EPOLLOUT edges went to the pool while it was idle: try a write (EAGAIN resets it).
            kept.writable = true
        } else {
            // TCP keepalive matters only where no idle timeout closes the connection sooner.
            u.connectStartedAt = worker.loop.now
            u.transport = try Transport.connecting(to: endpoint.address, keepalive: (request.route?.idleTimeoutMillis ?? 0) == 0, loop: worker.loop, handler: u)
            u.timer = worker.loop.schedule(afterMillis: backend.connectTimeoutMillis, for: u)
            worker.metrics.update { $0.backendConnections[backend.name, default: 0] += 1 }
        }
        worker.loop.runSoon { u.pump() }
        return u
    }

    // MARK: events

    override func handleEvent(fd: Int32, events: UInt32) {
        guard let t = transport, fd == t.fd else { return }
        t.note(events: events)
        if state == .connecting {
            switch dial.advance(t, events: events, backend: backend, snapshot: request?.snapshot ?? worker.snapshot) {
            case .pending: return
            case .failed(let why):
                fail(why, connect: true)
                return
            case .ready:
                worker.loop.cancel(timer)
                timer = nil
                worker.recordConnect(backend: backend.name, endpoint: endpoint, since: connectStartedAt)
                state = .awaitingHead
            }
        }
        pump()
    }

    override func timerFired() {
        timer = nil
        if state == .connecting { fail("connect timed out after \(DurationText.of(backend.connectTimeoutMillis))", connect: true) }
    }

    // MARK: RequestUpstream

    func requestBodyReady(_ r: ProxyRequest) { worker.loop.runSoon { [self] in self.pump() } }

    func responseBodyTaken(_ r: ProxyRequest, _ count: Int) {
        if r.responseBody.count < ProxyRequest.highWater, transport?.readable == true {
            worker.loop.runSoon { [self] in self.pump() }
        }
    }

    func cancel(_ r: ProxyRequest) {
        // The response cannot be finished now: the connection is not reusable.
        closeTransport()
        finish(release: true)
    }

    // MARK: moving bytes

    /// Makes all the progress the socket and the request's queues allow.
    func pump() {
        guard state == .awaitingHead || state == .receivingBody, let r = request, let t = transport else { return }
        fillOutbound(r)
        if !out.isEmpty || t.hasBufferedOutput {
            while !out.isEmpty, t.writable {
                let (written, broken) = t.writeAvailable(from: out.first)
                if written > 0 { wroteAny = true }
                out.consume(written, pool: worker.pool)
                if broken != nil {
                    // A reset kept connection before any answer: retried (if the request allows).
                    fail("closed while the request was sent", connect: false)
                    return
                }
                if written == 0 { break }
                fillOutbound(r)
            }
            if t.hasBufferedOutput, t.writable, case .failed(let why) = t.flushBuffered() {
                fail(why, connect: false)
                return
            }
        }
        readResponse(r, t)
    }

    /// Moves the head and what the request body has into `out`, with chunk framing, while
    /// `out` is below the high-water mark.
    private func fillOutbound(_ r: ProxyRequest) {
        let pool = worker.pool
        if !headQueued {
            headQueued = true
            let route = r.route
            let (bytes, chunked) = HTTP1Serializer.requestHead(r.head, forwarded: route?.forwarded ?? .replace, via: r.viaVersion, client: r.client)
            chunkedRequest = chunked
            bytes.withUnsafeBytes { out.append($0, pool: pool) }
            if r.head.endStream { requestComplete = true }
        }
        guard !requestComplete else { return }
        let moved = out.moveBody(from: &r.requestBody, chunked: chunkedRequest, limit: ProxyRequest.highWater, pool: pool)
        if moved > 0 { r.requestBodySent(moved) }
        if r.requestEnded, r.requestBody.isEmpty {
            requestComplete = true
            if chunkedRequest {
                // Trailers of an HTTP/2 request are dropped: HTTP/1.1 servers rarely read them.
                out.append(UnsafeRawBufferPointer(start: lastChunk, count: 5), pool: pool)
            }
        }
    }

    private func readResponse(_ r: ProxyRequest, _ t: Transport) {
        let scratch = worker.pool.scratch
        while state != .done, t.readable, r.responseBody.count < ProxyRequest.highWater, request != nil {
            switch t.read(into: scratch) {
            case .bytes(let n):
                received(UnsafeRawBufferPointer(rebasing: scratch[0..<n]), r)
            case .wantRead, .wantWrite:
                return
            case .eof:
                if state == .receivingBody, framing == .untilClose {
                    reusable = false
                    responseDone(r)
                } else {
                    fail(state == .awaitingHead ? "closed before a complete response head" : "closed before the end of the response body", connect: false)
                }
                return
            case .failed(let why):
                fail(why, connect: false)
                return
            }
        }
    }

    private func received(_ bytes: UnsafeRawBufferPointer, _ r: ProxyRequest) {
        if state == .receivingBody {
            body(bytes, r)
            return
        }
        if headBuffer.isEmpty, case .done(let head) = parser.parse(bytes, headRequest: headRequest, forClient: false) {
            // The usual case: the whole head in one read, parsed where it lies (no copy).
            headDone(head, bytes, readSize: bytes.count, r)
            return
        }
        headBuffer.append(contentsOf: bytes)
        while state == .awaitingHead {
            let result = headBuffer.withUnsafeBytes { parser.parse($0, headRequest: headRequest, forClient: false) }
            switch result {
            case .needMore:
                return
            case .interim(let length):
                let h = headBuffer.withUnsafeBytes { b in
                    ResponseHead(status: Self.status(b), fields: HTTP1Serializer.responseFields(UnsafeRawBufferPointer(rebasing: b[0..<length])))
                }
                headBuffer.removeSubrange(0..<length)
                r.upstreamInterim(h)
            case .done(let head):
                let buffered = headBuffer
                headBuffer = []
                buffered.withUnsafeBytes { headDone(head, $0, readSize: bytes.count, r) }
                return
            case .error(let why):
                fail("bad response: \(why)", connect: false)
                return
            }
        }
    }

    /// The final response head is complete at the start of `bytes`; what follows it is body.
    private func headDone(_ head: HTTP1ResponseHead, _ bytes: UnsafeRawBufferPointer, readSize: Int, _ r: ProxyRequest) {
        framing = head.framing
        reusable = head.reusable
        if case .length(let n) = framing { remaining = n }
        let framedByLength: Bool
        switch framing {
        case .length, .none: framedByLength = true
        case .chunked, .untilClose: framedByLength = false
        }
        let fields = HTTP1Serializer.responseFields(UnsafeRawBufferPointer(rebasing: bytes[0..<head.headLength]), dropContentLength: !framedByLength)
        let rest = UnsafeRawBufferPointer(rebasing: bytes[head.headLength...])
        state = .receivingBody
        r.upstreamResponse(ResponseHead(status: head.status, fields: fields), endStream: framing == .none)
        if framing == .none {
            if !rest.isEmpty { reusable = false }
            responseDone(r)
            return
        }
        let bodyIncomplete: Bool
        switch framing {
        case .length(let n): bodyIncomplete = rest.count < n
        default: bodyIncomplete = true
        }
        if readSize < 1400, bodyIncomplete, let t = transport {
            // A backend without TCP_NODELAY that writes head and body apart holds the body until
            // the head is acknowledged, which a kept connection delays by up to 40 ms: acknowledge
            // now (as HTTP1Exchange does).
            try? Posix.setOption(t.fd, level: Int32(IPPROTO_TCP), name: TCP_QUICKACK, value: 1)
        }
        if !rest.isEmpty { body(rest, r) }
    }

    private static func status(_ b: UnsafeRawBufferPointer) -> Int {
        var s = 0
        for i in 9..<12 { s = s * 10 + Int(b[i] &- 48) }
        return s
    }

    private func body(_ bytes: UnsafeRawBufferPointer, _ r: ProxyRequest) {
        switch framing {
        case .none:
            reusable = false
        case .length:
            let n = min(remaining, bytes.count)
            remaining -= n
            if n > 0 { r.upstreamBody(UnsafeRawBufferPointer(rebasing: bytes[0..<n])) }
            if n < bytes.count { reusable = false }
            if remaining == 0 { responseDone(r) }
        case .chunked:
            let result = chunked.scan(bytes) { range in r.upstreamBody(UnsafeRawBufferPointer(rebasing: bytes[range])) }
            switch result {
            case .more: break
            case .done(let used):
                if used < bytes.count { reusable = false }
                responseDone(r)
            case .error(let why):
                fail("bad chunked body: \(why)", connect: false)
            }
        case .untilClose:
            r.upstreamBody(bytes)
        }
    }

    private func responseDone(_ r: ProxyRequest) {
        guard state != .done else { return }
        r.upstreamEnd(trailers: nil)
        if let t = transport, reusable, requestComplete, out.isEmpty, !t.hasBufferedOutput, t.isIdle(scratch: worker.pool.scratch) {
            transport = nil
            worker.upstreams.give(t, backend: backend, endpoint: endpoint, client: r.client.proxied)
        } else {
            closeTransport()
        }
        finish(release: true)
    }

    private func fail(_ why: String, connect: Bool) {
        guard state != .done else { return }
        let sent = wroteAny || reused
        closeTransport()
        let r = request
        finish(release: false)
        r?.upstreamFailed(reused && !wroteAny ? "kept connection closed: \(why)" : why, sent: sent, connect: connect)
    }

    private func closeTransport() {
        worker.loop.cancel(timer)
        timer = nil
        if let t = transport {
            transport = nil
            t.close(on: worker.loop)
        }
    }

    private func finish(release: Bool) {
        guard state != .done else { return }
        state = .done
        out.release(pool: worker.pool)
        let r = request
        request = nil
        if release { r?.upstreamReleased() }
    }
}

private let lastChunkText: StaticString = "0\r\n\r\n"
private var lastChunk: UnsafeRawPointer { UnsafeRawPointer(lastChunkText.utf8Start) }
