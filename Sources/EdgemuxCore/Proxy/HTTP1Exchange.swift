import Glibc

/// One HTTP/1.1 request and its response over a backend connection that outlives them: the
/// request head goes out with its connection fields removed (so the backend keeps the connection
/// open), and the response is followed to its last byte (Content-Length or chunked framing), so
/// that the backend connection can go back to the worker's pool afterwards.
///
/// Used for a client's only request (`Connection: close`, no body): a new TLS connection per
/// request is where a fresh backend connect costs most. A kept-alive client connection is
/// relayed byte for byte instead, and never parsed past its first request.
final class HTTP1Exchange {
    enum Progress: Equatable {
        /// Waiting on a socket.
        case working
        /// The whole response reached the client (TLS records sent).
        case finished(backendReusable: Bool)
        /// `side` failed; `responseStarted` says whether the client has seen response bytes
        /// (if not, the caller may retry or answer 502).
        case failed(side: String, why: String, responseStarted: Bool)
    }

    /// Whether the first request of a connection can run as a pooled exchange.
    static func eligible(_ request: RequestInfo, headLength: Int, buffered: Int) -> Bool {
        let f = request.framing
        guard !f.http10, f.closeRequested, !f.hasBody, !f.expects, request.upgrade.isEmpty, headLength == buffered else { return false }
        // Idempotent methods only (RFC 9110 section 9.2.2): a request that meets a pooled
        // connection the backend has just closed is sent again on a new one.
        switch request.method {
        case "GET", "HEAD", "OPTIONS": return true
        default: return false
        }
    }

    /// The request head as the backend gets it: connection fields removed, so HTTP/1.1's
    /// default (keep the connection open) applies.
    static func backendHead(_ head: [UInt8]) -> [UInt8] {
        head.withUnsafeBytes { HTTP1Fields.withoutConnectionFields($0) }
    }

    let client: Transport
    let backend: Transport
    let pool: BufferPool
    private let request: [UInt8]
    private var requestOffset = 0
    private let headRequest: Bool
    private let parser: HTTP1ResponseParser
    /// The response head as it arrives (until complete).
    private var responseHead: [UInt8] = []
    /// The response's status once its head is complete (0 before): all the exchange keeps of it.
    private(set) var status = 0
    private var headComplete: Bool { status != 0 }
    private var remaining = 0
    private var chunked = ChunkedBodyScanner()
    private var framing: BodyFraming = .none
    private var bodyDone = false
    /// The backend sent something after the response, or framed it so that its end is unsure.
    private var reusable = true
    /// Bytes for the client that the socket has not taken yet.
    private var pending: Chunk?
    private(set) var responseStarted = false
    private(set) var bytesToClient = 0

    init(client: Transport, backend: Transport, requestHead: [UInt8], method: String, pool: BufferPool, maxResponseHead: Int) {
        self.client = client
        self.backend = backend
        self.request = requestHead
        self.headRequest = method == "HEAD"
        self.pool = pool
        self.parser = HTTP1ResponseParser(cap: maxResponseHead)
    }

    func release() {
        if let p = pending { pool.give(p) }
        pending = nil
    }

    /// Makes all the progress the sockets allow.
    func pump() -> Progress {
        // 1. The request, to the backend.
        let sent = requestOffset
        let (written, broken) = request.withUnsafeBytes { backend.writeAvailable(from: UnsafeRawBufferPointer(rebasing: $0[sent...])) }
        requestOffset += written
        if let broken { return broke("backend", broken) }
        if backend.hasBufferedOutput, backend.writable, case .failed(let why) = backend.flushBuffered() {
            return .failed(side: "backend", why: why, responseStarted: responseStarted)
        }
        // 2. What the client has not taken yet.
        if let failed = flushPending() { return failed }
        // 3. The response, from the backend, while the client keeps up.
        let scratch = pool.scratch
        while !bodyDone, pending == nil, backend.readable {
            switch backend.read(into: scratch) {
            case .bytes(let n):
                if let failed = received(UnsafeRawBufferPointer(rebasing: scratch[0..<n])) { return failed }
            case .wantRead, .wantWrite:
                break
            case .eof:
                if headComplete, framing == .untilClose {
                    bodyDone = true
                    reusable = false
                } else {
                    let why = headComplete ? "closed before the end of the response body" : "closed before a complete response head"
                    return .failed(side: "backend", why: why, responseStarted: responseStarted)
                }
            case .failed(let why):
                return .failed(side: "backend", why: why, responseStarted: responseStarted)
            }
        }
        guard bodyDone, pending == nil, !client.hasBufferedOutput else { return .working }
        return .finished(backendReusable: reusable && requestOffset == request.count && !backend.hasBufferedOutput)
    }

