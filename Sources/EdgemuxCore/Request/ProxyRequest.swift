import CEdgemux
import Glibc

/// The client side of a request in request mode: a stream of an `HTTP2ServerConnection`, or the
/// current request of an `HTTP1ServerConnection`. Calls come from the request object, on the
/// loop; none of them does I/O on the spot (each side flushes on its own pass).
protocol RequestDownstream: AnyObject {
    /// The response head is in `r.response` (with `r.responseEnded` when nothing follows it).
    func responseHeadReady(_ r: ProxyRequest)
    /// A 1xx response to pass on before the final one.
    func interimResponse(_ r: ProxyRequest, _ head: ResponseHead)
    /// More of the response body is queued, or its end (and trailers) arrived.
    func responseBodyReady(_ r: ProxyRequest)
    /// The backend side took `count` bytes of the request body: the client may send more.
    func requestBodyTaken(_ r: ProxyRequest, _ count: Int)
    /// The request broke after its response started (or the client must stop sending): reset
    /// the client's stream (HTTP/2) or close the connection (HTTP/1.1).
    func resetStream(_ r: ProxyRequest, code: UInt32)
    /// Both sides are done with `r`: it no longer counts against the connection's streams.
    func requestFinished(_ r: ProxyRequest)
}

/// The backend side of a request: a stream on a pooled HTTP/2 session, or a pooled HTTP/1.1
/// connection. It holds the request until it calls one of the request's `upstream…` methods that
/// release it (`upstreamReleased`, `upstreamFailed`, `upstreamReset`).
protocol RequestUpstream: AnyObject {
    /// More request body is queued, or its end.
    func requestBodyReady(_ r: ProxyRequest)
    /// The client took `count` bytes of the response body: the backend may send more.
    func responseBodyTaken(_ r: ProxyRequest, _ count: Int)
    /// Stop at once (the client is gone, or edgemux answered instead); release when stopped.
    func cancel(_ r: ProxyRequest)
}

/// How a request ended, for the access log (the raw value) and the metrics.
enum RequestOutcome: String {
    case completed
    case noRoute = "no_route"
    case misdirected
    case backendUnavailable = "backend_unavailable"
    case backendError = "backend_error"
    case backendReset = "backend_reset"
    case responseTimeout = "response_timeout"
    case idleTimeout = "idle_timeout"
    case deadlineExceeded = "deadline_exceeded"
    case clientCancelled = "client_cancelled"
    case clientError = "client_error"
    case badRequest = "bad_request"
}

/// One request in request mode, from its head to the end of its response: it pairs the client
/// side (`RequestDownstream`) with a backend side (`RequestUpstream`) chosen for it alone.
///
/// Bodies wait in two bounded queues between the sides. What fills a queue is held back by the
/// other side's pace: an HTTP/2 client's stream window reopens only as the backend takes the
/// bytes (`requestBodyTaken`), an HTTP/1.1 backend is read only while the response queue is
/// below its high-water mark, so one slow peer costs its own stream a window's worth of memory
/// and stalls nobody else.
final class ProxyRequest: EventHandler {
    /// What the request waits for.
    enum State: Equatable {
        /// The client's header block (HTTP/2) or head (HTTP/1.1).
        case awaitingHead
        /// A backend endpoint to answer with its response head (the request goes out meanwhile).
        case awaitingResponse
        /// The response body to pass on (and the request body, for a call that streams both).
        case streaming
        /// Nothing: logged and counted.
        case finished
    }

    /// A queue that holds this much stops its filling side (HTTP/1.1 backends, HTTP/1.1 clients).
    static let highWater = 64 * 1024

    /// Unchecked: workers live as long as the process, and a request touches its worker often.
    unowned(unsafe) let worker: Worker
    /// Held until the request is finished (then dropped: the client connection's table of
    /// requests and this reference do not keep each other alive). A client connection that
    /// closed with streams still open at the backend lives on, closed, until those finish.
    /// Not weak: a weak reference would give every client connection a side table, and every
    /// retain of it the slow path.
    private(set) var downstream: (any RequestDownstream)?
    let snapshot: Snapshot
    let listener: ListenerConfig
    let client: ClientIdentity
    let sni: String?
    let clientProtocol: ClientProtocol
    /// The HTTP/2 stream id (HTTP/1.1: the request's number on its connection).
    let streamID: Int32
    private(set) var state: State = .awaitingHead

