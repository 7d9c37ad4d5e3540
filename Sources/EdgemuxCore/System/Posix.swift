import CEdgemux
import Glibc

/// A failed system call: which call, and the errno it left.
public struct IOError: Error, CustomStringConvertible, Sendable {
    /// The errno value.
    public let errnoCode: Int32
    /// The system call (and what it was for).
    public let reason: String

    public init(errnoCode: Int32, reason: String) {
        self.errnoCode = errnoCode
        self.reason = reason
    }

    public var description: String {
        "\(reason): \(String(cString: strerror(errnoCode))) (errno \(errnoCode))"
    }
}

/// The outcome of a non-blocking I/O call.
public enum IOResult<T> {
    case processed(T)
    case wouldBlock
}

/// Every system call edgemux makes, wrapped once: retries EINTR, turns EAGAIN into
/// `.wouldBlock`, throws `IOError` for real failures. This is the only place that reads errno
/// (besides the TLS engine, which reads it through OpenSSL's SSL_ERROR_SYSCALL).
public enum Posix {
    @inline(never)
    static func check(_ reason: @autoclosure () -> String, _ body: () -> Int) throws -> Int {
        while true {
            let r = body()
            if r >= 0 { return r }
            let e = errno
            if e == EINTR { continue }
            precondition(e != EBADF && e != EFAULT, "edgemux bug: \(reason()) failed with errno \(e)")
            throw IOError(errnoCode: e, reason: reason())
        }
    }

    @inline(never)
    static func checkNonBlocking(_ reason: @autoclosure () -> String, _ body: () -> Int) throws -> IOResult<Int> {
        while true {
            let r = body()
            if r >= 0 { return .processed(r) }
            let e = errno
            if e == EINTR { continue }
            if e == EAGAIN || e == EWOULDBLOCK { return .wouldBlock }
            precondition(e != EBADF && e != EFAULT, "edgemux bug: \(reason()) failed with errno \(e)")
            throw IOError(errnoCode: e, reason: reason())
        }
    }

    // MARK: sockets

    public static func socket(domain: Int32, type: Int32) throws -> Int32 {
        Int32(try check("socket") { Int(Glibc.socket(domain, type | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)) })
    }

    public static func setOption(_ fd: Int32, level: Int32, name: Int32, value: Int32) throws {
        var v = value
        _ = try check("setsockopt(\(level), \(name))") {
            Int(setsockopt(fd, level, name, &v, socklen_t(MemoryLayout<Int32>.size)))
        }
    }

    public static func bind(_ fd: Int32, address: SocketAddress) throws {
        _ = try address.withSockAddr { sa, len in
            try check("bind(\(address))") { Int(Glibc.bind(fd, sa, len)) }
        }
    }

    public static func listen(_ fd: Int32, backlog: Int32) throws {
        _ = try check("listen") { Int(Glibc.listen(fd, backlog)) }
    }

