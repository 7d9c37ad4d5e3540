import CEdgemux
import Glibc

/// edgemux's HTTP/1.1 server on one client connection (request mode): every request of the
/// keep-alive connection is parsed, routed and sent on its own (`ProxyRequest`), and answered in
/// order. Requests are taken one at a time: a pipelined request waits (in the socket, or in a
/// buffer bounded by the head limit) until the response before it has gone out, as nginx and
/// HAProxy do.
///
/// The request body streams behind its head (Content-Length or chunked, decoded), read from the
/// socket only while the request's queue is below its high-water mark; the response goes out with
/// the framing the client understands (its own length, chunked, or until close for HTTP/1.0).
/// An `Upgrade` request (WebSocket) hands the connection to a relay (`ProxyConnection`) that
/// sends it to the route's backend as it is and relays both ways after the backend's 101.
final class HTTP1ServerConnection: EventHandler, RequestServer, RequestDownstream, CertificateCoverage {
    enum Phase: Equatable {
        /// Between requests: waiting for (the rest of) a request head.
        case awaitingHead
        /// A request is under way: its body coming in, its response going out.
        case serving
        /// The last bytes are written; half-closed, lingering until the client closes.
        case closing
        case closed
    }

    unowned(unsafe) let worker: Worker  // workers live as long as the process: no check per access
    let loop: EventLoop
    let snapshot: Snapshot
    let listener: ListenerConfig
    let peer: SocketAddress
    let client: Transport
    private let identity: ClientIdentity
    private let sni: String?
    private let parser: HTTP1RequestParser
    private(set) var phase: Phase = .awaitingHead
    var timer: TimerHandle?
    var finalAnswer: FinalAnswer?
    private(set) var lingering = false

    /// Bytes read and not yet taken: a head arriving, or what follows the current request (a
    /// pipelined request). Bounded by the head limit: beyond it the socket is not read.
    private var input: [UInt8] = []
    /// The request under way (nil between requests).
    private var current: ProxyRequest?
    private var currentRequest: HTTP1Request?
    private var requestCount: Int32 = 0
    // The current request's body as it comes in.
    private var bodyRemaining = 0
    private var chunkScanner = ChunkedBodyScanner()
    private var requestBodyDone = true
    // The current response as it goes out.
    private var out = ByteQueue()
    private var headWritten = false
    private var responseFraming: HTTP1ResponseWriter.Framing = .none
    private var responseTerminated = false
    /// The connection ends after the current response.
    private var closeAfterResponse = false
    private var draining = false
    private var flushScheduled = false
    /// When the head being received started arriving (0: no byte of it yet).
    private var headStartedAt: Int64 = 0
    private var ageDeadline: Int64 = 0
    private let startedAt: Int64

    var logPrefix: String { "client \(peer) on '\(listener.name)' (http/1.1)" }

    init(worker: Worker, snapshot: Snapshot, listener: ListenerConfig, transport: Transport, peer: SocketAddress, proxied: ProxiedClient? = nil) {
        self.worker = worker
        self.loop = worker.loop
        self.snapshot = snapshot
        self.listener = listener
        self.peer = peer
        self.client = transport
        let scheme = listener.tls == nil ? "http" : "https"
        self.identity = ClientIdentity(address: peer.ipString, logged: peer.description, scheme: scheme, certificateSubject: listener.tls?.clientCA == nil ? nil : transport.tls?.verifiedPeerSubject, proxied: proxied)
        self.sni = transport.tls?.serverName
        self.parser = HTTP1RequestParser(cap: listener.maxRequestHeadBytes, scheme: scheme)
        startedAt = worker.loop.now
    }

    /// `ClientConnection.start()`: the front door starts the connection with `start(replay:)`.
    func start() {}

    /// Takes the connection with what the front door read (the first request head, and what
    /// followed it).
    func start(replay: [UInt8]) {
        worker.servers[ObjectIdentifier(self)] = self
        worker.metrics.update(listener.name) { $0.serverConnections["http1", default: 0] += 1 }
        if listener.maxConnectionAgeMillis > 0 {
            let age = listener.maxConnectionAgeMillis
            ageDeadline = startedAt + age + Int64.random(in: 0...max(1, age / 10))
        }
        input = replay
        headStartedAt = loop.now
        if worker.draining { draining = true }
        pump()
    }

    // MARK: events

