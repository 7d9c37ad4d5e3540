import CEdgemux
import Foundation
import Glibc
import Logging

/// The running proxy: one worker thread per configured worker, each with its own loop and its
/// own SO_REUSEPORT socket per listener; the calling thread handles signals.
///
/// `@unchecked Sendable`: `workers` is written once in `start()` before any other thread can see
/// the server; each `Worker` is touched only on its own loop (through `loop.execute`).
public final class Server: @unchecked Sendable {
    public let logger: Logger
    public let metrics: Metrics
    private(set) var snapshot: Snapshot
    private var workers: [Worker] = []
    private var threads: [Thread] = []
    private let done = DispatchGroup()
    /// Called (on the signal thread) for SIGHUP; returns the new snapshot or throws why not.
    public var reloader: (@Sendable () throws -> Snapshot)?
    private var admin: AdminServer?
    /// Connection counts shared by the workers (set in `start`, sized from the descriptor limit).
    private var limiter = ConnectionLimiter(descriptorLimit: 1024)

    public init(snapshot: Snapshot, logger: Logger) {
        self.snapshot = snapshot
        self.logger = logger
        self.metrics = Metrics(workerCount: snapshot.config.workers)
    }

    /// Binds every listener for every worker (so an address in use fails here, before any thread
    /// starts) and starts the worker threads.
    public func start() throws {
        let descriptors = Server.raiseDescriptorLimit(logger: logger)
        limiter = ConnectionLimiter(descriptorLimit: descriptors)
        let config = snapshot.config
        logger.info("at most \(limiter.processMax(config)) client connections\(config.maxConnections > 0 ? " (max_connections)" : " (from the descriptor limit, \(descriptors))")")
        let fdsPerWorker = try Self.bind(config.listeners.map(\.address), workers: config.workers)
        for w in 0..<config.workers {
            let loop = try EventLoop(index: w)
            var workerLogger = logger
            workerLogger[metadataKey: "worker"] = "\(w)"
            let worker = Worker(loop: loop, snapshot: snapshot, metrics: metrics.workers[w], logger: workerLogger, limiter: limiter)
            for (fd, address) in fdsPerWorker[w] { try worker.adopt(listenerFD: fd, address: address) }
            workers.append(worker)
        }
        if let a = config.admin {
            let first = workers[0]
            admin = try AdminServer(address: a.address, loop: first.loop, metrics: metrics, logger: logger, snapshot: { first.snapshot }) { [weak self] in
                self?.isDraining == false
            }
        }
        for worker in workers {
            done.enter()
            let box = WorkerBox(worker)
            let group = done
            let t = Thread {
                box.worker.loop.run()
                group.leave()
            }
            t.name = "edgemux-worker-\(worker.loop.index)"
            t.stackSize = 1 << 20
            threads.append(t)
            t.start()
        }
        for l in config.listeners { logListener(l, workers: config.workers) }
    }

    private func logListener(_ l: ListenerConfig, workers: Int) {
        if let t = l.tunnel {
            let parent = t.parent.map { ", via parent \($0)" } ?? ""
            logger.info("listener '\(l.name)' on \(l.address) (tunnel \(t.mode.rawValue), \(t.allow.rules.count) allow rules\(parent), \(workers) workers)")
            return
        }
        let mode = l.tls.map { "TLS \($0.alpn.joined(separator: ","))" } ?? "plaintext"
        logger.info("listener '\(l.name)' on \(l.address) (\(mode), \(l.routes.count) routes, \(workers) workers)")
    }

    /// One SO_REUSEPORT socket per address per worker; all or nothing.
    static func bind(_ addresses: [SocketAddress], workers: Int) throws -> [[(Int32, SocketAddress)]] {
        // SO_REUSEPORT would let this process share a port with another one (a second edgemux
        // left running, say) and split the connections between them without a word. A plain
        // bind first tells whether anyone else holds the address.
        for a in addresses {
            let probe = try Posix.socket(domain: a.family, type: Int32(SOCK_STREAM.rawValue))
            defer { Posix.close(probe) }
            try? Posix.setOption(probe, level: SOL_SOCKET, name: SO_REUSEADDR, value: 1)
            do {
                try Posix.bind(probe, address: a)
            } catch let e as IOError where e.errnoCode == EADDRINUSE {
                throw IOError(errnoCode: EADDRINUSE, reason: "bind(\(a)): another process is listening there")
            }
        }
        var fds: [[(Int32, SocketAddress)]] = Array(repeating: [], count: workers)
        do {
            for w in 0..<workers {
                for a in addresses { fds[w].append((try ListenerSocket.bind(a), a)) }
            }
        } catch {
            for list in fds { for (fd, _) in list { Posix.close(fd) } }
            throw error
        }
        return fds
    }

