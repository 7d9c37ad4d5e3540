import CEdgemux
import Glibc
import Logging

/// One client connection, from accept to close: TLS handshake, sniffing the first request,
/// routing, connecting to a backend endpoint, then relaying both ways. Owned by one worker's loop
/// for its whole life; each phase is named for what it waits for.
final class ProxyConnection: EventHandler, ClientConnection {
    enum Phase: Equatable {
        /// Waiting for the PROXY protocol header an L4 balancer sends first.
        case awaitingProxyHeader
        /// Looking at the ClientHello (peeked, not consumed) for a passthrough route or a
        /// fallback, before any handshake.
        case awaitingClientHello
        /// Waiting for the client's TLS handshake to complete.
        case awaitingHandshake
        /// Waiting for the first request head (HTTP/1.1) or the first HEADERS (HTTP/2).
        case awaitingRequest
        /// Waiting for a backend endpoint to accept the connection (and its TLS handshake).
        case awaitingBackend
        /// Relaying bytes both ways.
        case relaying
        /// One HTTP/1.1 request and its response over a backend connection kept for reuse.
        case exchanging
        /// Waiting for edgemux's own answer (an error) to be written.
        case flushingAnswer
        /// Answer written and FIN sent; reading and discarding until the client closes, so that
        /// closing with unread input does not reset the connection under the answer.
        case lingering
        case closed

        /// The `state` label of edgemux_connections (nil: not counted there).
        var metricState: String? {
            switch self {
            case .awaitingProxyHeader, .awaitingClientHello, .awaitingHandshake: return "handshake"
            case .awaitingRequest: return "request"
            case .awaitingBackend: return "connecting"
            case .relaying: return "relaying"
            case .exchanging: return "exchanging"
            case .flushingAnswer, .lingering: return "closing"
            case .closed: return nil
            }
        }
    }

    unowned let worker: Worker
    let loop: EventLoop
    let snapshot: Snapshot
    let listener: ListenerConfig
    /// The client: the socket's peer, or the source a PROXY protocol header named.
    var peer: SocketAddress
    /// The address the client connected to, as a PROXY protocol header named it.
    private var headerDestination: SocketAddress?
    private var proxiedCache: ProxiedClient?
    let client: Transport
    var backend: Transport?

    private(set) var phase: Phase = .awaitingHandshake {
        didSet {
            let (was, now) = (oldValue.metricState, phase.metricState)
            guard was != now else { return }
            worker.metrics.update(listener.name) {
                if let was { $0.states[was, default: 0] -= 1 }
                if let now { $0.states[now, default: 0] += 1 }
            }
        }
    }
    var proto: ClientProtocol = .http1
    /// ALPN gave no protocol: HTTP/2 with prior knowledge is still possible.
    var protocolUndecided = false
    /// The SNI the client sent: from the ClientHello (passthrough) or OpenSSL once the handshake
    /// is done, kept because the TLS state is gone by the time the access log is written.
    private(set) var serverName: String?
    /// The connection goes to its backend raw: a passthrough route's TLS, or a fallback's bytes.
    private(set) var rawKind: RawKind?
    /// Waiting for the first bytes of a client outside proxy_protocol_from (a PROXY header from
    /// it is refused).
    private var refusesProxyHeader = false
    /// When the connect to the current endpoint started (edgemux_backend_connect_duration_seconds).
    private var connectStartedAt: Int64 = 0
    /// The timer is the listener's fallback_timeout: nothing received yet.
    private var waitingOutSilence = false
    /// The passthrough series this connection counts in (set when it is passed on raw).
    private var passthroughKey: PassthroughKey?
    enum RawKind: String {
        /// TLS passed through untouched (a passthrough route).
        case tls
        /// Not TLS at all, sent to the listener's fallback.
        case tcp
    }
    var sniffed: [UInt8] = []
    var h2Sniffer: HTTP2Sniffer?
    var sentSettings = false
    /// edgemux acknowledged the client's first SETTINGS while sniffing: the backend's own ACK
    /// of them must not reach the client (relay), nor nghttp2's (request mode).
    var sentSettingsAck = false
    /// edgemux's own bytes the client has not taken yet (its SETTINGS frame).
    var clientPending: Chunk?
    var relay: Relay?

    /// What exists only once a first request is under way: allocated then, so that a
    /// connection idling before its first request (thousands of them, on a busy port) carries
    /// none of it.
    final class Exchange {
        var request = RequestInfo()
        var route: RouteConfig?
        var backendConfig: BackendConfig?
        var plan: [Endpoint] = []
        var attempt = 0
        var currentEndpoint: Endpoint?
        var backendConnected = false
        /// The connect (and TLS handshake) to `currentEndpoint`.
        var dial = BackendDial(alpn: .http1)
        var failures: [String] = []
        /// Client-to-backend filter decided while sniffing (HTTP/2: drop the ACK of our SETTINGS).
        var ackFilter: SettingsAckFilter?
        var finalAnswer: FinalAnswer?
        var outcome = "closed"
        /// HTTP/1.1: the first request's head ends here in `sniffed`.
        var headLength = 0
        /// The request runs as an `HTTP1Exchange` (pooled backend connections).
        var pooled = false
        /// The backend connection came from the pool (a failure before any answer is retried).
        var reusedConnection = false
        var http1: HTTP1Exchange?
        /// The request head as sent to the backend (kept for a retry).
        var backendHead: [UInt8] = []
        var lastActivity: Int64 = 0
        var bytesToClient = 0
        var status = 0
        /// What the client sent: in a one-request exchange that is its request head and nothing
        /// more (what reaches the backend is the head rewritten, so the exchange cannot count it).
        var bytesFromClient: Int { pooled ? headLength : 0 }
    }

