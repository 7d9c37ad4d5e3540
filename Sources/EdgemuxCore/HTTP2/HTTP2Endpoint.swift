import CEdgemux
import Glibc

/// One nghttp2 session on one socket: edgemux's HTTP/2 server towards a client
/// (`HTTP2ServerConnection`) or its HTTP/2 client towards a backend (`HTTP2UpstreamSession`).
/// This base class owns what both do alike: feeding received bytes to the session, and
/// gathering what the session produces into one chunk that goes out in one write per loop pass.
///
/// nghttp2 calls back into the subclass through the file-private `@convention(c)` functions in
/// `HTTP2Callbacks.swift`, which recover the object with `Unmanaged` and call one method. No
/// callback calls `nghttp2_session_send` or `_mem_recv` (nghttp2 is not re-entrant): work for the
/// socket is flagged and done by `flush()` after the session returns, or on the loop's next pass.
class HTTP2Endpoint: EventHandler {
    let loop: EventLoop
    let pool: BufferPool
    /// The socket (an upstream session sets it once its connect has started).
    var transport: Transport
    /// The nghttp2 session (set by the subclass right after init).
    var session: OpaquePointer?
    /// The session's allocator when it gives memory back while idle (`CEdgemux_h2_memory`).
    var memory: OpaquePointer?
    /// What the session produced and the socket has not taken yet (at most one chunk: when it
    /// is full, the send callback answers "would block" and nghttp2 keeps the rest).
    private var out: Chunk?
    /// Drops the first SETTINGS ACK the session sends (server side, when edgemux already
    /// acknowledged the client's first SETTINGS while sniffing).
    var outputFilter: SettingsAckFilter?
    /// Drops the client's ACK of the SETTINGS edgemux sent while sniffing (server side).
    var inputFilter: SettingsAckFilter?
    private var flushQueued = false
    /// Set when the socket or the session failed: the subclass closes.
    private(set) var broken: String?

    init(loop: EventLoop, pool: BufferPool, transport: Transport) {
        self.loop = loop
        self.pool = pool
        self.transport = transport
    }

    deinit {
        if let session { nghttp2_session_del(session) }
        if let memory { CEdgemux_h2_memory_free(memory) }
        if let out { pool.give(out) }
    }

    // MARK: receiving

    enum ReadOutcome {
        /// The socket is drained (or the round budget is spent and the loop comes back).
        case waiting
        /// The peer closed its side.
        case eof
        /// The socket or the session failed.
        case failed(String)
    }

    /// Reads what the socket has and feeds it to the session, at most `rounds` reads of up to
    /// 64 KiB (then the loop comes back to it: fairness between connections). `mayRead` is asked
    /// before each read (a server stops taking requests for the rest of a pass).
    func receive(rounds: Int = 16, mayRead: () -> Bool = { true }) -> ReadOutcome {
        guard let session else { return .failed("no session") }
        var n = 0
        while transport.readable {
            guard n < rounds, mayRead() else {
                loop.runSoon { [self] in self.resumeReading() }
                return .waiting
            }
            n += 1
            let scratch = pool.scratch
            var filled = inputFilter?.takeHeld(into: scratch) ?? 0
            switch transport.read(into: UnsafeMutableRawBufferPointer(rebasing: scratch[filled...])) {
            case .bytes(let got):
                filled += got
            case .wantRead, .wantWrite:
                if filled == 0 { return .waiting }
            case .eof:
                return .eof
            case .failed(let why):
                return .failed(why)
            }
            var count = filled
            if var f = inputFilter {
                count = f.filter(scratch, count: filled)
                inputFilter = f.done ? nil : f
            }
            let rv = nghttp2_session_mem_recv(session, scratch.baseAddress!.assumingMemoryBound(to: UInt8.self), count)
            if rv < 0 { return .failed(String(cString: nghttp2_strerror(Int32(rv)))) }
        }
        return .waiting
    }

    /// Called on the next loop pass when a read budget ran out.
    func resumeReading() {}

    // MARK: sending

    /// Asks for `flush()` on this loop pass, after the current callbacks and events.
    func scheduleFlush() {
        guard !flushQueued else { return }
        flushQueued = true
        // Strong captures here and below: the closure runs on this pass, and a weak reference
        // would give the session a side table (slower reference counting for its whole life).
        loop.runSoon { [self] in
            self.flushQueued = false
            self.flushNow()
        }
    }

    /// Subclasses flush and then check whether the connection is over.
    func flushNow() { _ = flush() }

    /// Lets the session produce what it has and writes it; false when the socket failed.
    @discardableResult
    func flush() -> Bool {
        guard let session, broken == nil else { return false }
        while true {
            if let o = out, !o.isEmpty {
                let (written, failed) = transport.writeAvailable(from: o.readable)
                o.consume(written)
                if let failed {
                    var why = "closed"
                    if case .failed(let w) = failed { why = w }
                    broken = why
                    return false
                }
                if !o.isEmpty { return true }  // the socket is full: EPOLLOUT brings us back
            }
            if transport.hasBufferedOutput {
                switch transport.flushBuffered() {
                case .failed(let why):
                    broken = why
                    return false
                case .wantWrite: return true
                default: break
                }
            }
            guard nghttp2_session_want_write(session) != 0 else { break }
            let rv = nghttp2_session_send(session)
            if rv != 0 {
                broken = String(cString: nghttp2_strerror(rv))
                return false
            }
            if out?.isEmpty ?? true { break }
        }
        if let o = out, o.isEmpty {
            pool.give(o)
            out = nil
        }
        return true
    }

    /// Queues bytes to go out before anything the session produces (edgemux's own SETTINGS
    /// from the sniffing phase that the socket had not taken yet).
    func preload(_ bytes: UnsafeRawBufferPointer) {
        let o = outputChunk()
        o.append(bytes)
    }