    var head = RequestHead()
    private(set) var route: RouteConfig?
    private(set) var backend: BackendConfig?
    private(set) var upstreamProtocol: ClientProtocol?
    private(set) var endpoint: Endpoint?
    private var plan: [Endpoint] = []
    /// "endpoint (why)" for each attempt that failed, for the log line that gives up.
    private var failures: [String] = []
    private var attempt = 0
    private(set) var upstream: RequestUpstream?
    /// An upstream has the request and has not released it yet.
    private var upstreamHeld = false
    /// The endpoint this request counts as open against (least-request balancing), until its
    /// attempt there ends.
    private var countedAt: Endpoint?
    private var clientDone = false

    // Request body (client → backend).
    var requestBody = ByteQueue()
    private(set) var requestEnded = false
    private(set) var requestTrailers: HeaderList?
    /// Body bytes the client has sent / a backend has taken.
    private(set) var requestBytes = 0
    private(set) var requestBytesSent = 0

    // Response (backend → client).
    private(set) var response: ResponseHead?
    /// The response is edgemux's own answer, not the backend's.
    private(set) var ownAnswer = false
    var responseBody = ByteQueue()
    private(set) var responseEnded = false
    private(set) var responseTrailers: HeaderList?
    /// Body bytes the client has taken.
    private(set) var responseBytes = 0
    private(set) var outcome: RequestOutcome = .completed
    /// The gRPC status the response carried (or edgemux's own answer set).
    private(set) var grpcStatus: String?

    /// The stream of this request on its HTTP/2 backend session (0: none).
    var upstreamStreamID: Int32 = 0
    /// A header block arriving from an HTTP/2 backend, and its `:status`.
    var incoming = HeaderList()
    var incomingStatus = 0
    /// The client's header block exceeded the listener's limit (answered 431 once complete).
    var headTooLarge = false

    private let startedAt: Int64
    private var lastActivity: Int64
    private var timer: TimerHandle?
    /// When `timer` fires (.max: no timer).
    private var timerAt: Int64 = .max
    /// When the response head is due (0: no limit).
    private var responseDeadline: Int64 = 0
    /// When a gRPC call's own deadline (`grpc-timeout`) passes (0: none).
    private var grpcDeadline: Int64 = 0

    init(worker: Worker, downstream: any RequestDownstream, snapshot: Snapshot, listener: ListenerConfig, client: ClientIdentity, sni: String?, clientProtocol: ClientProtocol, streamID: Int32) {
        self.worker = worker
        self.downstream = downstream
        self.snapshot = snapshot
        self.listener = listener
        self.client = client
        self.sni = sni
        self.clientProtocol = clientProtocol
        self.streamID = streamID
        startedAt = worker.loop.now
        lastActivity = startedAt
    }

    var pool: BufferPool { worker.pool }
    var loop: EventLoop { worker.loop }
    /// A gRPC call (decided once, from the complete head).
    private(set) lazy var isGRPC: Bool = head.isGRPC
    /// The `Via` protocol version when the route asks for one.
    var viaVersion: String? { route?.via == true ? (clientProtocol == .h2 ? "2" : "1.1") : nil }
    var isFinished: Bool { state == .finished }
    /// The response head has been decided (the backend's or edgemux's own).
    var responseStarted: Bool { response != nil }
    var logPrefix: String { "client \(client.addressAndPort) on '\(listener.name)' stream \(streamID)" }

    // MARK: from the client side