    private var exchangeStorage: Exchange?
    var exchange: Exchange {
        if let e = exchangeStorage { return e }
        let e = Exchange()
        exchangeStorage = e
        return e
    }
    var request: RequestInfo { get { exchange.request } set { exchange.request = newValue } }
    var route: RouteConfig? { get { exchangeStorage?.route } set { exchange.route = newValue } }
    var backendConfig: BackendConfig? { get { exchangeStorage?.backendConfig } set { exchange.backendConfig = newValue } }
    var plan: [Endpoint] { get { exchange.plan } set { exchange.plan = newValue } }
    var attempt: Int { get { exchange.attempt } set { exchange.attempt = newValue } }
    var currentEndpoint: Endpoint? { get { exchangeStorage?.currentEndpoint } set { exchange.currentEndpoint = newValue } }
    var backendConnected: Bool { get { exchangeStorage?.backendConnected ?? false } set { exchange.backendConnected = newValue } }
    var failures: [String] { get { exchange.failures } set { exchange.failures = newValue } }
    var ackFilter: SettingsAckFilter? { get { exchangeStorage?.ackFilter } set { exchange.ackFilter = newValue } }
    var timer: TimerHandle?
    /// This connection's TLS handshake counts against max_handshakes.
    private var countsAsHandshake = false
    /// A relay's deadline for the backend's first byte (0: it has spoken, or no relay).
    private var firstByteDeadline: Int64 = 0
    private var relayStartedAt: Int64 = 0
    /// Kept with the exchange, so that an idle connection does not carry it.
    var finalAnswer: FinalAnswer? { get { exchangeStorage?.finalAnswer } set { exchange.finalAnswer = newValue } }
    let startedAt: Int64
    /// How the connection ended, for the access log (kept with the exchange: set on the way out).
    var outcome: String { get { exchangeStorage?.outcome ?? "closed" } set { exchange.outcome = newValue } }

    convenience init(worker: Worker, snapshot: Snapshot, listener: ListenerConfig, fd: Int32, peer: SocketAddress) {
        self.init(worker: worker, snapshot: snapshot, listener: listener, transport: Transport(fd: fd), peer: peer)
    }

    /// `transport`: a new connection's, or one that edgemux's HTTP/1.1 server gives back for an
    /// Upgrade request (registered, and rebound to this object, already).
    /// `proxied`: whom PROXY headers to backends name, when an HTTP/1.1 server connection hands
    /// over an upgrade (it knew the balancer's header, which this object did not read).
    init(worker: Worker, snapshot: Snapshot, listener: ListenerConfig, transport: Transport, peer: SocketAddress, proxied: ProxiedClient? = nil) {
        proxiedCache = proxied
        self.worker = worker
        self.loop = worker.loop
        self.snapshot = snapshot
        self.listener = listener
        self.peer = peer
        self.client = transport
        self.startedAt = worker.loop.now
        serverName = transport.tls?.serverName  // an Upgrade's connection: its handshake is done
    }

    /// Relays the connection from an Upgrade request (its head, and what followed it, in
    /// `bytes`): routed, connected and relayed as a relay route's first request is.
    func takeUpgrade(_ bytes: [UInt8]) {
        proto = .http1
        sniffed = bytes
        phase = .awaitingRequest
        armTimer(listener.requestTimeoutMillis)
        parseRequest()
    }

    var logPrefix: String { "client \(peer) on '\(listener.name)'" }

    // MARK: start

    func start() {
        let fd = client.fd  // TCP_NODELAY and SO_KEEPALIVE come from the listening socket
        worker.metrics.update(listener.name) { $0.states["handshake", default: 0] += 1 }  // the initial phase
        do {
            try loop.register(fd: fd, events: EventLoop.relayEvents, handler: self)
        } catch {
            worker.logger.error("\(logPrefix): cannot register: \(error)")
            Posix.close(fd)
            worker.finished(self)
            phase = .closed
            return
        }
        client.readable = true
        if listener.expectsProxyHeader(from: peer) {
            phase = .awaitingProxyHeader
            armTimer(listener.handshakeTimeoutMillis)
            readProxyHeader()
        } else if listener.proxyProtocol {
            // Not from a trusted balancer: its own address stands, and it may not claim another.
            phase = .awaitingProxyHeader
            refusesProxyHeader = true
            armTimer(listener.handshakeTimeoutMillis)
            refuseUntrustedProxyHeader()
        } else {
            startTLSOrRequest()
        }
    }

    /// After fallback_timeout's wait: what is left of handshake_timeout (from the accept).
    private func armRestOfHandshakeTime() {
        armTimer(max(1, listener.handshakeTimeoutMillis - (loop.now - startedAt)))
    }

    /// A client outside proxy_protocol_from: if its first bytes are a PROXY header, it claims an
    /// address it may not claim (closed, logged, counted); else it goes on as a direct client.
    private func refuseUntrustedProxyHeader() {
        guard let peeked = peekClient(upTo: 12) else { return }
        switch ProxyProtocolParser.startsHeader(peeked) {
        case nil: return
        case true?:
            outcome = "untrusted_proxy_header"
            worker.metrics.update(listener.name) { $0.sniffErrors["proxy_protocol_untrusted", default: 0] += 1 }
            worker.logger.notice("\(logPrefix): PROXY header from \(peer.ipString), which is not in proxy_protocol_from; closed")
            close()
        case false?:
            refusesProxyHeader = false
            startTLSOrRequest()
        }
    }

    /// Peeks until the PROXY header is complete, then consumes exactly its bytes: what follows
    /// (a ClientHello) stays in the socket for OpenSSL.
    private func readProxyHeader() {
        guard let peeked = peekClient(upTo: ProxyProtocolParser.v2MaxLength) else { return }
        let scratch = worker.pool.scratch
        let n = peeked.count
        switch ProxyProtocolParser.parse(peeked) {
        case .needMore:
            if n >= ProxyProtocolParser.v2MaxLength { proxyHeaderFailed("PROXY header incomplete after \(n) bytes") }
        case .error(let why):
            proxyHeaderFailed(why)
        case .done(let source, let destination, let length):
            guard (try? Posix.read(client.fd, into: UnsafeMutableRawBufferPointer(rebasing: scratch[0..<length]))) == .processed(length) else {
                close()
                return
            }
            if let source {
                peer = source
                headerDestination = destination
            }
            startTLSOrRequest()
        }
    }

