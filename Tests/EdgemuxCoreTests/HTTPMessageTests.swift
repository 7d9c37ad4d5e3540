import Testing
@testable import EdgemuxCore

@Suite("request-mode messages: HTTP/1.1 request heads for a backend")
struct HTTPMessageTests {
    func head(_ fields: [(String, String)], method: String = "GET", endStream: Bool = true) -> RequestHead {
        var h = RequestHead()
        h.method = method
        h.scheme = "https"
        h.authority = "example.com"
        h.path = "/p"
        h.endStream = endStream
        for (n, v) in fields { h.fields.append(n, v) }
        return h
    }

    func text(_ h: RequestHead, _ mode: ForwardedMode) -> String {
        let client = ClientIdentity(address: "192.0.2.7", scheme: "https")
        return String(decoding: HTTP1Serializer.requestHead(h, forwarded: mode, via: nil, client: client).bytes, as: UTF8.self)
    }

    func lines(_ text: String, _ prefix: String) -> [String] {
        text.components(separatedBy: "\r\n").filter { $0.lowercased().hasPrefix(prefix.lowercased()) }
    }

    @Test("forwarded: append writes one X-Forwarded-For with every prior hop, replace only the client, off leaves the request's")
    func forwardingFields() {
        let h = head([("x-forwarded-for", "10.0.0.1"), ("x-forwarded-for", "10.0.0.2"), ("forwarded", "for=10.0.0.1")])
        let appended = text(h, .append)
        #expect(lines(appended, "x-forwarded-for:") == ["X-Forwarded-For: 10.0.0.1, 10.0.0.2, 192.0.2.7"], "\(appended)")
        #expect(lines(appended, "forwarded:") == ["Forwarded: for=10.0.0.1, for=192.0.2.7;proto=https;host=\"example.com\""], "\(appended)")
        let replaced = text(h, .replace)
        #expect(lines(replaced, "x-forwarded-for:") == ["X-Forwarded-For: 192.0.2.7"], "\(replaced)")
        #expect(lines(replaced, "x-forwarded-proto:") == ["X-Forwarded-Proto: https"])
        let off = text(h, .off)
        #expect(lines(off, "x-forwarded-for:") == ["X-Forwarded-For: 10.0.0.1", "X-Forwarded-For: 10.0.0.2"], "\(off)")
    }

    @Test("Host from the authority, cookies joined, hop-by-hop fields dropped, chunked when a body has no length")
    func translation() {
        let h = head([("cookie", "a=1"), ("cookie", "b=2"), ("te", "trailers"), ("keep-alive", "5"), ("content-type", "text/plain")], method: "POST", endStream: false)
        let t = text(h, .off)
        #expect(t.hasPrefix("POST /p HTTP/1.1\r\nHost: example.com\r\n"), "\(t)")
        #expect(lines(t, "cookie:") == ["Cookie: a=1; b=2"])
        #expect(lines(t, "te:").isEmpty && lines(t, "keep-alive:").isEmpty)
        #expect(lines(t, "transfer-encoding:") == ["Transfer-Encoding: chunked"])
        #expect(lines(t, "content-type:") == ["Content-Type: text/plain"])
        #expect(lines(text(head([], method: "POST"), .off), "content-length:") == ["Content-Length: 0"])
    }
}