    override func handleEvent(fd: Int32, events: UInt32) {
        guard fd == client.fd, phase != .closed else { return }
        client.note(events: events)
        if phase == .closing {
            continueAnswer()
            return
        }
        pump()
    }

    /// Makes all the progress the socket and the current request allow: reads, takes heads and
    /// body bytes, writes the response, and moves on to the next request.
    private func pump() {
        var progressed = true
        while progressed, phase == .awaitingHead || phase == .serving {
            progressed = false
            if phase == .awaitingHead, !input.isEmpty {
                if !takeHead() { return }
                progressed = phase == .serving
            }
            if phase == .serving, !requestBodyDone, !input.isEmpty {
                let pending = input
                input = []
                pending.withUnsafeBytes { takeBody($0) }
                guard phase == .serving else { return }
            }
            if !read() { return }
            if !write() { return }
            if phase == .serving, responseTerminated, out.isEmpty, !client.hasBufferedOutput {
                finishExchange()
                progressed = phase == .awaitingHead && !input.isEmpty
            }
        }
        armTimer()
    }

    /// Reads while there is a use for the bytes; false when the connection closed.
    private func read() -> Bool {
        let scratch = worker.pool.scratch
        while client.readable, wantsInput {
            switch client.read(into: scratch) {
            case .bytes(let n):
                let got = UnsafeRawBufferPointer(rebasing: scratch[0..<n])
                if phase == .serving, !requestBodyDone {
                    takeBody(got)
                    if phase != .serving { return false }
                } else {
                    if input.isEmpty, phase == .awaitingHead { headStartedAt = loop.now }
                    input.append(contentsOf: got)
                    if phase == .awaitingHead {
                        if !takeHead() { return false }
                    }
                }
            case .wantRead, .wantWrite:
                return true
            case .eof:
                return clientEnded()
            case .failed(let why):
                worker.logger.info("\(logPrefix): \(why); closed")
                close()
                return false
            }
        }
        return true
    }

    /// Whether reading now has a use: a head to complete, body to pass on while the request
    /// queue has room; a pipelined request is read up to the head limit, no further.
    private var wantsInput: Bool {
        switch phase {
        case .awaitingHead: return input.count <= listener.maxRequestHeadBytes
        case .serving:
            // Once edgemux has decided to close after this response (an early answer to a request
            // whose body is still coming), the rest of the body waits in the socket: the lingering
            // close drains it. Reading it now would only drop it, as fast as a client can send.
            if !requestBodyDone, closeAfterResponse, current?.responseStarted == true { return false }
            if !requestBodyDone { return (current?.requestBody.count ?? 0) < ProxyRequest.highWater }
            return input.count <= listener.maxRequestHeadBytes && !closeAfterResponse
        case .closing, .closed: return false
        }
    }

    /// The client closed its side. Between requests that is the end; with a request under way
    /// whose body is complete, a half-close: the response still goes out, then the connection
    /// closes (as curl's `--no-keepalive` and netcat clients expect).
    private func clientEnded() -> Bool {
        if phase == .serving, requestBodyDone, current?.isFinished == false || !responseTerminated {
            closeAfterResponse = true
            return true
        }
        if phase == .serving {
            worker.logger.info("\(logPrefix): client closed during request \(requestCount)")
        } else if !input.isEmpty {
            worker.logger.notice("\(logPrefix): closed after \(input.count) bytes, before a complete request head")
        }
        close()
        return false
    }

    // MARK: request heads and bodies

    /// Parses the head waiting in `input`; false when the connection is over (a bad head).
    private func takeHead() -> Bool {
        let result = input.withUnsafeBytes { parser.parse($0) }
        switch result {
        case .needMore:
            if input.count > listener.maxRequestHeadBytes { return refuse(HTTP1RequestError(status: 431, reason: "request head exceeds \(listener.maxRequestHeadBytes) bytes", label: "h1_head_too_large")) }
            return true
        case .error(let e):
            return refuse(e)
        case .done(let request):
            if request.upgrade {
                handOverToRelay()
                return false
            }
            startRequest(request)
            return phase != .closed
        }
    }

    /// A head that cannot be read: the answer says why, and the connection closes (what follows
    /// the bad head cannot be framed).
    private func refuse(_ e: HTTP1RequestError) -> Bool {
        worker.metrics.update(listener.name) { $0.sniffErrors[e.label, default: 0] += 1 }
        worker.logger.notice("\(logPrefix): \(e); closed")
        finishWith(ErrorAnswers.http1(status: e.status, message: e.reason))
        return false
    }

