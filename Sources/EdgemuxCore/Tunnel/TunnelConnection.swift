import CEdgemux
import Glibc
import Logging

/// One egress tunnel: a CONNECT request (or a peeked ClientHello's SNI) names a destination;
/// the allowlist decides; the name is resolved off the loop and every address checked again; a
/// connect (directly, or through a parent CONNECT proxy); then raw bytes both ways. TLS is never
/// terminated here: kubectl's client certificate reaches the API server untouched.
final class TunnelConnection: EventHandler, ClientConnection {
    enum Phase: Equatable {
        /// Waiting for the CONNECT request head, or for a complete ClientHello (sni mode).
        case awaitingRequest
        /// Waiting for the resolver's answer.
        case awaitingResolution
        /// Waiting for a destination (or the parent proxy) to accept the connection.
        case awaitingDestination
        /// Waiting for the parent proxy's answer to our CONNECT.
        case awaitingParent
        case relaying
        /// Writing edgemux's own answer (an error), then half-closing and lingering.
        case answering
        case lingering
        case closed
    }

    unowned let worker: Worker
    let loop: EventLoop
    let snapshot: Snapshot
    let listener: ListenerConfig
    let tunnel: TunnelConfig
    let peer: SocketAddress
    let client: Transport
    var destination: Transport?
    private(set) var phase: Phase = .awaitingRequest
    var buffer: [UInt8] = []
    var target: (host: String, port: UInt16)?
    /// The destination this tunnel counts under on the status page while it is open.
    private var countedDestination: String?
    var candidates: [SocketAddress] = []
    var attempt = 0
    var current: SocketAddress?
    var connected = false
    var lastFailure = ""
    var lastFailureWasTimeout = false
    var parentReply: [UInt8] = []
    var relay: Relay?
    var timer: TimerHandle?
    var finalAnswer: FinalAnswer?
    var outcome = "closed"
    let startedAt: Int64

    init(worker: Worker, snapshot: Snapshot, listener: ListenerConfig, tunnel: TunnelConfig, fd: Int32, peer: SocketAddress) {
        self.worker = worker
        self.loop = worker.loop
        self.snapshot = snapshot
        self.listener = listener
        self.tunnel = tunnel
        self.peer = peer
        self.client = Transport(fd: fd)
        self.startedAt = worker.loop.now
    }

    var logPrefix: String { "tunnel client \(peer) on '\(listener.name)'" }
    var targetText: String { target.map { "\($0.host.contains(":") ? "[\($0.host)]" : $0.host):\($0.port)" } ?? "?" }

    func start() {
        let fd = client.fd  // TCP_NODELAY and SO_KEEPALIVE come from the listening socket
        do {
            try loop.register(fd: fd, events: EventLoop.relayEvents, handler: self)
        } catch {
            Posix.close(fd)
            phase = .closed
            worker.finished(self)
            return
        }
        client.readable = true
        armTimer(listener.requestTimeoutMillis)
        readRequest()
    }

    override func handleEvent(fd: Int32, events: UInt32) {
        if fd == client.fd {
            client.note(events: events)
        } else if let d = destination, fd == d.fd {
            d.note(events: events)
        } else {
            return
        }
        switch phase {
        case .awaitingRequest: readRequest()
        case .awaitingResolution: break
        case .awaitingDestination: if fd == destination?.fd { destinationProgress(events) }
        case .awaitingParent: if fd == destination?.fd { readParentReply() }
        case .relaying: relay?.pumpAll()
        case .answering, .lingering: continueAnswer()
        case .closed: break
        }
    }

    // MARK: timers

    override func timerFired() {
        timer = nil
        switch phase {
        case .awaitingRequest:
            worker.metrics.update(listener.name) { $0.timeouts["tunnel_request", default: 0] += 1 }
            worker.logger.notice("\(logPrefix): no complete \(tunnel.mode == .connect ? "CONNECT request" : "ClientHello") within \(DurationText.of(listener.requestTimeoutMillis)); closed")
            outcome = "request_timeout"
            if tunnel.mode == .connect && !buffer.isEmpty {
                sendAnswer(ErrorAnswers.http1(status: 408, message: "request not received in time"))
            } else {
                close()
            }
        case .awaitingResolution:
            fail(504, "resolving \(target?.host ?? "?") took too long")
        case .awaitingDestination, .awaitingParent:
            lastFailureWasTimeout = true
            destinationFailed("timed out after \(DurationText.of(tunnel.connectTimeoutMillis))")
        case .relaying:
            guard tunnel.idleTimeoutMillis > 0, let relay else { return }
            let idle = loop.now - relay.lastActivity
            if idle >= tunnel.idleTimeoutMillis {
                outcome = "idle_timeout"
                worker.metrics.update(listener.name) { $0.timeouts["idle", default: 0] += 1 }
                close()
            } else {
                armTimer(tunnel.idleTimeoutMillis - idle)
            }
        case .answering, .lingering:
            close()
        case .closed:
            break
        }
    }