    /// accept4 with SOCK_NONBLOCK | SOCK_CLOEXEC. Connection-level errors that the kernel reports
    /// at accept time (ECONNABORTED and friends) count as `.wouldBlock` for this round.
    public static func accept(_ fd: Int32) throws -> IOResult<(Int32, SocketAddress)> {
        var storage = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        while true {
            let r = withUnsafeMutablePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    CEdgemux_accept4(fd, $0, &len, Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue))
                }
            }
            if r >= 0 { return .processed((r, SocketAddress(storage: storage))) }
            let e = errno
            switch e {
            case EINTR: continue
            case EAGAIN, EWOULDBLOCK, ECONNABORTED, EPROTO, EPERM: return .wouldBlock
            default: throw IOError(errnoCode: e, reason: "accept4")
            }
        }
    }

    /// Starts a non-blocking connect; `.wouldBlock` means EINPROGRESS (wait for writability).
    public static func connect(_ fd: Int32, to address: SocketAddress) throws -> IOResult<Void> {
        while true {
            let r = address.withSockAddr { sa, len in Glibc.connect(fd, sa, len) }
            if r == 0 { return .processed(()) }
            let e = errno
            if e == EINTR { continue }
            if e == EINPROGRESS || e == EAGAIN { return .wouldBlock }
            throw IOError(errnoCode: e, reason: "connect(\(address))")
        }
    }

    /// The pending error of a socket (SO_ERROR): 0 once a non-blocking connect succeeded.
    public static func socketError(_ fd: Int32) -> Int32 {
        var value: Int32 = 0
        var len = socklen_t(MemoryLayout<Int32>.size)
        if getsockopt(fd, SOL_SOCKET, SO_ERROR, &value, &len) != 0 { return errno }
        return value
    }

    /// Reads from a socket: recv(2), which skips the file layer that read(2) goes through.
    public static func read(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer) throws -> IOResult<Int> {
        try checkNonBlocking("recv") { Glibc.recv(fd, buffer.baseAddress, buffer.count, 0) }
    }

    public static func write(_ fd: Int32, from buffer: UnsafeRawBufferPointer) throws -> IOResult<Int> {
        try checkNonBlocking("write") { Glibc.send(fd, buffer.baseAddress, buffer.count, Int32(MSG_NOSIGNAL)) }
    }

    /// Closes with a reset (SO_LINGER 0): for a connection refused at accept, no FIN_WAIT or
    /// TIME_WAIT left behind by a client that opens them in a loop.
    public static func closeWithReset(_ fd: Int32) {
        var l = linger(l_onoff: 1, l_linger: 0)
        _ = setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, socklen_t(MemoryLayout<linger>.size))
        close(fd)
    }

    public static func shutdownWrite(_ fd: Int32) {
        _ = Glibc.shutdown(fd, Int32(SHUT_WR))
    }

    public static func close(_ fd: Int32) {
        // close(2) must not be retried on EINTR on Linux: the descriptor is gone either way.
        _ = Glibc.close(fd)
    }

    /// splice(2) between a socket and a pipe, non-blocking; 0 means end of stream.
    public static func splice(from: Int32, to: Int32, count: Int) throws -> IOResult<Int> {
        try checkNonBlocking("splice") { CEdgemux_splice(from, to, count, CEdgemux_splice_relay_flags()) }
    }

    public static func pipe() throws -> (read: Int32, write: Int32) {
        var fds: [Int32] = [0, 0]
        _ = try check("pipe2") { Int(CEdgemux_pipe2(&fds, O_NONBLOCK | O_CLOEXEC)) }
        return (fds[0], fds[1])
    }

    // MARK: epoll, eventfd, signalfd

    public static func epollCreate() throws -> Int32 {
        Int32(try check("epoll_create1") { Int(epoll_create1(Int32(EPOLL_CLOEXEC))) })
    }

    /// `tag` comes back in `data.u64` of each event for `fd`.
    public static func epollControl(_ epfd: Int32, op: Int32, fd: Int32, events: UInt32, tag: UInt64) throws {
        var ev = epoll_event()
        ev.events = events
        ev.data.u64 = tag
        _ = try check("epoll_ctl") { Int(epoll_ctl(epfd, op, fd, &ev)) }
    }

    public static func epollWait(_ epfd: Int32, events: UnsafeMutablePointer<epoll_event>, max: Int32, timeoutMillis: Int32) throws -> Int {
        try check("epoll_wait") { Int(epoll_wait(epfd, events, max, timeoutMillis)) }
    }

    public static func eventFD() throws -> Int32 {
        Int32(try check("eventfd") { Int(eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC))) })
    }

    public static func signalFD(_ signals: [Int32]) throws -> Int32 {
        var set = sigset_t()
        sigemptyset(&set)
        for s in signals { sigaddset(&set, s) }
        return Int32(try check("signalfd") { Int(signalfd(-1, &set, Int32(SFD_CLOEXEC))) })
    }

    /// Blocks `signals` for this thread and every thread it starts afterwards (they reach the
    /// process through signalfd instead), and ignores SIGPIPE.
    public static func blockSignals(_ signals: [Int32]) {
        var set = sigset_t()
        sigemptyset(&set)
        for s in signals {
            sigaddset(&set, s)
            // A parent may have started us with these ignored (ignored dispositions survive
            // exec); signalfd only sees signals whose disposition is not SIG_IGN.
            signal(s, SIG_DFL)
        }
        pthread_sigmask(SIG_BLOCK, &set, nil)
        signal(SIGPIPE, SIG_IGN)
    }

    /// Gives the free memory of every malloc arena back to the kernel (glibc's malloc_trim):
    /// after a burst, freed memory between live blocks is otherwise kept by the process.
    public static func releaseFreeHeapMemory() { _ = CEdgemux_malloc_trim() }

    /// The process's resident set in KiB (the second field of /proc/self/statm), 0 if unknown.
    public static func residentKiB() -> Int { statmKiB(field: 1) }

    /// The process's virtual size in KiB (the first field of /proc/self/statm), 0 if unknown.
    public static func virtualKiB() -> Int { statmKiB(field: 0) }

    /// A field of /proc/self/statm (pages) in KiB.
    private static func statmKiB(field: Int) -> Int {
        let fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return 0 }
        defer { Glibc.close(fd) }
        var buffer = [UInt8](repeating: 0, count: 128)
        let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
        guard n > 0 else { return 0 }
        let fields = buffer[0..<n].split(separator: UInt8(ascii: " "))
        guard fields.count > field, let pages = Int(String(decoding: fields[field], as: UTF8.self)) else { return 0 }
        return pages * Int(sysconf(Int32(_SC_PAGESIZE))) / 1024
    }

    /// How many descriptors the process has open (the entries of /proc/self/fd, less the one
    /// that reads it), 0 if unknown.
    public static func openDescriptorCount() -> Int {
        guard let dir = opendir("/proc/self/fd") else { return 0 }
        defer { closedir(dir) }
        var count = 0
        while let entry = readdir(dir) {
            let first = withUnsafeBytes(of: entry.pointee.d_name) { $0[0] }
            if first != UInt8(ascii: ".") { count += 1 }
        }
        return max(0, count - 1)
    }

    /// CLOCK_MONOTONIC in milliseconds.
    public static func monotonicMillis() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Int64(ts.tv_sec) * 1000 + Int64(ts.tv_nsec) / 1_000_000
    }
}

extension Posix {
    /// The local port a socket is bound to (for listeners bound to port 0).
    public static func localPort(_ fd: Int32) -> UInt16 {
        var storage = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        _ = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        return SocketAddress(storage: storage).port
    }

    /// The local address of a socket (an accepted connection's: the address the client reached).
    public static func localAddress(_ fd: Int32) -> SocketAddress? {
        var storage = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let r = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        return r == 0 ? SocketAddress(storage: storage) : nil
    }
}

extension Posix {
    /// recv(MSG_PEEK): looks at queued bytes without consuming them.
    public static func peek(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer) throws -> IOResult<Int> {
        try checkNonBlocking("recv(MSG_PEEK)") { Glibc.recv(fd, buffer.baseAddress, buffer.count, Int32(MSG_PEEK)) }
    }
}

extension IOResult: Equatable where T: Equatable {}
