import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A listener whose routes are all request routes: `/api/` to an h2c-only backend (HTTP/1.1
/// clients are translated to HTTP/2), WebSocket upgrades to a WebSocket server, the rest to an
/// HTTP/1.1-only backend.
func http1RequestModeConfig(port: UInt16, http1: UInt16, h2c: UInt16, ws: UInt16 = 1, admin: UInt16? = nil, drain: String = "20s") -> String {
    """
    workers: 1
    access_log: stdout
    drain_timeout: \(drain)
    \(admin.map { "admin:\n  listen: 127.0.0.1:\($0)" } ?? "")
    listeners:
      - name: public
        listen: 127.0.0.1:\(port)
    \(tlsBlock())
        routes:
          - name: api
            match: { path_prefix: /api/ }
            backend: api
          - name: chat
            match: { upgrade: websocket }
            backend: chat
          - name: web
            backend: web
    backends:
      web:
        endpoints: { http1: ["127.0.0.1:\(http1)"] }
      api:
        protocol: h2c
        endpoints: ["127.0.0.1:\(h2c)"]
      chat:
        endpoints: ["127.0.0.1:\(ws)"]
    """
}

/// Runs peers.py's raw TLS client: sends `send` (a Python bytes literal), prints what came back.
func rawHTTP1(_ port: UInt16, _ send: String, show: Int = 4000, timeout: Double = 10) -> String {
    Command.run(Paths.python, [Paths.peers, "raw-tls", "--port", "\(port)", "--ca", TestCerts.ca, "--alpn", "http/1.1",
                               "--send", send, "--show", "\(show)", "--timeout", "\(timeout)"], timeout: timeout + 10).stdout
}

extension Integration {
    @Suite("request mode: HTTP/1.1 clients, each request routed on its own", .serialized)
    struct HTTP1RequestModeTests {
        /// edgemux in front of an HTTP/1.1 peer ("plain") and an h2c one ("api-h2", under /api/).
        func behindBothBackends() throws -> ([Background], Edgemux, UInt16) {
            let (h1, h1Port) = try startPeer("http1", ["--name", "plain"])
            let (h2c, h2cPort) = try H2Peers.start("h2c-digest", ["--name", "api-h2"])
            let port = freePort()
            let e = try Edgemux(config: http1RequestModeConfig(port: port, http1: h1Port, h2c: h2cPort), port: port)
            return ([h1, h2c], e, port)
        }

        @Test("one keep-alive connection: requests routed each on its own, to an HTTP/1.1 backend and (translated) to an h2c-only one; bodies both ways; one log line per request")
        func perRequestRouting() throws {
            let (peers, e, port) = try behindBothBackends()
            defer { peers.forEach { $0.stop() } }
            let base = "https://localhost:\(port)"
            let r = curl(["--http1.1", "-w", "[%{num_connects} %{http_version}]\n", "\(base)/a", "\(base)/api/x?q=1", "\(base)/b"], port: port)
            #expect(r.stdout == """
                plain GET /a host=localhost:\(port)
                [1 1.1]
                api-h2 GET /api/x?q=1 authority=localhost:\(port)
                [0 1.1]
                plain GET /b host=localhost:\(port)
                [0 1.1]

                """, "\(r.stdout) \(r.stderr) \(e.log)")
            // Uploads with a length (curl sends Expect: 100-continue for this size) and chunked,
            // to both backends; the h2c backend's answer has no length (chunked to the client).
            let scratch = Scratch("h1rm")
            let size = 3 << 20
            let want = Command.run(Paths.python, [Paths.peers, "blob-sha256", "--seed", "3", "--size", "\(size)", "--out", scratch.file("up")], timeout: 60)
                .stdout.trimmingCharacters(in: .whitespacesAndNewlines)
            for path in ["/sha", "/api/sha"] {
                let withLength = curl(["--http1.1", "--data-binary", "@\(scratch.file("up"))", "\(base)\(path)"], port: port, timeout: 60)
                #expect(withLength.stdout == "\(want) \(size)\n", "\(path): \(withLength.stdout) \(withLength.stderr) \(e.log)")
                let chunked = Command.run("/bin/bash", ["-c", "cat \(scratch.file("up")) | /usr/bin/curl -sS --cacert \(TestCerts.ca) --resolve localhost:\(port):127.0.0.1 --http1.1 -H 'Transfer-Encoding: chunked' -T - -X POST \(base)\(path)"], timeout: 60)
                #expect(chunked.stdout == "\(want) \(size)\n", "chunked \(path): \(chunked.stdout) \(chunked.stderr)")
            }
            let h2Answer = curl(["--http1.1", "-i", "\(base)/api/framing"], port: port)
            // Its trailer comes after the body, in the chunked encoding's trailer section.
            #expect(h2Answer.stdout.contains("Transfer-Encoding: chunked\r\n") && h2Answer.stdout.contains("api-h2 GET /api/framing authority=localhost:\(port)\nX-Digest-Done: 1"), "\(h2Answer.stdout)")
            let down = curl(["--http1.1", "-o", scratch.file("down"), "-w", "%{http_code} %{size_download}", "\(base)/blob?size=\(size)&seed=3"], port: port, timeout: 60)
            #expect(down.stdout == "200 \(size)", "\(down.stdout) \(down.stderr)")
            #expect(Command.run("/usr/bin/sha256sum", [scratch.file("down")]).stdout.hasPrefix(want))
            // HTTP/1.0: no chunking for it; the body ends with the connection.
            let old = rawHTTP1(port, #"b"GET /api/old HTTP/1.0\r\nHost: localhost\r\n\r\n""#)
            #expect(old.contains("HTTP/1.1 200 OK\\r\\n") && old.contains("Connection: close\\r\\n") && !old.contains("chunked") && old.contains("api-h2 GET /api/old"), "\(old)")
            let lines = eventually { () -> [String]? in
                let l = requestLines(e.log, path: "/api/x?q=1")
                return l.isEmpty ? nil : l
            } ?? []
            #expect(lines.count == 1 && lines[0].contains("\"protocol\":\"http/1.1\"") && lines[0].contains("\"stream\":2") && lines[0].contains("\"route\":\"api\"")
                    && lines[0].contains("\"upstream_protocol\":\"h2\"") && lines[0].contains("\"status\":200"), "\(lines) \(e.log)")
        }

        @Test("pipelined requests are answered in order, across backends")
        func pipelining() throws {
            let (peers, e, port) = try behindBothBackends()
            defer { peers.forEach { $0.stop() } }
            let out = rawHTTP1(port, #"b"GET /p1 HTTP/1.1\r\nHost: localhost\r\n\r\nPOST /api/p2 HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhelloGET /p3 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n""#)
            let p1 = out.range(of: "plain GET /p1"), p2 = out.range(of: "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824 5"), p3 = out.range(of: "plain GET /p3")
            #expect(p1 != nil && p2 != nil && p3 != nil, "\(out) \(e.log)")
            if let p1, let p2, let p3 { #expect(p1.lowerBound < p2.lowerBound && p2.lowerBound < p3.lowerBound, "\(out)") }
            #expect(out.hasPrefix("closed after"), "the last request asked to close: \(out)")
        }

        @Test("request smuggling and malformed heads: 400 (or 501) and close; the backend never sees them")
        func smugglingDefences() throws {
            let (h1, h1Port) = try startPeer("http1", ["--name", "plain"])
            defer { h1.stop() }
            let port = freePort(), admin = freePort()
            let e = try Edgemux(config: http1RequestModeConfig(port: port, http1: h1Port, h2c: 1, admin: admin), port: port)
            let cases: [(String, String)] = [
                ("CL and TE", #"b"POST /s1 HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n""#),
                ("two CLs", #"b"POST /s2 HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nhello""#),
                ("CL not a number", #"b"POST /s3 HTTP/1.1\r\nHost: localhost\r\nContent-Length: +4\r\n\r\nabcd""#),
                ("obs-fold", #"b"GET /s4 HTTP/1.1\r\nHost: localhost\r\nX-A: b\r\n c\r\n\r\n""#),
                ("bare LF", #"b"GET /s5 HTTP/1.1\nHost: localhost\n\n""#),
                ("bare CR", #"b"GET /s6 HTTP/1.1\r\nHost: localhost\rX: y\r\n\r\n""#),
                ("space before colon", #"b"GET /s7 HTTP/1.1\r\nHost : localhost\r\n\r\n""#),
                ("no Host", #"b"GET /s8 HTTP/1.1\r\n\r\n""#),
                ("TE not ending in chunked", #"b"POST /s9 HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked, identity\r\n\r\n""#),
                ("two hosts in one Host", #"b"GET /s13 HTTP/1.1\r\nHost: localhost, other\r\n\r\n""#),
                ("empty Transfer-Encoding", #"b"POST /s14 HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: ,\r\nContent-Length: 3\r\n\r\nabc""#),
                ("bad chunk size", #"b"POST /s10 HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n""#),
                ("stray % in the path", #"b"GET /s15/%%361dmin HTTP/1.1\r\nHost: localhost\r\n\r\n""#),
                ("method of 40 bytes", #"b"GETGETGETGETGETGETGETGETGETGETGETGETGETG /s16 HTTP/1.1\r\nHost: localhost\r\n\r\n""#),
            ]
            for (what, bytes) in cases {
                let out = rawHTTP1(port, bytes)
                #expect(out.hasPrefix("closed after") && out.contains("HTTP/1.1 400 Bad Request"), "\(what): \(out)")
            }
            let gzip = rawHTTP1(port, #"b"POST /s11 HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n""#)
            #expect(gzip.contains("HTTP/1.1 501 Not Implemented"), "\(gzip)")
            // A valid request, then one that is not: the first is answered, then 400 and close.
            let mixed = rawHTTP1(port, #"b"GET /ok HTTP/1.1\r\nHost: localhost\r\n\r\nGET /s12 HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx""#)
            #expect(mixed.contains("plain GET /ok") && mixed.contains("HTTP/1.1 400 Bad Request"), "\(mixed)")
            // A later request of a kept connection with a stray "%": 400 for it alone.
            let stray = rawHTTP1(port, #"b"GET /ok2 HTTP/1.1\r\nHost: localhost\r\n\r\nGET /s17/%zz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n""#)
            #expect(stray.contains("plain GET /ok2") && stray.contains("HTTP/1.1 400 Bad Request") && stray.contains("invalid percent-encoding"), "\(stray)")
            #expect(!e.log.contains("GET /s"), "no smuggled request was routed: \(e.log)")
            let m = curl(["http://127.0.0.1:\(admin)/metrics"], port: admin).stdout
            #expect(m.contains("h1_framing"), "\(m)")
            #expect(curl(["--http1.1", "https://localhost:\(port)/after"], port: port).stdout.hasPrefix("plain GET /after"))
        }

        @Test("a backend response with both Transfer-Encoding: chunked and Content-Length is framed by its chunks for the client, over HTTP/1.1 and HTTP/2")
        func chunkedWinsOverLength() throws {
            let (raw, rawPort) = try startPeer("raw-http1", ["--behaviour", "chunked-and-length"])
            defer { raw.stop() }
            let port = freePort()
            let e = try Edgemux(config: http1RequestModeConfig(port: port, http1: rawPort, h2c: 1), port: port)
            // Two requests on one connection: the second answer is whole and the first did not spill into it.
            let h1 = curl(["--http1.1", "https://localhost:\(port)/a", "https://localhost:\(port)/b"], port: port)
            #expect(h1.stdout == "answer 1 framed by chunks, not by its length\nanswer 2 framed by chunks, not by its length\n", "\(h1.stdout) \(h1.stderr) \(e.log)")
            let h2 = curl(["--http2", "https://localhost:\(port)/c"], port: port)
            #expect(h2.status == 0 && h2.stdout == "answer 3 framed by chunks, not by its length\n", "\(h2.stdout) \(h2.stderr) \(e.log)")
        }

        @Test("a WebSocket upgrade after a plain request on the same connection becomes a relay")
        func upgradeAfterRequest() throws {
            let (h1, h1Port) = try startPeer("http1", ["--name", "plain"])
            defer { h1.stop() }
            let (ws, wsPort) = try startPeer("ws")
            defer { ws.stop() }
            let port = freePort()
            let e = try Edgemux(config: http1RequestModeConfig(port: port, http1: h1Port, h2c: 1, ws: wsPort), port: port)
            let key = "dGhlIHNhbXBsZSBub25jZQ=="
            let out = rawHTTP1(port, #"b"GET /first HTTP/1.1\r\nHost: localhost\r\n\r\nGET /chat HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: \#(key)\r\nSec-WebSocket-Version: 13\r\n\r\n""#, timeout: 3)
            #expect(out.contains("plain GET /first") && out.contains("HTTP/1.1 101 Switching Protocols") && out.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "\(out) \(e.log)")
            // And a WebSocket client from the start of a connection.
            let r = Command.run(Paths.python, [Paths.peers, "ws-client", "--url", "wss://localhost:\(port)/chat", "--ca", TestCerts.ca, "--count", "5"], timeout: 30)
            #expect(r.stdout.contains("ok websocket 5"), "\(r.stdout) \(r.stderr) \(e.log)")
        }

        @Test("drain: an idle keep-alive connection is closed at once; a busy one gets Connection: close on its response")
        func drain() throws {
            let (slow, slowPort) = try H2Peers.start("slow-http1", ["--delay-ms", "1500"])
            defer { slow.stop() }
            let port = freePort()
            let e = try Edgemux(config: http1RequestModeConfig(port: port, http1: slowPort, h2c: 1), port: port)
            // Idle: one request answered, then the connection waits for another.
            let idle = try Background("idle", Paths.python, [Paths.peers, "raw-tls", "--port", "\(port)", "--ca", TestCerts.ca, "--alpn", "http/1.1",
                                                             "--show", "400", "--send", #"b"GET /idle HTTP/1.1\r\nHost: localhost\r\n\r\n""#, "--timeout", "15"])
            // Busy: the request is still at the backend when the drain starts.
            let busy = try Background("busy", Paths.python, [Paths.peers, "raw-tls", "--port", "\(port)", "--ca", TestCerts.ca, "--alpn", "http/1.1", "--show", "400",
                                                             "--send", "", "--pause", "1.7", "--then", #"b"GET /busy HTTP/1.1\r\nHost: localhost\r\n\r\n""#, "--timeout", "15"])
            #expect(eventually(timeout: 10) { e.log.contains("\"path\":\"/idle\"") ? true : nil } == true, "\(e.log)")
            usleep(500_000)
            e.background.signal(SIGTERM)
            #expect(idle.waitExit(timeout: 5) != nil)
            #expect(busy.waitExit(timeout: 10) != nil)
            #expect(idle.log.contains("slow /idle") && idle.log.hasPrefix("closed after"), "\(idle.log)")
            #expect(busy.log.contains("slow /busy") && busy.log.contains("Connection: close") && busy.log.hasPrefix("closed after"), "\(busy.log) \(e.log)")
        }
    }
}

extension Integration {
    @Suite("a real browser through request mode", .serialized)
    struct BrowserTests {
        @Test("Chromium (headless) loads a page with several resources over HTTP/2 from an HTTP/1.1-only backend, and opens a WebSocket through it")
        func chromiumPage() throws {
            let www = Scratch("browser")
            let port = freePort()
            try """
                <!doctype html><html><head><link rel="stylesheet" href="/style.css"><script src="/app.js"></script></head>
                <body><img id="pixel" src="/pixel.svg"><p id="out">waiting</p></body></html>
                """.write(toFile: www.file("index.html"), atomically: true, encoding: .utf8)
            try "#out { color: rgb(1, 2, 3); }\n".write(toFile: www.file("style.css"), atomically: true, encoding: .utf8)
            try #"<svg xmlns="http://www.w3.org/2000/svg" width="3" height="2"><rect width="3" height="2"/></svg>"#.write(toFile: www.file("pixel.svg"), atomically: true, encoding: .utf8)
            try #"{"answer": 42}"#.write(toFile: www.file("data.json"), atomically: true, encoding: .utf8)
            // The page reports what it saw with one more request, which the test finds in the log.
            try """
                window.addEventListener("load", async () => {
                  const out = document.getElementById("out");
                  const parts = [];
                  parts.push("css-" + (getComputedStyle(out).color == "rgb(1, 2, 3)" ? "ok" : "bad"));
                  parts.push("img-" + document.getElementById("pixel").naturalWidth);
                  parts.push("json-" + (await (await fetch("/data.json")).json()).answer);
                  const ws = new WebSocket("wss://localhost:\(port)/chat");
                  ws.onopen = () => ws.send("hello-ws");
                  ws.onmessage = (m) => {
                    parts.push("ws-" + (m.data == "echo:hello-ws" ? "ok" : "bad"));
                    ws.close();
                    fetch("/report/" + parts.join("_"));
                  };
                  ws.onerror = () => fetch("/report/ws-error_" + parts.join("_"));
                });
                """.write(toFile: www.file("app.js"), atomically: true, encoding: .utf8)
            let (h1, h1Port) = try startPeer("http1", ["--name", "site", "--www", www.path])
            defer { h1.stop() }
            let (ws, wsPort) = try startPeer("ws")
            defer { ws.stop() }
            let e = try Edgemux(config: http1RequestModeConfig(port: port, http1: h1Port, h2c: 1, ws: wsPort), port: port)
            let profile = Scratch("chromium-profile")
            let browser = try Background("chromium", "/usr/bin/chromium", ["--headless", "--no-sandbox", "--disable-gpu", "--ignore-certificate-errors", "--no-first-run",
                                                                              "--user-data-dir=\(profile.path)", "--host-resolver-rules=MAP localhost 127.0.0.1",
                                                                              "https://localhost:\(port)/index.html"])
            defer { browser.stop() }
            let report = eventually(timeout: 60) { requestLines(e.log, path: "/report/css-ok_img-3_json-42_ws-ok").first }
            #expect(report != nil, "\(e.log) \(browser.log.suffix(3000))")
            // The page and its resources came over HTTP/2, each a request of its own; the WebSocket
            // went over HTTP/1.1 (Chromium opens it on a connection of its own) through the relay.
            for path in ["/index.html", "/style.css", "/app.js", "/pixel.svg", "/data.json"] {
                let lines = requestLines(e.log, path: path)
                #expect(lines.contains { $0.contains("\"protocol\":\"h2\"") && $0.contains("\"status\":200") && $0.contains("\"upstream_protocol\":\"http/1.1\"") }, "\(path): \(lines) \(e.log)")
            }
            #expect(e.log.contains("\"route\":\"chat\""), "\(e.log)")
        }
    }
}

extension Integration {
    @Suite("request mode: choosing the endpoint per request", .serialized)
    struct BalanceTests {
        func config(port: UInt16, fast: UInt16, slow: UInt16, balance: String) -> String {
            """
            workers: 1
            access_log: stdout
            listeners:
              - name: public
                listen: 127.0.0.1:\(port)
            \(tlsBlock())
                routes:
                  - name: web
                    backend: web
            backends:
              web:
                balance: \(balance)
                endpoints: { http1: ["127.0.0.1:\(slow)", "127.0.0.1:\(fast)"] }
            """
        }

        /// Requests of one run that each endpoint served, from the access log.
        func served(_ log: String, _ port: UInt16) -> Int {
            log.split(separator: "\n").filter { $0.contains("\"path\":\"/lr\"") && $0.contains("\"endpoint\":\"127.0.0.1:\(port)\"") }.count
        }

        @Test("least_request sends most requests to the endpoint that answers sooner; round_robin splits them evenly")
        func leastRequest() throws {
            let (fast, fastPort) = try startPeer("http1", ["--name", "fast"])
            defer { fast.stop() }
            let (slow, slowPort) = try H2Peers.start("slow-http1", ["--delay-ms", "300"])
            defer { slow.stop() }
            for balance in ["least_request", "round_robin"] {
                let port = freePort()
                let e = try Edgemux(config: config(port: port, fast: fastPort, slow: slowPort, balance: balance), port: port)
                // 20 requests in flight at a time, 200 in all.
                let load = Command.run("/usr/bin/h2load", ["-n", "200", "-c", "2", "-m", "10", "https://127.0.0.1:\(port)/lr"], timeout: 120)
                #expect(load.stdout.contains("200 succeeded, 0 failed"), "\(load.stdout) \(e.log)")
                let counts = eventually(timeout: 10) { () -> (Int, Int)? in
                    let f = served(e.log, fastPort), s = served(e.log, slowPort)
                    return f + s == 200 ? (f, s) : nil
                }
                guard let (f, s) = counts else {
                    Issue.record("\(balance): not every request was logged: \(e.log.suffix(2000))")
                    continue
                }
                if balance == "least_request" {
                    #expect(f >= 4 * s, "least_request: fast \(f), slow \(s)")
                } else {
                    #expect(abs(f - s) <= 2, "round_robin: fast \(f), slow \(s)")
                }
                e.stop()
            }
        }
    }
}