    // MARK: the request

    private func readRequest() {
        switch tunnel.mode {
        case .connect: readConnect()
        case .sni: peekClientHello()
        }
    }

    private func readConnect() {
        let scratch = worker.pool.scratch
        let cap = listener.maxRequestHeadBytes
        while client.readable && buffer.count <= cap {
            let room = min(scratch.count, cap + 1 - buffer.count)
            switch client.read(into: UnsafeMutableRawBufferPointer(rebasing: scratch[0..<room])) {
            case .bytes(let n): buffer.append(contentsOf: UnsafeRawBufferPointer(rebasing: scratch[0..<n]))
            case .wantRead, .wantWrite: break
            case .eof, .failed:
                close()
                return
            }
        }
        guard !buffer.isEmpty else { return }
        let result = buffer.withUnsafeBytes { ConnectRequestParser.parse($0, cap: cap) }
        switch result {
        case .needMore:
            return
        case .error(let status, let reason):
            worker.metrics.update(listener.name) { $0.sniffErrors[status == 405 ? "tunnel_method" : "tunnel_malformed", default: 0] += 1 }
            fail(status, reason)
        case .done(let request):
            buffer.removeFirst(request.headLength)
            target = (request.host, request.port)
            if let tokens = tunnel.basicTokens {
                let presented = request.proxyAuthorization.flatMap { value -> String? in
                    let parts = value.split(separator: " ", maxSplits: 1)
                    guard parts.count == 2, parts[0].lowercased() == "basic" else { return nil }
                    return String(parts[1]).trimmedSpaces()
                }
                guard let presented, tokens.contains(presented) else {
                    worker.metrics.update(listener.name) { $0.tunnelDenied["auth", default: 0] += 1 }
                    outcome = "auth_required"
                    worker.logger.notice("\(logPrefix): CONNECT \(targetText) without valid proxy credentials")
                    sendAnswer(Array("HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"edgemux\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".utf8))
                    return
                }
            }
            decide()
        }
    }

    private func peekClientHello() {
        let cap = ClientHelloParser.cap
        let scratch = UnsafeMutableRawBufferPointer(rebasing: worker.pool.scratch[0..<cap])
        let n: Int
        switch client.peek(into: scratch) {
        case .bytes(let got): n = got
        case .nothingYet: return
        case .closed:
            close()
            return
        }
        switch ClientHelloParser.parse(UnsafeRawBufferPointer(rebasing: scratch[0..<n])) {
        case .needMore:
            if n >= cap { closeSNI("no complete ClientHello within \(cap) bytes", metric: "sni_too_large") }
        case .error(let why):
            closeSNI(why, metric: "sni_malformed")
        case .done(nil):
            closeSNI("ClientHello without SNI", metric: "sni_missing")
        case .done(let name?):
            guard let dest = tunnel.destination(forSNI: name) else {
                closeSNI("SNI '\(name)' is not in the map", metric: "sni_unknown")
                return
            }
            target = dest
            decide()
        }
    }

    private func closeSNI(_ why: String, metric: String) {
        worker.metrics.update(listener.name) { $0.tunnelDenied[metric, default: 0] += 1 }
        worker.logger.notice("\(logPrefix): \(why); closed")
        outcome = metric
        close()
    }

    // MARK: the allowlist and the resolver

    private func decide() {
        guard let (host, port) = target else { return }
        switch tunnel.allow.check(host: host, port: port) {
        case .denied(let why):
            deny(why)
        case .allowedAddress(let a):
            candidates = [a]
            connectNext()
        case .allowedName:
            if tunnel.parent != nil {
                // The parent resolves; edgemux has checked the name and the port.
                connectNext()
                return
            }
            phase = .awaitingResolution
            let me = LoopBound(self)
            Resolver.shared.resolve(host, port: port, on: loop) { answer in
                me.value?.resolved(answer)
            }
        }
    }

    private func resolved(_ answer: Resolver.Answer) {
        guard phase == .awaitingResolution else { return }
        switch answer {
        case .failed(let why):
            fail(502, "cannot resolve \(target?.host ?? "?"): \(why)")
        case .addresses(let list):
            let allowed = list.filter { tunnel.allow.allows($0) }
            if allowed.isEmpty {
                deny("\(target?.host ?? "?") resolves only to addresses outside the allowed networks (\(list.map(\.ipString).joined(separator: ", ")))")
                return
            }
            candidates = allowed
            connectNext()
        }
    }

    private func deny(_ why: String) {
        worker.metrics.update(listener.name) { $0.tunnelDenied["allowlist", default: 0] += 1 }
        outcome = "denied"
        if tunnel.mode == .connect {
            fail(403, "denied: \(why)", metricDone: true)
        } else {
            worker.logger.notice("\(logPrefix): \(targetText) denied: \(why); closed")
            close()
        }
    }

    // MARK: connecting

    private func connectNext() {
        let addresses: [SocketAddress] = tunnel.parent.map { [$0.address] } ?? candidates
        phase = .awaitingDestination
        while attempt < addresses.count {
            let address = addresses[attempt]
            attempt += 1
            current = address
            connected = false
            do {
                destination = try Transport.connecting(to: address, keepalive: true, loop: loop, handler: self)
                armTimer(tunnel.connectTimeoutMillis)
                return
            } catch let e as IOError {
                lastFailure = String(cString: strerror(e.errnoCode))
                lastFailureWasTimeout = false
                let reason = Self.connectFailureReason(lastFailure, timedOut: false)
                worker.metrics.update(listener.name) { $0.tunnelConnectFailures[reason, default: 0] += 1 }
                worker.logger.warning("\(logPrefix): \(address) for \(targetText): \(lastFailure)")
            } catch {
                lastFailure = "\(error)"
            }
        }
        let via = tunnel.parent.map { " via parent proxy \($0)" } ?? ""
        fail(lastFailureWasTimeout ? 504 : 502, "cannot reach \(targetText)\(via): \(lastFailure)")
    }

    private func destinationProgress(_ events: UInt32) {
        guard let d = destination, !connected else { return }
        switch d.connectProgress(events: events) {
        case .pending: return
        case .failed(let why):
            lastFailureWasTimeout = false
            destinationFailed(why)
            return
        case .connected: break
        }
        connected = true
        if tunnel.parent != nil {
            sendParentConnect()
        } else {
            established(extra: [])
        }
    }

    /// A bounded label for a failed connect.
    static func connectFailureReason(_ why: String, timedOut: Bool) -> String {
        if timedOut { return "timeout" }
        let w = why.lowercased()
        if w.contains("parent proxy") { return "parent" }
        if w.contains("refused") { return "refused" }
        if w.contains("unreachable") || w.contains("no route") { return "unreachable" }
        return "error"
    }

    private func destinationFailed(_ why: String) {
        loop.cancel(timer)
        timer = nil
        destination?.close(on: loop)
        destination = nil
        lastFailure = why
        // By reason, not by destination: a client must not make a metric series per address.
        let reason = Self.connectFailureReason(why, timedOut: lastFailureWasTimeout)
        worker.metrics.update(listener.name) { $0.tunnelConnectFailures[reason, default: 0] += 1 }
        worker.logger.warning("\(logPrefix): \(current?.description ?? "?") for \(targetText): \(why)")
        if phase == .awaitingParent {
            fail(502, "parent proxy \(tunnel.parent?.text ?? "?") failed for \(targetText): \(why)")
            return
        }
        connectNext()
    }

    // MARK: the parent proxy

    private func sendParentConnect() {
        guard let d = destination else { return }
        phase = .awaitingParent
        var head = "CONNECT \(targetText) HTTP/1.1\r\nHost: \(targetText)\r\n"
        if let auth = tunnel.parentAuthorization { head += "Proxy-Authorization: \(auth)\r\n" }
        head += "\r\n"
        let bytes = Array(head.utf8)
        // A fresh connection's send buffer takes a few hundred bytes at once.
        let step = bytes.withUnsafeBytes { d.write(from: $0) }
        guard case .bytes(let n) = step, n == bytes.count else {
            destinationFailed("could not send CONNECT to the parent proxy")
            return
        }
        d.readable = true
        readParentReply()
    }

    private func readParentReply() {
        guard let d = destination else { return }
        let scratch = worker.pool.scratch
        while d.readable && parentReply.count <= 8192 {
            switch d.read(into: UnsafeMutableRawBufferPointer(rebasing: scratch[0..<4096])) {
            case .bytes(let n): parentReply.append(contentsOf: UnsafeRawBufferPointer(rebasing: scratch[0..<n]))
            case .wantRead, .wantWrite: break
            case .eof, .failed:
                destinationFailed("the parent proxy closed before answering")
                return
            }
        }
        guard let end = findHeadEnd(parentReply) else {
            if parentReply.count > 8192 { destinationFailed("the parent proxy's answer exceeds 8 KiB") }
            return
        }
        let statusLine = String(decoding: parentReply.prefix { $0 != 13 }, as: UTF8.self)
        let parts = statusLine.split(separator: " ")
        guard parts.count >= 2, parts[0].hasPrefix("HTTP/1."), let code = Int(parts[1]), (200..<300).contains(code) else {
            fail(502, "parent proxy \(tunnel.parent?.text ?? "?") refused CONNECT \(targetText): \(statusLine.prefix(120))")
            return
        }
        established(extra: Array(parentReply[end...]))
    }

    private func findHeadEnd(_ b: [UInt8]) -> Int? {
        guard b.count >= 4 else { return nil }
        for i in 0...(b.count - 4) where b[i] == 13 && b[i + 1] == 10 && b[i + 2] == 13 && b[i + 3] == 10 { return i + 4 }
        return nil
    }

    // MARK: relaying

    private func established(extra: [UInt8]) {
        guard let d = destination else { return }
        phase = .relaying
        let destinationText = targetText
        countedDestination = destinationText
        worker.metrics.update(listener.name) {
            $0.routed["tunnel:\(listener.name)", default: 0] += 1
            $0.tunnelsOpen[destinationText, default: 0] += 1
        }
        var toClient: Chunk?
        var firstBytes: [UInt8] = []
        if tunnel.mode == .connect { firstBytes = Array("HTTP/1.1 200 Connection Established\r\n\r\n".utf8) }
        firstBytes += extra
        if !firstBytes.isEmpty {
            let chunk = worker.pool.take()
            firstBytes.withUnsafeBytes { chunk.append($0) }
            toClient = chunk
        }
        let replay = buffer
        buffer = []
        relay = Relay(client: client, backend: d, loop: loop, pool: worker.pool, replay: replay, filter: nil, pendingToClient: toClient) { [unowned self] end in
            switch end {
            case .completed:
                self.outcome = "completed"
            case .failed(let side, let why):
                self.outcome = "\(side == "backend" ? "destination" : side)_error"
                self.worker.metrics.update(listener.name) { $0.closedWithError[side == "backend" ? "destination" : side, default: 0] += 1 }
                self.worker.logger.info("\(self.logPrefix): tunnel to \(self.targetText) ended: \(side == "backend" ? "destination" : side) \(why)")
            }
            self.close()
        }
        client.readable = true
        armTimer(tunnel.idleTimeoutMillis)
        relay?.pumpAll()
    }

    // MARK: answering and closing

    /// Ends the tunnel request with an HTTP status (connect mode) or a plain close (sni mode).
    private func fail(_ status: Int, _ why: String, metricDone: Bool = false) {
        if !metricDone {
            outcome = "\(status)"
            worker.metrics.update(listener.name) { $0.tunnelFailures["\(status)", default: 0] += 1 }
        }
        worker.logger.notice("\(logPrefix): \(tunnel.mode == .connect ? "CONNECT " : "")\(targetText): \(status) \(why)")
        if tunnel.mode == .connect {
            sendAnswer(ErrorAnswers.http1(status: status, message: why))
        } else {
            close()
        }
    }

    private func sendAnswer(_ bytes: [UInt8]) {
        destination?.close(on: loop)
        destination = nil
        finalAnswer = FinalAnswer(bytes)
        phase = .answering
        armTimer(5_000)
        continueAnswer()
    }

    var lingering: Bool { phase == .lingering }
    func startLingering() { phase = .lingering }

    func close() {
        guard phase != .closed else { return }
        phase = .closed
        loop.cancel(timer)
        timer = nil
        relay?.release()
        destination?.close(on: loop)
        destination = nil
        client.close(on: loop)
        let inBytes = relay?.bytesFromClient ?? 0, outBytes = relay?.bytesToClient ?? 0
        let counted = countedDestination
        countedDestination = nil
        worker.metrics.update(listener.name) {
            if let counted {
                $0.tunnelsOpen[counted, default: 0] -= 1
                if $0.tunnelsOpen[counted] == 0 { $0.tunnelsOpen[counted] = nil }
            }
            $0.bytesIn += inBytes
            $0.bytesOut += outBytes
        }
        if let log = snapshot.accessLog {
            let opt: (String?) -> AccessLog.JSONValue = { $0.map { .string($0) } ?? .null }
            log.write([
                ("time", .string(AccessLogClock.timestamp())),
                ("listener", .string(listener.name)),
                ("client", .string(peer.description)),
                ("mode", .string(tunnel.mode.rawValue)),
                ("destination", opt(target == nil ? nil : targetText)),
                ("endpoint", opt(connected ? current?.description : nil)),
                ("bytes_from_client", .int(inBytes)),
                ("bytes_to_client", .int(outBytes)),
                ("duration_ms", .int(Int(loop.now - startedAt))),
                ("outcome", .string(outcome)),
            ])
        }
        worker.finished(self)
    }
}
