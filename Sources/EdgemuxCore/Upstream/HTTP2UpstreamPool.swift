import CEdgemux
import Glibc

/// A worker's HTTP/2 sessions to backend endpoints (h2c, or TLS with ALPN h2), shared by every
/// request-mode request of every client of the worker. A request joins the first session of its
/// endpoint that has room below the backend's SETTINGS_MAX_CONCURRENT_STREAMS (at most
/// `streamsPerSession`), and a new session opens when none has: a long-lived stream never waits
/// behind others. A session that received GOAWAY takes no new requests.
final class HTTP2UpstreamPool {
    /// Streams edgemux puts on one backend session at most, whatever the backend allows: a few
    /// sessions per endpoint spread the work over the backend's cores and bound what one lost
    /// connection costs.
    static let streamsPerSession = 256

    unowned(unsafe) let worker: Worker  // workers live as long as the process: no check per access
    private var sessions: [UpstreamPool.Key: [HTTP2UpstreamSession]] = [:]
    /// Sessions whose PROXY header named a client, by that client: they end with its connection.
    private var privateKeys: [ProxiedClient: Set<UpstreamPool.Key>] = [:]
    private(set) var openSessions = 0

    init(worker: Worker) { self.worker = worker }

    /// Gives `request` to a session of `endpoint` with room (a new one if none has); throws when
    /// no socket could be had for a new one.
    /// A backend that takes a PROXY header gets sessions per client connection: each one's header
    /// names its client.
    func attach(_ request: ProxyRequest, backend: BackendConfig, endpoint: Endpoint) throws -> RequestUpstream {
        let key = UpstreamPool.Key(backend: backend, endpoint: endpoint, client: request.client.proxied)
        if let s = sessions[key]?.first(where: { $0.hasRoom }) {
            s.enqueue(request)
            return s
        }
        let s = try HTTP2UpstreamSession(pool: self, backend: backend, endpoint: endpoint, snapshot: request.snapshot, client: key.client)
        sessions[key, default: []].append(s)
        if let client = key.client { privateKeys[client, default: []].insert(key) }
        openSessions += 1
        worker.metrics.update { $0.upstreamSessions += 1 }
        s.enqueue(request)
        return s
    }

    /// A session has closed: it is forgotten.
    func removed(_ s: HTTP2UpstreamSession) {
        let key = UpstreamPool.Key(backend: s.backend, endpoint: s.endpoint, client: s.client)
        guard let i = sessions[key]?.firstIndex(where: { $0 === s }) else { return }
        sessions[key]?.remove(at: i)
        if sessions[key]?.isEmpty == true { sessions[key] = nil }
        openSessions -= 1
        worker.metrics.update { $0.upstreamSessions -= 1 }
    }

    /// The client connection a PROXY header named has closed: its sessions close once their
    /// streams (cancelled with it) are gone.
    func release(client: ProxiedClient) {
        guard let keys = privateKeys.removeValue(forKey: client) else { return }
        for key in keys {
            for s in sessions[key] ?? [] { s.retire() }
        }
    }

    /// Closes the sessions that carry nothing (drain, shutdown); busy ones close when idle.
    func closeIdle() {
        for list in sessions.values { for s in list where s.load == 0 { s.shutdown() } }
    }
}

/// One HTTP/2 session to a backend endpoint, carrying the streams of many clients' requests.
///
/// Flow control: the connection window is acknowledged as response bytes land in a request's
/// queue, a stream's window only as its client takes them, so a slow client holds back its own
/// stream alone. Request bodies are sent from the request's queue as the backend's windows allow.
final class HTTP2UpstreamSession: HTTP2Endpoint, RequestUpstream {
    /// What the session waits for.
    enum State: Equatable {
        /// The TCP connect and (TLS) handshake; requests wait in `waiting`.
        case connecting
        /// Requests and responses.
        case ready
        /// The backend sent GOAWAY (or edgemux is closing it): open streams finish, no new ones.
        case goingAway
        case closed
    }

    unowned(unsafe) let owner: HTTP2UpstreamPool  // a worker's, as long-lived
    let backend: BackendConfig
    let endpoint: Endpoint
    /// The client its PROXY header named (nil: the backend takes none; the session is shared).
    let client: ProxiedClient?
    /// When the connect started (edgemux_backend_connect_duration_seconds).
    private var connectStartedAt: Int64 = 0
    let snapshot: Snapshot
    private(set) var state: State = .connecting
    private var dial: BackendDial
    private var streams: [Int32: ProxyRequest] = [:]
    /// Requests given before the session was ready.
    private var waiting: [ProxyRequest] = []
    /// Streams edgemux reset: their requests are released when nghttp2 closes them.
    private var cancelled: Set<Int32> = []
    /// The backend's SETTINGS_MAX_CONCURRENT_STREAMS (100 until its SETTINGS arrive, as RFC 9113
    /// advises), capped at `streamsPerSession`.
    private var maxStreams = 100
    private var timer: TimerHandle?
    private var worker: Worker { owner.worker }

