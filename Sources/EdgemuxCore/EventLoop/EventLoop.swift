import CEdgemux
import Glibc

/// Something that owns file descriptors registered with an `EventLoop` (a base class, not a
/// protocol: the loop keeps one plain reference per descriptor, 8 bytes, and dispatches through
/// the class's vtable).
class EventHandler {
    /// Called on the loop's thread with the epoll event bits for `fd`.
    func handleEvent(fd: Int32, events: UInt32) {}
    /// Called on the loop's thread when a timer scheduled with `schedule(afterMillis:for:)` fires.
    func timerFired() {}
}

/// Identifies a scheduled timer so it can be cancelled.
public struct TimerHandle: Hashable, Sendable {
    let id: UInt64
}

/// One epoll reactor, driven by one thread for its whole life.
///
/// Registration is edge-triggered: a handler reads and writes until EAGAIN and remembers which
/// direction is ready, so no epoll_ctl call is needed when it stops reading for backpressure.
///
/// `@unchecked Sendable`: everything but `inbox` is touched only on the loop's own thread (the one
/// that calls `run()`); other threads reach the loop only through `execute(_:)`, which takes the
/// inbox's mutex and wakes the loop with its eventfd.
public final class EventLoop: @unchecked Sendable {
    /// Edge-triggered read, write, peer half-close.
    public static let relayEvents: UInt32 = EPOLLIN.rawValue | EPOLLOUT.rawValue | EPOLLRDHUP.rawValue | EPOLLET.rawValue
    /// Level-triggered read (listeners, eventfd, signalfd).
    public static let readEvents: UInt32 = EPOLLIN.rawValue

    let epfd: Int32
    let wakeFD: Int32
    /// Indexed by descriptor: a lookup per event without hashing, 8 bytes per descriptor.
    private var handlers: [EventHandler?] = []
    /// Indexed by descriptor: how many times it has been registered. An event carries the
    /// generation of its registration (`tag`), so an event that `epoll_wait` returned for a
    /// descriptor that a handler then closed, and an accept or connect of the same batch reused,
    /// is dropped instead of reaching the new owner (a stale EPOLLOUT would read as "connected").
    private var generations: [UInt32] = []
    private var timerHeap: [(deadline: Int64, id: UInt64)] = []
    /// Pending handler timers (a handler's `timerFired()`: no closure context per connection
    /// timer, and 16 bytes a slot, since every connection has one armed).
    private var handlerTimers: [UInt64: EventHandler] = [:]
    /// Pending closure timers (rare: retries, admin housekeeping).
    private var closureTimers: [UInt64: () -> Void] = [:]
    private var nextTimerID: UInt64 = 1
    /// Heap entries whose timer was cancelled. They would otherwise stay until their deadline
    /// (5 minutes for an idle timeout), so under connection churn the heap would hold minutes of
    /// dead entries; past half the heap it is rebuilt from the live ones.
    private var staleTimers = 0
    private var soon: [() -> Void] = []
    /// The other half of a double buffer for `soon`: work queued while the queue runs lands in the
    /// other array, and neither is reallocated from one turn to the next.
    private var soonRunning: [() -> Void] = []
    private let inbox = Lock<[@Sendable () -> Void]>([])
    private var stopping = false
    /// CLOCK_MONOTONIC milliseconds, refreshed after every wait: cheap "now" for timeouts.
    public private(set) var now: Int64
    /// The worker's index (for logs and metrics).
    public let index: Int

    public init(index: Int) throws {
        self.index = index
        epfd = try Posix.epollCreate()
        wakeFD = try Posix.eventFD()
        now = Posix.monotonicMillis()
        try Posix.epollControl(epfd, op: EPOLL_CTL_ADD, fd: wakeFD, events: EventLoop.readEvents, tag: Self.tag(fd: wakeFD, generation: 0))
    }

    /// What an event of `fd` carries: its registration's generation and the descriptor.
    private static func tag(fd: Int32, generation: UInt32) -> UInt64 {
        UInt64(generation) << 32 | UInt64(UInt32(bitPattern: fd))
    }

