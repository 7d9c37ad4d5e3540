import CEdgemux
import Glibc

/// A worker's idle backend connections, kept after an HTTP/1.1 exchange so that the next one
/// skips the connect (and the backend TLS handshake). Keyed by backend and endpoint; a backend
/// of an older config snapshot never shares with the new one. Each idle connection stays
/// registered with the loop: any event on it (the backend closing it, or stray bytes) ends it,
/// and so does its idle timeout. Taking is LIFO: the most recently used connection is the one
/// least likely to have been closed by the backend's own keep-alive timeout.
final class UpstreamPool {
    struct Key: Hashable {
        let backend: ObjectIdentifier
        let endpoint: Endpoint
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
                pool.discard(self, reason: "closed")
            }
        }

        override func timerFired() {
            timer = nil
            pool.discard(self, reason: "idle")
        }
    }

    let loop: EventLoop
    let metrics: WorkerMetrics
    private var idle: [Key: [Idle]] = [:]
    private(set) var idleCount = 0

    init(loop: EventLoop, metrics: WorkerMetrics) {
        self.loop = loop
        self.metrics = metrics
    }

    /// An idle connection to `endpoint` of `backend`, handed to `handler`; nil when none waits.
    func take(backend: BackendConfig, endpoint: Endpoint, for handler: EventHandler) -> Transport? {
        let key = Key(backend: ObjectIdentifier(backend), endpoint: endpoint)
        guard var list = idle[key], let entry = list.popLast() else { return nil }
        idle[key] = list.isEmpty ? nil : list
        idleCount -= 1
        metrics.update { $0.upstreamReused += 1; $0.upstreamIdle -= 1 }
        loop.cancel(entry.timer)
        entry.timer = nil
        loop.rebind(fd: entry.transport.fd, to: handler)
        return entry.transport
    }

    /// Keeps `transport` (registered with the loop, at a message boundary, nothing unread) for
    /// the next exchange, or closes it when the backend's pool is full or pooling is off.
    func give(_ transport: Transport, backend: BackendConfig, endpoint: Endpoint) {
        let key = Key(backend: ObjectIdentifier(backend), endpoint: endpoint)
        var list = idle[key] ?? []
        guard backend.pool.maxIdle > 0, list.count < backend.pool.maxIdle, !transport.hangupSeen else {
            transport.close(on: loop)
            return
        }
        let entry = Idle(transport: transport, key: key, backend: backend, pool: self)
        loop.rebind(fd: transport.fd, to: entry)
        entry.timer = loop.schedule(afterMillis: backend.pool.idleTimeoutMillis, for: entry)
        list.append(entry)
        idle[key] = list
        idleCount += 1
        metrics.update { $0.upstreamIdle += 1 }
    }

    private func discard(_ entry: Idle, reason: String) {
        guard var list = idle[entry.key], let i = list.firstIndex(where: { $0 === entry }) else { return }
        list.remove(at: i)
        idle[entry.key] = list.isEmpty ? nil : list
        idleCount -= 1
        metrics.update { $0.upstreamIdle -= 1 }
        loop.cancel(entry.timer)
        entry.timer = nil
        entry.transport.close(on: loop)
    }

    /// Closes every idle connection (drain, shutdown).
    func closeAll() {
        for (_, list) in idle {
            for entry in list {
                loop.cancel(entry.timer)
                entry.transport.close(on: loop)
            }
        }
        idle = [:]
        metrics.update { $0.upstreamIdle -= idleCount }
        idleCount = 0
    }
}