    private func startRequest(_ request: HTTP1Request) {
        requestCount &+= 1
        let rest = request.headLength < input.count ? Array(input[request.headLength...]) : []
        // A small head buffer is kept for the next request (an allocation per request otherwise);
        // a large one goes, so that an idle connection holds little.
        if input.capacity <= 4096 { input.removeAll(keepingCapacity: true) } else { input = [] }
        headStartedAt = 0
        phase = .serving
        currentRequest = request
        headWritten = false
        responseTerminated = false
        responseFraming = .none
        closeAfterResponse = !request.keepAlive || draining
        if listener.maxRequestsPerConnection > 0, requestCount >= listener.maxRequestsPerConnection { closeAfterResponse = true }
        switch request.body {
        case .none:
            requestBodyDone = true
        case .length(let n):
            requestBodyDone = false
            bodyRemaining = n
        case .chunked:
            requestBodyDone = false
            chunkScanner = ChunkedBodyScanner()
        }
        let r = ProxyRequest(worker: worker, downstream: self, snapshot: snapshot, listener: listener, client: identity, sni: sni, clientProtocol: .http1, streamID: requestCount)
        r.head = request.head
        current = r
        loop.cancel(timer)
        timer = nil
        r.headReceived(endStream: request.body == .none)
        if request.expectsContinue, !request.http10, !requestBodyDone, !r.responseStarted {
            continueBytes.withUnsafeBytes { out.append($0, pool: worker.pool) }
            scheduleFlush()
        }
        if !rest.isEmpty {
            if requestBodyDone {
                input = rest
            } else {
                rest.withUnsafeBytes { takeBody($0) }
            }
        }
    }

    /// Body bytes of the current request (and, past its end, the start of the next request).
    private func takeBody(_ bytes: UnsafeRawBufferPointer) {
        guard let r = current else { return }
        switch currentRequest?.body {
        case .length?:
            let n = min(bodyRemaining, bytes.count)
            bodyRemaining -= n
            if n > 0 { r.requestData(UnsafeRawBufferPointer(rebasing: bytes[0..<n])) }
            if bodyRemaining == 0 { bodyEnded(r, rest: UnsafeRawBufferPointer(rebasing: bytes[n...])) }
        case .chunked?:
            let result = chunkScanner.scan(bytes) { range in r.requestData(UnsafeRawBufferPointer(rebasing: bytes[range])) }
            switch result {
            case .more: break
            case .done(let used): bodyEnded(r, rest: UnsafeRawBufferPointer(rebasing: bytes[used...]))
            case .error(let why): badBody(r, why)
            }
        default:
            input.append(contentsOf: bytes)
        }
    }

    private func bodyEnded(_ r: ProxyRequest, rest: UnsafeRawBufferPointer) {
        requestBodyDone = true
        r.requestEnd(trailers: nil)
        if !rest.isEmpty { input.append(contentsOf: rest) }
    }

    /// A chunked body that does not parse: answered 400 if nothing was answered yet, then the
    /// connection closes (its framing is lost).
    private func badBody(_ r: ProxyRequest, _ why: String) {
        worker.metrics.update(listener.name) { $0.sniffErrors["h1_chunked", default: 0] += 1 }
        worker.logger.notice("\(logPrefix): bad chunked request body: \(why)")
        requestBodyDone = true
        closeAfterResponse = true
        if r.responseStarted {
            loop.runSoon { [self] in self.close() }
        } else {
            r.answer(status: 400, message: "bad chunked request body: \(why)", outcome: .badRequest)
        }
    }

    // MARK: the response

    /// Writes what the response has; false when the connection broke.
    private func write() -> Bool {
        guard let r = current else { return true }
        fill(r)
        while client.writable {
            if out.isEmpty {
                if client.hasBufferedOutput {
                    if case .failed(let why) = client.flushBuffered() { return broke(why) }
                }
                break
            }
            let (written, broken) = client.writeAvailable(from: out.first)
            out.consume(written, pool: worker.pool)
            if broken != nil { return broke("write failed") }
            if written == 0 { break }
            fill(r)
        }
        return true
    }

    private func broke(_ why: String) -> Bool {
        worker.metrics.update(listener.name) { $0.closedWithError["client", default: 0] += 1 }
        worker.logger.info("\(logPrefix): client side failed during request \(requestCount) on route '\(current?.route?.name ?? "?")': \(why); closed")
        close()
        return false
    }

