import CEdgemux
import Glibc

/// edgemux's HTTP/2 server on one client connection (request mode): an nghttp2 server session
/// that creates one `ProxyRequest` per stream, each routed and sent on its own.
///
/// It takes the connection from the front door (`ProxyConnection`) with what was read while
/// sniffing, or from the preface when every route of the listener is a request route.
///
/// Memory stays bounded whatever the client does: a stream's request body waits in at most one
/// window (the stream window reopens only as the backend takes the bytes), the connection window
/// is acknowledged as bytes land in a stream's queue (so one slow stream never stalls the others),
/// a stream counts against SETTINGS_MAX_CONCURRENT_STREAMS until its backend side has closed too,
/// and nghttp2 bounds the rest (reset rate, CONTINUATIONs, SETTINGS, outbound ACKs).
final class HTTP2ServerConnection: HTTP2Endpoint, RequestServer, RequestDownstream, CertificateCoverage {
    /// What the connection waits for.
    enum Phase: Equatable {
        /// Requests.
        case serving
        /// Draining, step one: GOAWAY(2^31-1) and a PING went out; the PING's ACK (one round
        /// trip, so requests already on their way have arrived) brings the final GOAWAY.
        case noticeSent
        /// Draining, step two: the final GOAWAY went out; open requests finish.
        case goawaySent
        /// No request is left after the final GOAWAY: waiting (briefly) for the client to close.
        case closing
        case closed
    }

    unowned(unsafe) let worker: Worker  // workers live as long as the process: no check per access
    let snapshot: Snapshot
    let listener: ListenerConfig
    let peer: SocketAddress
    private let identity: ClientIdentity
    private let sni: String?
    private(set) var phase: Phase = .serving
    /// Requests by stream id, from their HEADERS until both sides are done with them.
    private var requests: [Int32: ProxyRequest] = [:]
    /// Requests accepted since this connection's reading last yielded to the loop (bounded by
    /// `requestsPerPass`: the rest wait for the loop's next pass).
    private var acceptedThisPass = 0
    /// Requests accepted on this connection (`max_requests_per_connection`).
    private var acceptedTotal = 0
    var timer: TimerHandle?
    /// When `timer` fires (.max: no timer).
    private var timerAt: Int64 = .max
    var finalAnswer: FinalAnswer?
    private(set) var lingering = false
    private var idleSince: Int64
    /// The session's idle pages have gone back to the kernel since it last sent a frame.
    private var idleMemoryReleased = false
    /// When the session last sent a frame after giving its idle pages back.
    private var idleMemoryTouchedAt: Int64 = 0
    private var ageDeadline: Int64 = 0
    private var phaseDeadline: Int64 = 0
    private let startedAt: Int64
    /// How long a connection stays idle (no request open, nothing sent) before its session gives
    /// its frame buffer and empty stream table back: about 20 KiB of its 29 once a request has
    /// been served. Not at once: a busy client's connection is idle for moments between requests.
    static let releaseIdleMemoryAfterMillis: Int64 = 2000
    /// The opaque data of the draining PING.
    private static let drainPing: [UInt8] = Array("edgemux!".utf8)

    var client: Transport { transport }
    var logPrefix: String { "client \(peer) on '\(listener.name)' (h2)" }

    init(worker: Worker, snapshot: Snapshot, listener: ListenerConfig, transport: Transport, peer: SocketAddress, proxied: ProxiedClient? = nil) {
        self.worker = worker
        self.snapshot = snapshot
        self.listener = listener
        self.peer = peer
        self.identity = ClientIdentity(address: peer.ipString, logged: peer.description, scheme: listener.tls == nil ? "http" : "https", certificateSubject: listener.tls?.clientCA == nil ? nil : transport.tls?.verifiedPeerSubject,
                                       proxied: proxied)
        self.sni = transport.tls?.serverName
        startedAt = worker.loop.now
        idleSince = startedAt
        super.init(loop: worker.loop, pool: worker.pool, transport: transport)
    }

    /// `ClientConnection.start()`: nothing to do, the front door has started the connection;
    /// the hand-over is `start(replay:inputFilter:acknowledgedSettings:pendingOutput:)`.
    func start() {}