    /// What the client has sent so far, looked at and left in its socket (at most `cap` bytes,
    /// in the loop's scratch area); nil when nothing came yet, or the client closed (then the
    /// connection is closed).
    private func peekClient(upTo cap: Int) -> UnsafeRawBufferPointer? {
        let scratch = UnsafeMutableRawBufferPointer(rebasing: worker.pool.scratch[0..<cap])
        switch client.peek(into: scratch) {
        case .bytes(let n): return UnsafeRawBufferPointer(rebasing: scratch[0..<n])
        case .nothingYet: return nil
        case .closed:
            close()
            return nil
        }
    }

    private func proxyHeaderFailed(_ why: String) {
        outcome = "bad_proxy_header"
        worker.metrics.update(listener.name) { $0.sniffErrors["proxy_protocol", default: 0] += 1 }
        worker.logger.notice("\(logPrefix): \(why); closed")
        close()
    }

    private func startTLSOrRequest() {
        if listener.tls != nil, listener.peeksClientHello {
            if listener.fallbackTimeoutMillis > 0 {
                // Silence first: a client that says nothing for this long goes to the fallback.
                waitingOutSilence = true
                armTimer(listener.fallbackTimeoutMillis)
            } else if phase != .awaitingProxyHeader {
                armTimer(listener.handshakeTimeoutMillis)
            }
            phase = .awaitingClientHello
            peekClientHello()
            return
        }
        startTLS()
    }

    /// Looks at the connection's first bytes without consuming them: a ClientHello that a
    /// passthrough route matches goes to that route's backend untouched; bytes that are not a
    /// TLS handshake go to the fallback, if the listener has one; everything else is terminated
    /// as usual (OpenSSL reads the same bytes).
    private func peekClientHello() {
        guard let bytes = peekClient(upTo: ClientHelloParser.cap) else { return }
        if waitingOutSilence {
            // Not silent: what is left of handshake_timeout (from the accept) is for the handshake.
            waitingOutSilence = false
            armRestOfHandshakeTime()
        }
        if bytes[0] != 22 {
            // SSH ("SSH-2.0-"), a client with its own framing: not a TLS handshake record.
            if let fallback = listener.fallback {
                startRaw(.tcp, route: nil, backendName: fallback)
            } else {
                startTLS()
            }
            return
        }
        switch ClientHelloParser.parseHello(bytes) {
        case .needMore:
            // A ClientHello in several segments or records: wait for the rest (the handshake
            // timeout bounds the wait, ClientHelloParser.cap the bytes).
            return
        case .error:
            startTLS()  // OpenSSL refuses it with an alert and a log line, as any bad handshake
        case .done(let hello):
            if let route = snapshot.routers[listener.name]?.selectPassthrough(hello) {
                serverName = hello.serverName
                startRaw(.tls, route: route, backendName: route.backend)
            } else {
                startTLS()
            }
        }
    }

    /// Sends the connection, from its first byte, to a `protocol: tcp` backend.
    private func startRaw(_ kind: RawKind, route: RouteConfig?, backendName: String) {
        rawKind = kind
        self.route = route
        worker.logger.debug("\(logPrefix): \(kind == .tls ? "TLS for '\(serverName ?? "")' passed through by route '\(route?.name ?? "")'" : "not TLS: to the fallback") -> backend '\(backendName)'")
        guard let backend = snapshot.config.backends[backendName], let endpoints = backend.endpoints[.http1], !endpoints.isEmpty else {
            worker.logger.error("\(logPrefix): backend '\(backendName)' has no endpoints")
            close()
            return
        }
        let key = PassthroughKey(route: route?.name ?? "fallback", kind: kind.rawValue)
        passthroughKey = key
        worker.metrics.update(listener.name) {
            $0.routed[route?.name ?? "\(listener.name)/fallback", default: 0] += 1
            $0.passthrough[key, default: PassthroughTotals()].connections += 1
            $0.passthroughActive += 1
        }
        backendConfig = backend
        plan = worker.balancer(for: backend.name).plan(endpoints, protocol: .http1, now: loop.now)
        attempt = 0
        phase = .awaitingBackend
        loop.cancel(timer)
        timer = nil
        connectNext()
    }

    private func startTLS() {
        if let ctx = snapshot.serverContext(listener: listener.name, worker: loop.index) {
            do {
                client.tls = try TLSStream(server: ctx, fd: client.fd)
            } catch {
                worker.logger.error("\(logPrefix): \(error)")
                close()
                return
            }
            if phase != .awaitingProxyHeader && phase != .awaitingClientHello { armTimer(listener.handshakeTimeoutMillis) }
            phase = .awaitingHandshake
            worker.limiter.handshakeStarted()
            countsAsHandshake = true
            continueHandshake()
        } else {
            protocolUndecided = true
            enterAwaitingRequest()
        }
    }

    override func handleEvent(fd: Int32, events: UInt32) {
        if fd == client.fd {
            client.note(events: events)
        } else if let backend, fd == backend.fd {
            backend.note(events: events)
        } else {
            return
        }
        switch phase {
        case .awaitingProxyHeader: if refusesProxyHeader { refuseUntrustedProxyHeader() } else { readProxyHeader() }
        case .awaitingClientHello: peekClientHello()
        case .awaitingHandshake: continueHandshake()
        case .awaitingRequest: readRequest()
        case .awaitingBackend:
            if let backend, fd == backend.fd { backendProgress(events: events) }
        case .relaying: relay?.pumpAll()
        case .exchanging: pumpExchange()
        case .flushingAnswer, .lingering: continueAnswer()
        case .closed: break
        }
    }

    // MARK: timers

