import Foundation
import Testing

extension Integration {
    @Suite("kept backend connections on relay routes: one-request clients (Connection: close) reuse them", .serialized)
    struct PoolTests {
        func config(port: UInt16, admin: UInt16, backend: String, extraBackend: String = "") -> String {
            """
            workers: 1
            access_log: stdout
            admin:
              listen: 127.0.0.1:\(admin)
            listeners:
              - name: public
                listen: 127.0.0.1:\(port)
            \(tlsBlock(alpn: "[http/1.1]"))
                routes:
                  - name: tls-backend
                    match: { path_prefix: /tls/ }
                    backend: secure
                    mode: relay
                  - name: web
                    backend: web
                    mode: relay
            backends:
              web:
            \(backend)
            \(extraBackend)
            """
        }

        /// The backend connection a `/conn` answer names (the proxy's source port).
        func conn(_ r: CommandResult) -> String {
            guard let at = r.stdout.range(of: "conn="), case let port = String(r.stdout[at.upperBound...].prefix { $0.isNumber }), !port.isEmpty else {
                // Counting distinct connections means nothing unless each answer named one.
                Issue.record("no backend connection in the answer: \(r.stdout) \(r.stderr)")
                return "none"
            }
            return port
        }

        func metrics(_ admin: UInt16) -> String {
            Command.run("/usr/bin/curl", ["-sS", "http://127.0.0.1:\(admin)/metrics"]).stdout
        }

        /// edgemux in front of two `http1` peers: "plain" (the web backend) and "secure" (TLS,
        /// routed under /tls/).
        func behindPlainAndTLSBackends() throws -> (peers: [Background], edgemux: Edgemux, port: UInt16, admin: UInt16) {
            let (h1, h1Port) = try startPeer("http1", ["--name", "plain"])
            var peers = [h1]
            do {
                let (secure, securePort) = try startPeer("http1", ["--name", "secure", "--cert", TestCerts.cert, "--key", TestCerts.key])
                peers.append(secure)
                let port = freePort(), admin = freePort()
                let e = try Edgemux(config: config(port: port, admin: admin, backend: "    endpoints: [\"127.0.0.1:\(h1Port)\"]", extraBackend: """
                      secure:
                        protocol: tls
                        endpoints: ["127.0.0.1:\(securePort)"]
                        tls: { ca: \(TestCerts.ca), server_name: localhost }
                    """), port: port)
                return (peers, e, port, admin)
            } catch {
                peers.forEach { $0.stop() }
                throw error
            }
        }

        /// edgemux in front of a `raw-http1` peer that misbehaves as `behaviour` says.
        func behindRawBackend(_ behaviour: String) throws -> (peer: Background, edgemux: Edgemux, port: UInt16, admin: UInt16) {
            let (raw, rawPort) = try startPeer("raw-http1", ["--behaviour", behaviour])
            let port = freePort(), admin = freePort()
            do {
                let e = try Edgemux(config: config(port: port, admin: admin, backend: "    endpoints: [\"127.0.0.1:\(rawPort)\"]",
                                                   extraBackend: "  secure:\n    endpoints: [\"127.0.0.1:1\"]"), port: port)
                return (raw, e, port, admin)
            } catch {
                raw.stop()
                throw error
            }
        }

        /// One request per TLS connection, as health checks and scripts send them.
        func once(_ path: String, port: UInt16, method: [String] = []) -> CommandResult {
            curl(["--http1.1", "-H", "Connection: close", "-D", "-"] + method + ["https://localhost:\(port)\(path)"], port: port)
        }

