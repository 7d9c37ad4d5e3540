import CEdgemux
import Glibc
import Logging

/// The admin listener: `GET /` (the status page), `/metrics` (Prometheus text), `/healthz`
/// (the process runs), `/readyz` (accepting; 503 while draining). Plain HTTP/1.1, one request per connection,
/// served on worker 0's loop.
final class AdminServer: EventHandler {
    let fd: Int32
    let loop: EventLoop
    let metrics: Metrics
    let logger: Logger
    let ready: () -> Bool
    /// The snapshot worker 0 serves (read on worker 0's loop, where this server runs).
    let currentSnapshot: () -> Snapshot
    /// Counts taken every `sampleMillis`, oldest first: the status page's rates.
    private var samples: [StatusPage.Sample] = []
    static let sampleMillis: Int64 = 5_000
    /// One scrape: its request so far, then its reply, and its own deadline.
    private struct Client {
        var request: [UInt8] = []
        var reply: [UInt8]?
        var offset = 0
        var timer: TimerHandle?
    }
    private var clients: [Int32: Client] = [:]
    /// Accept failures (out of descriptors) while the listener backs off.
    private var acceptFailures = RepeatedCondition()
    /// How long a scrape may take, from accept to the last byte of the reply.
    static let clientTimeoutMillis: Int64 = 5_000

    init(address: SocketAddress, loop: EventLoop, metrics: Metrics, logger: Logger, snapshot: @escaping () -> Snapshot, ready: @escaping () -> Bool) throws {
        fd = try ListenerSocket.bind(address, backlog: 64)
        self.loop = loop
        self.metrics = metrics
        self.logger = logger
        self.ready = ready
        self.currentSnapshot = snapshot
        super.init()
        let box = AdminBox(self)
        loop.execute {
            box.admin.takeSample()
            do {
                try box.admin.loop.register(fd: box.admin.fd, events: EventLoop.readEvents, handler: box.admin)
            } catch {
                box.admin.logger.error("admin listener: \(error)")
            }
        }
        logger.info("admin listener on \(address): / (status) /metrics /healthz /readyz")
    }

    override func handleEvent(fd: Int32, events: UInt32) {
        if fd == self.fd {
            acceptAll()
            return
        }
        guard var client = clients[fd] else { return }
        if client.reply != nil {
            flush(fd)
            return
        }
        var buf = client.request
        var chunk = [UInt8](repeating: 0, count: 4096)
        let r = chunk.withUnsafeMutableBytes { try? Posix.read(fd, into: $0) }
        switch r {
        case .processed(let n)? where n > 0:
            buf += chunk[0..<n]
        case .wouldBlock?:
            return
        default:
            finish(fd)
            return
        }
        client.request = buf
        clients[fd] = client
        if buf.count > 8192 { finish(fd); return }
        guard let end = findCRLFCRLF(buf) else { return }
        let head = String(decoding: buf[0..<end], as: UTF8.self)
        let line = head.split(separator: "\r\n").first.map(String.init) ?? ""
        let parts = line.split(separator: " ")
        let path = parts.count > 1 ? String(parts[1]) : ""
        var status = 200
        var body = ""
        var type = "text/plain; charset=utf-8"
        switch (parts.first.map(String.init) ?? "", path) {
        case ("GET", "/"):
            let totals = metrics.totals()
            let now = StatusPage.Sample(at: loop.now, totals)
            // Rates over the oldest kept sample at least a second old (5-15 s back).
            let earlier = samples.first { now.at - $0.at >= 1000 }
            body = StatusPage(snapshot: currentSnapshot(), totals: totals, config: metrics.config.withLock { $0 }, now: now, earlier: earlier,
                              startedAt: metrics.startedAt, draining: !ready()).render()
            type = "text/html; charset=utf-8"
        case ("GET", "/metrics"):
            body = metrics.render()
            type = "text/plain; version=0.0.4; charset=utf-8"
        case ("GET", "/healthz"):
            body = "ok\n"
        case ("GET", "/readyz"):
            if ready() { body = "ready\n" } else { status = 503; body = "draining\n" }
        default:
            status = 404
            body = "not found: try /, /metrics, /healthz, /readyz\n"
        }
        let reason = status == 200 ? "OK" : status == 503 ? "Service Unavailable" : "Not Found"
        let reply = "HTTP/1.1 \(status) \(reason)\r\nContent-Type: \(type)\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n\(body)"
        client.reply = Array(reply.utf8)
        clients[fd] = client
        flush(fd)
    }