    /// Creates the session, announces edgemux's SETTINGS, and feeds it what the front door read.
    func start(replay: [UInt8], inputFilter: SettingsAckFilter?, acknowledgedSettings: Bool, pendingOutput: Chunk?) {
        worker.servers[ObjectIdentifier(self)] = self
        worker.metrics.update(listener.name) { $0.serverConnections["h2", default: 0] += 1 }
        guard makeSession() else {
            worker.logger.error("\(logPrefix): cannot create an HTTP/2 session")
            close()
            return
        }
        self.inputFilter = inputFilter
        if acknowledgedSettings { outputFilter = SettingsAckFilter() }
        if let p = pendingOutput, !p.isEmpty { preload(p.readable) }
        if listener.maxConnectionAgeMillis > 0 {
            let age = listener.maxConnectionAgeMillis
            ageDeadline = startedAt + age + Int64.random(in: 0...max(1, age / 10))
        }
        if !replay.isEmpty {
            let rv = replay.withUnsafeBufferPointer { nghttp2_session_mem_recv(session, $0.baseAddress, $0.count) }
            if rv < 0 {
                protocolFailure(String(cString: nghttp2_strerror(Int32(rv))))
                return
            }
        }
        if worker.draining { startDrain() }
        pumpClient()
    }

    private func makeSession() -> Bool {
        guard let cbs = HTTP2Callbacks.make() else { return false }
        defer { nghttp2_session_callbacks_del(cbs) }
        let h = listener.http2
        var opt: OpaquePointer?
        nghttp2_option_new(&opt)
        defer { nghttp2_option_del(opt) }
        nghttp2_option_set_no_auto_window_update(opt, 1)
        nghttp2_option_set_max_continuations(opt, h.maxContinuations)
        nghttp2_option_set_stream_reset_rate_limit(opt, UInt64(h.resetBurst), UInt64(h.resetRate))
        nghttp2_option_set_no_closed_streams(opt, 1)
        guard let m = CEdgemux_h2_memory_new() else { return false }
        memory = m
        var s: OpaquePointer?
        guard nghttp2_session_server_new3(&s, cbs, Unmanaged.passUnretained(self as HTTP2Endpoint).toOpaque(), opt, CEdgemux_h2_memory_allocator(m)) == 0, let s else { return false }
        session = s
        var iv = [
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS.rawValue), value: UInt32(h.maxConcurrentStreams)),
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE.rawValue), value: UInt32(h.initialWindowSize)),
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_MAX_FRAME_SIZE.rawValue), value: UInt32(h.maxFrameSize)),
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE.rawValue), value: UInt32(h.maxHeaderListSize)),
        ]
        guard nghttp2_submit_settings(s, UInt8(NGHTTP2_FLAG_NONE.rawValue), &iv, iv.count) == 0 else { return false }
        if h.connectionWindowSize > 65_535 {
            nghttp2_session_set_local_window_size(s, UInt8(NGHTTP2_FLAG_NONE.rawValue), 0, Int32(h.connectionWindowSize))
        }
        return true
    }

    // MARK: events

    override func handleEvent(fd: Int32, events: UInt32) {
        guard fd == transport.fd, phase != .closed else { return }
        transport.note(events: events)
        pumpClient()
    }

    override func resumeReading() { pumpClient() }

    /// Reads what the client sent, lets the session answer, writes, and sees whether the
    /// connection is over.
    private func pumpClient() {
        guard phase != .closed else { return }
        acceptedThisPass = 0
        let perPass = listener.http2.requestsPerPass
        switch receive(mayRead: { [unowned self] in self.acceptedThisPass < perPass }) {
        case .waiting:
            break
        case .eof:
            if !requests.isEmpty { worker.logger.debug("\(logPrefix): client closed with \(requests.count) requests open") }
            close()
            return
        case .failed(let why):
            protocolFailure(why)
            return
        }
        flushNow()
    }

    override func flushNow() {
        guard phase != .closed else { return }
        if !flush() {
            worker.logger.info("\(logPrefix): \(broken ?? "write failed"); closed")
            close()
            return
        }
        guard let session else { return }
        if nghttp2_session_want_read(session) == 0, nghttp2_session_want_write(session) == 0, !hasPendingOutput {
            // nghttp2 ended the session (a GOAWAY for a protocol error, or ours with nothing left).
            close()
            return
        }
        if phase == .goawaySent, requests.isEmpty { enterClosing() }
        armTimer()
    }

    /// The session refused the client's bytes (a connection error it answered with GOAWAY, or
    /// bytes that are not HTTP/2 at all).
    private func protocolFailure(_ why: String) {
        worker.metrics.update(listener.name) { $0.sniffErrors["h2_session", default: 0] += 1 }
        worker.logger.notice("\(logPrefix): \(why); closed")
        _ = flush()
        close()
    }

    // MARK: timers: idle keep-alive, connection age, drain steps

    /// One timer for the nearest deadline. Called after every flush: a timer already due sooner
    /// is kept (it looks again when it fires), so a busy connection costs no timer churn.
    private func armTimer() {
        var next: Int64 = .max
        if requests.isEmpty, phase == .serving, listener.keepaliveTimeoutMillis > 0 { next = idleSince + listener.keepaliveTimeoutMillis }
        if ageDeadline > 0, phase == .serving { next = min(next, ageDeadline) }
        if requests.isEmpty, phase == .serving, !idleMemoryReleased { next = min(next, idleMemoryDeadline) }
        if phaseDeadline > 0 { next = min(next, phaseDeadline) }
        guard next < timerAt else { return }
        loop.cancel(timer)
        timerAt = next
        timer = loop.schedule(afterMillis: max(1, next - loop.now), for: self)
    }

    override func timerFired() {
        timer = nil
        timerAt = .max
        let now = loop.now
        switch phase {
        case .serving:
            if ageDeadline > 0, now >= ageDeadline {
                worker.logger.debug("\(logPrefix): max_connection_age reached: draining")
                ageDeadline = 0
                startDrain(reason: "max_connection_age")
                return
            }
            if requests.isEmpty, listener.keepaliveTimeoutMillis > 0, now - idleSince >= listener.keepaliveTimeoutMillis {
                sendFinalGoaway(reason: "idle")
                flushNow()
                return
            }
            if requests.isEmpty, !idleMemoryReleased, now >= idleMemoryDeadline { releaseIdleMemory() }
        case .noticeSent:
            if now >= phaseDeadline { sendFinalGoaway(reason: nil) }
            flushNow()
            return
        case .closing:
            if now >= phaseDeadline {
                close()
                return
            }
        case .goawaySent, .closed:
            break
        }
        armTimer()
    }

    private var idleMemoryDeadline: Int64 { max(idleSince, idleMemoryTouchedAt) + Self.releaseIdleMemoryAfterMillis }

    /// Gives the session's dead pages back (its frame buffer only when no frame is half sent).
    private func releaseIdleMemory() {
        idleMemoryReleased = true
        guard let session, let memory, nghttp2_session_want_write(session) == 0, !hasPendingOutput else { return }
        CEdgemux_h2_memory_release_idle(memory)
    }

    // MARK: drain

    func startDrain() { startDrain(reason: "drain") }

    private func startDrain(reason: String) {
        guard phase == .serving, let session else { return }
        if requests.isEmpty {
            // Nothing is open: the final GOAWAY at once, and the client closes.
            sendFinalGoaway(reason: reason)
        } else {
            nghttp2_submit_shutdown_notice(session)
            _ = Self.drainPing.withUnsafeBufferPointer { nghttp2_submit_ping(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), $0.baseAddress) }
            phase = .noticeSent
            phaseDeadline = loop.now + 1000
            worker.metrics.update(listener.name) { $0.goaways[reason, default: 0] += 1 }
        }
        flushNow()
    }

    private func sendFinalGoaway(reason: String?) {
        guard let session, phase == .serving || phase == .noticeSent else { return }
        if let reason { worker.metrics.update(listener.name) { $0.goaways[reason, default: 0] += 1 } }
        nghttp2_submit_goaway(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), nghttp2_session_get_last_proc_stream_id(session), NGHTTP2_NO_ERROR.rawValue, nil, 0)
        phase = .goawaySent
        phaseDeadline = 0
    }

    /// After the final GOAWAY with nothing open: the client is expected to close; it gets a
    /// second to do so (closing at once could reset the GOAWAY away before it is read).
    private func enterClosing() {
        phase = .closing
        phaseDeadline = loop.now + 1000
    }

    // MARK: nghttp2 callbacks

    override func beginHeaders(_ frame: UnsafePointer<nghttp2_frame>) -> Int32 {
        let id = frame.pointee.hd.stream_id
        guard frame.pointee.hd.type == UInt8(NGHTTP2_HEADERS.rawValue) else { return 0 }
        if frame.pointee.headers.cat == NGHTTP2_HCAT_REQUEST {
            guard let session else { return 0 }
            if requests.count >= listener.http2.maxConcurrentStreams || phase == .goawaySent || phase == .closing {
                // Streams count until their backend side is done, beyond nghttp2's own count.
                worker.metrics.update(listener.name) { $0.refusedStreams += 1 }
                nghttp2_submit_rst_stream(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), id, NGHTTP2_REFUSED_STREAM.rawValue)
                return 0
            }
            let r = ProxyRequest(worker: worker, downstream: self, snapshot: snapshot, listener: listener, client: identity, sni: sni, clientProtocol: .h2, streamID: id)
            r.head.fields = HeaderList(reservingBytes: 512, fields: 16)
            requests[id] = r
            acceptedThisPass += 1
            acceptedTotal += 1
            if listener.maxRequestsPerConnection > 0, acceptedTotal == listener.maxRequestsPerConnection {
                // The last one: a graceful GOAWAY, sent once nghttp2 has returned (no sends from
                // inside its callbacks).
                loop.runSoon { [self] in self.startDrain(reason: "max_requests") }
            }
        } else if let r = requests[id] {
            r.incoming = HeaderList()  // trailers
        }
        return 0
    }

    override func header(_ frame: UnsafePointer<nghttp2_frame>, name: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer) -> Int32 {
        guard let r = requests[frame.pointee.hd.stream_id] else { return 0 }
        if r.state != .awaitingHead {
            r.incoming.append(name: name, value: value)
            return 0
        }
        if r.head.fields.byteCount + 32 * r.head.fields.count > listener.http2.maxHeaderListSize {
            r.headTooLarge = true
            return 0
        }
        if name.first == UInt8(ascii: ":") {
            let v = String(decoding: value, as: UTF8.self)
            switch String(decoding: name, as: UTF8.self) {
            case ":method": r.head.method = v
            case ":scheme": r.head.scheme = v
            case ":authority": r.head.authority = v
            case ":path": r.head.path = v
            default: break
            }
            return 0
        }
        if name.count == 4, HTTP1Fields.equalsIgnoringCase(name, 0..<4, "host"), r.head.authority.isEmpty {
            r.head.authority = String(decoding: value, as: UTF8.self)
        }
        if name.count == 14, HTTP1Fields.equalsIgnoringCase(name, 0..<14, "content-length") {
            r.head.contentLength = Int(String(decoding: value, as: UTF8.self))
        }
        r.head.fields.append(name: name, value: value)
        return 0
    }

    override func frameReceived(_ frame: UnsafePointer<nghttp2_frame>) -> Int32 {
        let hd = frame.pointee.hd
        let endStream = hd.flags & UInt8(NGHTTP2_FLAG_END_STREAM.rawValue) != 0
        switch Int(hd.type) {
        case Int(NGHTTP2_HEADERS.rawValue):
            guard let r = requests[hd.stream_id] else { return 0 }
            if r.state == .awaitingHead {
                idleSince = loop.now
                if r.headTooLarge {
                    r.head.endStream = endStream
                    r.answer(status: 431, message: "request header list exceeds \(listener.http2.maxHeaderListSize) bytes", outcome: .badRequest)
                    return 0
                }
                r.headReceived(endStream: endStream)
            } else {
                let trailers = r.incoming
                r.incoming = HeaderList()
                r.requestEnd(trailers: trailers)
            }
        case Int(NGHTTP2_DATA.rawValue):
            if endStream, let r = requests[hd.stream_id] { r.requestEnd(trailers: nil) }
        case Int(NGHTTP2_PING.rawValue):
            if hd.flags & UInt8(NGHTTP2_FLAG_ACK.rawValue) != 0, phase == .noticeSent {
                sendFinalGoaway(reason: nil)
            }
        default:
            break
        }
        return 0
    }

    override func dataChunk(stream: Int32, _ data: UnsafeRawBufferPointer) -> Int32 {
        guard let session else { return 0 }
        nghttp2_session_consume_connection(session, data.count)
        guard let r = requests[stream], !r.isFinished else {
            nghttp2_session_consume_stream(session, stream, data.count)
            return 0
        }
        r.requestData(data)
        return 0
    }

    override func streamClosed(_ stream: Int32, code: UInt32) -> Int32 {
        requests[stream]?.clientClosed(code: code)
        return 0
    }

    override func frameSent(_ frame: UnsafePointer<nghttp2_frame>) {
        if idleMemoryReleased {
            // The frame buffer is in use again (a PING's ACK, a WINDOW_UPDATE): release it
            // again after a quiet spell.
            idleMemoryReleased = false
            idleMemoryTouchedAt = loop.now
        }
        let hd = frame.pointee.hd
        guard hd.flags & UInt8(NGHTTP2_FLAG_END_STREAM.rawValue) != 0, hd.type == UInt8(NGHTTP2_DATA.rawValue) || hd.type == UInt8(NGHTTP2_HEADERS.rawValue),
              let r = requests[hd.stream_id], !r.requestEnded, let session else { return }
        // The response is complete while the client still sends its body: RFC 9113 section 8.1
        // says stop it with RST_STREAM(NO_ERROR).
        nghttp2_submit_rst_stream(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), hd.stream_id, NGHTTP2_NO_ERROR.rawValue)
    }

    override func request(onStream stream: Int32) -> ProxyRequest? { requests[stream] }

    // MARK: RequestDownstream

    func responseHeadReady(_ r: ProxyRequest) {
        guard let session, let h = r.response else { return }
        let fields = h.fields
        let noBody = r.responseEnded && r.responseBody.isEmpty && r.responseTrailers == nil
        var prd = HTTP2Callbacks.bodyProvider()
        let rv = fields.withNameValues(leading: [(":status", String(h.status))], keep: { i in !FieldRules.isHopByHop(fields, i) && !fields.isNamed(i, "te") }) { nva, n in
            noBody ? nghttp2_submit_response(session, r.streamID, nva, n, nil) : nghttp2_submit_response(session, r.streamID, nva, n, &prd)
        }
        if rv != 0 {
            worker.logger.debug("\(logPrefix): stream \(r.streamID): cannot submit the response: \(String(cString: nghttp2_strerror(rv)))")
        }
        scheduleFlush()
    }

    func interimResponse(_ r: ProxyRequest, _ head: ResponseHead) {
        guard let session, head.status != 101 else { return }
        let fields = head.fields
        _ = fields.withNameValues(leading: [(":status", String(head.status))], keep: { i in !FieldRules.isHopByHop(fields, i) }) { nva, n in
            nghttp2_submit_headers(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), r.streamID, nil, nva, n, nil)
        }
        scheduleFlush()
    }

    func responseBodyReady(_ r: ProxyRequest) {
        guard let session else { return }
        nghttp2_session_resume_data(session, r.streamID)
        scheduleFlush()
    }

    func requestBodyTaken(_ r: ProxyRequest, _ count: Int) {
        guard let session, count > 0 else { return }
        nghttp2_session_consume_stream(session, r.streamID, count)
        scheduleFlush()
    }

    func resetStream(_ r: ProxyRequest, code: UInt32) {
        guard let session else { return }
        nghttp2_submit_rst_stream(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), r.streamID, code)
        scheduleFlush()
    }

    func requestFinished(_ r: ProxyRequest) {
        guard requests[r.streamID] === r else { return }
        requests[r.streamID] = nil
        if requests.isEmpty {
            idleSince = loop.now
            if phase == .goawaySent || phase == .noticeSent { scheduleFlush() }
        }
    }

    func certificateCovers(_ host: String) -> Bool { transport.tls?.certificateCovers(host) ?? true }

    // MARK: the end

    func startLingering() { lingering = true }

    func close() {
        guard phase != .closed else { return }
        phase = .closed
        loop.cancel(timer)
        timer = nil
        timerAt = .max
        for r in Array(requests.values) { r.clientClosed(code: NGHTTP2_CANCEL.rawValue) }
        requests = [:]
        transport.close(on: loop)
        worker.releasePrivateUpstreams(of: identity.proxied)
        worker.servers[ObjectIdentifier(self)] = nil
        worker.metrics.update(listener.name) { $0.serverConnections["h2", default: 0] -= 1 }
        worker.finished(self)
    }
}
