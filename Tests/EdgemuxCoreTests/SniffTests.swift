import CEdgemux
import Testing

@testable import EdgemuxCore

/// Encodes a header list with nghttp2's HPACK deflater (a real encoder, as clients use).
func hpack(_ headers: [(String, String)], deflater: OpaquePointer? = nil) -> [UInt8] {
    var d = deflater
    if d == nil { nghttp2_hd_deflate_new(&d, 4096) }
    defer { if deflater == nil { nghttp2_hd_deflate_del(d) } }
    var names = headers.map { Array($0.0.utf8) }
    var values = headers.map { Array($0.1.utf8) }
    var nva: [nghttp2_nv] = []
    for i in 0..<headers.count {
        let n = names[i].withUnsafeMutableBufferPointer { $0.baseAddress! }
        let v = values[i].withUnsafeMutableBufferPointer { $0.baseAddress! }
        nva.append(nghttp2_nv(name: n, value: v, namelen: names[i].count, valuelen: values[i].count, flags: 0))
    }
    var out = [UInt8](repeating: 0, count: 4096)
    let n = withExtendedLifetime((names, values)) { nghttp2_hd_deflate_hd(d, &out, out.count, &nva, nva.count) }
    return Array(out[0..<n])
}

func frame(_ type: UInt8, flags: UInt8 = 0, stream: UInt32 = 0, _ payload: [UInt8] = []) -> [UInt8] {
    ErrorAnswers.frameHeader(length: payload.count, type: type, flags: flags, stream: stream) + payload
}

let clientSettings = frame(H2.settings, [0, 3, 0, 0, 0, 100, 0, 4, 0, 0x60, 0, 0])
let ack = frame(H2.settings, flags: H2.flagAck)
let grpcHeaders: [(String, String)] = [(":method", "POST"), (":scheme", "https"), (":path", "/agent.Stream/Connect"),
                                       (":authority", "platform.example:443"), ("content-type", "application/grpc+proto"), ("te", "trailers")]

@Suite("HTTP/2 sniffer")
struct HTTP2SnifferTests {
    func sniff(_ bytes: [UInt8], byteByByte: Bool = false) -> HTTP2Sniffer.Result {
        var s = HTTP2Sniffer(cap: 32768)
        if byteByByte {
            for n in 1...bytes.count {
                let r = Array(bytes[0..<n]).withUnsafeBytes { s.parse($0) }
                if r != .needMore { return r }
            }
            return .needMore
        }
        return bytes.withUnsafeBytes { s.parse($0) }
    }

    @Test func decodesFirstHeaders() {
        let block = hpack(grpcHeaders)
        let bytes = H2.preface + clientSettings + frame(H2.windowUpdate, [0, 0, 0xff, 0]) + frame(H2.headers, flags: H2.flagEndHeaders, stream: 1, block)
        for byteByByte in [false, true] {
            guard case .done(let info, let end, let dropped) = sniff(bytes, byteByByte: byteByByte) else {
                Issue.record("not done")
                return
            }
            #expect(info.method == "POST")
            #expect(info.path == "/agent.Stream/Connect")
            #expect(info.host == "platform.example")
            #expect(info.contentType == "application/grpc+proto")
            #expect(end == bytes.count)
            #expect(dropped == nil)
        }
    }

    @Test func headersWithContinuationPaddingAndPriority() {
        let block = hpack(grpcHeaders + [("x-long", String(repeating: "v", count: 300))])
        let first = Array(block[0..<20]), second = Array(block[20..<100]), third = Array(block[100...])
        let padded: [UInt8] = [3] + [0, 0, 0, 0, 16] + first + [0, 0, 0]
        let bytes = H2.preface + clientSettings + frame(H2.headers, flags: H2.flagPadded | H2.flagPriority, stream: 3, padded)
            + frame(H2.continuation, stream: 3, second) + frame(H2.continuation, flags: H2.flagEndHeaders, stream: 3, third)
        guard case .done(let info, _, _) = sniff(bytes, byteByByte: true) else {
            Issue.record("not done")
            return
        }
        #expect(info.contentType == "application/grpc+proto")
    }