    private var isDraining = false

    /// Handles SIGHUP (reload), SIGTERM and SIGINT (drain, then return) on the calling thread,
    /// and, with `watch`, reloads when the config file or a file it names changes.
    /// Call `Server.prepareSignals()` before anything starts a thread.
    public func runUntilStopped(watch configPath: String? = nil) {
        let sfd: Int32
        do {
            sfd = try Posix.signalFD([SIGHUP, SIGTERM, SIGINT])
        } catch {
            logger.critical("signalfd failed: \(error)")
            return
        }
        var watcher: ConfigWatcher?
        if let configPath {
            do {
                watcher = try ConfigWatcher(files: [configPath] + snapshot.config.referencedFiles)
                logger.info("watching \(configPath) and the files it names for changes")
            } catch {
                logger.error("cannot watch \(configPath): \(error); reload with SIGHUP instead")
            }
        }
        // A burst of file events (an editor's save, a Kubernetes swap) settles before a reload.
        let settleMillis: Int64 = 300
        var changeSeenAt: Int64?
        var fds = [pollfd(fd: sfd, events: Int16(POLLIN), revents: 0)]
        if let watcher { fds.append(pollfd(fd: watcher.fd, events: Int16(POLLIN), revents: 0)) }
        while true {
            var timeout: Int32 = -1
            if let seen = changeSeenAt { timeout = Int32(max(0, seen + settleMillis - Posix.monotonicMillis())) }
            _ = poll(&fds, nfds_t(fds.count), timeout)
            if fds[0].revents & Int16(POLLIN) != 0 {
                var info = signalfd_siginfo()
                if Glibc.read(sfd, &info, MemoryLayout<signalfd_siginfo>.size) == MemoryLayout<signalfd_siginfo>.size {
                    let sig = Int32(info.ssi_signo)
                    if sig == SIGHUP {
                        logger.notice("SIGHUP: reloading")
                        reload()
                    } else {
                        logger.notice("received \(sig == SIGTERM ? "SIGTERM" : "SIGINT"): draining (up to \(DurationText.of(snapshot.config.drainTimeoutMillis)))")
                        drain(signalFD: sfd)
                        return
                    }
                }
            }
            if let watcher, fds.count > 1, fds[1].revents & Int16(POLLIN) != 0, watcher.drainEvents() {
                changeSeenAt = changeSeenAt ?? Posix.monotonicMillis()
            }
            if let seen = changeSeenAt, let watcher, let configPath, Posix.monotonicMillis() - seen >= settleMillis {
                changeSeenAt = nil
                let files = [configPath] + snapshot.config.referencedFiles
                let changed = watcher.changedFiles(files)
                if !changed.isEmpty {
                    logger.notice("change detected in \(changed.joined(separator: ", ")): reloading")
                    reload()
                    let now = [configPath] + snapshot.config.referencedFiles
                    watcher.watch(now)
                    _ = watcher.changedFiles(now)
                }
            }
        }
    }