    override func timerFired() {
        timer = nil
        switch phase {
        case .awaitingClientHello where waitingOutSilence:
            waitingOutSilence = false
            guard let fallback = listener.fallback else { return }
            if peekClient(upTo: 1) == nil {
                guard phase != .closed else { return }  // it closed meanwhile
                worker.logger.debug("\(logPrefix): nothing received in \(DurationText.of(listener.fallbackTimeoutMillis)): to the fallback (the server speaks first)")
                startRaw(.tcp, route: nil, backendName: fallback)
            } else {
                // Some of a ClientHello came: the rest of the handshake time is for the rest.
                armRestOfHandshakeTime()
            }
        case .awaitingProxyHeader, .awaitingClientHello, .awaitingHandshake:
            outcome = "handshake_timeout"
            worker.metrics.update(listener.name) { $0.timeouts["handshake", default: 0] += 1 }
            worker.logger.notice("\(logPrefix): TLS handshake not finished within \(DurationText.of(listener.handshakeTimeoutMillis)); closed")
            close()
        case .awaitingRequest:
            outcome = "request_timeout"
            worker.metrics.update(listener.name) { $0.timeouts["request", default: 0] += 1 }
            worker.logger.notice("\(logPrefix): no complete first request within \(DurationText.of(listener.requestTimeoutMillis)) (\(sniffed.count) bytes received); closed")
            if proto == .h2, let s = h2Sniffer, s.prefaceReceived {
                sendAnswer(ErrorAnswers.goaway(lastStream: 0, error: .noError, debug: "request timeout"))
            } else if proto == .http1, !sniffed.isEmpty, !protocolUndecided || !HTTP2Sniffer.couldBePrefaceArray(sniffed) {
                sendAnswer(ErrorAnswers.http1(status: 408, message: "request head not received in time"))
            } else {
                close()
            }
        case .awaitingBackend:
            connectFailed("connect timed out after \(DurationText.of(backendConfig?.connectTimeoutMillis ?? 0))")
        case .relaying, .exchanging:
            guard let route else { return }
            if phase == .relaying, firstByteDeadline > 0, let relay {
                if relay.backendSpoke {
                    firstByteDeadline = 0
                } else if loop.now >= firstByteDeadline {
                    outcome = "response_timeout"
                    worker.metrics.update(listener.name) { $0.timeouts["response", default: 0] += 1 }
                    let name = backendConfig?.name ?? "?"
                    worker.logger.warning("\(logPrefix): backend '\(name)' sent nothing within \(DurationText.of(loop.now - relayStartedAt)) on route '\(route.name)'; answered 504")
                    relay.release()
                    self.relay = nil
                    answerError(status: 504, message: "backend '\(name)' did not answer in time")
                    return
                } else if route.idleTimeoutMillis == 0 || firstByteDeadline - loop.now < route.idleTimeoutMillis {
                    armTimer(firstByteDeadline - loop.now)
                    return
                }
            }
            guard route.idleTimeoutMillis > 0 else { return }
            let last = phase == .relaying ? (relay?.lastActivity ?? startedAt) : exchange.lastActivity
            let idle = loop.now - last
            guard idle >= route.idleTimeoutMillis else {
                armTimer(route.idleTimeoutMillis - idle)
                return
            }
            outcome = "idle_timeout"
            worker.metrics.update(listener.name) { $0.timeouts["idle", default: 0] += 1 }
            if phase == .exchanging, exchange.http1?.responseStarted != true {
                worker.logger.info("\(logPrefix): backend '\(backendConfig?.name ?? "?")' silent for \(DurationText.of(idle)) on route '\(route.name)'; closed")
                answerError(status: 504, message: "backend '\(backendConfig?.name ?? "?")' did not answer in time")
            } else {
                worker.logger.info("\(logPrefix): idle for \(DurationText.of(idle)) on route '\(route.name)'; closed")
                close()
            }
        case .flushingAnswer, .lingering:
            close()
        case .closed:
            break
        }
    }

    // MARK: TLS handshake

    private func endHandshakeCount() {
        guard countsAsHandshake else { return }
        countsAsHandshake = false
        worker.limiter.handshakeEnded()
    }

    private func continueHandshake() {
        guard let tls = client.tls else { return }
        switch tls.handshake() {
        case .bytes:
            endHandshakeCount()
            let took = loop.now - startedAt
            worker.metrics.update(listener.name) { $0.handshakes.observe(took) }
            serverName = tls.serverName
            let alpn = tls.negotiatedALPN
            if alpn == "h2" {
                proto = .h2
            } else {
                proto = .http1
                protocolUndecided = alpn.isEmpty && (listener.tls?.alpn.contains("h2") ?? false)
            }
            enterAwaitingRequest()
        case .wantRead, .wantWrite:
            return
        case .eof:
            worker.metrics.update(listener.name) { $0.handshakeFailures["client_closed", default: 0] += 1 }
            close()
        case .failed(let why):
            if tls.sawPlainHTTP {
                // As nginx does: a short answer in clear text says what went wrong.
                outcome = "plain_http_on_tls"
                worker.metrics.update(listener.name) { $0.handshakeFailures["plain_http", default: 0] += 1 }
                worker.logger.notice("\(logPrefix): plain HTTP request sent to a TLS port; answered 400")
                client.tls = nil
                sendAnswer(ErrorAnswers.http1(status: 400, message: "plain HTTP request sent to an HTTPS port: use https://"))
                return
            }
            outcome = "tls_handshake_failed"
            worker.metrics.update(listener.name) { $0.handshakeFailures["protocol", default: 0] += 1 }
            worker.logger.notice("\(logPrefix): \(why)")
            close()
        }
    }

    // MARK: sniffing the first request

    private func enterAwaitingRequest() {
        phase = .awaitingRequest
        armTimer(listener.requestTimeoutMillis)
        if proto == .h2 { h2Sniffer = HTTP2Sniffer(cap: listener.maxRequestHeadBytes) }
        readRequest()
    }