    @Test func ackBeforeHeadersIsReportedForDropping() {
        let block = hpack(grpcHeaders)
        let bytes = H2.preface + clientSettings + ack + frame(H2.headers, flags: H2.flagEndHeaders, stream: 1, block)
        guard case .done(_, _, let dropped) = sniff(bytes) else {
            Issue.record("not done")
            return
        }
        let start = H2.preface.count + clientSettings.count
        #expect(dropped == start..<(start + 9))
    }

    /// Frame rules of RFC 9113 section 6 broken before the first request are refused when the
    /// bytes that break them arrive (a frame header alone is enough), each with its error code.
    @Test func frameRulesBeforeTheFirstRequest() {
        let start = H2.preface + clientSettings
        let cases: [([UInt8], SniffError)] = [
            (ErrorAnswers.frameHeader(length: 8, type: H2.ping, flags: 0, stream: 3), .protocolError("PING on stream 3")),
            (ErrorAnswers.frameHeader(length: 7, type: H2.ping, flags: 0, stream: 0), .frameSizeError("PING of 7 bytes")),
            (ErrorAnswers.frameHeader(length: 4, type: H2.windowUpdate, flags: 0, stream: 5), .protocolError("WINDOW_UPDATE on idle stream 5")),
            (ErrorAnswers.frameHeader(length: 3, type: H2.windowUpdate, flags: 0, stream: 0), .frameSizeError("WINDOW_UPDATE of 3 bytes")),
            (frame(H2.windowUpdate, [0, 0, 0, 0]), .protocolError("WINDOW_UPDATE with an increment of 0")),
            (frame(H2.windowUpdate, [0x7f, 0xff, 0xff, 0xff]), .flowControlError("connection window grows beyond 2^31-1")),
            (ErrorAnswers.frameHeader(length: 5, type: H2.priority, flags: 0, stream: 0), .protocolError("PRIORITY on stream 0")),
            (ErrorAnswers.frameHeader(length: 4, type: H2.priority, flags: 0, stream: 1), .frameSizeError("PRIORITY of 4 bytes")),
            (frame(H2.priority, stream: 7, [0, 0, 0, 7, 16]), .protocolError("PRIORITY on stream 7 depends on itself")),
            (ErrorAnswers.frameHeader(length: 6, type: H2.settings, flags: 0, stream: 1), .protocolError("SETTINGS on stream 1")),
            (ErrorAnswers.frameHeader(length: 7, type: H2.settings, flags: 0, stream: 0), .frameSizeError("SETTINGS of 7 bytes, not a multiple of 6")),
            (ErrorAnswers.frameHeader(length: 6, type: H2.settings, flags: H2.flagAck, stream: 0), .frameSizeError("SETTINGS ACK with a payload")),
            (frame(H2.settings, [0, 2, 0, 0, 0, 2]), .protocolError("SETTINGS_ENABLE_PUSH of 2")),
            (frame(H2.settings, [0, 4, 0x80, 0, 0, 0]), .flowControlError("SETTINGS_INITIAL_WINDOW_SIZE of 2147483648")),
            (frame(H2.settings, [0, 5, 0, 0, 0x3f, 0xff]), .protocolError("SETTINGS_MAX_FRAME_SIZE of 16383")),
            (frame(H2.settings, [0, 8, 0, 0, 0, 3]), .protocolError("SETTINGS_ENABLE_CONNECT_PROTOCOL of 3")),
            (ErrorAnswers.frameHeader(length: 10, type: H2.headers, flags: 0, stream: 0), .protocolError("HEADERS on stream 0")),
            (frame(H2.headers, flags: H2.flagPriority | H2.flagEndHeaders, stream: 9, [0, 0, 0, 9, 16] + hpack(grpcHeaders)),
             .protocolError("HEADERS on stream 9 depends on itself")),
        ]
        for (bytes, expected) in cases {
            #expect(sniff(start + bytes) == .error(expected), "\(expected)")
        }
        // Frames that keep the rules still pass: PING, PRIORITY, WINDOW_UPDATE and an unknown
        // extension frame before the request.
        let fine = start + frame(H2.ping, [1, 2, 3, 4, 5, 6, 7, 8]) + frame(H2.priority, stream: 3, [0, 0, 0, 0, 16])
            + frame(H2.windowUpdate, [0, 0x0f, 0, 0]) + frame(0xfa, stream: 1, [1, 2, 3])
            + frame(H2.headers, flags: H2.flagEndHeaders, stream: 1, hpack(grpcHeaders))
        guard case .done = sniff(fine, byteByByte: true) else {
            Issue.record("frames within the rules were refused")
            return
        }
    }

