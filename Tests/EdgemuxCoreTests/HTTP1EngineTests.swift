import Testing

@testable import EdgemuxCore

@Suite("HTTP/1.1 exchange engines: response heads, chunked bodies, connection fields")
struct HTTP1EngineTests {
    func parse(_ text: String, head: Bool = false, cap: Int = 4096) -> HTTP1ResponseParser.Result {
        Array(text.utf8).withUnsafeBytes { HTTP1ResponseParser(cap: cap).parse($0, headRequest: head) }
    }

    func done(_ text: String, head: Bool = false) -> HTTP1ResponseHead? {
        if case .done(let h) = parse(text, head: head) { return h }
        return nil
    }

    @Test func responseFraming() {
        let cl = done("HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nbody")
        #expect(cl?.framing == .length(12) && cl?.reusable == true && cl?.headLength == 39 && cl?.status == 200)
        #expect(done("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")?.framing == .chunked)
        #expect(done("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n")?.framing == .untilClose)
        #expect(done("HTTP/1.1 200 OK\r\n\r\n")?.framing == .untilClose)
        #expect(done("HTTP/1.1 200 OK\r\n\r\n")?.reusable == false)
        #expect(done("HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n", head: true)?.framing == BodyFraming.none)
        #expect(done("HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n")?.framing == BodyFraming.none)
        #expect(done("HTTP/1.1 304 Not Modified\r\n\r\n")?.reusable == true)
        #expect(done("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")?.framing == BodyFraming.none)
        #expect(done("HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n")?.framing == .length(5))
        // Both framings: read as chunked, never reused (a smuggling smell).
        let both = done("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n")
        #expect(both?.framing == .chunked && both?.reusable == false)
        #expect(done("HTTP/1.1 200 OK\r\nConnection: Keep-Alive, CLOSE\r\nContent-Length: 1\r\n\r\n")?.reusable == false)
        #expect(done("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n")?.reusable == false)
        #expect(done("HTTP/1.1 200\r\nContent-Length: 1\r\n\r\n")?.status == 200)
    }

    @Test func responseErrorsAndInterim() {
        #expect(parse("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n") == .interim(length: 25))
        #expect(parse("HTTP/1.1 200 OK\r\nContent-Le") == .needMore)
        #expect(parse("HTTP/1.1 2x0 OK\r\n\r\n") == .error("malformed status code"))
        #expect(parse("HTTP/2 200 OK\r\n\r\n") == .error("malformed status line"))
        #expect(parse("HTTP/1.1 101 Switching Protocols\r\n\r\n") == .error("101 Switching Protocols to a request that asked for no upgrade"))
        #expect(parse("HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n") == .error("conflicting Content-Length values"))
        #expect(parse("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n") == .error("invalid Content-Length '-1'"))
        #expect(parse("HTTP/1.1 200 OK\r\nContent-Length: 5, x\r\n\r\n") == .error("invalid Content-Length '5, x'"))
        #expect(parse("HTTP/1.1 200 OK\r\nContent-Length: 1234567890123456789\r\n\r\n") == .error("invalid Content-Length '1234567890123456789'"))
        #expect(done("HTTP/1.1 200 OK\r\nTRANSFER-ENCODING: Chunked\r\n\r\n")?.framing == .chunked, "field names and codings ignore case")
        #expect(parse("HTTP/1.1 200 OK\r\nX: " + String(repeating: "a", count: 100), cap: 64) == .error("response head exceeds 64 bytes"))
    }

    @Test func clientHeadSaysClose() throws {
        let h = try #require(done("HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nKeep-Alive: timeout=5\r\nX-Hop: 1\r\nX-End: 2\r\nContent-Length: 2\r\n\r\n"))
        #expect(String(decoding: h.forClient, as: UTF8.self) == "HTTP/1.1 200 OK\r\nX-End: 2\r\nContent-Length: 2\r\nConnection: close\r\n\r\n")
        // A Connection header that names a framing field cannot make edgemux drop it.
        let f = try #require(done("HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 2\r\n\r\n"))
        #expect(String(decoding: f.forClient, as: UTF8.self) == "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n")
    }

    @Test func backendHeadKeepsTheConnectionOpen() {
        let head = Array("GET /x HTTP/1.1\r\nHost: a\r\nConnection: close, X-Trace\r\nX-Trace: 1\r\nProxy-Connection: close\r\nAccept: */*\r\n\r\n".utf8)
        #expect(String(decoding: HTTP1Exchange.backendHead(head), as: UTF8.self) == "GET /x HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n")
    }