    private func readRequest() {
        let scratch = worker.pool.scratch
        let cap = listener.maxRequestHeadBytes
        var ended = false
        reading: while client.readable && sniffed.count <= cap {
            let room = min(scratch.count, cap + 1 - sniffed.count)
            switch client.read(into: UnsafeMutableRawBufferPointer(rebasing: scratch[0..<room])) {
            case .bytes(let n):
                sniffed.append(contentsOf: UnsafeRawBufferPointer(rebasing: scratch[0..<n]))
            case .wantRead, .wantWrite:
                break reading
            case .eof:
                // A client may close its side right after a complete request (a half-close):
                // what came before the EOF is parsed; the relay sees the EOF again and passes
                // it on.
                ended = true
                break reading
            case .failed(let why):
                worker.logger.notice("\(logPrefix): \(why)")
                close()
                return
            }
        }
        if !sniffed.isEmpty { parseRequest() }
        if ended, phase == .awaitingRequest {
            if !sniffed.isEmpty {
                worker.logger.notice("\(logPrefix): closed after \(sniffed.count) bytes, before a complete first request")
            }
            close()
        }
    }

    private func parseRequest() {
        if protocolUndecided {
            if !HTTP2Sniffer.couldBePrefaceArray(sniffed) {
                protocolUndecided = false
            } else if sniffed.count >= H2.preface.count {
                protocolUndecided = false
                proto = .h2
                h2Sniffer = HTTP2Sniffer(cap: listener.maxRequestHeadBytes)
            } else {
                return
            }
        }
        switch proto {
        case .http1:
            let parser = HTTP1HeadParser(cap: listener.maxRequestHeadBytes)
            let result = sniffed.withUnsafeBytes { parser.parse($0) }
            switch result {
            case .needMore: return
            case .done(let info, let headLength):
                request = info
                exchange.headLength = headLength
                routeRequest()
            case .error(let e):
                outcome = "bad_request:\(e.metricLabel)"
                worker.metrics.update(listener.name) { $0.sniffErrors[e.metricLabel, default: 0] += 1 }
                worker.logger.notice("\(logPrefix): \(e); closed")
                if case .headTooLarge = e {
                    sendAnswer(ErrorAnswers.http1(status: 431, message: "\(e)"))
                } else {
                    sendAnswer(ErrorAnswers.http1(status: 400, message: "\(e)"))
                }
            }
        case .h2:
            guard var sniffer = h2Sniffer else { return }
            let result = sniffed.withUnsafeBytes { sniffer.parse($0) }
            h2Sniffer = sniffer
            var early: [UInt8] = []
            if sniffer.prefaceReceived && !sentSettings {
                // Who speaks first: gRPC clients send nothing after their preface until they
                // have the server's SETTINGS, so edgemux sends its own (empty) SETTINGS now.
                sentSettings = true
                early += H2.emptySettings
            }
            if sniffer.sawClientSettings && !sentSettingsAck {
                // And a client may wait for the ACK of its own SETTINGS before its first
                // request (RFC 9113 section 3.4): edgemux acknowledges them itself.
                sentSettingsAck = true
                early += H2.settingsAck
            }
            if !early.isEmpty { writeToClientNow(early) }
            switch result {
            case .needMore: return
            case .done(let info, let replayEnd, let droppedAck):
                request = info
                var replay = sniffed
                var tail: [UInt8] = []
                if replayEnd < replay.count {
                    tail = Array(replay[replayEnd...])
                    replay.removeSubrange(replayEnd...)
                }
                if let r = droppedAck {
                    replay.removeSubrange(r)
                } else {
                    ackFilter = SettingsAckFilter()
                }
                sniffed = replay
                if !tail.isEmpty { appendFiltered(tail) }
                routeRequest()
            case .error(let e):
                outcome = "bad_request:\(e.metricLabel)"
                worker.metrics.update(listener.name) { $0.sniffErrors[e.metricLabel, default: 0] += 1 }
                worker.logger.notice("\(logPrefix): \(e); closed")
                let code: ErrorAnswers.H2Error
                switch e {
                case .frameTooLarge, .frameSizeError: code = .frameSizeError
                case .flowControlError: code = .flowControlError
                case .badHeaderBlock: code = .compressionError
                default: code = .protocolError
                }
                sendAnswer(ErrorAnswers.goaway(lastStream: 0, error: code, debug: "\(e)"))
            }
        }
    }

    /// Appends bytes that follow the first header block to the replay, through the ACK filter.
    private func appendFiltered(_ bytes: [UInt8]) {
        guard var filter = ackFilter else {
            sniffed += bytes
            return
        }
        var copy = bytes
        let n = copy.withUnsafeMutableBytes { filter.filter($0, count: $0.count) }
        sniffed += copy[0..<n]
        ackFilter = filter.done ? nil : filter
    }

    /// Writes a few bytes of edgemux's own to the client before the relay starts; what the
    /// socket does not take waits in the client direction's pending chunk.
    private func writeToClientNow(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { buf in
            // A broken client shows on its next read; what it did not take waits here.
            let offset = client.writeAvailable(from: buf).written
            if offset < buf.count {
                let chunk = clientPending ?? worker.pool.take()
                chunk.append(UnsafeRawBufferPointer(rebasing: buf[offset...]))
                clientPending = chunk
            }
        }
    }

    // MARK: routing

