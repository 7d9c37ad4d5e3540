import CEdgemux
import Glibc

/// One side of a proxied connection: a non-blocking socket, TLS or plain, with its edge-triggered
/// readiness. The socket is closed by `close(on:)` (through the loop), the TLS object with it.
final class Transport {
    let fd: Int32
    var tls: TLSStream? {
        // A hangup signalled before TLS started (while a PROXY header was peeked) still counts.
        didSet { if hangupSeen { tls?.noteHangup() } }
    }
    /// The socket may have bytes to read (no EAGAIN seen since the last EPOLLIN edge).
    var readable = false
    /// The socket may take bytes (no EAGAIN seen since the last EPOLLOUT edge).
    var writable = true
    /// A TLS write is waiting for the socket to become readable (and a read for writable).
    var writeWantsRead = false
    var readWantsWrite = false
    /// The write side was shut (FIN / close_notify sent).
    var writeShut = false
    /// The peer's FIN (or an error) has been signalled: reads go on until they see it.
    var hangupSeen = false

    init(fd: Int32, tls: TLSStream? = nil) {
        self.fd = fd
        self.tls = tls
    }

    /// A new socket with a non-blocking connect to `address` under way, registered with `loop`
    /// for `handler`; wait for its first event and ask `connectProgress(events:)`.
    static func connecting(to address: SocketAddress, keepalive: Bool, loop: EventLoop, handler: EventHandler) throws -> Transport {
        let t = try connecting(to: address, keepalive: keepalive)
        do {
            try loop.register(fd: t.fd, events: EventLoop.relayEvents, handler: handler)
        } catch {
            Posix.close(t.fd)
            throw error
        }
        return t
    }

    /// A new socket with a non-blocking connect under way, not yet registered with a loop (the
    /// handler that will own it may need the transport first).
    static func connecting(to address: SocketAddress, keepalive: Bool) throws -> Transport {
        let fd = try Posix.socket(domain: address.family, type: Int32(SOCK_STREAM.rawValue))
        try? Posix.setOption(fd, level: Int32(IPPROTO_TCP), name: TCP_NODELAY, value: 1)
        if keepalive { try? Posix.setOption(fd, level: SOL_SOCKET, name: SO_KEEPALIVE, value: 1) }
        do {
            _ = try Posix.connect(fd, to: address)
        } catch {
            Posix.close(fd)
            throw error
        }
        let t = Transport(fd: fd)
        t.writable = false
        return t
    }

    enum ConnectProgress {
        case pending
        case connected
        /// The connect failed; the text says why.
        case failed(String)
    }

    /// What an event on a connecting socket says. EPOLLOUT alone means the connect succeeded;
    /// only an error event needs SO_ERROR.
    func connectProgress(events: UInt32) -> ConnectProgress {
        let err = events & (EPOLLERR.rawValue | EPOLLHUP.rawValue) != 0 ? Posix.socketError(fd) : 0
        if err != 0 { return .failed(String(cString: strerror(err))) }
        return events & EPOLLOUT.rawValue != 0 ? .connected : .pending
    }

    /// Closes the socket through the loop (which forgets it) and frees the TLS state. A
    /// close_notify that met a full socket is sent first: the socket stays open (with a
    /// `ClosingTransport` as its handler) until it has gone or `ClosingTransport.limitMillis` passed,
    /// so the client sees the end of the TLS stream, not a bare FIN.
    func close(on loop: EventLoop) {
        if let tls, writeShut, tls.closeNotifyPending, !tls.shutdown(), loop.isRegistered(fd) {
            ClosingTransport(transport: self, loop: loop).start()
            return
        }
        tls = nil
        loop.closeDescriptor(fd)
    }

    /// The write side was shut and the close_notify has not all gone out yet.
    var closeNotifyPending: Bool { writeShut && tls?.closeNotifyPending == true }

    /// Sends the rest of a pending close_notify; true once it is out.
    func retryCloseNotify() -> Bool { tls?.shutdown() ?? true }

    enum Peeked {
        case bytes(Int)
        /// Nothing has arrived yet: the next EPOLLIN edge comes with more.
        case nothingYet
        /// The peer closed (or the socket failed) before sending enough.
        case closed
    }

    /// Looks at the bytes waiting in the socket without taking them (a PROXY header, a
    /// ClientHello): what is not consumed stays there for whoever reads next (OpenSSL, the relay).
    func peek(into buffer: UnsafeMutableRawBufferPointer) -> Peeked {
        do {
            guard case .processed(let n) = try Posix.peek(fd, into: buffer) else {
                readable = false
                return .nothingYet
            }
            return n == 0 ? .closed : .bytes(n)
        } catch {
            return .closed
        }
    }