    func request(_ text: String) -> (RequestInfo, Int)? {
        if case .done(let info, let n) = Array(text.utf8).withUnsafeBytes({ HTTP1HeadParser(cap: 8192).parse($0) }) { return (info, n) }
        return nil
    }

    @Test func whichRequestsRunOverKeptConnections() throws {
        func eligible(_ text: String) throws -> Bool {
            let (info, n) = try #require(request(text))
            return HTTP1Exchange.eligible(info, headLength: n, buffered: text.utf8.count)
        }
        #expect(try eligible("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"))
        #expect(try eligible("HEAD / HTTP/1.1\r\nHost: a\r\nConnection: Keep-Alive, Close\r\n\r\n"))
        #expect(try eligible("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"))
        #expect(try !eligible("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), "a kept-alive client is relayed")
        #expect(try !eligible("GET / HTTP/1.0\r\nHost: a\r\nConnection: close\r\n\r\n"))
        #expect(try !eligible("POST / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"), "not idempotent: no retry")
        #expect(try !eligible("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nConnection: close\r\n\r\n"))
        #expect(try !eligible("GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"))
        #expect(try !eligible("GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade, close\r\n\r\n"))
        #expect(try !eligible("GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"))
        let pipelined = "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET /2 HTTP/1.1\r\n"
        let (info, n) = try #require(request(pipelined))
        #expect(!HTTP1Exchange.eligible(info, headLength: n, buffered: pipelined.utf8.count), "bytes after the head: relayed as they are")
    }

    /// Feeds `body` to a scanner in pieces of `step` bytes; returns where it said the body ends.
    func scanEnd(_ body: [UInt8], step: Int) -> Int? {
        var s = ChunkedBodyScanner()
        var offset = 0
        while offset < body.count {
            let piece = Array(body[offset..<min(offset + step, body.count)])
            switch piece.withUnsafeBytes({ s.scan($0) }) {
            case .more: offset += piece.count
            case .done(let n): return offset + n
            case .error: return nil
            }
        }
        return nil
    }

    @Test func chunkedBodiesEndWhereTheySay() {
        let body = Array("5;name=v\r\nhello\r\n1A\r\n\(String(repeating: "z", count: 26))\r\n0\r\nX-Sum: 1\r\nX-B: 2\r\n\r\n".utf8)
        for step in [1, 2, 3, 7, 64, body.count] {
            #expect(scanEnd(body + Array("GET /next".utf8), step: step) == body.count, "step \(step)")
        }
        #expect(scanEnd(Array("0\r\n\r\n".utf8), step: 1) == 5)
        #expect(scanEnd(Array("5\r\nhello\r\n".utf8), step: 3) == nil, "not finished")
        for bad in ["x\r\n", "5\r\nhelloXX", "5\nhello\r\n0\r\n\r\n", "1234567890abcdef0\r\n", "0\r\nX-Bare: 1\n\r\n"] {
            var s = ChunkedBodyScanner()
            let r = Array(bad.utf8).withUnsafeBytes { s.scan($0) }
            if case .error = r {} else { Issue.record("accepted '\(bad)': \(r)") }
        }
    }

    @Test func poolSettingsLoadAndAreChecked() throws {
        let yaml = """
            listeners:
              - name: p
                listen: 127.0.0.1:8080
                routes: [{ name: web, backend: web }]
            backends:
              web:
                endpoints: { http1: [127.0.0.1:9000], h2c: [127.0.0.1:9002] }
                pool: { max_idle: 8, idle_timeout: 3s }
              other:
                endpoints: [127.0.0.1:9001]
            """
        let c = try ConfigLoader.load(yaml: yaml, file: "x.yaml")
        #expect(c.backends["web"]?.pool == BackendPoolConfig(maxIdle: 8, idleTimeoutMillis: 3000))
        #expect(c.backends["other"]?.pool == BackendPoolConfig())
        for (bad, message) in [("{ max_idle: -1 }", "expected a count"), ("{ idle_timeout: 0 }", "must time out"), ("{ max_idel: 3 }", "did you mean 'max_idle'")] {
            do {
                _ = try ConfigLoader.load(yaml: yaml.replacingOccurrences(of: "{ max_idle: 8, idle_timeout: 3s }", with: bad), file: "x.yaml")
                Issue.record("accepted \(bad)")
            } catch {
                #expect("\(error)".contains(message), "\(error)")
            }
        }
    }
}