    /// The request head is complete: route it and send it on.
    func headReceived(endStream: Bool) {
        guard state == .awaitingHead else { return }
        head.endStream = endStream
        requestEnded = endStream
        guard PathNormalizer.hasValidEscapes(head.path) else {
            worker.metrics.update(listener.name) { $0.sniffErrors["path_encoding", default: 0] += 1 }
            worker.logger.notice("\(logPrefix): invalid percent-encoding in the path \(head.path.prefix(200)); answered 400")
            answer(status: 400, message: "invalid percent-encoding in the request path", outcome: .badRequest)
            return
        }
        // The backend gets the path that was routed (RFC 3986 normalised).
        head.path = PathNormalizer.normalize(head.path)
        if let tls = listener.tls, tls.clientCA != nil {
            // Only edgemux says who the client certificate named.
            head.fields.removeAll(named: tls.clientSubjectHeader)
            if let subject = client.certificateSubject { head.fields.append(tls.clientSubjectHeader, subject) }
        }
        if let t = head.fields.first("grpc-timeout"), isGRPC, let ms = Self.grpcTimeoutMillis(t) {
            grpcDeadline = loop.now + max(1, ms)
        }
        dispatch()
    }

    /// Request body bytes from the client.
    func requestData(_ bytes: UnsafeRawBufferPointer) {
        guard !clientDone else { return }
        requestBytes += bytes.count
        lastActivity = loop.now
        if upstream == nil && (state == .finished || response != nil) {
            // Nobody will take them (edgemux answered): acknowledge and drop.
            downstream?.requestBodyTaken(self, bytes.count)
            return
        }
        requestBody.append(bytes, pool: pool)
        upstream?.requestBodyReady(self)
    }

    /// The client's request body has ended (with trailers, from an HTTP/2 client).
    func requestEnd(trailers: HeaderList?) {
        guard !requestEnded else { return }
        requestEnded = true
        requestTrailers = trailers
        upstream?.requestBodyReady(self)
    }

    /// The client side took `count` response body bytes out of the queue.
    func responseTaken(_ count: Int) {
        responseBytes += count
        lastActivity = loop.now
        upstream?.responseBodyTaken(self, count)
    }

    /// The client side is done with the request: its stream closed (`code` is the HTTP/2 error
    /// code it closed with; 0 when the response went out whole), or its connection went away.
    func clientClosed(code: UInt32) {
        guard !clientDone else { return }
        clientDone = true
        let complete = response != nil && responseEnded && responseBody.isEmpty && code == 0
        if !complete {
            if outcome == .completed { outcome = code == 0 ? .clientError : .clientCancelled }
            if let u = upstream {
                // The client gave up (RST_STREAM, closed): cancel the backend's side at once.
                upstream = nil
                u.cancel(self)
            }
        }
        releaseQueues()
        maybeFinish()
    }

    // MARK: routing and choosing an endpoint

    private func dispatch() {
        let info = head.routingInfo()
        guard let router = snapshot.routers[listener.name], let route = router.select(protocol: clientProtocol, sni: sni, request: info) else {
            worker.metrics.update(listener.name) { $0.noRoute += 1 }
            worker.logger.notice("\(logPrefix): no route for \(clientProtocol.rawValue) \(head.method) \(head.path) host '\(info.host)'")
            answer(status: 404, message: "no route matches this request", outcome: .noRoute)
            return
        }
        self.route = route
        worker.logger.debug("\(logPrefix): \(clientProtocol.rawValue) \(head.method) \(head.path) host '\(info.host)' -> route '\(route.name)'")
        if let why = misdirection(route: route, info: info) {
            worker.logger.info("\(logPrefix): \(why): 421")
            answer(status: 421, message: why, outcome: .misdirected)
            return
        }
        guard let backend = snapshot.config.backends[route.backend],
              let proto = backend.requestProtocol(for: clientProtocol, grpc: isGRPC),
              let endpoints = backend.endpoints[proto], !endpoints.isEmpty else {
            worker.logger.error("\(logPrefix): backend '\(route.backend)' of route '\(route.name)' cannot serve this request")
            answer(status: 502, message: "backend '\(route.backend)' cannot serve this request", outcome: .backendUnavailable)
            return
        }
        self.backend = backend
        upstreamProtocol = proto
        worker.metrics.update(listener.name) { $0.routed[route.name, default: 0] += 1 }
        plan = worker.endpointPlan(backend: backend, endpoints: endpoints, protocol: proto)
        attempt = 0
        state = .awaitingResponse
        if route.responseTimeoutMillis > 0 { responseDeadline = loop.now + route.responseTimeoutMillis }
        armTimer()
        tryNextEndpoint()
    }

