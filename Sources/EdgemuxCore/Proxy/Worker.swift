import CEdgemux
import Glibc
import Logging

/// One event-loop thread: its own listening sockets (SO_REUSEPORT), its connections, its buffers.
final class Worker {
    let loop: EventLoop
    let metrics: WorkerMetrics
    let logger: Logger
    let pool = BufferPool()
    /// The config new connections get; open connections keep the one they started with.
    var snapshot: Snapshot
    var listeners: [ListenerSocket] = []
    var balancers: [String: BackendBalancer] = [:]
    /// Idle HTTP/1.1 backend connections for reuse.
    let upstreams: UpstreamPool
    /// HTTP/2 backend sessions, shared by the requests of every client of this worker.
    private(set) lazy var h2Upstreams = HTTP2UpstreamPool(worker: self)
    /// Requests open per backend endpoint on this worker (least-request balancing).
    private var outstanding: [UpstreamPool.Key: Int] = [:]
    /// The request-mode connections open now (drain and reload reach them through this).
    var servers: [ObjectIdentifier: RequestServer] = [:]
    /// Draining: new requests on open connections are refused and connections close when idle.
    private(set) var draining = false
    /// Client connections open on this worker, and the most since memory was last trimmed.
    private var openConnections = 0
    private var peakSinceTrim = 0
    private var trimScheduled = false
    /// A trim waits this long after a burst has mostly closed (the rest of it closes meanwhile).
    static let trimDelayMillis: Int64 = 5_000

    /// Connection counts shared with the other workers.
    let limiter: ConnectionLimiter
    /// What each open client socket was counted under (to release it when it closes). By
    /// descriptor, not by object: the front door hands a connection to edgemux's HTTP/1.1 or
    /// HTTP/2 server, and the socket's last owner is the one that reports it finished.
    private var admitted: [Int32: (listener: String, client: String?)] = [:]
    private var refusals = RepeatedCondition()

    init(loop: EventLoop, snapshot: Snapshot, metrics: WorkerMetrics, logger: Logger, limiter: ConnectionLimiter) {
        self.limiter = limiter
        self.loop = loop
        self.snapshot = snapshot
        self.metrics = metrics
        self.logger = logger
        self.upstreams = UpstreamPool(loop: loop, metrics: metrics)
    }

    /// The order in which a request tries `endpoints` of `backend`: round robin (healthy first),
    /// or for least-request balancing the better of two random picks first.
    func endpointPlan(backend: BackendConfig, endpoints: [Endpoint], protocol proto: ClientProtocol) -> [Endpoint] {
        let b = balancer(for: backend.name)
        let rr = b.plan(endpoints, protocol: proto, now: loop.now)
        guard backend.balance == .leastRequest, rr.count > 1 else { return rr }
        let healthy = rr.filter { !b.isCoolingDown($0, now: loop.now) }
        guard healthy.count > 1 else { return rr }
        // Two different endpoints at random (the same one twice would waste the choice: with
        // two endpoints, a quarter of the requests would go to the busier one regardless).
        let i = Int.random(in: 0..<healthy.count)
        var j = Int.random(in: 0..<(healthy.count - 1))
        if j >= i { j += 1 }
        let (a, c) = (healthy[i], healthy[j])
        let load = { (e: Endpoint) in self.outstanding[UpstreamPool.Key(backend: backend, endpoint: e, client: nil)] ?? 0 }
        let best = load(a) <= load(c) ? a : c
        return [best] + rr.filter { $0 != best }
    }

    func noteRequestStarted(backend: BackendConfig, endpoint: Endpoint) {
        outstanding[UpstreamPool.Key(backend: backend, endpoint: endpoint, client: nil), default: 0] += 1
    }

    func noteRequestEnded(backend: BackendConfig?, endpoint: Endpoint) {
        guard let backend else { return }
        let key = UpstreamPool.Key(backend: backend, endpoint: endpoint, client: nil)
        guard let n = outstanding[key] else { return }
        if n <= 1 { outstanding[key] = nil } else { outstanding[key] = n - 1 }
    }