    deinit {
        Posix.close(wakeFD)
        Posix.close(epfd)
    }

    // MARK: registration

    func register(fd: Int32, events: UInt32, handler: EventHandler) throws {
        let i = Int(fd)
        if i >= handlers.count {
            let more = max(i + 1 - handlers.count, handlers.count)
            handlers.append(contentsOf: repeatElement(nil, count: more))
            generations.append(contentsOf: repeatElement(0, count: more))
        }
        let generation = generations[i] &+ 1
        try Posix.epollControl(epfd, op: EPOLL_CTL_ADD, fd: fd, events: events, tag: Self.tag(fd: fd, generation: generation))
        generations[i] = generation
        handlers[i] = handler
    }

    /// Whether `fd` has a handler.
    func isRegistered(_ fd: Int32) -> Bool { Int(fd) < handlers.count && handlers[Int(fd)] != nil }

    /// Hands a registered `fd` to another handler: the epoll registration stays (no syscall).
    func rebind(fd: Int32, to handler: EventHandler) {
        precondition(Int(fd) < handlers.count && handlers[Int(fd)] != nil, "rebind of an unregistered descriptor")
        handlers[Int(fd)] = handler
    }

    public func modify(fd: Int32, events: UInt32) throws {
        let generation = Int(fd) < generations.count ? generations[Int(fd)] : 0
        try Posix.epollControl(epfd, op: EPOLL_CTL_MOD, fd: fd, events: events, tag: Self.tag(fd: fd, generation: generation))
    }

    /// Forgets `fd` and closes it (closing removes it from the epoll set).
    public func closeDescriptor(_ fd: Int32) {
        if Int(fd) < handlers.count { handlers[Int(fd)] = nil }
        Posix.close(fd)
    }

    /// Forgets `fd` without closing it.
    public func deregister(fd: Int32) {
        guard Int(fd) < handlers.count, handlers[Int(fd)] != nil else { return }
        handlers[Int(fd)] = nil
        _ = try? Posix.epollControl(epfd, op: EPOLL_CTL_DEL, fd: fd, events: 0, tag: 0)
    }

    /// Every registered handler, once each (a copy: closing them while iterating is fine).
    func registeredHandlers() -> [EventHandler] {
        var seen = Set<ObjectIdentifier>()
        return handlers.compactMap { h in
            guard let h, seen.insert(ObjectIdentifier(h)).inserted else { return nil }
            return h
        }
    }

    // MARK: timers

    /// Runs `callback` on this loop after `millis` milliseconds.
    @discardableResult
    public func schedule(afterMillis millis: Int64, _ callback: @escaping () -> Void) -> TimerHandle {
        let handle = add(afterMillis: millis)
        closureTimers[handle.id] = callback
        return handle
    }

    /// Calls `handler.timerFired()` on this loop after `millis` milliseconds (until cancelled).
    func schedule(afterMillis millis: Int64, for handler: EventHandler) -> TimerHandle {
        let handle = add(afterMillis: millis)
        handlerTimers[handle.id] = handler
        return handle
    }

    private func add(afterMillis millis: Int64) -> TimerHandle {
        let id = nextTimerID
        nextTimerID += 1
        heapPush((now + max(0, millis), id))
        return TimerHandle(id: id)
    }

    public func cancel(_ timer: TimerHandle?) {
        guard let timer else { return }
        if handlerTimers.removeValue(forKey: timer.id) != nil || closureTimers.removeValue(forKey: timer.id) != nil {
            staleTimers += 1
            if staleTimers > 1024 && staleTimers * 2 > timerHeap.count { compactTimers() }
        }
    }

    /// Entries in the timer heap, live or cancelled (for tests of its bound).
    var pendingTimerEntries: Int { timerHeap.count }

    /// Drops cancelled entries and rebuilds the heap (O(n), amortized over the cancellations).
    private func compactTimers() {
        var live = timerHeap.filter { handlerTimers[$0.id] != nil || closureTimers[$0.id] != nil }
        live.sort { $0.deadline < $1.deadline }  // a sorted array is a valid min-heap
        timerHeap = live
        staleTimers = 0
    }

