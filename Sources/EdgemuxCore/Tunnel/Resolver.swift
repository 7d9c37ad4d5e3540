import CEdgemux
import Foundation
import Glibc

/// Resolves host names off the event loops: getaddrinfo blocks, so it runs on the resolver's own
/// thread, and each answer goes back to the loop that asked, through that loop's queue. Answers
/// are cached briefly (30 s, failures 5 s; getaddrinfo does not tell the records' TTL).
public final class Resolver: Sendable {
    /// A name's addresses, or why it has none.
    public enum Answer: Sendable {
        case addresses([SocketAddress])
        case failed(String)
    }

    struct Request {
        let name: String
        let port: UInt16
        let deliver: @Sendable (Answer) -> Void
    }

    struct State {
        var queue: [Request] = []
        var cache: [String: (answer: Answer, expires: Int64)] = [:]
        var started = false
    }

    private let state = Lock(State())
    private let wakeup = DispatchSemaphore(value: 0)
    static let positiveTTL: Int64 = 30_000
    static let negativeTTL: Int64 = 5_000
    static let maxCached = 4096
    static let maxQueued = 1024

    /// The process's resolver (one thread, shared by every worker).
    public static let shared = Resolver()

    /// Resolves `name`, then runs `done` on `loop` (at once when cached, else later).
    func resolve(_ name: String, port: UInt16, on loop: EventLoop, _ done: @escaping @Sendable (Answer) -> Void) {
        let now = Posix.monotonicMillis()
        let cached: Answer? = state.withLock { s in
            if let hit = s.cache[name], hit.expires > now { return hit.answer }
            // A resolver that hangs must not grow the queue without bound.
            if s.queue.count >= Self.maxQueued { return .failed("resolver busy (\(Self.maxQueued) lookups waiting)") }
            s.queue.append(Request(name: name, port: port, deliver: { answer in loop.execute { done(answer) } }))
            if !s.started {
                s.started = true
                let t = Thread { [self] in self.run() }
                t.name = "edgemux-resolver"
                t.start()
            }
            return nil
        }
        if let cached {
            done(Self.withPort(cached, port))
        } else {
            wakeup.signal()
        }
    }

    private func run() {
        while true {
            wakeup.wait()
            while let request = state.withLock({ s -> Request? in s.queue.isEmpty ? nil : s.queue.removeFirst() }) {
                let now = Posix.monotonicMillis()
                let hit: Answer? = state.withLock { s in
                    if let c = s.cache[request.name], c.expires > now { return c.answer }
                    return nil
                }
                let answer = hit ?? lookUp(request.name)
                if hit == nil {
                    let ttl: Int64
                    if case .addresses = answer { ttl = Self.positiveTTL } else { ttl = Self.negativeTTL }
                    state.withLock { s in
                        if s.cache.count >= Self.maxCached { s.cache = s.cache.filter { $0.value.expires > now } }
                        if s.cache.count < Self.maxCached { s.cache[request.name] = (answer, now + ttl) }
                    }
                }
                request.deliver(Self.withPort(answer, request.port))
            }
        }
    }

    private func lookUp(_ name: String) -> Answer {
        switch SocketAddress.lookUp(host: name, port: 0) {
        case .success(let list): return .addresses(list)
        case .failure(let e): return .failed(e.message)
        }
    }

    private static func withPort(_ answer: Answer, _ port: UInt16) -> Answer {
        guard case .addresses(let list) = answer else { return answer }
        return .addresses(list.map { SocketAddress(family: $0.family, ip: $0.ip, port: port) })
    }
}

/// Hands a loop-owned object to a closure that comes back to that same loop.
/// `@unchecked Sendable`: the value is only touched on its owning loop's thread; the closure
/// carrying it merely passes through the resolver thread.
struct LoopBound<T: AnyObject>: @unchecked Sendable {
    weak var value: T?
    init(_ value: T) { self.value = value }
}