    /// SIGTERM: every request-mode connection says goodbye (GOAWAY, `Connection: close`) and
    /// closes once its open requests are done; idle ones close now.
    func startDrain() {
        draining = true
        for s in Array(servers.values) { s.startDrain() }
    }

    /// A reload removed listeners at `addresses`: their request-mode connections drain.
    func drainServers(at addresses: Set<SocketAddress>) {
        for s in Array(servers.values) where addresses.contains(s.listener.address) { s.startDrain() }
    }

    func balancer(for backend: String) -> BackendBalancer {
        if let b = balancers[backend] { return b }
        let b = BackendBalancer()
        balancers[backend] = b
        return b
    }

    func adopt(listenerFD fd: Int32, address: SocketAddress) throws {
        let l = ListenerSocket(fd: fd, address: address, worker: self)
        try loop.register(fd: fd, events: EventLoop.readEvents, handler: l)
        listeners.append(l)
    }

    /// Stops accepting on the listeners whose address is in `addresses` (relayed connections go
    /// on; request-mode connections drain with GOAWAY).
    func closeListeners(at addresses: Set<SocketAddress>) {
        for l in listeners where addresses.contains(l.address) { loop.closeDescriptor(l.fd) }
        listeners.removeAll { addresses.contains($0.address) }
        if !addresses.isEmpty { drainServers(at: addresses) }
    }

    func accepted(fd: Int32, peer: SocketAddress, address: SocketAddress) {
        guard let listener = snapshot.config.listeners.first(where: { $0.address == address }) else {
            Posix.close(fd)
            return
        }
        let client = listener.maxConnectionsPerClient > 0 ? peer.ipString : nil
        if let refusal = limiter.admit(listener, client: client, config: snapshot.config) {
            metrics.update(listener.name) { $0.connectionsRefused[refusal.rawValue, default: 0] += 1 }
            if let n = refusals.occurred(now: loop.now) {
                let limit = refusal == .client ? "max_connections_per_client (\(listener.maxConnectionsPerClient)) for \(peer.ipString)"
                    : refusal == .listener ? "max_connections (\(listener.maxConnections))" : "the process's max_connections (\(limiter.processMax(snapshot.config)))"
                logger.warning("listener '\(listener.name)': a connection over \(limit) closed (\(n) refused since the last such line)")
            }
            Posix.closeWithReset(fd)
            return
        }
        metrics.update(listener.name) { $0.accepted += 1; $0.active += 1 }
        openConnections += 1
        peakSinceTrim = max(peakSinceTrim, openConnections)
        let conn: ClientConnection
        if let tunnel = listener.tunnel {
            conn = TunnelConnection(worker: self, snapshot: snapshot, listener: listener, tunnel: tunnel, fd: fd, peer: peer)
        } else {
            conn = ProxyConnection(worker: self, snapshot: snapshot, listener: listener, fd: fd, peer: peer)
        }
        admitted[fd] = (listener.name, client)
        // From here the loop's descriptor table holds the only reference to the connection: it
        // lives exactly as long as its client socket is registered.
        conn.start()
    }

    /// A connect to `endpoint` of `backend` that started at `since` (loop time) succeeded:
    /// passive health, the connect time, the status page.
    func recordConnect(backend: String, endpoint: Endpoint, since: Int64) {
        balancer(for: backend).markHealthy(endpoint)
        let took = loop.now - since
        let now = Metrics.unixTime()
        metrics.update {
            $0.backendConnectTimes[backend, default: DurationHistogram()].observe(took)
            $0.endpointHealth[EndpointKey(backend: backend, endpoint: endpoint.text), default: EndpointHealth()].lastSuccessAt = now
        }
    }