    /// Raises the soft RLIMIT_NOFILE to the hard limit: every connection costs two descriptors
    /// (four with splice pipes), and the usual soft default of 1024 would cap edgemux at a few
    /// hundred connections.
    /// Returns the soft limit in force afterwards.
    @discardableResult
    static func raiseDescriptorLimit(logger: Logger) -> Int {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return 1024 }
        if limit.rlim_cur < limit.rlim_max {
            let old = limit.rlim_cur
            limit.rlim_cur = limit.rlim_max
            if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 {
                logger.debug("raised the descriptor limit from \(old) to \(limit.rlim_max)")
            } else {
                limit.rlim_cur = old
            }
        }
        return Int(clamping: limit.rlim_cur)
    }

    /// Blocks SIGHUP/SIGTERM/SIGINT for every thread started after this (they are read through
    /// signalfd) and ignores SIGPIPE.
    public static func prepareSignals() {
        Posix.blockSignals([SIGHUP, SIGTERM, SIGINT])
    }

    /// Builds the new snapshot (parse, validate, load every certificate, build every TLS
    /// context), binds added listener addresses, and only then hands the snapshot to the
    /// workers. Unchanged addresses keep their sockets (no connection is refused); removed ones
    /// stop accepting while their connections go on. Any failure keeps the running config.
    private func reload() {
        guard let reloader else {
            logger.notice("reload: no config file to reload")
            return
        }
        do {
            let next = try reloader()
            let old = snapshot
            let oldAddresses = Set(old.config.listeners.map(\.address))
            let newAddresses = Set(next.config.listeners.map(\.address))
            let added = next.config.listeners.map(\.address).filter { !oldAddresses.contains($0) }
            let removed = oldAddresses.subtracting(newAddresses)
            let fds = try Self.bind(added, workers: workers.count)
            if next.config.workers != workers.count {
                logger.warning("reload: workers \(next.config.workers) takes effect at the next restart; keeping \(workers.count)")
            }
            if next.config.admin?.address != old.config.admin?.address {
                logger.warning("reload: a new admin address takes effect at the next restart")
            }
            snapshot = next
            for (i, w) in workers.enumerated() {
                let box = WorkerBox(w)
                let mine = fds[i]
                w.loop.execute {
                    let worker = box.worker
                    worker.snapshot = next
                    worker.closeListeners(at: removed)
                    for (fd, address) in mine {
                        do { try worker.adopt(listenerFD: fd, address: address) } catch {
                            worker.logger.error("cannot start accepting on \(address): \(error)")
                            Posix.close(fd)
                        }
                    }
                }
            }
            for l in next.config.listeners where added.contains(l.address) { logListener(l, workers: workers.count) }
            for a in removed { logger.notice("listener on \(a) removed: no new connections; open ones go on") }
            metrics.recordReload(ok: true, generation: next.generation, detail: "\(next.config.listeners.count) listeners, \(next.config.backends.count) backends\(added.isEmpty ? "" : ", \(added.count) addresses added")\(removed.isEmpty ? "" : ", \(removed.count) removed")")
            logger.notice("reloaded config (generation \(next.generation)): \(next.config.listeners.count) listeners, \(next.config.backends.count) backends")
        } catch {
            metrics.recordReload(ok: false, generation: snapshot.generation, detail: "\(error)")
            logger.error("reload rejected, the running config stays: \(error)")
        }
    }

    /// Stops accepting, waits for open connections up to the drain timeout (a second signal cuts
    /// it short), then stops every loop.
    private func drain(signalFD: Int32) {
        isDraining = true
        for w in workers {
            let box = WorkerBox(w)
            w.loop.execute {
                let worker = box.worker
                for l in worker.listeners { worker.loop.closeDescriptor(l.fd) }
                worker.listeners = []
                worker.upstreams.closeAll()
                // Request-mode clients get GOAWAY / `Connection: close`; idle ones close now.
                worker.startDrain()
                worker.h2Upstreams.closeIdle()
            }
        }
        let deadline = Posix.monotonicMillis() + snapshot.config.drainTimeoutMillis
        var pfd = pollfd(fd: signalFD, events: Int16(POLLIN), revents: 0)
        while Posix.monotonicMillis() < deadline {
            let open = metrics.workers.reduce(0) { $0 + $1.values.withLock { $0.listeners.values.reduce(0) { $0 + $1.active } } }
            if open == 0 { break }
            if poll(&pfd, 1, 100) > 0 {
                logger.notice("second signal: closing \(open) open connections now")
                break
            }
        }
        for w in workers {
            let box = WorkerBox(w)
            w.loop.execute {
                box.worker.closeAllConnections()
                box.worker.upstreams.closeAll()
            }
            w.loop.stop()
        }
        done.wait()
        logger.notice("stopped")
    }
}

/// Carries a worker into its own thread's closure.
/// `@unchecked Sendable`: the worker is used only on its loop's thread once that thread starts.
struct WorkerBox: @unchecked Sendable {
    let worker: Worker
    init(_ worker: Worker) { self.worker = worker }
}