    var load: Int { streams.count + waiting.count }
    var hasRoom: Bool { (state == .connecting || state == .ready) && !retired && load < maxStreams }

    /// Starts the connect to `endpoint` (the session takes requests from now on).
    init(pool: HTTP2UpstreamPool, backend: BackendConfig, endpoint: Endpoint, snapshot: Snapshot, client: ProxiedClient?) throws {
        self.owner = pool
        self.backend = backend
        self.endpoint = endpoint
        self.client = client
        self.dial = BackendDial(alpn: .h2, proxied: client)
        self.snapshot = snapshot
        connectStartedAt = pool.worker.loop.now
        let t = try Transport.connecting(to: endpoint.address, keepalive: true)
        pool.worker.metrics.update { $0.backendConnections[backend.name, default: 0] += 1 }
        super.init(loop: pool.worker.loop, pool: pool.worker.pool, transport: t)
        do {
            try loop.register(fd: t.fd, events: EventLoop.relayEvents, handler: self)
        } catch {
            Posix.close(t.fd)
            throw error
        }
        timer = loop.schedule(afterMillis: backend.connectTimeoutMillis, for: self)
    }

    func enqueue(_ r: ProxyRequest) {
        switch state {
        case .connecting: waiting.append(r)
        case .ready:
            submit(r)
            scheduleFlush()
        case .goingAway, .closed:
            loop.runSoon { r.upstreamFailed("backend session closing", sent: false, connect: false) }
        }
    }

    // MARK: events

    override func handleEvent(fd: Int32, events: UInt32) {
        let t = transport
        guard state != .closed, fd == t.fd else { return }
        t.note(events: events)
        if state == .connecting {
            switch dial.advance(t, events: events, backend: backend, snapshot: snapshot) {
            case .pending: return
            case .failed(let why):
                failAll(why, connect: true)
                return
            case .ready:
                loop.cancel(timer)
                timer = nil
                worker.recordConnect(backend: backend.name, endpoint: endpoint, since: connectStartedAt)
                guard startSession() else {
                    failAll("cannot create an HTTP/2 session", connect: false)
                    return
                }
            }
        }
        switch receive() {
        case .waiting: break
        case .eof: return failAll("backend closed the connection", connect: false)
        case .failed(let why): return failAll(why, connect: false)
        }
        flushNow()
    }

    override func resumeReading() {
        guard state == .ready || state == .goingAway else { return }
        switch receive() {
        case .waiting: flushNow()
        case .eof: failAll("backend closed the connection", connect: false)
        case .failed(let why): failAll(why, connect: false)
        }
    }

    override func flushNow() {
        guard state != .closed, state != .connecting else { return }
        if !flush() {
            failAll(broken ?? "write failed", connect: false)
            return
        }
        if let s = session, nghttp2_session_want_read(s) == 0, nghttp2_session_want_write(s) == 0 {
            failAll("session ended", connect: false)
        }
    }

    override func timerFired() {
        timer = nil
        switch state {
        case .connecting: failAll("connect timed out after \(DurationText.of(backend.connectTimeoutMillis))", connect: true)
        case .ready, .goingAway: if load == 0 { shutdown() }
        case .closed: break
        }
    }