    private func routeRequest() {
        guard PathNormalizer.hasValidEscapes(request.path) else {
            outcome = "bad_request:path_encoding"
            worker.metrics.update(listener.name) { $0.sniffErrors["path_encoding", default: 0] += 1 }
            worker.logger.notice("\(logPrefix): invalid percent-encoding in the path \(request.path.prefix(200)); answered 400")
            answerError(status: 400, message: "invalid percent-encoding in the request path")
            return
        }
        guard let router = snapshot.routers[listener.name], let route = router.select(protocol: proto, sni: serverName, request: request) else {
            outcome = "no_route"
            worker.metrics.update(listener.name) { $0.noRoute += 1 }
            worker.logger.notice("\(logPrefix): no route for \(proto.rawValue) \(request.method) \(request.path) host '\(request.host)' content-type '\(request.contentType)'")
            answerError(status: 404, message: "no route matches this request")
            return
        }
        self.route = route
        worker.logger.debug("\(logPrefix): \(proto.rawValue) \(request.method) \(request.path) host '\(request.host)' sni '\(serverName ?? "")' -> route '\(route.name)' (\(route.mode.rawValue))")
        if route.mode == .request, proto == .h2 {
            // From here every request of the connection is routed on its own.
            handOverToHTTP2(replay: sniffed, acked: sentSettingsAck)
            return
        }
        if route.mode == .request, proto == .http1, request.upgrade.isEmpty {
            handOverToHTTP1()
            return
        }
        guard let backend = snapshot.config.backends[route.backend], let endpoints = backend.endpoints[proto], !endpoints.isEmpty else {
            worker.logger.error("\(logPrefix): route '\(route.name)' has no \(proto.rawValue) endpoint in backend '\(route.backend)'")
            answerError(status: 502, message: "backend '\(route.backend)' cannot serve \(proto.rawValue)")
            return
        }
        worker.metrics.update(listener.name) { $0.routed[route.name, default: 0] += 1 }
        backendConfig = backend
        plan = worker.balancer(for: backend.name).plan(endpoints, protocol: proto, now: loop.now)
        attempt = 0
        phase = .awaitingBackend
        loop.cancel(timer)
        timer = nil
        if proto == .http1, backend.proto != .h2c, backend.pool.maxIdle > 0,
           HTTP1Exchange.eligible(request, headLength: exchange.headLength, buffered: sniffed.count) {
            exchange.pooled = true
            exchange.backendHead = HTTP1Exchange.backendHead(sniffed)
            // A kept connection to any endpoint of the plan, in the plan's order.
            for (i, endpoint) in plan.enumerated() {
                if let kept = worker.upstreams.take(backend: backend, endpoint: endpoint, client: proxiedClient(for: backend), for: self) {
                    attempt = i + 1
                    currentEndpoint = endpoint
                    self.backend = kept
                    backendConnected = true
                    exchange.reusedConnection = true
                    startExchange()
                    return
                }
            }
        }
        connectNext()
    }

    // MARK: connecting to a backend

    /// Whom a PROXY header to a backend names: the client, and the address it connected to
    /// (the balancer's header's, else this socket's own; one getsockname, the first time).
    private var proxiedClient: ProxiedClient {
        if let known = proxiedCache { return known }
        let made = ProxiedClient(source: peer, destination: headerDestination ?? Posix.localAddress(client.fd) ?? peer)
        proxiedCache = made
        return made
    }

    /// `proxiedClient` when `backend` takes a PROXY header, else nil.
    private func proxiedClient(for backend: BackendConfig) -> ProxiedClient? {
        backend.proxyProtocol == .none ? nil : proxiedClient
    }

    /// What request mode's server connections carry for their requests' backends: nil unless
    /// some backend of this config takes a PROXY header.
    private var proxiedForRequests: ProxiedClient? { snapshot.sendsProxyHeaders ? proxiedClient : nil }

    private func connectNext() {
        guard let backendConfig else { return }
        while attempt < plan.count {
            let endpoint = plan[attempt]
            attempt += 1
            currentEndpoint = endpoint
            backendConnected = false
            exchange.dial = BackendDial(alpn: proto, proxied: proxiedClient(for: backendConfig))
            do {
                // TCP keepalive (first probe after 2 h by default) matters only where no idle
                // timeout closes the connection sooner: long-lived routes such as gRPC.
                let keepalive = route.map { $0.idleTimeoutMillis == 0 || $0.idleTimeoutMillis >= 7_200_000 } ?? true
                connectStartedAt = loop.now
                backend = try Transport.connecting(to: endpoint.address, keepalive: keepalive, loop: loop, handler: self)
                worker.metrics.update { $0.backendConnections[backendConfig.name, default: 0] += 1 }
                armTimer(backendConfig.connectTimeoutMillis)
                return
            } catch {
                noteEndpointFailure(endpoint, "\(error)")
            }
        }
        allEndpointsFailed()
    }

    private func backendProgress(events: UInt32) {
        guard let backend, let cfg = backendConfig else { return }
        let progress = exchange.dial.advance(backend, events: events, backend: cfg, snapshot: snapshot)
        backendConnected = exchange.dial.connected
        switch progress {
        case .pending: return
        case .failed(let why):
            connectFailed(why)
            return
        case .ready: break
        }
        if let e = currentEndpoint {
            worker.recordConnect(backend: cfg.name, endpoint: e, since: connectStartedAt)
            worker.logger.debug("\(logPrefix): connected to backend '\(cfg.name)' endpoint \(e)")
        }
        if exchangeStorage?.pooled == true { startExchange() } else { startRelay() }
    }

    private func noteEndpointFailure(_ endpoint: Endpoint, _ why: String) {
        exchange.failures.append("\(endpoint) (\(why))")  // in place: the forwarding property would copy
        worker.recordConnectFailure(backend: backendConfig?.name ?? "?", endpoint: endpoint, why: why)
        let next = attempt < plan.count ? "; trying the next endpoint" : ""
        worker.logger.warning("\(logPrefix): backend '\(backendConfig?.name ?? "?")' endpoint \(endpoint): \(why)\(next)")
    }

    private func connectFailed(_ why: String) {
        loop.cancel(timer)
        timer = nil
        backend?.close(on: loop)
        backend = nil
        if let e = currentEndpoint { noteEndpointFailure(e, why) }
        connectNext()
    }