        @Test("plain and TLS backends: one connection serves many one-request clients; chunked, HEAD and 204 end where they should")
        func reuse() throws {
            let (peers, e, port, admin) = try behindPlainAndTLSBackends()
            defer { peers.forEach { $0.stop() } }
            var seen = Set<String>()
            for _ in 0..<5 {
                let r = once("/conn", port: port)
                #expect(r.stdout.contains("HTTP/1.1 200"), "\(r.stdout) \(r.stderr)")
                #expect(r.stdout.lowercased().contains("connection: close"), "\(r.stdout)")
                seen.insert(conn(r))
            }
            #expect(seen.count == 1, "every request on one backend connection: \(seen)")
            // The access log counts what the client sent (its head, Connection field and all),
            // not the rewritten head that went to the backend.
            let bare = curl(["--http1.1", "-H", "Connection: close", "-H", "User-Agent:", "-H", "Accept:", "https://localhost:\(port)/sent"], port: port)
            let sentHead = "GET /sent HTTP/1.1\r\nHost: localhost:\(port)\r\nConnection: close\r\n\r\n"
            #expect(bare.stdout.hasPrefix("plain GET /sent"), "\(bare.stdout) \(bare.stderr)")
            let logged = eventually { e.log.split(separator: "\n").first { $0.contains("\"path\":\"/sent\"") } } ?? ""
            #expect(logged.contains("\"backend_reused\":true") && logged.contains("\"bytes_from_client\":\(sentHead.utf8.count),"), "\(logged)")
            // Chunked with extensions and a trailer: the body arrives whole, and the connection
            // is still the same one afterwards.
            let chunked = curl(["--http1.1", "-H", "Connection: close", "https://localhost:\(port)/chunked"], port: port)
            let backendPort = seen.first ?? ""
            var expected = ""
            for i in 0..<5 { expected += String(repeating: "piece \(i) conn=\(backendPort);", count: i * 300 + 1) }
            #expect(chunked.status == 0 && chunked.stdout == expected, "\(chunked.stdout.count) bytes, want \(expected.count): \(chunked.stdout.prefix(100)) \(chunked.stderr)")
            let head = once("/big", port: port, method: ["-I"])
            #expect(head.stdout.contains("Content-Length: 12345"), "\(head.stdout) \(head.stderr)")
            let noContent = once("/nocontent", port: port)
            #expect(noContent.stdout.contains("HTTP/1.1 204"), "\(noContent.stdout) \(noContent.stderr)")
            let after = once("/conn", port: port)
            #expect(seen.contains(conn(after)), "HEAD and 204 left the connection reusable: \(after.stdout)")
            // A TLS backend: its connection (and TLS session) is kept too.
            var secureSeen = Set<String>()
            for _ in 0..<3 {
                let r = once("/tls/conn", port: port)
                #expect(r.stdout.contains("secure"), "\(r.stdout) \(r.stderr) \(e.log)")
                secureSeen.insert(conn(r))
            }
            #expect(secureSeen.count == 1, "\(secureSeen)")
            // A kept-alive client is relayed as before, and a POST with a body is not pooled.
            let keepAlive = curl(["--http1.1", "https://localhost:\(port)/a", "https://localhost:\(port)/b"], port: port)
            #expect(keepAlive.stdout == "plain GET /a host=localhost:\(port)\nplain GET /b host=localhost:\(port)\n", "\(keepAlive.stdout) \(keepAlive.stderr)")
            let post = curl(["--http1.1", "-H", "Connection: close", "--data-binary", "hello", "https://localhost:\(port)/upload"], port: port)
            #expect(post.stdout.hasPrefix("2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824 5"), "\(post.stdout) \(post.stderr)")
            let m = metrics(admin)
            // 5 + /sent + chunked + HEAD + 204 + 1 on the plain backend, 3 on the TLS one: 2 new connections.
            #expect(m.contains("edgemux_upstream_reused_total 11"), "\(e.log)")
            #expect(m.contains("edgemux_upstream_idle_connections 2"), "\(m)")
        }

        @Test("a response that ends with its connection (no length; its last bytes and the FIN in one segment, no close_notify) ends for the client too")
        func unframedResponse() throws {
            let (peers, e, port, admin) = try behindPlainAndTLSBackends()
            defer { peers.forEach { $0.stop() } }
            for (path, name) in [("/unframed", "plain"), ("/tls/unframed", "secure")] {
                let one = once(path, port: port)
                #expect(one.status == 0 && one.stdout.hasSuffix("\r\n\r\n\(name) unframed\n"), "one-request \(path): \(one.stdout) \(one.stderr) \(e.log)")
                let relayed = curl(["--http1.1", "https://localhost:\(port)\(path)"], port: port, timeout: 10)
                #expect(relayed.status == 0 && relayed.stdout == "\(name) unframed\n", "relayed \(path): \(relayed.stdout) \(relayed.stderr) \(e.log)")
            }
            // Such a connection cannot be kept: nothing idles afterwards.
            #expect(metrics(admin).contains("edgemux_upstream_idle_connections 0"), "\(e.log)")
        }

        @Test("a kept connection the backend closes as the request arrives: the request goes again on a new one")
        func retryOnClosedKeptConnection() throws {
            let (raw, e, port, admin) = try behindRawBackend("drop-second")
            defer { raw.stop() }
            for i in 1...3 {
                let r = once("/", port: port)
                #expect(r.stdout.contains("answer \(i)"), "\(r.stdout) \(r.stderr) \(e.log)")
            }
            let m = metrics(admin)
            #expect(m.contains("edgemux_upstream_retries_total 2"), "\(m)")
            #expect(m.contains("edgemux_upstream_reused_total 2"), "\(m)")
        }