    /// The nghttp2 client session, edgemux's SETTINGS, and the requests that waited.
    private func startSession() -> Bool {
        guard let cbs = HTTP2Callbacks.make() else { return false }
        defer { nghttp2_session_callbacks_del(cbs) }
        var opt: OpaquePointer?
        nghttp2_option_new(&opt)
        defer { nghttp2_option_del(opt) }
        nghttp2_option_set_no_auto_window_update(opt, 1)
        nghttp2_option_set_peer_max_concurrent_streams(opt, 100)
        var s: OpaquePointer?
        guard nghttp2_session_client_new2(&s, cbs, Unmanaged.passUnretained(self as HTTP2Endpoint).toOpaque(), opt) == 0, let s else { return false }
        session = s
        var iv = [
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_ENABLE_PUSH.rawValue), value: 0),
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE.rawValue), value: UInt32(ProxyRequest.highWater - 1)),
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE.rawValue), value: 256 * 1024),
        ]
        nghttp2_submit_settings(s, UInt8(NGHTTP2_FLAG_NONE.rawValue), &iv, iv.count)
        nghttp2_session_set_local_window_size(s, UInt8(NGHTTP2_FLAG_NONE.rawValue), 0, 16 << 20)
        state = .ready
        let queued = waiting
        waiting = []
        for r in queued { submit(r) }
        return true
    }

    /// Sends a request's head (and the start of its body, as windows allow).
    private func submit(_ r: ProxyRequest) {
        guard let session else { return }
        let h = r.head
        let scheme = h.scheme.isEmpty ? (backend.proto == .tls ? "https" : "http") : h.scheme
        var leading: [(String, String)] = [(":method", h.method), (":scheme", scheme), (":authority", h.authority), (":path", h.path.isEmpty ? "/" : h.path)]
        let forwarded = r.route?.forwarded ?? .replace
        if forwarded != .off { leading += HTTP1Serializer.forwardingValues(h, forwarded: forwarded, client: r.client) }
        if let via = r.viaVersion { leading.append(("via", "\(via) edgemux")) }
        let listed = r.clientProtocol == .http1 ? FieldRules.connectionListed(h.fields) : []
        let fields = h.fields
        var prd = HTTP2Callbacks.bodyProvider()
        let id: Int32 = fields.withNameValues(leading: leading, keep: { i in
            if FieldRules.isHopByHop(fields, i) || fields.isNamed(i, "host") { return false }
            if fields.isNamed(i, "te") { return FieldRules.isTrailersTE(fields, i) }
            if forwarded != .off, HTTP1Serializer.isForwardingField(fields, i) { return false }
            if !listed.isEmpty, listed.contains(fields.name(at: i)) { return false }
            return true
        }) { nva, n in
            h.endStream ? nghttp2_submit_request(session, nil, nva, n, nil, nil) : nghttp2_submit_request(session, nil, nva, n, &prd, nil)
        }
        guard id > 0 else {
            let why = String(cString: nghttp2_strerror(id))
            loop.runSoon { r.upstreamFailed("cannot submit the request: \(why)", sent: false, connect: false) }
            return
        }
        r.upstreamStreamID = id
        streams[id] = r
        worker.metrics.update { $0.upstreamStreams += 1 }
        loop.cancel(timer)
        timer = nil
    }

    // MARK: RequestUpstream

    func requestBodyReady(_ r: ProxyRequest) {
        guard let session, r.upstreamStreamID > 0, streams[r.upstreamStreamID] === r else { return }
        nghttp2_session_resume_data(session, r.upstreamStreamID)
        scheduleFlush()
    }

    func responseBodyTaken(_ r: ProxyRequest, _ count: Int) {
        guard let session, r.upstreamStreamID > 0, streams[r.upstreamStreamID] === r else { return }
        nghttp2_session_consume_stream(session, r.upstreamStreamID, count)
        scheduleFlush()
    }

    func cancel(_ r: ProxyRequest) {
        if let i = waiting.firstIndex(where: { $0 === r }) {
            waiting.remove(at: i)
            r.upstreamReleased()
            return
        }
        let id = r.upstreamStreamID
        guard let session, id > 0, streams[id] === r else {
            r.upstreamReleased()
            return
        }
        // Counted until the backend's stream has closed (rapid-reset bound), released then.
        cancelled.insert(id)
        nghttp2_submit_rst_stream(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), id, NGHTTP2_CANCEL.rawValue)
        scheduleFlush()
    }

    // MARK: nghttp2 callbacks

    override var outgoing: ProxyRequest.Outgoing { .request }

    override func request(onStream stream: Int32) -> ProxyRequest? {
        cancelled.contains(stream) ? nil : streams[stream]
    }

    override func beginHeaders(_ frame: UnsafePointer<nghttp2_frame>) -> Int32 {
        if let r = streams[frame.pointee.hd.stream_id] {
            r.incoming = HeaderList(reservingBytes: 256, fields: 8)
            r.incomingStatus = 0
        }
        return 0
    }

    override func header(_ frame: UnsafePointer<nghttp2_frame>, name: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer) -> Int32 {
        guard let r = streams[frame.pointee.hd.stream_id] else { return 0 }
        if name.first == UInt8(ascii: ":") {
            if name.count == 7, value.count == 3 {
                r.incomingStatus = Int(value[0] &- 48) * 100 + Int(value[1] &- 48) * 10 + Int(value[2] &- 48)
            }
            return 0
        }
        r.incoming.append(name: name, value: value)
        return 0
    }

    override func frameReceived(_ frame: UnsafePointer<nghttp2_frame>) -> Int32 {
        let hd = frame.pointee.hd
        let endStream = hd.flags & UInt8(NGHTTP2_FLAG_END_STREAM.rawValue) != 0
        switch Int(hd.type) {
        case Int(NGHTTP2_HEADERS.rawValue):
            guard let r = streams[hd.stream_id], !cancelled.contains(hd.stream_id) else { return 0 }
            let fields = r.incoming
            r.incoming = HeaderList()
            if r.responseStarted {
                r.upstreamEnd(trailers: fields)
            } else if r.incomingStatus >= 100 && r.incomingStatus < 200 {
                r.upstreamInterim(ResponseHead(status: r.incomingStatus, fields: fields))
            } else {
                r.upstreamResponse(ResponseHead(status: r.incomingStatus, fields: fields), endStream: endStream)
            }
        case Int(NGHTTP2_DATA.rawValue):
            if endStream, let r = streams[hd.stream_id], !cancelled.contains(hd.stream_id) { r.upstreamEnd(trailers: nil) }
        case Int(NGHTTP2_SETTINGS.rawValue):
            if hd.flags & UInt8(NGHTTP2_FLAG_ACK.rawValue) == 0, let session {
                let remote = Int(nghttp2_session_get_remote_settings(session, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS))
                maxStreams = max(1, min(remote, HTTP2UpstreamPool.streamsPerSession))
            }
        case Int(NGHTTP2_GOAWAY.rawValue):
            // Streams above the backend's last one are closed by nghttp2 with REFUSED_STREAM and
            // retried elsewhere; the rest finish here.
            if state == .ready { state = .goingAway }
        default:
            break
        }
        return 0
    }

    override func dataChunk(stream: Int32, _ data: UnsafeRawBufferPointer) -> Int32 {
        guard let session else { return 0 }
        // The connection's window reopens at once; the stream's as its client takes the bytes.
        nghttp2_session_consume_connection(session, data.count)
        guard let r = streams[stream], !cancelled.contains(stream) else {
            nghttp2_session_consume_stream(session, stream, data.count)
            return 0
        }
        r.upstreamBody(data)
        return 0
    }

    override func streamClosed(_ stream: Int32, code: UInt32) -> Int32 {
        guard let r = streams.removeValue(forKey: stream) else { return 0 }
        worker.metrics.update { $0.upstreamStreams -= 1 }
        let wasCancelled = cancelled.remove(stream) != nil
        if wasCancelled || (code == 0 && r.responseStarted) {
            if code == 0, !wasCancelled { r.upstreamEnd(trailers: nil) }
            r.upstreamReleased()
        } else if code == 0 {
            r.upstreamFailed("stream closed without a response", sent: true, connect: false)
        } else {
            r.upstreamReset(code: code)
        }
        if load == 0, state == .ready || state == .goingAway { armIdleTimer() }
        return 0
    }

    private func armIdleTimer() {
        loop.cancel(timer)
        timer = loop.schedule(afterMillis: state == .goingAway || retired ? 1 : backend.pool.idleTimeoutMillis, for: self)
    }

    /// Its client is gone (a session that named one in its PROXY header): it takes no new
    /// requests and closes as soon as it carries none.
    private(set) var retired = false

    func retire() {
        retired = true
        if load == 0 { shutdown() }
    }

    // MARK: the end

    /// A graceful close of an idle session: GOAWAY, then the socket.
    func shutdown() {
        guard state != .closed else { return }
        if let session, state == .ready {
            nghttp2_session_terminate_session(session, NGHTTP2_NO_ERROR.rawValue)
            _ = flush()
        }
        failAll("session closed", connect: false, quiet: true)
    }

    /// The session is over: every request on it fails (those never sent may be retried).
    /// `quiet`: an orderly close of edgemux's own (nothing to log).
    private func failAll(_ why: String, connect: Bool, quiet: Bool = false) {
        guard state != .closed else { return }
        let wasConnecting = state == .connecting
        state = .closed
        loop.cancel(timer)
        timer = nil
        let open = streams
        let queued = waiting
        let count = open.count
        worker.metrics.update { $0.upstreamStreams -= count }
        streams = [:]
        waiting = []
        transport.close(on: loop)
        owner.removed(self)
        if !quiet { worker.logger.notice("backend '\(backend.name)' endpoint \(endpoint): HTTP/2 session: \(why)") }
        for (id, r) in open {
            if cancelled.contains(id) { r.upstreamReleased() } else { r.upstreamFailed(why, sent: true, connect: false) }
        }
        cancelled = []
        for r in queued { r.upstreamFailed(why, sent: false, connect: connect && wasConnecting) }
    }
}