    private func allEndpointsFailed() {
        let name = backendConfig?.name ?? "?"
        outcome = "backend_unavailable"
        worker.metrics.update { $0.backendUnavailable[name, default: 0] += 1 }
        worker.logger.error("\(logPrefix): backend '\(name)' unavailable for route '\(route?.name ?? "?")': tried \(failures.joined(separator: ", "))")
        answerError(status: 502, message: "backend '\(name)' is unavailable")
    }

    /// Ends the connection with an HTTP answer in the client's protocol.
    private func answerError(status: Int, message: String) {
        if rawKind != nil {
            close()  // raw bytes: no HTTP answer (the log line said why)
            return
        }
        if proto == .h2, let stream = h2Sniffer?.headersStream, stream != 0 {
            if request.contentType.lowercased().hasPrefix("application/grpc") {
                sendAnswer(ErrorAnswers.grpc(stream: stream, status: status, message: message))
            } else {
                sendAnswer(ErrorAnswers.h2(stream: stream, status: status, message: message))
            }
        } else {
            sendAnswer(ErrorAnswers.http1(status: status, message: message))
        }
    }

    // MARK: handing over to request mode

    /// edgemux's HTTP/2 server takes the connection: `replay` is what the client sent so far
    /// (its preface, SETTINGS, frames, the first HEADERS), the ACK filter goes with it if the
    /// client's ACK of edgemux's SETTINGS has not come yet, and `acked` says edgemux already
    /// acknowledged the client's first SETTINGS. This object is done afterwards: the server owns
    /// the socket, the accounting and the logs.
    private func handOverToHTTP2(replay: [UInt8], acked: Bool) {
        loop.cancel(timer)
        timer = nil
        let server = HTTP2ServerConnection(worker: worker, snapshot: snapshot, listener: listener, transport: client, peer: peer, proxied: proxiedForRequests)
        loop.rebind(fd: client.fd, to: server)
        let pending = clientPending
        clientPending = nil
        phase = .closed
        server.start(replay: replay, inputFilter: sentSettings ? ackFilter : nil, acknowledgedSettings: acked, pendingOutput: pending)
        if let pending { worker.pool.give(pending) }
    }

    /// edgemux's HTTP/1.1 server takes the connection with what was read so far (the first
    /// request head, and what followed it).
    private func handOverToHTTP1() {
        loop.cancel(timer)
        timer = nil
        let server = HTTP1ServerConnection(worker: worker, snapshot: snapshot, listener: listener, transport: client, peer: peer, proxied: proxiedForRequests)
        loop.rebind(fd: client.fd, to: server)
        phase = .closed
        let replay = sniffed
        sniffed = []
        server.start(replay: replay)
    }

    // MARK: relaying

    private func startRelay() {
        guard let backend else { return }
        phase = .relaying
        let replay = sniffed
        sniffed = []
        let pending = clientPending
        clientPending = nil
        relay = Relay(client: client, backend: backend, loop: loop, pool: worker.pool, replay: replay, filter: ackFilter,
                      clientFilter: sentSettingsAck ? SettingsAckFilter() : nil, pendingToClient: pending) { [unowned self] end in
            self.relayEnded(end)
        }
        ackFilter = nil
        // Until the backend's first byte edgemux can still answer for it: a backend that
        // accepts and never speaks gets the client a 504 (gRPC: UNAVAILABLE, retried) after the
        // route's response_timeout, or 30 s where it has none (gRPC routes: any HTTP/2 server
        // sends its SETTINGS at once).
        relayStartedAt = loop.now
        let idle = route?.idleTimeoutMillis ?? 0
        if rawKind != nil {
            // Raw bytes: no answer edgemux could give; the client's own timeouts apply.
            if idle > 0 { armTimer(idle) }
        } else {
            let wait = (route?.responseTimeoutMillis ?? 0) > 0 ? route!.responseTimeoutMillis : Self.relayFirstByteMillis
            firstByteDeadline = loop.now + wait
            armTimer(idle > 0 ? min(idle, wait) : wait)
        }
        relay?.pumpAll()
    }

    /// How long a relayed connection waits for the backend's first byte on a route without a
    /// response_timeout.
    static let relayFirstByteMillis: Int64 = 30_000

    // MARK: one request over a kept backend connection

    private func startExchange() {
        guard let backend else { return }
        phase = .exchanging
        sniffed = []
        exchange.lastActivity = loop.now
        exchange.http1 = HTTP1Exchange(client: client, backend: backend, requestHead: exchange.backendHead, method: request.method,
                                       pool: worker.pool, maxResponseHead: BufferPool.chunkSize)
        armTimer(route?.idleTimeoutMillis ?? 0)
        pumpExchange()
    }

    private func pumpExchange() {
        guard let x = exchange.http1 else { return }
        let before = x.bytesToClient
        let progress = x.pump()
        if x.bytesToClient != before { exchange.lastActivity = loop.now }
        switch progress {
        case .working:
            return
        case .finished(let reusable):
            endExchange(x)
            outcome = "completed"
            if let b = backend, let cfg = backendConfig, let e = currentEndpoint, reusable, b.isIdle(scratch: worker.pool.scratch) {
                backend = nil
                worker.upstreams.give(b, backend: cfg, endpoint: e, client: proxiedClient(for: cfg))
            }
            // The client asked for one request and has sent nothing since (no EPOLLIN after the
            // read that emptied its socket): close_notify and close at once, as nginx does when
            // no more input can be expected. Anything else gets the lingering close.
            if !client.readable, !client.hasBufferedOutput {
                client.shutdownWrite()
                close()
            } else {
                sendAnswer([])
            }
        case .failed(let side, let why, let responseStarted):
            endExchange(x)
            let name = backendConfig?.name ?? "?"
            if side == "backend", !responseStarted, exchange.reusedConnection {
                // The backend closed the kept connection as the request went out: send it again
                // on a new connection (the method is idempotent, and nothing was answered).
                worker.metrics.update { $0.upstreamRetries += 1 }
                worker.logger.debug("\(logPrefix): kept connection to '\(name)' failed (\(why)); retrying on a new one")
                backend?.close(on: loop)
                backend = nil
                exchange.reusedConnection = false
                attempt -= 1
                phase = .awaitingBackend
                connectNext()
                return
            }
            outcome = "\(side)_error"
            worker.metrics.update(listener.name) { $0.closedWithError[side, default: 0] += 1 }
            if side == "backend" { worker.metrics.update { $0.badResponses[name, default: 0] += 1 } }
            worker.logger.notice("\(logPrefix): \(side) side failed during the exchange with backend '\(name)': \(why)")
            if side == "backend", !responseStarted {
                answerError(status: 502, message: "backend '\(name)' failed: \(why)")
            } else {
                close()
            }
        }
    }