    /// Runs `work` on this loop after the current batch of events (same thread only).
    public func runSoon(_ work: @escaping () -> Void) {
        soon.append(work)
    }

    /// Runs `work` on this loop's thread; callable from any thread.
    public func execute(_ work: @escaping @Sendable () -> Void) {
        inbox.withLock { $0.append(work) }
        var one: UInt64 = 1
        _ = Glibc.write(wakeFD, &one, 8)
    }

    /// Asks the loop to return from `run()`; callable from any thread.
    public func stop() {
        execute { [unowned self] in self.stopping = true }
    }

    // MARK: running

    /// Runs until `stop()`.
    public func run() {
        let capacity: Int32 = 256
        let events = UnsafeMutablePointer<epoll_event>.allocate(capacity: Int(capacity))
        defer { events.deallocate() }
        while !stopping {
            let timeout: Int32
            if !soon.isEmpty {
                timeout = 0
            } else if let next = nextDeadline() {
                // From the clock read at the last wake-up, as nginx does: one clock read per
                // wake-up, and a timer fires late by at most the time the last batch took.
                timeout = Int32(clamping: max(0, next - now))
            } else {
                timeout = -1
            }
            let count: Int
            do {
                count = try Posix.epollWait(epfd, events: events, max: capacity, timeoutMillis: timeout)
            } catch {
                fatalError("edgemux: epoll_wait failed: \(error)")
            }
            now = Posix.monotonicMillis()
            for i in 0..<count {
                let ev = events[i]
                let fd = Int32(bitPattern: UInt32(truncatingIfNeeded: ev.data.u64))
                if fd == wakeFD {
                    drainInbox()
                    continue
                }
                let slot = Int(fd)
                guard slot < handlers.count, let h = handlers[slot], generations[slot] == UInt32(truncatingIfNeeded: ev.data.u64 >> 32) else { continue }
                h.handleEvent(fd: fd, events: ev.events)
            }
            runSoonQueue()
            fireTimers()
        }
    }

    private func drainInbox() {
        var value: UInt64 = 0
        _ = Glibc.read(wakeFD, &value, 8)
        let work = inbox.withLock { tasks -> [@Sendable () -> Void] in
            let taken = tasks
            tasks.removeAll(keepingCapacity: true)
            return taken
        }
        for w in work { w() }
    }

    private func runSoonQueue() {
        guard !soon.isEmpty else { return }
        swap(&soon, &soonRunning)
        for w in soonRunning { w() }
        soonRunning.removeAll(keepingCapacity: true)
    }

    private func nextDeadline() -> Int64? {
        while let top = timerHeap.first {
            if handlerTimers[top.id] != nil || closureTimers[top.id] != nil { return top.deadline }
            heapPop()
            staleTimers = max(0, staleTimers - 1)
        }
        return nil
    }

    private func fireTimers() {
        while let top = timerHeap.first, top.deadline <= now {
            heapPop()
            if let h = handlerTimers.removeValue(forKey: top.id) {
                h.timerFired()
            } else if let cb = closureTimers.removeValue(forKey: top.id) {
                cb()
            } else {
                staleTimers = max(0, staleTimers - 1)
            }
        }
    }

    // MARK: min-heap on deadline

    private func heapPush(_ item: (deadline: Int64, id: UInt64)) {
        timerHeap.append(item)
        var i = timerHeap.count - 1
        while i > 0 {
            let parent = (i - 1) / 2
            if timerHeap[parent].deadline <= timerHeap[i].deadline { break }
            timerHeap.swapAt(parent, i)
            i = parent
        }
    }

    private func heapPop() {
        let last = timerHeap.removeLast()
        guard !timerHeap.isEmpty else { return }
        timerHeap[0] = last
        var i = 0
        let n = timerHeap.count
        while true {
            let l = 2 * i + 1, r = l + 1
            var m = i
            if l < n && timerHeap[l].deadline < timerHeap[m].deadline { m = l }
            if r < n && timerHeap[r].deadline < timerHeap[m].deadline { m = r }
            if m == i { break }
            timerHeap.swapAt(i, m)
            i = m
        }
    }
}
