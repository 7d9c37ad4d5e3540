import CEdgemux
import Glibc

/// The demo's cleartext HTTP/2 backends (prior knowledge), built on nghttp2's server session: a
/// web backend that answers with text, and a gRPC backend that answers any unary or
/// server-streaming call with messages naming itself. nghttp2 is strict (an unexpected SETTINGS
/// ACK is a connection error), which makes this a fair test of edgemux's ACK handling too.
final class DemoH2Server: EventHandler {
    enum Role: String { case web, grpc }

    let fd: Int32
    let loop: EventLoop
    let role: Role
    private var sessions: [Int32: DemoH2Session] = [:]

    init(loop: EventLoop, role: Role) throws {
        self.loop = loop
        self.role = role
        fd = try ListenerSocket.bind(SocketAddress.parse(ip: "127.0.0.1", port: 0)!, backlog: 512)
        super.init()
        try loop.register(fd: fd, events: EventLoop.readEvents, handler: self)
    }

    var port: UInt16 { Posix.localPort(fd) }

    override func handleEvent(fd: Int32, events: UInt32) {
        if fd == self.fd {
            while case .processed(let (c, _))? = try? Posix.accept(fd) {
                guard let s = DemoH2Session(fd: c, role: role) else {
                    Posix.close(c)
                    continue
                }
                sessions[c] = s
                try? loop.register(fd: c, events: EventLoop.relayEvents, handler: self)
                s.flush()
            }
            return
        }
        guard let s = sessions[fd] else { return }
        if !s.pump() {
            sessions[fd] = nil
            loop.closeDescriptor(fd)
        }
    }
}

/// One HTTP/2 connection of a demo backend.
final class DemoH2Session {
    struct Stream {
        var path = ""
        var contentType = ""
        var authority = ""
        var body: [UInt8] = []
        var response: [UInt8] = []
        var offset = 0
        var grpc = false
    }

    let fd: Int32
    let role: DemoH2Server.Role
    var session: OpaquePointer?
    var streams: [Int32: Stream] = [:]
    var pendingOut: [UInt8] = []
    var broken = false