    /// Keeps what the access log needs of a finished exchange and frees its buffers.
    private func endExchange(_ x: HTTP1Exchange) {
        exchange.bytesToClient = x.bytesToClient
        exchange.status = x.status
        x.release()
        exchange.http1 = nil
    }

    private func relayEnded(_ end: Relay.End) {
        switch end {
        case .completed:
            outcome = "completed"
        case .failed(let side, let why):
            outcome = "\(side)_error"
            worker.metrics.update(listener.name) { $0.closedWithError[side, default: 0] += 1 }
            worker.logger.info("\(logPrefix): \(side) side failed during relay on route '\(route?.name ?? "?")': \(why)")
        }
        close()
    }

    // MARK: answering and closing

    /// Sends `bytes` as edgemux's own final answer, then half-closes and lingers.
    private func sendAnswer(_ bytes: [UInt8]) {
        backend?.close(on: loop)
        backend = nil
        // Anything queued before (edgemux's SETTINGS) goes first.
        var all: [UInt8] = []
        if let p = clientPending {
            all = Array(p.readable)
            worker.pool.give(p)
            clientPending = nil
        }
        finalAnswer = FinalAnswer(all + bytes)
        phase = .flushingAnswer
        armTimer(5_000)
        continueAnswer()
    }

    var lingering: Bool { phase == .lingering }
    func startLingering() { phase = .lingering }

    /// Closes both sides at once (no close_notify: either both directions already ended, or
    /// something failed).
    func close() {
        guard phase != .closed else { return }
        endHandshakeCount()
        phase = .closed
        loop.cancel(timer)
        timer = nil
        if let p = clientPending { worker.pool.give(p) }
        clientPending = nil
        relay?.release()
        exchangeStorage?.http1?.release()
        backend?.close(on: loop)
        backend = nil
        client.close(on: loop)
        worker.releasePrivateUpstreams(of: proxiedCache)
        let inBytes = bytesFromClient
        let outBytes = bytesToClient
        let passthrough = passthroughKey
        worker.metrics.update(listener.name) {
            $0.bytesIn += inBytes
            $0.bytesOut += outBytes
            if let passthrough {
                $0.passthrough[passthrough, default: PassthroughTotals()].bytesFromClient += inBytes
                $0.passthrough[passthrough, default: PassthroughTotals()].bytesToClient += outBytes
                $0.passthroughActive -= 1
            }
        }
        if let log = snapshot.accessLog { writeAccessLog(log) }
        worker.finished(self)
    }
}

extension ProxyConnection {
    /// Bytes received from the client (after TLS), for the access log and the metrics.
    var bytesFromClient: Int { relay?.bytesFromClient ?? exchangeStorage?.bytesFromClient ?? 0 }
    /// Bytes sent to the client (before TLS).
    var bytesToClient: Int { relay?.bytesToClient ?? exchangeStorage?.bytesToClient ?? 0 }

    func writeAccessLog(_ log: AccessLog) {
        let ms = Int(loop.now - startedAt)
        let opt: (String?) -> AccessLog.JSONValue = { $0.map { .string($0) } ?? .null }
        log.write([
            ("time", .string(AccessLogClock.timestamp())),
            ("listener", .string(listener.name)),
            ("client", .string(peer.description)),
            ("sni", opt(serverName)),
            ("protocol", .string(rawKind?.rawValue ?? proto.rawValue)),
            ("method", opt(request.method.isEmpty ? nil : request.method)),
            ("path", opt(request.path.isEmpty ? nil : request.path)),
            ("host", opt(request.host.isEmpty ? nil : request.host)),
            ("route", opt(route?.name)),
            ("backend", opt(backendConfig?.name)),
            ("endpoint", opt(backendConnected ? currentEndpoint?.text : nil)),
            ("status", exchangeStorage.map { $0.status > 0 ? .int($0.status) : .null } ?? .null),
            ("backend_reused", .bool(exchangeStorage?.reusedConnection ?? false)),
            ("bytes_from_client", .int(bytesFromClient)),
            ("bytes_to_client", .int(bytesToClient)),
            ("duration_ms", .int(ms)),
            ("outcome", .string(outcome)),
        ])
    }
}

/// Wall-clock timestamps for the access log (RFC 3339, UTC, milliseconds).
enum AccessLogClock {
    static func timestamp() -> String {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        var t = ts.tv_sec
        var tmv = tm()
        gmtime_r(&t, &tmv)
        let ms = Int(ts.tv_nsec / 1_000_000)
        func p(_ v: Int32, _ w: Int = 2) -> String {
            let s = String(v)
            return String(repeating: "0", count: max(0, w - s.count)) + s
        }
        let msText = String(ms)
        return "\(p(tmv.tm_year + 1900, 4))-\(p(tmv.tm_mon + 1))-\(p(tmv.tm_mday))T\(p(tmv.tm_hour)):\(p(tmv.tm_min)):\(p(tmv.tm_sec)).\(String(repeating: "0", count: 3 - msText.count) + msText)Z"
    }
}

extension HTTP2Sniffer {
    static func couldBePrefaceArray(_ bytes: [UInt8]) -> Bool {
        bytes.withUnsafeBytes { couldBePreface($0) }
    }
}