    /// Applies epoll event bits to the readiness flags.
    func note(events: UInt32) {
        let inBits = EPOLLIN.rawValue | EPOLLRDHUP.rawValue | EPOLLHUP.rawValue | EPOLLERR.rawValue
        let outBits = EPOLLOUT.rawValue | EPOLLHUP.rawValue | EPOLLERR.rawValue
        if events & (EPOLLRDHUP.rawValue | EPOLLHUP.rawValue | EPOLLERR.rawValue) != 0 {
            hangupSeen = true
            tls?.noteHangup()
        }
        if events & inBits != 0 {
            tls?.noteReadEdge()
            readable = true
            if writeWantsRead { writable = true; writeWantsRead = false }
        }
        if events & outBits != 0 {
            writable = true
            if readWantsWrite { readable = true; readWantsWrite = false }
        }
    }

    func read(into buffer: UnsafeMutableRawBufferPointer) -> StreamStep {
        let step: StreamStep
        if let tls {
            step = tls.read(into: buffer)
            if case .bytes = step, !hangupSeen, tls.drained { readable = false }
        } else {
            do {
                switch try Posix.read(fd, into: buffer) {
                case .processed(0): step = .eof
                case .processed(let n):
                    step = .bytes(n)
                    // A short read emptied the socket: with edge triggering, bytes that arrive
                    // later raise a new event, so the EAGAIN read that would confirm it is
                    // skipped. Not once the peer's FIN is signalled: it raises no new event.
                    if n < buffer.count && !hangupSeen { readable = false }
                case .wouldBlock: step = .wantRead
                }
            } catch {
                step = .failed("\(error)")
            }
        }
        switch step {
        case .wantRead: readable = false
        case .wantWrite: readable = false; readWantsWrite = true
        default: break
        }
        return step
    }

    /// `shutdownAfter` (TLS): close_notify goes out with the last of `buffer`, in the same send.
    func write(from buffer: UnsafeRawBufferPointer, shutdownAfter: Bool = false) -> StreamStep {
        let step: StreamStep
        if let tls {
            step = tls.write(from: buffer, shutdownAfter: shutdownAfter)
            if shutdownAfter, case .bytes(let n) = step, n == buffer.count { writeShut = true }
        } else {
            do {
                switch try Posix.write(fd, from: buffer) {
                case .processed(let n): step = .bytes(n)
                case .wouldBlock: step = .wantWrite
                }
            } catch {
                step = .failed("\(error)")
            }
        }
        switch step {
        case .wantWrite: writable = false
        case .wantRead: writable = false; writeWantsRead = true
        default: if tls?.hasBufferedOutput == true { writable = false }
        }
        return step
    }

    /// Writes as much of `buffer` as the socket takes now (TLS may take it in several steps).
    /// Returns the bytes written, and the step that ended the stream (`.eof` or `.failed`) if it
    /// broke; a full socket just stops the writing (`writable` is then false).
    func writeAvailable(from buffer: UnsafeRawBufferPointer, shutdownAfter: Bool = false) -> (written: Int, broken: StreamStep?) {
        var offset = 0
        while offset < buffer.count, writable {
            let step = write(from: UnsafeRawBufferPointer(rebasing: buffer[offset...]), shutdownAfter: shutdownAfter)
            switch step {
            case .bytes(let n): offset += n
            case .wantRead, .wantWrite: return (offset, nil)
            case .eof, .failed: return (offset, step)
            }
        }
        return (offset, nil)
    }

    /// Whether nothing more waits to be read: checked by reading when the last read did not
    /// show it (TLS may hold a record it has not processed, such as a session ticket). Any
    /// application byte or end of stream means the connection is not idle (and is spoiled).
    func isIdle(scratch: UnsafeMutableRawBufferPointer) -> Bool {
        guard !hangupSeen else { return false }
        guard readable else { return true }
        switch read(into: scratch) {
        case .wantRead: return true
        default: return false
        }
    }

    /// TLS records gathered but not yet sent (the socket was full).
    var hasBufferedOutput: Bool { tls?.hasBufferedOutput ?? false }

    /// Sends gathered TLS records: `.bytes(0)` when none remain, `.wantWrite` while some do (then
    /// wait for EPOLLOUT), `.failed` on a socket error.
    func flushBuffered() -> StreamStep {
        guard let tls else { return .bytes(0) }
        do {
            if try tls.flushBuffered() { return .bytes(0) }
            writable = false
            return .wantWrite
        } catch {
            return .failed("\(error)")
        }
    }