    /// A connect to `endpoint` of `backend` failed: passive health, the metric, the status page.
    func recordConnectFailure(backend: String, endpoint: Endpoint, why: String) {
        balancer(for: backend).markFailed(endpoint, now: loop.now)
        let now = Metrics.unixTime()
        metrics.update {
            let key = EndpointKey(backend: backend, endpoint: endpoint.text)
            $0.backendConnectFailures[key, default: 0] += 1
            $0.endpointHealth[key, default: EndpointHealth()].failed(at: now, why)
        }
    }

    /// A client connection whose requests went to backends with PROXY headers naming it has
    /// closed: the backend connections and sessions that speak for it close too.
    func releasePrivateUpstreams(of client: ProxiedClient?) {
        guard let client else { return }
        upstreams.release(client: client)
        h2Upstreams.release(client: client)
    }

    /// A connection's last act (called exactly once per connection).
    func finished(_ conn: ClientConnection) {
        if let a = admitted.removeValue(forKey: conn.client.fd) {
            metrics.update(a.listener) { $0.active -= 1 }
            limiter.release(listener: a.listener, client: a.client)
        }
        openConnections -= 1
        // After a burst of connections has closed, glibc keeps the memory they freed (scattered
        // between live blocks, it is not at an arena's top): 147 MiB stayed after 8,000 idle TLS
        // connections closed on a 29 MiB process. malloc_trim gives it back (to 32 MiB).
        if !trimScheduled, peakSinceTrim - openConnections >= max(256, peakSinceTrim / 4) {
            trimScheduled = true
            loop.schedule(afterMillis: Self.trimDelayMillis) { [weak self] in self?.trimMemory() }
        }
    }

    private func trimMemory() {
        trimScheduled = false
        let before = Posix.residentKiB()
        let started = Posix.monotonicMillis()
        Posix.releaseFreeHeapMemory()
        let after = Posix.residentKiB()
        metrics.update { $0.memoryTrims += 1 }
        logger.info("\(peakSinceTrim - openConnections) connections closed since the peak of \(peakSinceTrim): free heap memory returned, resident \(before / 1024) -> \(after / 1024) MiB in \(DurationText.of(Posix.monotonicMillis() - started))")
        peakSinceTrim = openConnections
    }

    /// Closes every open connection at once (the end of a drain).
    func closeAllConnections() {
        for h in loop.registeredHandlers() {
            (h as? ClientConnection)?.close()
        }
    }
}

/// A request-mode client connection (edgemux's HTTP/2 or HTTP/1.1 server).
protocol RequestServer: ClientConnection {
    var listener: ListenerConfig { get }
    /// Say goodbye gracefully and close once the open requests are done.
    func startDrain()
}

/// A client connection owned by a worker: ingress (`ProxyConnection`) or egress (`TunnelConnection`).
/// What both do alike lives in the extension below: one timer at a time, and edgemux's own last
/// words (an error answer) written, half-closed and lingered on.
protocol ClientConnection: EventHandler {
    var loop: EventLoop { get }
    var worker: Worker { get }
    var client: Transport { get }
    /// The connection's one timer (each phase arms its own deadline).
    var timer: TimerHandle? { get set }
    /// edgemux's own answer while it is being written (nil otherwise).
    var finalAnswer: FinalAnswer? { get set }
    /// The answer is written and half-closed: the client's last bytes are being read and dropped.
    var lingering: Bool { get }
    func startLingering()
    func start()
    /// Closes both sides at once.
    func close()
}

extension ClientConnection {
    /// Replaces the connection's timer; 0 (or less) leaves none.
    func armTimer(_ millis: Int64) {
        loop.cancel(timer)
        timer = nil
        guard millis > 0 else { return }
        timer = loop.schedule(afterMillis: millis, for: self)
    }