    /// Keeps the counts of the last 15 s for the status page's rates.
    private func takeSample() {
        samples.append(StatusPage.Sample(at: loop.now, metrics.totals()))
        if samples.count > 3 { samples.removeFirst(samples.count - 3) }
        loop.schedule(afterMillis: Self.sampleMillis) { [weak self] in self?.takeSample() }
    }

    /// Accepts what is pending. Out of descriptors (EMFILE, ENFILE) the pending connection stays
    /// queued and the level-triggered socket would report it again at once: the listener leaves
    /// the loop for 100 ms instead, as the traffic listeners do, and says so once a minute.
    private func acceptAll() {
        while true {
            let accepted: IOResult<(Int32, SocketAddress)>
            do {
                accepted = try Posix.accept(fd)
            } catch {
                if let n = acceptFailures.occurred(now: loop.now) {
                    logger.error("admin listener: accept failed: \(error) (\(n) times since the last such line); pausing 100 ms each time")
                }
                loop.deregister(fd: fd)
                loop.schedule(afterMillis: 100) { [weak self] in
                    guard let self else { return }
                    try? self.loop.register(fd: self.fd, events: EventLoop.readEvents, handler: self)
                }
                return
            }
            guard case .processed(let (c, _)) = accepted else { return }
            if clients.count > 64 {
                Posix.close(c)
                continue
            }
            var client = Client()
            // The timer belongs to this client: a later connection that gets the same
            // descriptor number has a timer of its own, and this one is cancelled with it.
            client.timer = loop.schedule(afterMillis: Self.clientTimeoutMillis) { [weak self] in self?.timedOut(c) }
            clients[c] = client
            try? loop.register(fd: c, events: EventLoop.readEvents, handler: self)
        }
    }

    private func timedOut(_ c: Int32) {
        clients[c]?.timer = nil
        finish(c)
    }

    private func flush(_ c: Int32) {
        guard var r = clients[c], let bytes = r.reply else { return }
        while r.offset < bytes.count {
            let step = bytes.withUnsafeBytes { try? Posix.write(c, from: UnsafeRawBufferPointer(rebasing: $0[r.offset...])) }
            guard case .processed(let n)? = step else { break }
            r.offset += n
        }
        clients[c] = r
        if r.offset >= bytes.count {
            finish(c)
        } else {
            // Wait for room in the socket (level-triggered, so only now, never while idle).
            try? loop.modify(fd: c, events: EPOLLOUT.rawValue)
        }
    }

    private func finish(_ c: Int32) {
        guard let client = clients.removeValue(forKey: c) else { return }
        loop.cancel(client.timer)
        Posix.shutdownWrite(c)
        loop.closeDescriptor(c)
    }

    private func findCRLFCRLF(_ b: [UInt8]) -> Int? {
        guard b.count >= 4 else { return nil }
        for i in 0...(b.count - 4) where b[i] == 13 && b[i + 1] == 10 && b[i + 2] == 13 && b[i + 3] == 10 { return i + 4 }
        return nil
    }
}

/// `@unchecked Sendable`: carries the admin server to its loop's thread, the only one using it.
struct AdminBox: @unchecked Sendable {
    let admin: AdminServer
    init(_ admin: AdminServer) { self.admin = admin }
}