    /// A request that this connection should not carry (RFC 9110 section 15.5.20): its host is
    /// not covered by the certificate the connection was set up with, or SNI-based routing would
    /// have chosen another route for it. Browsers then retry on a connection of its own.
    private func misdirection(route: RouteConfig, info: RequestInfo) -> String? {
        let host = info.host
        guard listener.tls != nil, let sni, !host.isEmpty, host != sni.lowercased() else { return nil }
        if let covers = (downstream as? CertificateCoverage)?.certificateCovers(host), !covers {
            return "host '\(host)' is not covered by the certificate of this connection (SNI '\(sni)')"
        }
        if let router = snapshot.routers[listener.name],
           let other = router.select(protocol: clientProtocol, sni: host, request: info), other !== route, other.match.sni != nil || route.match.sni != nil {
            return "host '\(host)' routes by SNI to '\(other.name)', not to '\(route.name)' as this connection's SNI '\(sni)' does"
        }
        return nil
    }

    private func tryNextEndpoint() {
        guard let backend, let proto = upstreamProtocol else { return }
        guard attempt < plan.count else {
            worker.metrics.update { $0.backendUnavailable[backend.name, default: 0] += 1 }
            let tried = failures.isEmpty ? "no endpoint is available" : "tried \(failures.joined(separator: ", "))"
            worker.logger.error("\(logPrefix): backend '\(backend.name)' unavailable for route '\(route?.name ?? "?")': \(tried)")
            answer(status: 502, message: "backend '\(backend.name)' is unavailable", outcome: .backendUnavailable)
            return
        }
        let e = plan[attempt]
        attempt += 1
        endpoint = e
        upstreamHeld = true
        countedAt = e
        worker.noteRequestStarted(backend: backend, endpoint: e)
        do {
            upstream = proto == .h2
                ? try worker.h2Upstreams.attach(self, backend: backend, endpoint: e)
                : try HTTP1Upstream.start(self, backend: backend, endpoint: e, worker: worker)
        } catch {
            // No socket to connect with: reported on the next pass, never from inside this call.
            let why = "\(error)"
            loop.runSoon { [self] in self.upstreamFailed(why, sent: false, connect: true) }
        }
    }

    /// The attempt at `countedAt` is over (least-request counts).
    private func endAttempt() {
        upstreamHeld = false
        upstream = nil
        if let e = countedAt {
            countedAt = nil
            worker.noteRequestEnded(backend: backend, endpoint: e)
        }
    }

    // MARK: from the backend side

    /// A 1xx response.
    func upstreamInterim(_ h: ResponseHead) {
        guard !clientDone, response == nil else { return }
        lastActivity = loop.now
        downstream?.interimResponse(self, h)
    }

    /// The backend's final response head; `endStream`: nothing follows it (gRPC trailers-only).
    func upstreamResponse(_ h: ResponseHead, endStream: Bool) {
        guard !clientDone, response == nil else { return }
        response = h
        responseEnded = endStream
        state = .streaming
        lastActivity = loop.now
        if let s = h.fields.first("grpc-status") { grpcStatus = s }
        armTimer()
        downstream?.responseHeadReady(self)
    }

    /// Response body bytes from the backend.
    func upstreamBody(_ bytes: UnsafeRawBufferPointer) {
        guard !clientDone, !ownAnswer else { return }
        lastActivity = loop.now
        responseBody.append(bytes, pool: pool)
        downstream?.responseBodyReady(self)
    }

    /// The response has ended (with trailers from an HTTP/2 backend).
    func upstreamEnd(trailers: HeaderList?) {
        guard !clientDone, !ownAnswer, !responseEnded else { return }
        responseEnded = true
        responseTrailers = trailers
        if let s = trailers?.first("grpc-status") { grpcStatus = s }
        downstream?.responseBodyReady(self)
    }