    /// Writes what the socket takes of the final answer; once it is all out, lingers (for at
    /// most 2 s) until the client closes, then closes.
    func continueAnswer() {
        switch finalAnswer?.advance(client: client, scratch: worker.pool.scratch) {
        case .writing?:
            break
        case .lingering?:
            if !lingering {
                startLingering()
                armTimer(2_000)
            }
        case .finished?, nil:
            close()
        }
    }
}

/// A listening socket of one worker. Accepts in batches so one busy listener cannot starve the
/// loop's other work.
final class ListenerSocket: EventHandler {
    let fd: Int32
    /// The address, which ties this socket to a listener of the current config across reloads.
    let address: SocketAddress
    unowned let worker: Worker
    private var acceptFailures = RepeatedCondition()
    private var limitPauses = RepeatedCondition()

    /// Leaves the loop for 100 ms (level-triggered: a pending connection would report again at once).
    private func pause() {
        worker.loop.deregister(fd: fd)
        worker.loop.schedule(afterMillis: 100) { [weak self] in
            guard let self else { return }
            try? self.worker.loop.register(fd: self.fd, events: EventLoop.readEvents, handler: self)
        }
    }

    init(fd: Int32, address: SocketAddress, worker: Worker) {
        self.fd = fd
        self.address = address
        self.worker = worker
    }

    override func handleEvent(fd: Int32, events: UInt32) {
        for _ in 0..<64 {
            if let listener = worker.snapshot.config.listeners.first(where: { $0.address == address }),
               let full = worker.limiter.hasRoom(listener, config: worker.snapshot.config) {
                // At the limit: stop accepting (connections wait in the backlog) and look again soon.
                worker.metrics.update(listener.name) { $0.acceptPauses[full.rawValue, default: 0] += 1 }
                if let n = limitPauses.occurred(now: worker.loop.now) {
                    let limit = full == .handshakes ? "max_handshakes (\(worker.limiter.maxHandshakes(worker.snapshot.config)) TLS handshakes in progress)"
                        : full == .listener ? "its max_connections" : "the process's max_connections"
                    worker.logger.warning("listener '\(listener.name)' at \(limit): not accepting for now (\(n) pauses since the last such line)")
                }
                pause()
                return
            }
            do {
                switch try Posix.accept(fd) {
                case .processed(let (client, peer)):
                    worker.accepted(fd: client, peer: peer, address: address)
                case .wouldBlock:
                    return
                }
            } catch let e as IOError {
                // EMFILE/ENFILE/ENOBUFS: out of descriptors or memory. Level-triggered, so back
                // off instead of spinning on the same pending connection; one line a minute.
                if let n = acceptFailures.occurred(now: worker.loop.now) {
                    worker.logger.error("accept on \(address) failed: \(e) (\(n) times since the last such line); pausing 100 ms each time")
                }
                pause()
                return
            } catch {
                return
            }
        }
    }

    /// Opens, binds and listens on `address` with SO_REUSEPORT (one socket per worker).
    static func bind(_ address: SocketAddress, backlog: Int32 = 4096) throws -> Int32 {
        let fd = try Posix.socket(domain: address.family, type: Int32(SOCK_STREAM.rawValue))
        do {
            try Posix.setOption(fd, level: SOL_SOCKET, name: SO_REUSEADDR, value: 1)
            try Posix.setOption(fd, level: SOL_SOCKET, name: SO_REUSEPORT, value: 1)
            // Accepted sockets inherit these (Linux): no setsockopt per connection.
            try Posix.setOption(fd, level: Int32(IPPROTO_TCP), name: TCP_NODELAY, value: 1)
            try Posix.setOption(fd, level: SOL_SOCKET, name: SO_KEEPALIVE, value: 1)
            if address.family == AF_INET6 {
                try Posix.setOption(fd, level: Int32(IPPROTO_IPV6), name: IPV6_V6ONLY, value: 1)
            }
            try Posix.bind(fd, address: address)
            try Posix.listen(fd, backlog: backlog)
        } catch {
            Posix.close(fd)
            throw error
        }
        return fd
    }
}
