import CEdgemux
import Testing

/// The allocator that lets an idle nghttp2 server session give pages back
/// (`CEdgemux_h2_memory_*`), on a real nghttp2 session fed real frames.
@Suite("idle HTTP/2 session memory: the pages given back, and only dead ones")
struct HTTP2MemoryTests {
    /// A server session on the releasing allocator, with edgemux's options that bear on memory
    /// (closed streams not kept); what it sends is dropped.
    final class Session {
        let memory: OpaquePointer
        var session: OpaquePointer?

        init() {
            memory = CEdgemux_h2_memory_new()!
            var cbs: OpaquePointer?
            nghttp2_session_callbacks_new(&cbs)
            nghttp2_session_callbacks_set_send_callback(cbs) { _, _, length, _, _ in Int(length) }
            var opt: OpaquePointer?
            nghttp2_option_new(&opt)
            nghttp2_option_set_no_closed_streams(opt, 1)
            nghttp2_session_server_new3(&session, cbs, nil, opt, CEdgemux_h2_memory_allocator(memory))
            nghttp2_option_del(opt)
            nghttp2_session_callbacks_del(cbs)
        }

        deinit {
            nghttp2_session_del(session)
            CEdgemux_h2_memory_free(memory)
        }

        func receive(_ bytes: [UInt8]) -> Int {
            bytes.withUnsafeBufferPointer { nghttp2_session_mem_recv(session, $0.baseAddress, $0.count) }
        }

        func sendAll() { #expect(nghttp2_session_send(session) == 0) }
    }

    static func frame(type: UInt8, flags: UInt8, stream: UInt32, _ payload: [UInt8]) -> [UInt8] {
        let n = payload.count
        return [UInt8(n >> 16), UInt8(truncatingIfNeeded: n >> 8), UInt8(truncatingIfNeeded: n), type, flags,
                UInt8(stream >> 24), UInt8(truncatingIfNeeded: stream >> 16), UInt8(truncatingIfNeeded: stream >> 8), UInt8(truncatingIfNeeded: stream)] + payload
    }

    /// Client preface and empty SETTINGS.
    static let preface = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8) + frame(type: 4, flags: 0, stream: 0, [])

    /// GET https://localhost/ on `stream`, END_STREAM (static-table HPACK: :method GET,
    /// :scheme https, :path /, :authority as a literal).
    static func get(stream: UInt32) -> [UInt8] {
        frame(type: 1, flags: 0x5, stream: stream, [0x82, 0x87, 0x84, 0x41, 9] + Array("localhost".utf8))
    }

    @Test("a session that served a request gives back its frame buffer and its empty stream table, and serves the next one")
    func releasesDeadPages() {
        let s = Session()
        #expect(s.receive(Self.preface + Self.get(stream: 1)) > 0)
        var nv = [nghttp2_nv]()
        let status = ":status", ok = "200"
        status.withCString { n in
            ok.withCString { v in
                nv = [nghttp2_nv(name: UnsafeMutablePointer(mutating: UnsafeRawPointer(n).assumingMemoryBound(to: UInt8.self)),
                                 value: UnsafeMutablePointer(mutating: UnsafeRawPointer(v).assumingMemoryBound(to: UInt8.self)),
                                 namelen: 7, valuelen: 3, flags: 0)]
                #expect(nghttp2_submit_response(s.session, 1, &nv, 1, nil) == 0)
                s.sendAll()
            }
        }
        #expect(nghttp2_session_find_stream(s.session, 1) == nil)  // closed and gone
        #expect(CEdgemux_h2_memory_release_idle(s.memory) == 16384 + 4096)
        // The next request runs on zero pages.
        #expect(s.receive(Self.get(stream: 3)) > 0)
        #expect(nghttp2_session_find_stream(s.session, 3) != nil)
        #expect(nghttp2_submit_rst_stream(s.session, 0, 3, 0) == 0)
        s.sendAll()
    }

    @Test("a stream table that holds idle streams (made by PRIORITY frames) is kept")
    func keepsLiveTable() {
        let s = Session()
        var bytes = Self.preface
        // 110 PRIORITY frames for streams not yet opened: nghttp2 keeps the last 100 as idle
        // streams in its stream table (and destroys the older ones by looking them up there).
        for i in 0..<110 { bytes += Self.frame(type: 2, flags: 0, stream: UInt32(1001 + 2 * i), [0, 0, 0, 0, 15]) }
        #expect(s.receive(bytes) == bytes.count)
        s.sendAll()
        let last = Int32(1001 + 2 * 109)
        #expect(nghttp2_session_find_stream(s.session, last) != nil)
        #expect(CEdgemux_h2_memory_release_idle(s.memory) == 16384)  // the frame buffer only
        #expect(nghttp2_session_find_stream(s.session, last) != nil)
        var more: [UInt8] = []
        for i in 110..<130 { more += Self.frame(type: 2, flags: 0, stream: UInt32(1001 + 2 * i), [0, 0, 0, 0, 15]) }
        #expect(s.receive(more) == more.count)
        #expect(s.receive(Self.get(stream: 1)) > 0)
        #expect(nghttp2_session_find_stream(s.session, 1) != nil)
    }
}
