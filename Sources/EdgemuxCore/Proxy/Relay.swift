import CEdgemux
import Glibc

/// Moves bytes both ways between a client and a backend transport until both directions have
/// ended or one side fails. Shared by the ingress connection and the egress tunnel.
///
/// Each direction reads into the loop's scratch buffer and writes straight on; only what the
/// destination does not take waits, in at most one chunk, and a waiting chunk stops reads from
/// the source (backpressure: memory per connection stays bounded whatever the peers do).
/// Plaintext pairs move through a pipe with splice(2) instead. A source's end is passed on as a
/// half-close (FIN, or close_notify for TLS), so nothing sent before a close is lost.
final class Relay {
    /// One direction of the relay.
    struct Direction {
        /// Bytes read from the source that the destination has not taken yet.
        var pending: Chunk?
        /// The source has ended (EOF or close_notify).
        var sourceDone = false
        /// The destination's write side has been shut after `sourceDone`.
        var shutDown = false
        /// HTTP/2: drops the client's ACK of edgemux's SETTINGS (client to backend), or the
        /// backend's ACK of the client's first SETTINGS (backend to client).
        var filter: SettingsAckFilter?
        var bytes = 0
        /// Which way this direction runs.
        var isTowardsClient = false
        /// Plaintext to plaintext: a pipe that splice(2) moves bytes through, kernel to kernel.
        var pipe: (read: Int32, write: Int32)?
        /// Bytes in `pipe` that the destination has not taken yet.
        var pipeBytes = 0
    }


    /// How the relay ended.
    enum End {
        /// Both directions ended normally.
        case completed
        /// `side` ("client", "backend", "internal") failed.
        case failed(side: String, why: String)
    }

    let loop: EventLoop
    let pool: BufferPool
    let client: Transport
    let backend: Transport
    var toBackend = Direction()
    var toClient = Direction()
    /// The loop time of the last byte read from either side (idle timeouts).
    private(set) var lastActivity: Int64
    /// The backend has sent at least one byte (until then edgemux can still answer the client).
    private(set) var backendSpoke = false
    private var ended = false
    /// Never splice (benchmarks of the copying path).
    var forceCopyPath = false
    /// Set by a pump that hit the end; acted on by `pumpAll` once the pump has returned.
    private var ending: End?
    private let onEnd: (End) -> Void

    /// - Parameters:
    ///   - replay: bytes already read from the client, sent to the backend first.
    ///   - filter: client-to-backend filter still to apply (HTTP/2: the SETTINGS ACK).
    ///   - pendingToClient: bytes of edgemux's own still waiting for the client.
    ///   - clientFilter: backend-to-client filter (HTTP/2: the backend's ACK of the client's first
    ///     SETTINGS, which edgemux already acknowledged while sniffing).
    init(client: Transport, backend: Transport, loop: EventLoop, pool: BufferPool, replay: [UInt8], filter: SettingsAckFilter?, clientFilter: SettingsAckFilter? = nil, pendingToClient: Chunk?, onEnd: @escaping (End) -> Void) {
        self.client = client
        self.backend = backend
        self.loop = loop
        self.pool = pool
        self.onEnd = onEnd
        lastActivity = loop.now
        if !replay.isEmpty {
            let chunk = pool.take(atLeast: replay.count)
            replay.withUnsafeBytes { chunk.append($0) }
            toBackend.pending = chunk
        }
        toBackend.filter = filter
        toClient.filter = clientFilter
        toClient.pending = pendingToClient
        toClient.isTowardsClient = true
    }

    /// Bytes the client sent / received through the relay.
    var bytesFromClient: Int { toBackend.bytes }
    var bytesToClient: Int { toClient.bytes }

    /// Makes all the progress the sockets allow, in both directions.
    func pumpAll() {
        guard !ended else { return }
        pump(&toBackend, from: client, to: backend)
        if ending == nil { pump(&toClient, from: backend, to: client) }
        if ending == nil && toBackend.shutDown && toClient.shutDown { ending = .completed }
        // onEnd runs here, outside the pumps' exclusive access to the directions: the owner
        // releases the relay from it.
        if let how = ending {
            ending = nil
            ended = true
            onEnd(how)
        }
    }

    /// Gives the chunks back and closes the pipes (the transports belong to the caller).
    func release() {
        ended = true
        for p in [toBackend.pending, toClient.pending] {
            if let p { pool.give(p) }
        }
        toBackend.pending = nil
        toClient.pending = nil
        for pipe in [toBackend.pipe, toClient.pipe] {
            if let pipe {
                Posix.close(pipe.read)
                Posix.close(pipe.write)
            }
        }
        toBackend.pipe = nil
        toClient.pipe = nil
    }

    /// Records how the relay ends (acted on by `pumpAll`); any step but `.failed` means the side
    /// closed where it could not.
    private func failRelay(_ side: String, _ step: StreamStep) {
        var why = "closed"
        if case .failed(let w) = step { why = w }
        if ending == nil { ending = .failed(side: side, why: why) }
    }