    @Test func errors() {
        #expect(sniff(Array("GET / HTTP/1.1\r\n".utf8)) == .error(.badPreface))
        #expect(sniff(H2.preface + frame(H2.ping, [0, 0, 0, 0, 0, 0, 0, 0])) == .error(.protocolError("client preface not followed by SETTINGS")))
        #expect(sniff(H2.preface + clientSettings + frame(H2.data, stream: 1, [1])) == .error(.protocolError("frame type 0 before any HEADERS")))
        #expect(sniff(H2.preface + clientSettings + frame(H2.headers, flags: H2.flagEndHeaders, stream: 2, hpack(grpcHeaders))) == .error(.protocolError("HEADERS on stream 2")))
        #expect(sniff(H2.preface + clientSettings + frame(H2.headers, flags: H2.flagEndHeaders, stream: 1, [0xff, 0xff, 0xff, 0xff])) == .error(.badHeaderBlock))
        var huge = H2.preface + clientSettings
        huge += ErrorAnswers.frameHeader(length: 20000, type: H2.headers, flags: 0, stream: 1)
        #expect(sniff(huge) == .error(.frameTooLarge(20000)))
        let headers = frame(H2.headers, stream: 1, hpack(grpcHeaders))
        #expect(sniff(H2.preface + clientSettings + headers + frame(H2.ping, [0, 0, 0, 0, 0, 0, 0, 0])) == .error(.protocolError("header block interrupted by a frame of type 6")))
        var s = HTTP2Sniffer(cap: 1024)
        var endless = H2.preface + clientSettings
        for _ in 0..<200 { endless += frame(H2.ping, [0, 0, 0, 0, 0, 0, 0, 0]) }
        #expect(endless.withUnsafeBytes { s.parse($0) } == .error(.headTooLarge(1024)))
    }
}

@Suite("SETTINGS ACK filter")
struct SettingsAckFilterTests {
    /// Runs `stream` through the filter in pieces cut at `cuts`, as the relay does.
    func run(_ stream: [UInt8], cuts: [Int]) -> [UInt8] {
        var filter = SettingsAckFilter()
        var out: [UInt8] = []
        let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 8)
        defer { scratch.deallocate() }
        var start = 0
        for end in cuts + [stream.count] where end >= start {
            var filled = filter.done ? 0 : filter.takeHeld(into: scratch)
            let piece = stream[start..<end]
            UnsafeMutableRawBufferPointer(rebasing: scratch[filled...]).copyBytes(from: piece)
            filled += piece.count
            let n = filter.done ? filled : filter.filter(scratch, count: filled)
            out += scratch[0..<n]
            start = end
        }
        out += filter.held
        return out
    }

    @Test func dropsExactlyOneAckWhereverTheReadsSplit() {
        let data = frame(H2.data, stream: 1, Array(repeating: 7, count: 40))
        let ping = frame(H2.ping, [1, 2, 3, 4, 5, 6, 7, 8])
        let before = data + ping
        let after = frame(H2.windowUpdate, [0, 0, 1, 0]) + ack + data
        let stream = before + ack + after
        for cut in 0...stream.count {
            #expect(run(stream, cuts: [cut]) == before + after, "cut at \(cut)")
        }
        for a in stride(from: 0, to: stream.count, by: 3) {
            #expect(run(stream, cuts: [a, min(stream.count, a + 5)]) == before + after)
        }
    }

    @Test func anAckInsideAPayloadIsData() {
        let payload = ack + ack
        let data = frame(H2.data, stream: 1, payload)
        #expect(run(data + ack + ack, cuts: [4, 11]) == data + ack)
    }
}