    /// Moves the response head and body into `out` (with chunk framing), up to the high-water mark.
    private func fill(_ r: ProxyRequest) {
        let pool = worker.pool
        guard let h = r.response else { return }
        if !headWritten {
            headWritten = true
            writeHead(h, r)
        }
        if responseFraming == .none {
            // HEAD, 204, 304: no body whatever came.
            if !r.responseBody.isEmpty {
                let n = r.responseBody.count
                r.responseBody.consume(n, pool: pool)
                r.responseTaken(n)
            }
        } else {
            let moved = out.moveBody(from: &r.responseBody, chunked: responseFraming == .chunked, limit: ProxyRequest.highWater, pool: pool)
            if moved > 0 { r.responseTaken(moved) }
        }
        if r.responseEnded, r.responseBody.isEmpty, !responseTerminated {
            responseTerminated = true
            if responseFraming == .chunked {
                HTTP1ResponseWriter.lastChunk(trailers: r.responseTrailers).withUnsafeBytes { out.append($0, pool: pool) }
            }
            if responseFraming == .untilClose { closeAfterResponse = true }
        }
    }

    /// Decides the response's framing and connection handling, and queues its head.
    private func writeHead(_ h: ResponseHead, _ r: ProxyRequest) {
        let http10 = currentRequest?.http10 ?? false
        var contentLength: Int?
        if r.head.method == "HEAD" || h.status == 204 || h.status == 304 || h.status < 200 {
            responseFraming = .none
        } else if let cl = h.fields.first("content-length"), !cl.isEmpty, cl.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }) {
            responseFraming = .length
        } else if r.responseEnded, r.responseTrailers == nil {
            // The whole body is here already (a short answer, or a backend that sent it at once).
            responseFraming = .length
            contentLength = r.responseBody.count
        } else if http10 {
            responseFraming = .untilClose
            closeAfterResponse = true
        } else {
            responseFraming = .chunked
        }
        if !requestBodyDone, r.responseEnded || h.status >= 400 {
            // The rest of the body would be read only to be dropped: close after this response.
            closeAfterResponse = true
        }
        if draining || worker.draining { closeAfterResponse = true }
        let connection: String? = closeAfterResponse ? "close" : (http10 ? "keep-alive" : nil)
        let bytes = HTTP1ResponseWriter.head(h, framing: responseFraming, contentLength: contentLength, connection: connection, via: r.route?.via == true ? "1.1" : nil)
        bytes.withUnsafeBytes { out.append($0, pool: worker.pool) }
    }

    /// The response is out: the request is done on this side; next request, or the end.
    private func finishExchange() {
        guard let r = current else { return }
        current = nil
        let bodyComplete = requestBodyDone
        currentRequest = nil
        r.clientClosed(code: 0)
        if !bodyComplete { closeAfterResponse = true }
        if closeAfterResponse || draining {
            finishWith([])
            return
        }
        phase = .awaitingHead
        requestBodyDone = true
        if !input.isEmpty { headStartedAt = loop.now }
    }

    /// Writes `bytes` as the connection's last, then half-closes and lingers until the client
    /// closes (at most 2 s), so that the answer is not reset away by unread input.
    private func finishWith(_ bytes: [UInt8]) {
        if let r = current {
            current = nil
            r.clientClosed(code: NGHTTP2_CANCEL.rawValue)
        }
        phase = .closing
        out.release(pool: worker.pool)
        finalAnswer = FinalAnswer(bytes)
        armTimer(5_000)
        continueAnswer()
    }

    // MARK: Upgrade: a relay from here on

    /// Hands the connection, the upgrade request's head first, to the front door's relay.
    private func handOverToRelay() {
        loop.cancel(timer)
        timer = nil
        let bytes = input
        input = []
        phase = .closed
        worker.servers[ObjectIdentifier(self)] = nil
        worker.metrics.update(listener.name) { $0.serverConnections["http1", default: 0] -= 1 }
        let relay = ProxyConnection(worker: worker, snapshot: snapshot, listener: listener, transport: client, peer: peer, proxied: identity.proxied)
        loop.rebind(fd: client.fd, to: relay)
        relay.takeUpgrade(bytes)
    }

    // MARK: timers

    /// Keep-alive between requests, the head's deadline once its first byte came, the
    /// connection's age.
    private func armTimer() {
        guard phase == .awaitingHead || phase == .serving else { return }
        var next: Int64 = .max
        if phase == .awaitingHead {
            if input.isEmpty || headStartedAt == 0 {
                if listener.keepaliveTimeoutMillis > 0 { next = loop.now + listener.keepaliveTimeoutMillis }
            } else if listener.requestTimeoutMillis > 0 {
                next = headStartedAt + listener.requestTimeoutMillis
            }
        }
        if ageDeadline > 0 { next = min(next, ageDeadline) }
        loop.cancel(timer)
        timer = nil
        guard next < .max else { return }
        timer = loop.schedule(afterMillis: max(1, next - loop.now), for: self)
    }

    override func timerFired() {
        timer = nil
        switch phase {
        case .awaitingHead:
            if ageDeadline > 0, loop.now >= ageDeadline {
                ageDeadline = 0
                if input.isEmpty {
                    close(gracefully: true)
                    return
                }
                // A head is arriving: its response is the connection's last.
                draining = true
            }
            if input.isEmpty {
                close(gracefully: true)
            } else if listener.requestTimeoutMillis > 0, loop.now - headStartedAt >= listener.requestTimeoutMillis {
                worker.metrics.update(listener.name) { $0.timeouts["request", default: 0] += 1 }
                worker.logger.notice("\(logPrefix): no complete request head within \(DurationText.of(listener.requestTimeoutMillis)) (\(input.count) bytes received); closed")
                finishWith(ErrorAnswers.http1(status: 408, message: "request head not received in time"))
            } else {
                armTimer()
            }
        case .serving:
            if ageDeadline > 0, loop.now >= ageDeadline {
                // Rebalancing: this response is the last of the connection.
                ageDeadline = 0
                closeAfterResponse = true
            }
        case .closing:
            close()
        case .closed:
            break
        }
    }

    // MARK: drain

    func startDrain() {
        draining = true
        switch phase {
        case .awaitingHead:
            if input.isEmpty { close(gracefully: true) }
        case .serving:
            // `Connection: close` on this response if its head has not gone out; closed after it.
            closeAfterResponse = true
        case .closing, .closed:
            break
        }
    }

    // MARK: RequestDownstream

    func responseHeadReady(_ r: ProxyRequest) { scheduleFlush() }

    func interimResponse(_ r: ProxyRequest, _ head: ResponseHead) {
        // HTTP/1.0 clients know no 1xx; 101 never comes here (upgrades are relayed).
        guard r === current, !headWritten, currentRequest?.http10 == false, head.status != 101 else { return }
        let bytes = HTTP1ResponseWriter.head(head, framing: .none, contentLength: nil, connection: nil, via: nil)
        bytes.withUnsafeBytes { out.append($0, pool: worker.pool) }
        scheduleFlush()
    }

    func responseBodyReady(_ r: ProxyRequest) { scheduleFlush() }

    func requestBodyTaken(_ r: ProxyRequest, _ count: Int) {
        if r === current, !requestBodyDone, client.readable { scheduleFlush() }
    }

    func resetStream(_ r: ProxyRequest, code: UInt32) {
        // HTTP/1.1 has no stream to reset: the connection is cut (the client sees the response
        // end early, not complete).
        guard r === current else { return }
        loop.runSoon { [self] in self.close() }
    }

    func requestFinished(_ r: ProxyRequest) {}

    func certificateCovers(_ host: String) -> Bool { client.tls?.certificateCovers(host) ?? true }

    private func scheduleFlush() {
        guard !flushScheduled, phase == .serving else { return }
        flushScheduled = true
        loop.runSoon { [self] in
            self.flushScheduled = false
            self.pump()
        }
    }

    // MARK: the end

    func startLingering() { lingering = true }

    private func close(gracefully: Bool) {
        if gracefully, phase == .awaitingHead {
            finishWith([])
        } else {
            close()
        }
    }

    func close() {
        guard phase != .closed else { return }
        phase = .closed
        loop.cancel(timer)
        timer = nil
        if let r = current {
            current = nil
            r.clientClosed(code: NGHTTP2_CANCEL.rawValue)
        }
        out.release(pool: worker.pool)
        client.close(on: loop)
        worker.releasePrivateUpstreams(of: identity.proxied)
        worker.servers[ObjectIdentifier(self)] = nil
        worker.metrics.update(listener.name) { $0.serverConnections["http1", default: 0] -= 1 }
        worker.finished(self)
    }
}

private let continueBytes: [UInt8] = Array("HTTP/1.1 100 Continue\r\n\r\n".utf8)