    /// The backend side took `count` bytes of the request body.
    func requestBodySent(_ count: Int) {
        requestBytesSent += count
        lastActivity = loop.now
        downstream?.requestBodyTaken(self, count)
    }

    /// The backend side is done with the request (after its response, or after a cancel).
    func upstreamReleased() {
        endAttempt()
        maybeFinish()
    }

    /// The backend side failed. `sent`: the request (some of it) reached the backend;
    /// `connect`: the endpoint could not be reached at all (passive health).
    func upstreamFailed(_ why: String, sent: Bool, connect: Bool) {
        endAttempt()
        guard !clientDone, !ownAnswer else { return maybeFinish() }
        let name = backend?.name ?? "?"
        if let e = endpoint, connect {
            worker.recordConnectFailure(backend: name, endpoint: e, why: why)
        }
        // A request the backend never saw may go elsewhere; one it saw only if it is idempotent,
        // unanswered and its body was not consumed (nothing would be left to send again).
        let retryable = response == nil && requestBytesSent == 0 && (!sent || head.idempotent)
        failures.append("\(endpoint?.text ?? "?") (\(why))")
        if retryable, attempt < plan.count {
            if sent { worker.metrics.update { $0.upstreamRetries += 1 } }
            worker.logger.warning("\(logPrefix): backend '\(name)' endpoint \(endpoint?.text ?? "?"): \(why); trying the next endpoint")
            tryNextEndpoint()
            return
        }
        if retryable, connect {
            // Every endpoint of the plan failed to connect: the backend is unavailable.
            tryNextEndpoint()
            return
        }
        worker.metrics.update { $0.badResponses[name, default: 0] += 1 }
        if response == nil {
            worker.logger.error("\(logPrefix): backend '\(name)' endpoint \(endpoint?.text ?? "?"): \(why)")
            answer(status: 502, message: "backend '\(name)' failed: \(why)", outcome: connect ? .backendUnavailable : .backendError)
        } else {
            worker.logger.notice("\(logPrefix): backend '\(name)' failed mid-response: \(why)")
            outcome = .backendError
            downstream?.resetStream(self, code: NGHTTP2_INTERNAL_ERROR.rawValue)
        }
    }

    /// The backend reset its stream with `code` (HTTP/2). REFUSED_STREAM before an answer means
    /// the backend did not process it (RFC 9113 section 8.7): it is retried elsewhere.
    func upstreamReset(code: UInt32) {
        endAttempt()
        if code == NGHTTP2_REFUSED_STREAM.rawValue, response == nil, requestBytesSent == 0, attempt < plan.count, !clientDone {
            tryNextEndpoint()
            return
        }
        guard !clientDone, !ownAnswer else { return maybeFinish() }
        outcome = .backendReset
        if response == nil && !isGRPC {
            answer(status: 502, message: "backend '\(backend?.name ?? "?")' reset the stream (code \(code))", outcome: .backendReset)
        } else {
            // gRPC clients read the RST code (CANCEL, REFUSED_STREAM, …): pass it on unchanged.
            downstream?.resetStream(self, code: code)
        }
    }

    // MARK: edgemux's own answers

    /// Answers the request itself: a short text body, or for gRPC a trailers-only response
    /// carrying `grpc-status` and `grpc-message` (as Envoy answers "no healthy upstream").
    func answer(status: Int, message: String, outcome: RequestOutcome, grpcCode: Int? = nil) {
        guard response == nil, !clientDone else { return }
        self.outcome = outcome
        if let u = upstream {
            upstream = nil
            u.cancel(self)
        }
        ownAnswer = true
        var h = ResponseHead(status: status)
        if isGRPC {
            let code = grpcCode ?? Self.grpcCode(forHTTPStatus: status)
            h.status = 200
            h.fields.append("content-type", "application/grpc")
            h.fields.append("grpc-status", String(code))
            h.fields.append("grpc-message", String(decoding: ErrorAnswers.percentEncoded("edgemux: \(message)", limit: 200), as: UTF8.self))
            grpcStatus = String(code)
            response = h
            responseEnded = true
        } else {
            let body = Array("edgemux: \(message)\n".utf8)
            h.fields.append("content-type", "text/plain; charset=utf-8")
            h.fields.append("content-length", String(body.count))
            response = h
            if head.method != "HEAD" { body.withUnsafeBytes { responseBody.append($0, pool: pool) } }
            responseEnded = true
        }
        state = .streaming
        downstream?.responseHeadReady(self)
    }