    init?(fd: Int32, role: DemoH2Server.Role) {
        self.fd = fd
        self.role = role
        var cbs: OpaquePointer?
        guard nghttp2_session_callbacks_new(&cbs) == 0, let cbs else { return nil }
        defer { nghttp2_session_callbacks_del(cbs) }
        nghttp2_session_callbacks_set_on_begin_headers_callback(cbs) { _, frame, user in
            let me = Unmanaged<DemoH2Session>.fromOpaque(user!).takeUnretainedValue()
            me.streams[frame!.pointee.hd.stream_id] = Stream()
            return 0
        }
        nghttp2_session_callbacks_set_on_header_callback(cbs) { _, frame, name, namelen, value, valuelen, _, user in
            let me = Unmanaged<DemoH2Session>.fromOpaque(user!).takeUnretainedValue()
            let id = frame!.pointee.hd.stream_id
            let n = String(decoding: UnsafeBufferPointer(start: name, count: namelen), as: UTF8.self)
            let v = String(decoding: UnsafeBufferPointer(start: value, count: valuelen), as: UTF8.self)
            switch n {
            case ":path": me.streams[id]?.path = v
            case ":authority": me.streams[id]?.authority = v
            case "content-type": me.streams[id]?.contentType = v
            default: break
            }
            return 0
        }
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs) { _, _, id, data, len, user in
            let me = Unmanaged<DemoH2Session>.fromOpaque(user!).takeUnretainedValue()
            if var s = me.streams[id], s.body.count < 1 << 16 {
                s.body += UnsafeBufferPointer(start: data, count: min(len, (1 << 16) - s.body.count))
                me.streams[id] = s
            }
            return 0
        }
        nghttp2_session_callbacks_set_on_frame_recv_callback(cbs) { _, frame, user in
            let me = Unmanaged<DemoH2Session>.fromOpaque(user!).takeUnretainedValue()
            let hd = frame!.pointee.hd
            if (hd.type == UInt8(NGHTTP2_HEADERS.rawValue) || hd.type == UInt8(NGHTTP2_DATA.rawValue)),
               hd.flags & UInt8(NGHTTP2_FLAG_END_STREAM.rawValue) != 0 {
                me.respond(hd.stream_id)
            }
            return 0
        }
        nghttp2_session_callbacks_set_on_stream_close_callback(cbs) { _, id, _, user in
            let me = Unmanaged<DemoH2Session>.fromOpaque(user!).takeUnretainedValue()
            me.streams[id] = nil
            return 0
        }
        var s: OpaquePointer?
        guard nghttp2_session_server_new(&s, cbs, Unmanaged.passUnretained(self).toOpaque()) == 0 else { return nil }
        session = s
        var iv = nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS.rawValue), value: 256)
        nghttp2_submit_settings(s, UInt8(NGHTTP2_FLAG_NONE.rawValue), &iv, 1)
    }

    deinit { nghttp2_session_del(session) }

    /// The gRPC wire form of a message `{ string message = 1; }`.
    static func grpcMessage(_ text: String) -> [UInt8] {
        let bytes = Array(text.utf8)
        var proto: [UInt8] = [0x0a]
        var n = bytes.count
        while n >= 0x80 { proto.append(UInt8(n & 0x7f) | 0x80); n >>= 7 }
        proto.append(UInt8(n))
        proto += bytes
        let len = proto.count
        return [0, UInt8(len >> 24 & 0xff), UInt8(len >> 16 & 0xff), UInt8(len >> 8 & 0xff), UInt8(len & 0xff)] + proto
    }

    /// The string field 1 of the first gRPC message in `body`, if any (the caller's "name").
    static func firstStringField(_ body: [UInt8]) -> String? {
        guard body.count > 7, body[5] == 0x0a else { return nil }
        var len = 0, shift = 0, i = 6
        while i < body.count {
            len |= Int(body[i] & 0x7f) << shift
            shift += 7
            i += 1
            if body[i - 1] & 0x80 == 0 { break }
        }
        guard i + len <= body.count else { return nil }
        return String(decoding: body[i..<(i + len)], as: UTF8.self)
    }

    func respond(_ id: Int32) {
        guard var s = streams[id] else { return }
        s.grpc = s.contentType.hasPrefix("application/grpc")
        var headers: [(String, String)] = [(":status", "200")]
        if s.grpc {
            let who = role == .grpc ? "the demo gRPC backend" : "the demo \(role.rawValue) backend"
            let name = Self.firstStringField(s.body) ?? "stranger"
            var msg = Self.grpcMessage("Hello \(name), from \(who) (method \(s.path))")
            if s.path.hasSuffix("Stream") || s.path.hasSuffix("Many") {
                for i in 1..<5 { msg += Self.grpcMessage("message \(i + 1) of 5 from \(who)") }
            }
            s.response = msg
            headers.append(("content-type", "application/grpc"))
        } else {
            s.response = Array("Hello from the demo \(role.rawValue) backend over HTTP/2: \(s.path) (authority \(s.authority))\n".utf8)
            headers.append(("content-type", "text/plain; charset=utf-8"))
        }
        headers.append(("x-served-by", "demo-\(role.rawValue)-h2c"))
        streams[id] = s
        var provider = nghttp2_data_provider()
        provider.read_callback = { session, id, buf, length, flags, _, user in
            let me = Unmanaged<DemoH2Session>.fromOpaque(user!).takeUnretainedValue()
            guard var s = me.streams[id] else { return Int(NGHTTP2_ERR_CALLBACK_FAILURE.rawValue) }
            let n = min(length, s.response.count - s.offset)
            s.response.withUnsafeBytes { src in
                buf!.update(from: src.baseAddress!.assumingMemoryBound(to: UInt8.self) + s.offset, count: n)
            }
            s.offset += n
            if s.offset == s.response.count {
                flags!.pointee |= NGHTTP2_DATA_FLAG_EOF.rawValue
                if s.grpc {
                    flags!.pointee |= NGHTTP2_DATA_FLAG_NO_END_STREAM.rawValue
                    me.submit(trailers: [("grpc-status", "0"), ("grpc-message", "")], on: id, session: session)
                }
            }
            me.streams[id] = s
            return n
        }
        withHeaders(headers) { nva, count in
            _ = nghttp2_submit_response(session, id, nva, count, &provider)
        }
    }

    func submit(trailers: [(String, String)], on id: Int32, session: OpaquePointer?) {
        withHeaders(trailers) { nva, count in
            _ = nghttp2_submit_trailer(session, id, nva, count)
        }
    }

    private func withHeaders(_ headers: [(String, String)], _ body: (UnsafePointer<nghttp2_nv>, Int) -> Void) {
        // nghttp2 copies names and values during submit, so pointers into temporaries are fine.
        var storage: [[UInt8]] = []
        for (n, v) in headers { storage.append(Array(n.utf8)); storage.append(Array(v.utf8)) }
        var nvs: [nghttp2_nv] = []
        for i in 0..<headers.count {
            let n = storage[2 * i].withUnsafeBufferPointer { UnsafeMutablePointer(mutating: $0.baseAddress!) }
            let v = storage[2 * i + 1].withUnsafeBufferPointer { UnsafeMutablePointer(mutating: $0.baseAddress ?? UnsafePointer(bitPattern: 1)!) }
            nvs.append(nghttp2_nv(name: n, value: v, namelen: storage[2 * i].count, valuelen: storage[2 * i + 1].count, flags: UInt8(NGHTTP2_NV_FLAG_NONE.rawValue)))
        }
        withExtendedLifetime(storage) {
            nvs.withUnsafeBufferPointer { body($0.baseAddress!, $0.count) }
        }
    }

    /// Reads what arrived, feeds nghttp2, writes what it wants to send. False: close.
    func pump() -> Bool {
        var chunk = [UInt8](repeating: 0, count: 16384)
        while true {
            let r = chunk.withUnsafeMutableBytes { try? Posix.read(fd, into: $0) }
            guard case .processed(let n)? = r else {
                if case .wouldBlock? = r { break }
                return false
            }
            if n == 0 { return false }
            let consumed = chunk.withUnsafeBufferPointer { nghttp2_session_mem_recv(session, $0.baseAddress, n) }
            if consumed < 0 { broken = true; break }
        }
        flush()
        if broken && pendingOut.isEmpty { return false }
        return nghttp2_session_want_read(session) != 0 || nghttp2_session_want_write(session) != 0 || !pendingOut.isEmpty
    }

    func flush() {
        while true {
            if !pendingOut.isEmpty {
                let r = pendingOut.withUnsafeBytes { try? Posix.write(fd, from: $0) }
                guard case .processed(let n)? = r else { return }
                pendingOut.removeFirst(n)
                if !pendingOut.isEmpty { return }
            }
            var data: UnsafePointer<UInt8>?
            let n = nghttp2_session_mem_send(session, &data)
            if n <= 0 { return }
            pendingOut += UnsafeBufferPointer(start: data, count: n)
        }
    }
}