    /// Handles bytes read from the backend.
    private func received(_ bytes: UnsafeRawBufferPointer) -> Progress? {
        guard !headComplete else { return forwardBody(bytes, after: []) }
        if responseHead.isEmpty, case .done(let head) = parser.parse(bytes, headRequest: headRequest) {
            // The usual case: the whole head in one read, parsed where it lies (no copy).
            return headDone(head, rest: UnsafeRawBufferPointer(rebasing: bytes[head.headLength...]), readSize: bytes.count)
        }
        responseHead.append(contentsOf: bytes)
        while !headComplete {
            let result = responseHead.withUnsafeBytes { parser.parse($0, headRequest: headRequest) }
            switch result {
            case .needMore:
                return nil
            case .interim(let length):
                // 1xx (103 Early Hints, 100 Continue): the client gets it as it is.
                responseStarted = true
                let failed = responseHead.withUnsafeBytes { send(UnsafeRawBufferPointer(rebasing: $0[0..<length])) }
                responseHead.removeSubrange(0..<length)
                if let failed { return failed }
            case .done(let head):
                let failed = responseHead.withUnsafeBytes { headDone(head, rest: UnsafeRawBufferPointer(rebasing: $0[head.headLength...]), readSize: bytes.count) }
                responseHead = []
                return failed
            case .error(let why):
                return .failed(side: "backend", why: why, responseStarted: responseStarted)
            }
        }
        return nil
    }

    /// The response head is complete: `rest` is what followed it in the backend's bytes, and
    /// `readSize` the size of the read that completed it.
    private func headDone(_ head: HTTP1ResponseHead, rest: UnsafeRawBufferPointer, readSize: Int) -> Progress? {
        status = head.status
        framing = head.framing
        reusable = head.reusable
        if case .length(let n) = framing { remaining = n }
        if framing == .none { bodyDone = true }
        responseStarted = true
        // Head and first body bytes go out in one write (one TLS record, one send).
        let failed = forwardBody(rest, after: head.forClient)
        if failed == nil, !bodyDone, readSize < 1400 {
            // A backend without TCP_NODELAY that writes its head and body separately
            // holds the body back until the head is acknowledged, and on a kept
            // connection the kernel delays that ACK by up to 40 ms: acknowledge now.
            try? Posix.setOption(backend.fd, level: Int32(IPPROTO_TCP), name: TCP_QUICKACK, value: 1)
        }
        return failed
    }

    /// Sends `prefix` and the part of `bytes` that belongs to the body; bytes past the body's
    /// end are dropped, and make the connection unfit for reuse.
    private func forwardBody(_ bytes: UnsafeRawBufferPointer, after prefix: [UInt8]) -> Progress? {
        var body = 0
        if bodyDone {
            body = 0
        } else {
            switch framing {
            case .none:
                body = 0
            case .length:
                body = min(remaining, bytes.count)
                remaining -= body
                if remaining == 0 { bodyDone = true }
            case .chunked:
                switch chunked.scan(bytes) {
                case .more: body = bytes.count
                case .done(let n):
                    body = n
                    bodyDone = true
                case .error:
                    // The end cannot be known any more: pass everything on until the backend
                    // closes, and do not reuse the connection.
                    framing = .untilClose
                    reusable = false
                    body = bytes.count
                }
            case .untilClose:
                body = bytes.count
            }
        }
        if body < bytes.count { reusable = false }
        let part = UnsafeRawBufferPointer(rebasing: bytes[0..<body])
        if prefix.isEmpty { return send(part) }
        // Joined in a pooled chunk (no allocation); `send` copies what the socket leaves.
        let joined = pool.take(atLeast: prefix.count + part.count)
        defer { pool.give(joined) }
        prefix.withUnsafeBytes { joined.append($0) }
        joined.append(part)
        return send(joined.readable)
    }

    /// Writes to the client what it takes now; keeps the rest (at most one read's worth plus a
    /// head) until the socket has room again.
    private func send(_ bytes: UnsafeRawBufferPointer) -> Progress? {
        var offset = 0
        if pending == nil {
            // The response's last bytes carry the client's close_notify (it asked for one request).
            let (written, broken) = client.writeAvailable(from: bytes, shutdownAfter: bodyDone)
            offset = written
            bytesToClient += written
            if let broken { return broke("client", broken) }
        }
        guard offset < bytes.count else { return nil }
        let rest = UnsafeRawBufferPointer(rebasing: bytes[offset...])
        let need = rest.count + (pending?.readableBytes ?? 0)
        if let p = pending, p.storage.count - p.readableBytes >= rest.count {
            p.append(rest)
        } else {
            let chunk = pool.take(atLeast: need)
            if let p = pending {
                chunk.append(p.readable)
                pool.give(p)
            }
            chunk.append(rest)
            pending = chunk
        }
        return nil
    }

    /// The failure a broken write (`.eof` or `.failed`) on `side` means.
    private func broke(_ side: String, _ step: StreamStep) -> Progress {
        var why = "closed"
        if case .failed(let w) = step { why = w }
        return .failed(side: side, why: why, responseStarted: side == "client" || responseStarted)
    }

    private func flushPending() -> Progress? {
        if let p = pending {
            let (written, broken) = client.writeAvailable(from: p.readable, shutdownAfter: bodyDone)
            p.consume(written)
            bytesToClient += written
            if let broken { return broke("client", broken) }
            if p.isEmpty {
                pool.give(p)
                pending = nil
            }
        }
        if client.hasBufferedOutput, client.writable, case .failed(let why) = client.flushBuffered() {
            return .failed(side: "client", why: why, responseStarted: true)
        }
        return nil
    }
}
