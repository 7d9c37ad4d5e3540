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

    public init(snapshot: Snapshot, logger: Logger) {
        self.snapshot = snapshot
        self.logger = logger
        self.metrics = Metrics(workerCount: snapshot.config.workers)
    }

    /// Binds every listener for every worker (so an address in use fails here, before any thread
    /// starts) and starts the worker threads.
    public func start() throws {
        Server.raiseDescriptorLimit(logger: logger)
        let config = snapshot.config
        var fdsPerWorker: [[(Int32, String)]] = Array(repeating: [], count: config.workers)
        do {
            for w in 0..<config.workers {
                for l in config.listeners {
                    fdsPerWorker[w].append((try ListenerSocket.bind(l.address), l.name))
                }
            }
        } catch {
            for list in fdsPerWorker { for (fd, _) in list { Posix.close(fd) } }
            throw error
        }
        for w in 0..<config.workers {
            let loop = try EventLoop(index: w)
            var workerLogger = logger
            workerLogger[metadataKey: "worker"] = "\(w)"
            let worker = Worker(loop: loop, snapshot: snapshot, metrics: metrics.workers[w], logger: workerLogger)
            for (fd, name) in fdsPerWorker[w] { try worker.adopt(listenerFD: fd, name: name) }
            workers.append(worker)
        }
        if let a = config.admin {
            admin = try AdminServer(address: a.address, loop: workers[0].loop, metrics: metrics, logger: logger) { [weak self] in
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
        for l in config.listeners {
            logger.info("listener '\(l.name)' on \(l.address) (\(l.tls == nil ? "plaintext" : "TLS \(l.tls!.alpn.joined(separator: ","))"), \(l.routes.count) routes, \(config.workers) workers)")
        }
    }

    private var isDraining = false

    /// Handles SIGHUP (reload), SIGTERM and SIGINT (drain, then return) on the calling thread.
    /// Call `Server.prepareSignals()` before anything starts a thread.
    public func runUntilStopped() {
        let sfd: Int32
        do {
            sfd = try Posix.signalFD([SIGHUP, SIGTERM, SIGINT])
        } catch {
            logger.critical("signalfd failed: \(error)")
            return
        }
        var info = signalfd_siginfo()
        while true {
            let n = Glibc.read(sfd, &info, MemoryLayout<signalfd_siginfo>.size)
            if n != MemoryLayout<signalfd_siginfo>.size { continue }
            let sig = Int32(info.ssi_signo)
            if sig == SIGHUP {
                reload()
                continue
            }
            logger.notice("received \(sig == SIGTERM ? "SIGTERM" : "SIGINT"): draining (up to \(snapshot.config.drainTimeoutMillis) ms)")
            drain(signalFD: sfd)
            return
        }
    }

    /// Raises the soft RLIMIT_NOFILE to the hard limit: every connection costs two descriptors
    /// (four with splice pipes), and the usual soft default of 1024 would cap edgemux at a few
    /// hundred connections.
    static func raiseDescriptorLimit(logger: Logger) {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return }
        if limit.rlim_cur < limit.rlim_max {
            let old = limit.rlim_cur
            limit.rlim_cur = limit.rlim_max
            if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 {
                logger.debug("raised the descriptor limit from \(old) to \(limit.rlim_max)")
            }
        }
    }

    /// Blocks SIGHUP/SIGTERM/SIGINT for every thread started after this (they are read through
    /// signalfd) and ignores SIGPIPE.
    public static func prepareSignals() {
        Posix.blockSignals([SIGHUP, SIGTERM, SIGINT])
    }

    private func reload() {
        guard let reloader else {
            logger.notice("SIGHUP: no config file to reload")
            return
        }
        do {
            let next = try reloader()
            let old = snapshot
            let oldAddresses = Set(old.config.listeners.map(\.address))
            let newAddresses = Set(next.config.listeners.map(\.address))
            if oldAddresses != newAddresses || old.config.workers != next.config.workers {
                throw ConfigError(issues: [ConfigIssue(file: "", line: 0, path: "listeners", message: "changing listen addresses or workers needs a restart in this version")])
            }
            snapshot = next
            for w in workers {
                let box = WorkerBox(w)
                let snap = next
                w.loop.execute { box.worker.snapshot = snap }
            }
            metrics.reloads.withLock { $0.ok += 1 }
            logger.notice("reloaded config (generation \(next.generation))")
        } catch {
            metrics.reloads.withLock { $0.failed += 1 }
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
                worker.draining = true
                for l in worker.listeners { worker.loop.closeDescriptor(l.fd) }
                worker.listeners = []
            }
        }
        let deadline = Posix.monotonicMillis() + snapshot.config.drainTimeoutMillis
        var pfd = pollfd(fd: signalFD, events: Int16(POLLIN), revents: 0)
        while Posix.monotonicMillis() < deadline {
            let open = metrics.workers.reduce(0) { $0 + $1.values.withLock { $0.active } }
            if open == 0 { break }
            if poll(&pfd, 1, 100) > 0 {
                logger.notice("second signal: closing \(open) open connections now")
                break
            }
        }
        for w in workers {
            let box = WorkerBox(w)
            w.loop.execute {
                for c in Array(box.worker.connections.values) { c.close() }
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