        @Test("a response head in pieces after a 103: the client gets all of it, and the connection is kept")
        func headInPieces() throws {
            let (raw, e, port, admin) = try behindRawBackend("dribble")
            defer { raw.stop() }
            for i in 1...2 {
                let r = once("/", port: port)
                #expect(r.stdout.contains("HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n"), "\(r.stdout) \(r.stderr) \(e.log)")
                #expect(r.stdout.contains("HTTP/1.1 200 OK\r\nContent-Length: 9\r\nX-Piece: 2\r\nConnection: close\r\n\r\nanswer \(i)\n"), "\(r.stdout)")
            }
            let m = metrics(admin)
            #expect(m.contains("edgemux_upstream_reused_total 1"), "\(m)")
        }

        @Test("a one-request client that vanishes mid-body: its backend connection is closed, not kept; others carry on")
        func clientVanishesMidBody() throws {
            let (h1, h1Port) = try startPeer("http1", ["--name", "plain"])
            defer { h1.stop() }
            let port = freePort(), admin = freePort()
            let e = try Edgemux(config: config(port: port, admin: admin, backend: "    endpoints: [\"127.0.0.1:\(h1Port)\"]",
                                               extraBackend: "  secure:\n    endpoints: [\"127.0.0.1:1\"]"), port: port)
            let first = conn(once("/conn", port: port))
            let cut = curl(["--http1.1", "-H", "Connection: close", "--limit-rate", "1M", "--max-time", "1", "-o", "/dev/null",
                            "https://localhost:\(port)/blob?size=67108864&seed=1"], port: port, timeout: 1)
            #expect(cut.status == 28, "curl gave up mid-body: \(cut.stderr)")
            var m = ""
            for _ in 0..<50 {
                m = metrics(admin)
                if (metricSum(m, "edgemux_connections_active", [:]) == 0) { break }
                usleep(100_000)
            }
            #expect(metricSum(m, "edgemux_connections_active", [:]) == 0, "\(m) \(e.log)")
            #expect(metricSum(m, "edgemux_connection_errors_total", ["side": "client"]) == 1, "\(m)")
            // The cut exchange used the kept connection and spoiled it: the next one is new.
            let next = conn(once("/conn", port: port))
            #expect(next != first, "\(first) then \(next)")
            #expect(e.log.contains("client side failed during the exchange"), "\(e.log)")
        }

        @Test("a kept connection the backend closes while it waits is dropped at once: the next request needs no retry")
        func backendClosesIdleConnection() throws {
            let (raw, e, port, admin) = try behindRawBackend("close-idle")
            defer { raw.stop() }
            #expect(once("/", port: port).stdout.contains("answer 1"))
            #expect(metrics(admin).contains("edgemux_upstream_idle_connections 1"))
            var m = ""
            for _ in 0..<50 {
                m = metrics(admin)
                if m.contains("edgemux_upstream_idle_connections 0") { break }
                usleep(100_000)
            }
            #expect(m.contains("edgemux_upstream_idle_connections 0"), "\(m)")
            let second = once("/", port: port)
            #expect(second.stdout.contains("answer 2"), "\(second.stdout) \(second.stderr) \(e.log)")
            m = metrics(admin)
            #expect(m.contains("edgemux_upstream_retries_total 0") && m.contains("edgemux_upstream_reused_total 0"), "\(m)")
        }

        @Test("a malformed response is a 502 for that client, logged and counted; max_idle 0 keeps nothing")
        func badResponseAndNoPool() throws {
            let (raw, rawPort) = try startPeer("raw-http1", ["--behaviour", "bad-status"])
            defer { raw.stop() }
            let (h1, h1Port) = try startPeer("http1", ["--name", "plain"])
            defer { h1.stop() }
            let port = freePort(), admin = freePort()
            let e = try Edgemux(config: config(port: port, admin: admin, backend: """
                    endpoints: ["127.0.0.1:\(h1Port)"]
                    pool: { max_idle: 0 }
                """, extraBackend: "  secure:\n    endpoints: [\"127.0.0.1:\(rawPort)\"]"), port: port)
            let bad = once("/tls/x", port: port)
            #expect(bad.stdout.contains("HTTP/1.1 502"), "\(bad.stdout) \(bad.stderr)")
            var seen = Set<String>()
            for _ in 0..<3 {
                let r = once("/conn", port: port)
                #expect(r.stdout.contains("HTTP/1.1 200"), "\(r.stdout) \(r.stderr)")
                seen.insert(conn(r))
            }
            #expect(seen.count == 3, "a new backend connection each time: \(seen)")
            usleep(200_000)
            #expect(e.log.contains("malformed status"), "\(e.log)")
            let m = metrics(admin)
            #expect(m.contains("edgemux_backend_bad_responses_total{backend=\"secure\"} 1"), "\(m)")
            #expect(m.contains("edgemux_upstream_reused_total 0"), "\(m)")
        }
    }
}