    /// 502/503 → UNAVAILABLE, 504 → DEADLINE_EXCEEDED, 404 → UNIMPLEMENTED, else INTERNAL, as
    /// gRPC's doc/http-grpc-status-mapping.md has it (and 421 → UNAVAILABLE: retry elsewhere).
    static func grpcCode(forHTTPStatus status: Int) -> Int {
        switch status {
        case 502, 503, 421: return 14
        case 504: return 4
        case 404: return 12
        case 400: return 13
        default: return 13
        }
    }

    /// `grpc-timeout`: up to 8 digits and a unit (H, M, S, m, u, n).
    static func grpcTimeoutMillis(_ value: String) -> Int64? {
        let v = value.trimmedSpaces()
        guard let unit = v.last, v.count >= 2, v.count <= 9, let n = Int64(v.dropLast()), n >= 0 else { return nil }
        switch unit {
        case "H": return n * 3_600_000
        case "M": return n * 60_000
        case "S": return n * 1000
        case "m": return n
        case "u": return (n + 999) / 1000
        case "n": return (n + 999_999) / 1_000_000
        default: return nil
        }
    }

    // MARK: timers

    /// One timer for the nearest of: the response head's deadline, the gRPC deadline, the
    /// stream's idle timeout. A timer already due sooner is kept (it looks again when it fires),
    /// so activity costs no timer churn.
    private func armTimer() {
        guard !clientDone else { return }
        var next: Int64 = .max
        if response == nil, responseDeadline > 0 { next = min(next, responseDeadline) }
        if grpcDeadline > 0 { next = min(next, grpcDeadline) }
        if let idle = route?.idleTimeoutMillis, idle > 0 { next = min(next, lastActivity + idle) }
        guard next < timerAt else { return }
        loop.cancel(timer)
        timerAt = next
        timer = loop.schedule(afterMillis: max(1, next - loop.now), for: self)
    }

    override func timerFired() {
        timer = nil
        timerAt = .max
        guard !clientDone, state != .finished else { return }
        let now = loop.now
        let name = backend?.name ?? "?"
        if grpcDeadline > 0, now >= grpcDeadline {
            worker.metrics.update(listener.name) { $0.timeouts["grpc_deadline", default: 0] += 1 }
            expire(status: 504, message: "deadline exceeded (grpc-timeout)", outcome: .deadlineExceeded, grpcCode: 4)
            return
        }
        if response == nil, responseDeadline > 0, now >= responseDeadline {
            worker.metrics.update(listener.name) { $0.timeouts["response", default: 0] += 1 }
            worker.logger.notice("\(logPrefix): backend '\(name)' sent no response head within \(DurationText.of(route?.responseTimeoutMillis ?? 0))")
            expire(status: 504, message: "backend '\(name)' did not answer in time", outcome: .responseTimeout, grpcCode: 4)
            return
        }
        if let idle = route?.idleTimeoutMillis, idle > 0, now - lastActivity >= idle {
            worker.metrics.update(listener.name) { $0.timeouts["stream_idle", default: 0] += 1 }
            worker.logger.info("\(logPrefix): idle for \(DurationText.of(now - lastActivity)) on route '\(route?.name ?? "?")'")
            expire(status: 504, message: "backend '\(name)' idle too long", outcome: .idleTimeout, grpcCode: 4)
            return
        }
        armTimer()
    }