    /// Half-close: close_notify for TLS (the TLS peer's end of stream; the FIN follows with the
    /// close, one syscall fewer per connection), FIN for plain TCP. On a full socket the
    /// close_notify waits (`closeNotifyPending`) for `retryCloseNotify()` or the close.
    func shutdownWrite() {
        guard !writeShut else { return }
        writeShut = true
        if let tls {
            tls.shutdown()
        } else {
            Posix.shutdownWrite(fd)
        }
    }

    var isPlain: Bool { tls == nil }
}

/// A transport whose owner is done with it but whose close_notify met a full socket: it waits for
/// room (EPOLLOUT), sends the rest, and closes; after `limitMillis` it closes anyway. What the
/// client sends meanwhile is not read (the close resets the connection then, as a close would).
final class ClosingTransport: EventHandler {
    static let limitMillis: Int64 = 2_000
    private let transport: Transport
    private let loop: EventLoop
    private var timer: TimerHandle?

    init(transport: Transport, loop: EventLoop) {
        self.transport = transport
        self.loop = loop
    }

    /// Takes the socket over (the loop keeps this object alive as its handler).
    func start() {
        loop.rebind(fd: transport.fd, to: self)
        timer = loop.schedule(afterMillis: Self.limitMillis, for: self)
    }

    override func handleEvent(fd: Int32, events: UInt32) {
        if events & (EPOLLERR.rawValue | EPOLLHUP.rawValue) != 0 || (events & EPOLLOUT.rawValue != 0 && transport.retryCloseNotify()) {
            finish()
        }
    }

    override func timerFired() {
        timer = nil
        finish()
    }

    private func finish() {
        loop.cancel(timer)
        timer = nil
        transport.tls = nil
        loop.closeDescriptor(transport.fd)
    }
}

/// A fixed-capacity byte buffer with a read and a write index, recycled through `BufferPool`.
final class Chunk {
    let storage: UnsafeMutableRawBufferPointer
    var readIndex = 0
    var writeIndex = 0

    init(capacity: Int) {
        storage = .allocate(byteCount: capacity, alignment: 16)
    }

    deinit { storage.deallocate() }

    var readableBytes: Int { writeIndex - readIndex }
    var isEmpty: Bool { readIndex == writeIndex }
    var readable: UnsafeRawBufferPointer { UnsafeRawBufferPointer(rebasing: storage[readIndex..<writeIndex]) }

    func append(_ bytes: UnsafeRawBufferPointer) {
        if storage.count - writeIndex < bytes.count, readIndex > 0 { compact() }
        precondition(storage.count - writeIndex >= bytes.count, "Chunk overflow")
        UnsafeMutableRawBufferPointer(rebasing: storage[writeIndex...]).copyMemory(from: bytes)
        writeIndex += bytes.count
    }

    func consume(_ n: Int) {
        readIndex += n
        if readIndex == writeIndex { readIndex = 0; writeIndex = 0 }
    }

    private func compact() {
        let n = readableBytes
        if n > 0 { storage.baseAddress!.copyMemory(from: storage.baseAddress! + readIndex, byteCount: n) }
        readIndex = 0
        writeIndex = n
    }
}

/// The loop's buffers: one scratch area every relay reads into, and a free list of chunks that
/// hold what a destination could not take yet. Steady-state relaying allocates nothing.
final class BufferPool {
    static let chunkSize = 64 * 1024
    /// Reads land here; at most `chunkSize` plus room for a held partial frame header.
    let scratch: UnsafeMutableRawBufferPointer
    private var free: [Chunk] = []
    private let maxFree: Int

    init(maxFree: Int = 256) {
        scratch = .allocate(byteCount: BufferPool.chunkSize, alignment: 16)
        self.maxFree = maxFree
    }

    deinit { scratch.deallocate() }

    func take() -> Chunk {
        if let c = free.popLast() { return c }
        return Chunk(capacity: BufferPool.chunkSize)
    }

    /// A pooled chunk, or a chunk of its own for more than `chunkSize` bytes (`give` then drops it).
    func take(atLeast count: Int) -> Chunk {
        count <= BufferPool.chunkSize ? take() : Chunk(capacity: count)
    }

    func give(_ chunk: Chunk) {
        chunk.readIndex = 0
        chunk.writeIndex = 0
        if chunk.storage.count == BufferPool.chunkSize, free.count < maxFree { free.append(chunk) }
    }
}