    /// Moves bytes from `src` to `dst` until one of them would block, the source ends, or the
    /// round budget is spent (then the loop comes back to it: fairness between connections).
    /// At most one chunk waits per direction, so memory per connection is bounded; a full
    /// destination stops reads from the source until it drains (backpressure).
    private func pump(_ d: inout Direction, from src: Transport, to dst: Transport) {
        let (srcSide, dstSide) = d.isTowardsClient ? ("backend", "client") : ("client", "backend")
        var rounds = 0
        while true {
            if dst.hasBufferedOutput {
                guard dst.writable else { return }
                let step = dst.flushBuffered()
                switch step {
                case .bytes: break
                case .failed:
                    failRelay(dstSide, step)
                    return
                default: return
                }
            }
            if let p = d.pending {
                let (written, broken) = dst.writeAvailable(from: p.readable)
                p.consume(written)
                d.bytes += written
                if let broken {
                    failRelay(dstSide, broken)
                    return
                }
                guard p.isEmpty else { return }
                pool.give(p)
                d.pending = nil
                continue
            }
            if src.isPlain && dst.isPlain && d.filter == nil && !forceCopyPath {
                splicePump(&d, from: src, to: dst)
                return
            }
            guard mayRead(&d, from: src, to: dst, rounds: &rounds) else { return }
            let scratch = pool.scratch
            var filled = d.filter != nil ? d.filter!.takeHeld(into: scratch) : 0
            let held = filled
            readLoop: while filled < scratch.count {
                let step = src.read(into: UnsafeMutableRawBufferPointer(rebasing: scratch[filled...]))
                switch step {
                case .bytes(let n):
                    filled += n
                    // A plain read takes all it can at once; TLS returns a record at a time,
                    // until the socket is known to be empty.
                    if src.isPlain || !src.readable { break readLoop }
                case .wantRead, .wantWrite:
                    break readLoop
                case .eof:
                    d.sourceDone = true
                    break readLoop
                case .failed:
                    failRelay(srcSide, step)
                    return
                }
            }
            if filled > held {
                lastActivity = loop.now
                if d.isTowardsClient { backendSpoke = true }
            }
            var count = filled
            if var f = d.filter {
                count = f.filter(scratch, count: filled)
                if d.sourceDone && !f.held.isEmpty {
                    // The stream ends inside a frame header: pass the fragment on unchanged.
                    let extra = f.takeHeld(into: UnsafeMutableRawBufferPointer(rebasing: scratch[count...]))
                    count += extra
                }
                d.filter = f.done ? nil : f
            }
            let (offset, broken) = dst.writeAvailable(from: UnsafeRawBufferPointer(rebasing: scratch[0..<count]))
            d.bytes += offset
            if let broken {
                failRelay(dstSide, broken)
                return
            }
            if offset < count {
                let chunk = pool.take()
                chunk.append(UnsafeRawBufferPointer(rebasing: scratch[offset..<count]))
                d.pending = chunk
            }
        }
    }

    /// With nothing left to write: passes an ended source on as a half-close, and says whether
    /// to read from the source now (it may have bytes, and this round's budget is not spent; a
    /// spent budget comes back on the loop's next turn, so one busy connection cannot starve the
    /// others).
    private func mayRead(_ d: inout Direction, from src: Transport, to dst: Transport, rounds: inout Int) -> Bool {
        if d.sourceDone {
            if !d.shutDown {
                d.shutDown = true
                // When the other direction has ended too, the connection closes right after
                // this: a plain socket's close sends the FIN anyway. TLS still gets its
                // close_notify.
                let otherDone = d.isTowardsClient ? toBackend.shutDown : toClient.shutDown
                if !(otherDone && dst.isPlain) { dst.shutdownWrite() }
            }
            return false
        }
        guard src.readable else { return false }
        if rounds >= 16 {
            loop.runSoon { [weak self] in self?.pumpAll() }
            return false
        }
        rounds += 1
        return true
    }

    /// The relay for two plaintext sockets: splice(2) through a pipe, no copy into user space.
    /// The pipe holds at most one pipe-full (64 KiB), so backpressure works as with chunks.
    private func splicePump(_ d: inout Direction, from src: Transport, to dst: Transport) {
        let (srcSide, dstSide) = d.isTowardsClient ? ("backend", "client") : ("client", "backend")
        if d.pipe == nil {
            do { d.pipe = try Posix.pipe() } catch {
                failRelay("internal", .failed("\(error)"))
                return
            }
        }
        guard let pipe = d.pipe else { return }
        var rounds = 0
        while true {
            if d.pipeBytes > 0 {
                guard dst.writable else { return }
                do {
                    switch try Posix.splice(from: pipe.read, to: dst.fd, count: d.pipeBytes) {
                    case .processed(let n):
                        d.pipeBytes -= n
                        d.bytes += n
                    case .wouldBlock:
                        dst.writable = false
                        return
                    }
                } catch {
                    failRelay(dstSide, .failed("\(error)"))
                    return
                }
                continue
            }
            guard mayRead(&d, from: src, to: dst, rounds: &rounds) else { return }
            do {
                switch try Posix.splice(from: src.fd, to: pipe.write, count: BufferPool.chunkSize) {
                case .processed(0):
                    d.sourceDone = true
                case .processed(let n):
                    d.pipeBytes += n
                    lastActivity = loop.now
                    if d.isTowardsClient { backendSpoke = true }
                case .wouldBlock:
                    src.readable = false  // the pipe is empty here, so it is the source that is
                    return
                }
            } catch {
                failRelay(srcSide, .failed("\(error)"))
                return
            }
        }
    }
}
