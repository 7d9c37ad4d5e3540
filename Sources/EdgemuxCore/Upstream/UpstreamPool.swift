import CEdgemux
import Glibc

/// A worker's idle backend connections, kept after an HTTP/1.1 exchange so that the next one
/// skips the connect (and the backend TLS handshake). Keyed by backend and endpoint (and, for a
/// backend that takes a PROXY header, the client it named: such a connection serves that client
/// only); a backend of an older config snapshot never shares with the new one. Each idle connection stays
/// registered with the loop: any event on it (the backend closing it, or stray bytes) ends it,
/// and so does its idle timeout. Taking is LIFO: the most recently used connection is the one
/// least likely to have been closed by the backend's own keep-alive timeout.
final class UpstreamPool {
    struct Key: Hashable {
        let backend: ObjectIdentifier
        let endpoint: Endpoint
        /// The client a PROXY header on the connection named (nil: the backend takes none).
        let client: ProxiedClient?

        init(backend: BackendConfig, endpoint: Endpoint, client: ProxiedClient?) {
            self.backend = ObjectIdentifier(backend)
            self.endpoint = endpoint
            self.client = backend.proxyProtocol == .none ? nil : client
        }
    }

    /// One idle connection, owned by the pool while it waits.
    final class Idle: EventHandler {
        let transport: Transport
        let key: Key
        /// Keeps the backend's config alive, so its identity in `key` is not reused meanwhile.
        let backend: BackendConfig
        unowned let pool: UpstreamPool
        var timer: TimerHandle?

        init(transport: Transport, key: Key, backend: BackendConfig, pool: UpstreamPool) {
            self.transport = transport
            self.key = key
            self.backend = backend
            self.pool = pool
        }

        override func handleEvent(fd: Int32, events: UInt32) {
            // An idle HTTP/1.1 connection has nothing to say: readable means closed or broken.
            if events & (EPOLLIN.rawValue | EPOLLRDHUP.rawValue | EPOLLHUP.rawValue | EPOLLERR.rawValue) != 0 {
                pool.discard(self)
            }
        }

        override func timerFired() {
            timer = nil
            pool.discard(self)
        }
    }

    let loop: EventLoop
    let metrics: WorkerMetrics
    /// Mutated in place (never copied out and stored back): taking and keeping allocate nothing.
    private var shared: [Key: [Idle]] = [:]
    /// Connections that named a client in their PROXY header: apart from `shared`, so that the
    /// sweep of emptied lists never walks one entry per client; they go with their client.
    private var owned: [Key: [Idle]] = [:]
    /// The keys in `owned` by the client they name: they close with its connection
    /// (`release(client:)`), not an idle timeout later.
    private var privateKeys: [ProxiedClient: Set<Key>] = [:]

    init(loop: EventLoop, metrics: WorkerMetrics) {
        self.loop = loop
        self.metrics = metrics
    }

    /// An idle connection to `endpoint` of `backend`, handed to `handler`; nil when none waits.
    func take(backend: BackendConfig, endpoint: Endpoint, client: ProxiedClient?, for handler: EventHandler) -> Transport? {
        let key = Key(backend: backend, endpoint: endpoint, client: client)
        // An emptied list stays (with its capacity): the exchange usually gives the connection
        // back moments later, and re-creating the list would allocate every time.
        guard let entry = key.client == nil ? shared[key]?.popLast() : owned[key]?.popLast() else { return nil }
        metrics.update { $0.upstreamReused += 1; $0.upstreamIdle -= 1 }
        loop.cancel(entry.timer)
        entry.timer = nil
        loop.rebind(fd: entry.transport.fd, to: handler)
        return entry.transport
    }

    /// Keeps `transport` (registered with the loop, at a message boundary, nothing unread) for
    /// the next exchange, or closes it when the backend's pool is full or pooling is off.
    func give(_ transport: Transport, backend: BackendConfig, endpoint: Endpoint, client: ProxiedClient?) {
        let key = Key(backend: backend, endpoint: endpoint, client: client)
        let kept = (key.client == nil ? shared[key]?.count : owned[key]?.count) ?? 0
        guard backend.pool.maxIdle > 0, kept < backend.pool.maxIdle, !transport.hangupSeen else {
            transport.close(on: loop)
            return
        }
        let entry = Idle(transport: transport, key: key, backend: backend, pool: self)
        loop.rebind(fd: transport.fd, to: entry)
        entry.timer = loop.schedule(afterMillis: backend.pool.idleTimeoutMillis, for: entry)
        if let client = key.client {
            owned[key, default: []].append(entry)
            privateKeys[client, default: []].insert(key)
        } else {
            if shared[key] == nil, shared.count >= UpstreamPool.keysBeforeSweep {
                // Lists emptied by `take` outlive their backend after a reload: drop them now and then.
                shared = shared.filter { !$0.value.isEmpty }
            }
            shared[key, default: []].append(entry)
        }
        metrics.update { $0.upstreamIdle += 1 }
    }

    /// The client connection a PROXY header named has closed: the idle connections that speak
    /// for it close too (no other client may use them).
    func release(client: ProxiedClient) {
        guard let keys = privateKeys.removeValue(forKey: client) else { return }
        var closed = 0
        for key in keys {
            guard let list = owned.removeValue(forKey: key) else { continue }
            for entry in list { close(entry) }
            closed += list.count
        }
        if closed > 0 { metrics.update { $0.upstreamIdle -= closed } }
    }

    /// How many backend/endpoint lists may exist before the empty ones are swept.
    static let keysBeforeSweep = 256

    private func discard(_ entry: Idle) {
        let key = entry.key
        if key.client == nil {
            guard let i = shared[key]?.firstIndex(where: { $0 === entry }) else { return }
            shared[key]?.remove(at: i)
            if shared[key]?.isEmpty == true { shared[key] = nil }
        } else {
            guard let i = owned[key]?.firstIndex(where: { $0 === entry }) else { return }
            owned[key]?.remove(at: i)
        }
        metrics.update { $0.upstreamIdle -= 1 }
        close(entry)
    }

    private func close(_ entry: Idle) {
        loop.cancel(entry.timer)
        entry.timer = nil
        entry.transport.close(on: loop)
    }

    /// Closes every idle connection (drain, shutdown).
    func closeAll() {
        let count = shared.values.reduce(0) { $0 + $1.count } + owned.values.reduce(0) { $0 + $1.count }
        for list in shared.values { for entry in list { close(entry) } }
        for list in owned.values { for entry in list { close(entry) } }
        shared = [:]
        owned = [:]
        privateKeys = [:]
        metrics.update { $0.upstreamIdle -= count }
    }
}