@Suite("HTTP/1.1 head parser")
struct HTTP1HeadParserTests {
    let parser = HTTP1HeadParser(cap: 1024)

    func parse(_ text: String) -> HTTP1HeadParser.Result {
        Array(text.utf8).withUnsafeBytes { parser.parse($0) }
    }

    @Test func parsesRoutingFields() {
        let head = "GET /chat?x=1 HTTP/1.1\r\nHost: Platform.Example:8443\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\nContent-Type:  text/plain \r\n\r\nbody"
        guard case .done(let info, let length) = parse(head) else {
            Issue.record("not done")
            return
        }
        #expect(info.method == "GET")
        #expect(info.path == "/chat?x=1")
        #expect(info.host == "platform.example")
        #expect(info.upgrade == "websocket")
        #expect(info.contentType == "text/plain")
        #expect(length == head.utf8.count - 4)
    }

    @Test("an absolute-form target's authority wins over Host, whatever the case of its scheme")
    func absoluteFormAnyCase() {
        for scheme in ["http", "HTTP", "Https"] {
            guard case .done(let info, _) = parse("GET \(scheme)://Other.Example:8080/api?x HTTP/1.1\r\nHost: localhost\r\n\r\n") else {
                Issue.record("not done for \(scheme)")
                continue
            }
            #expect(info.host == "other.example", "\(scheme)")
            #expect(info.path == "/api?x", "\(scheme)")
        }
    }

    @Test func needsMoreUntilTheEmptyLine() {
        let head = "POST /api HTTP/1.1\r\nHost: a\r\n\r\n"
        for n in 1..<head.utf8.count {
            #expect(Array(head.utf8.prefix(n)).withUnsafeBytes { parser.parse($0) } == .needMore, "prefix \(n)")
        }
    }

    @Test("junk is refused at the byte that makes it junk, before any line ends")
    func junkRefusedEarly() {
        let junk = ["hello world\r", "GE\u{1}T", "GET / HTTX", "GET / HTTP/2", "GET / HTTP/1.1x", "GET  /", "GET /a\u{7f}", "GET /\r",
                    "ABCDEFGHIJKLMNOPQRSTUVWXYZABCDEFGHIJ", "PRI * HTTP/2.0", "{\"json\": 1}", "\u{16}\u{3}\u{1}"]
        for text in junk {
            guard case .error = parse(text) else {
                Issue.record("'\(text)' was not refused")
                continue
            }
        }
        for text in ["\r", "\r\nGET", "M-SEARCH * HTTP/1.", "GET /a%20b?c=d HTTP/1.0", "OPTIONS * HTTP/1.1\r"] {
            #expect(parse(text) == .needMore, "'\(text)'")
        }
    }

    @Test func absoluteFormAndIPv6Host() {
        if case .done(let info, _) = parse("GET http://Example.com:80/a/b HTTP/1.1\r\nHost: other\r\n\r\n") {
            #expect(info.path == "/a/b")
            #expect(info.host == "example.com")
        } else { Issue.record("not done") }
        if case .done(let info, _) = parse("GET / HTTP/1.1\r\nHost: [::1]:8443\r\n\r\n") {
            #expect(info.host == "[::1]")
        } else { Issue.record("not done") }
    }

    @Test func rejectsMalformedHeads() {
        let bad = [
            "GET / HTTP/2.0\r\n\r\n", "GET /\r\n\r\n", "G(T / HTTP/1.1\r\n\r\n", "GET / HTTP/1.1\r\n folded\r\n\r\n",
            "GET / HTTP/1.1\r\nNo colon\r\n\r\n", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "\u{16}\u{3}\u{1}", "GET /a b HTTP/1.1\r\n\r\n",
        ]
        for text in bad {
            guard case .error(.malformedHead) = parse(text) else {
                Issue.record("accepted: \(text.debugDescription)")
                continue
            }
        }
        #expect(parse("GET / HTTP/1.1\r\nX: " + String(repeating: "a", count: 2000)) == .error(.headTooLarge(1024)))
    }
}