    /// Bytes the session has produced that the socket has not taken.
    var hasPendingOutput: Bool { !(out?.isEmpty ?? true) || transport.hasBufferedOutput }

    /// nghttp2's send callback: takes what fits in the output chunk.
    final func sessionWants(toSend data: UnsafeRawBufferPointer) -> Int {
        let o = outputChunk()
        var room = o.storage.count - o.writeIndex
        if room == 0 { return Int(NGHTTP2_ERR_WOULDBLOCK.rawValue) }
        if var f = outputFilter {
            // The filter holds at most a frame header's worth; leave room for it.
            guard room > H2.frameHeaderLength else { return Int(NGHTTP2_ERR_WOULDBLOCK.rawValue) }
            room -= H2.frameHeaderLength
            let take = min(room, data.count)
            let region = UnsafeMutableRawBufferPointer(rebasing: o.storage[o.writeIndex...])
            let held = f.takeHeld(into: region)
            UnsafeMutableRawBufferPointer(rebasing: region[held..<(held + take)]).copyMemory(from: UnsafeRawBufferPointer(rebasing: data[0..<take]))
            let kept = f.filter(region, count: held + take)
            o.writeIndex += kept
            outputFilter = f.done ? nil : f
            return take
        }
        let take = min(room, data.count)
        o.append(UnsafeRawBufferPointer(rebasing: data[0..<take]))
        return take
    }

    /// nghttp2's send-data callback (DATA frames with NGHTTP2_DATA_FLAG_NO_COPY): the frame
    /// header, then `length` payload bytes from the stream's queue, straight into the chunk.
    /// Nothing is taken from the queue unless the whole frame fits.
    final func sessionWants(toSendData header: UnsafeRawBufferPointer, length: Int, stream: Int32) -> Int32 {
        let o = outputChunk()
        let frameLength = H2.frameHeaderLength + length
        // Room for the frame, and for the frame header the output filter may hold back.
        let room = o.storage.count - o.writeIndex - (outputFilter == nil ? 0 : H2.frameHeaderLength)
        guard room >= frameLength else { return NGHTTP2_ERR_WOULDBLOCK.rawValue }
        if outputFilter != nil {
            // Rare: DATA before the session's first SETTINGS ACK has gone through the filter.
            var frame = [UInt8](repeating: 0, count: frameLength)
            let copied = frame.withUnsafeMutableBytes { f in
                f.copyMemory(from: UnsafeRawBufferPointer(rebasing: header[0..<H2.frameHeaderLength]))
                return copyData(stream: stream, into: UnsafeMutableRawBufferPointer(rebasing: f[H2.frameHeaderLength...]))
            }
            let taken = frame.withUnsafeBytes { sessionWants(toSend: $0) }
            return copied == length && taken == frameLength ? 0 : NGHTTP2_ERR_CALLBACK_FAILURE.rawValue
        }
        o.append(UnsafeRawBufferPointer(rebasing: header[0..<H2.frameHeaderLength]))
        let dest = UnsafeMutableRawBufferPointer(rebasing: o.storage[o.writeIndex..<(o.writeIndex + length)])
        let copied = copyData(stream: stream, into: dest)
        o.writeIndex += copied
        return copied == length ? 0 : NGHTTP2_ERR_CALLBACK_FAILURE.rawValue
    }

    private func outputChunk() -> Chunk {
        if let o = out { return o }
        let o = pool.take()
        out = o
        return o
    }

    // MARK: the bodies this session sends (nghttp2's read and send-data callbacks)

    /// Which body of a request this session sends (the server: responses; a backend session:
    /// requests).
    var outgoing: ProxyRequest.Outgoing { .response }

    /// The request carried on `stream`, if any (and not cancelled).
    func request(onStream stream: Int32) -> ProxyRequest? { nil }

    /// Copies `dest.count` payload bytes of `stream`'s outgoing body into `dest` and consumes them.
    final func copyData(stream: Int32, into dest: UnsafeMutableRawBufferPointer) -> Int {
        request(onStream: stream)?.takeBody(outgoing, into: dest) ?? 0
    }

    /// How many payload bytes `stream` can send now (read callback), or `nil` when nothing waits
    /// and the body goes on (deferred), with `eof` when it has ended.
    final func dataAvailable(stream: Int32, max: Int) -> (count: Int, eof: Bool, trailers: Bool)? {
        guard let r = request(onStream: stream) else { return (0, true, false) }
        return r.bodyAvailable(outgoing, max: max)
    }

    /// Submits the trailers of `stream` (its body has ended with trailers to send), less any
    /// connection-specific field.
    final func submitTrailers(stream: Int32) {
        guard let session, let t = request(onStream: stream)?.trailers(outgoing) else { return }
        _ = t.withNameValues(leading: [], keep: { !FieldRules.isHopByHop(t, $0) }) { nva, n in nghttp2_submit_trailer(session, stream, nva, n) }
    }

    // MARK: what subclasses provide (called from nghttp2's callbacks)

    func beginHeaders(_ frame: UnsafePointer<nghttp2_frame>) -> Int32 { 0 }
    func header(_ frame: UnsafePointer<nghttp2_frame>, name: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer) -> Int32 { 0 }
    func frameReceived(_ frame: UnsafePointer<nghttp2_frame>) -> Int32 { 0 }
    func dataChunk(stream: Int32, _ data: UnsafeRawBufferPointer) -> Int32 { 0 }
    func streamClosed(_ stream: Int32, code: UInt32) -> Int32 { 0 }
    func frameNotSent(_ frame: UnsafePointer<nghttp2_frame>, error: Int32) {}
    func frameSent(_ frame: UnsafePointer<nghttp2_frame>) {}
}