    /// A deadline passed: answer if nothing was answered yet, else reset the stream.
    private func expire(status: Int, message: String, outcome: RequestOutcome, grpcCode: Int) {
        if let u = upstream {
            upstream = nil
            u.cancel(self)
        }
        if response == nil {
            answer(status: status, message: message, outcome: outcome, grpcCode: grpcCode)
        } else if isGRPC && !responseEnded {
            self.outcome = outcome
            ownAnswer = true
            var t = HeaderList()
            t.append("grpc-status", String(grpcCode))
            t.append("grpc-message", String(decoding: ErrorAnswers.percentEncoded("edgemux: \(message)", limit: 200), as: UTF8.self))
            grpcStatus = String(grpcCode)
            responseEnded = true
            responseTrailers = t
            downstream?.responseBodyReady(self)
        } else {
            self.outcome = outcome
            downstream?.resetStream(self, code: NGHTTP2_CANCEL.rawValue)
        }
    }

    // MARK: the end

    private func releaseQueues() {
        requestBody.release(pool: pool)
        responseBody.release(pool: pool)
    }

    private func maybeFinish() {
        guard clientDone, !upstreamHeld, state != .finished else { return }
        state = .finished
        loop.cancel(timer)
        timer = nil
        timerAt = .max
        releaseQueues()
        record()
        downstream?.requestFinished(self)
        downstream = nil
    }

    /// Metrics and the access-log line.
    private func record() {
        let ms = loop.now - startedAt
        let status = response?.status ?? 0
        let routeName = route?.name ?? ""
        worker.metrics.update(listener.name) { m in
            m.recordRequest(route: routeName, status: status, millis: ms)
            m.bytesIn += requestBytes
            m.bytesOut += responseBytes
        }
        guard let log = snapshot.accessLog else { return }
        let opt: (String?) -> AccessLog.JSONValue = { $0.map { .string($0) } ?? .null }
        log.write([
            ("time", .string(AccessLogClock.timestamp())),
            ("listener", .string(listener.name)),
            ("client", .string(client.addressAndPort)),
            ("sni", opt(sni)),
            ("protocol", .string(clientProtocol.rawValue)),
            ("stream", .int(Int(streamID))),
            ("method", .string(head.method)),
            ("authority", .string(head.authority)),
            ("path", .string(head.path)),
            ("status", status > 0 ? .int(status) : .null),
            ("grpc_status", opt(grpcStatus)),
            ("route", opt(route?.name)),
            ("backend", opt(backend?.name)),
            ("endpoint", opt(endpoint?.text)),
            ("upstream_protocol", opt(upstreamProtocol?.rawValue)),
            ("bytes_from_client", .int(requestBytes)),
            ("bytes_to_client", .int(responseBytes)),
            ("duration_ms", .int(Int(ms))),
            ("outcome", .string(outcome.rawValue)),
        ])
    }
}

// MARK: - bodies handed to an HTTP/2 session

extension ProxyRequest {
    /// Which of a request's bodies an HTTP/2 session sends: the response (edgemux's server, to
    /// the client) or the request (a backend session).
    enum Outgoing {
        case response
        case request
    }

    /// How many bytes of the `which` body can go out now, at most `max`; its end (and whether
    /// trailers follow) when nothing is left; nil when nothing waits and more will come.
    func bodyAvailable(_ which: Outgoing, max: Int) -> (count: Int, eof: Bool, trailers: Bool)? {
        let queued = which == .response ? responseBody.count : requestBody.count
        if queued > 0 { return (min(max, queued), false, false) }
        let ended = which == .response ? responseEnded : requestEnded
        guard ended else { return nil }
        return (0, true, (which == .response ? responseTrailers : requestTrailers) != nil)
    }

    /// Copies the next bytes of the `which` body into `dest`, drops them, and tells the side
    /// that filled the queue it may send more.
    func takeBody(_ which: Outgoing, into dest: UnsafeMutableRawBufferPointer) -> Int {
        if which == .response {
            let n = responseBody.read(into: dest, pool: pool)
            responseTaken(n)
            return n
        }
        let n = requestBody.read(into: dest, pool: pool)
        requestBodySent(n)
        return n
    }

    func trailers(_ which: Outgoing) -> HeaderList? { which == .response ? responseTrailers : requestTrailers }
}

/// A client side that can say which names its connection's certificate covers (TLS).
protocol CertificateCoverage {
    func certificateCovers(_ host: String) -> Bool
}
