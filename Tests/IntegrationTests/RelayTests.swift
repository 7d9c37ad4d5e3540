import Foundation
import Testing

extension Integration {
    @Suite("relay: half-close, splice, PROXY protocol, access log", .serialized)
    struct RelayTests {
        func sha(_ seed: Int, _ size: Int) -> String {
            Command.run(Paths.python, [Paths.peers, "blob-sha256", "--seed", "\(seed)", "--size", "\(size)"], timeout: 60).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        }

        @Test("half-close both ways, plaintext (splice) and TLS: nothing sent before a close is lost")
        func halfClose() throws {
            let (sink, sinkPort) = try startPeer("tcp-sink", ["--reply-size", "3000000"])
            defer { sink.stop() }
            let (replyFirst, replyFirstPort) = try startPeer("tcp-sink", ["--mode", "reply-then-sink", "--reply-size", "100000"])
            defer { replyFirst.stop() }
            let plain = freePort(), plain2 = freePort(), tls = freePort()
            let yaml = """
                workers: 1
                access_log: stdout
                listeners:
                  - name: plain
                    listen: 127.0.0.1:\(plain)
                    routes:
                      - { name: sink, backend: sink, mode: relay }
                  - name: plain2
                    listen: 127.0.0.1:\(plain2)
                    routes:
                      - { name: reply-first, backend: reply-first, mode: relay }
                  - name: tls
                    listen: 127.0.0.1:\(tls)
                \(tlsBlock(alpn: "[http/1.1]"))
                    routes:
                      - { name: reply-first, backend: reply-first, mode: relay }
                backends:
                  sink:
                    endpoints: { http1: ["127.0.0.1:\(sinkPort)"], h2c: ["127.0.0.1:\(sinkPort)"] }
                  reply-first:
                    endpoints: { http1: ["127.0.0.1:\(replyFirstPort)"], h2c: ["127.0.0.1:\(replyFirstPort)"] }
                """
            let e = try Edgemux(config: yaml, port: tls)
            // Client → backend: 40 MB then FIN; the backend answers after the FIN with 3 MB.
            let size = 40_000_000
            let r = Command.run(Paths.python, [Paths.peers, "halfclose-client", "--port", "\(plain)", "--size", "\(size)"], timeout: 60)
            #expect(r.stdout == "reply \(sha(4, size)) \(size) payload 3000000 \(sha(9, 3_000_000))\n", "\(r.stdout) \(r.stderr) \(e.log)")
            // Backend → client FIN first; the client still sends 5 MB afterwards, plain and over TLS.
            for port in [plain2, tls] {
                var args = [Paths.peers, "halfclose-client", "--port", "\(port)", "--mode", "reply-then-sink", "--size", "5000000"]
                if port == tls { args += ["--ca", TestCerts.ca] }
                let r2 = Command.run(Paths.python, args, timeout: 60)
                #expect(r2.stdout == "reply reply first payload 100000 \(sha(9, 100_000))\n", "\(r2.stdout) \(r2.stderr) \(e.log)")
            }
            usleep(300_000)
            #expect(replyFirst.log.components(separatedBy: "received 5000000 \(sha(4, 5_000_000))").count == 3, "\(replyFirst.log)")
            #expect(e.log.contains("\"outcome\":\"completed\""), "\(e.log)")
        }

        @Test("a plaintext listener: HTTP/1.1, h2c with prior knowledge and cleartext gRPC, relayed with splice")
        func plaintextListener() throws {
            let b = try StandardBackends(bigFile: 16 << 20)
            let port = freePort()
            let yaml = b.config(port: port).replacingOccurrences(of: tlsBlock(), with: "")
            let e = try Edgemux(config: yaml, port: port)
            let h1 = Command.run("/usr/bin/curl", ["-sS", "--http1.1", "http://127.0.0.1:\(port)/plain"])
            #expect(h1.stdout.hasPrefix("web-h1 GET /plain"), "\(h1.stdout) \(h1.stderr) \(e.log)")
            let h2 = Command.run("/usr/bin/curl", ["-sS", "--http2-prior-knowledge", "-w", " %{http_version}", "http://127.0.0.1:\(port)/hello"])
            #expect(h2.stdout == "web-h2c\n 2", "\(h2.stdout) \(h2.stderr) \(e.log)")
            let big = Command.run("/usr/bin/curl", ["-sS", "--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{size_download}", "http://127.0.0.1:\(port)/big"], timeout: 60)
            #expect(big.stdout == "\(16 << 20)", "\(big.stdout) \(big.stderr)")
            let grpc = Command.run(Paths.python, [Paths.peers, "grpc-client", "--target", "127.0.0.1:\(port)", "--mode", "unary", "--count", "5", "--timeout", "10"], timeout: 30)
            #expect(grpc.stdout.contains("ok unary 5"), "\(grpc.stdout) \(grpc.stderr) \(e.log)")
            let load = Command.run("/usr/bin/h2load", ["-n", "2000", "-c", "2", "-m", "10", "http://127.0.0.1:\(port)/hello"], timeout: 60)
            #expect(load.stdout.contains("2000 succeeded, 0 failed"), "\(load.stdout)")
        }

        @Test("a client that vanishes mid-transfer is a logged relay error; everyone else carries on")
        func clientVanishes() throws {
            let b = try StandardBackends()
            let port = freePort()
            let admin = freePort()
            let e = try Edgemux(config: b.config(port: port, admin: admin), port: port)
            for _ in 0..<3 {
                let r = curl(["--http1.1", "--limit-rate", "2M", "--max-time", "1", "-o", "/dev/null", "https://localhost:\(port)/blob?size=67108864&seed=1"], port: port, timeout: 1)
                #expect(r.status == 28, "curl gave up mid-transfer: \(r.stderr)")
                #expect(curl(["--http2", "https://localhost:\(port)/hello"], port: port).stdout == "web-h2c\n")
            }
            // The vanished clients' connections close as their sockets report the reset; on a
            // loaded machine that can take a moment (bounded: 5 s).
            var metrics = ""
            for _ in 0..<50 {
                metrics = Command.run("/usr/bin/curl", ["-sS", "http://127.0.0.1:\(admin)/metrics"]).stdout
                if (metricSum(metrics, "edgemux_connections_active", [:]) == 0) { break }
                usleep(100_000)
            }
            #expect(e.log.contains("client side failed during request"), "\(e.log)")
            #expect(metricSum(metrics, "edgemux_connection_errors_total", ["side": "client"]) > 0, "\(metrics)")
            #expect(metricSum(metrics, "edgemux_connections_active", [:]) == 0, "\(metrics) \(e.log)")
        }

        @Test("a client whose FIN comes with its request (no close_notify) gets the answer, and the FIN reaches the backend")
        func finWithTheRequest() throws {
            let b = try StandardBackends()
            let port = freePort(), admin = freePort()
            let e = try Edgemux(config: b.config(port: port, admin: admin), port: port)
            for _ in 0..<3 {
                // The keep-alive backend closes only once it sees the FIN: a proxy that missed it
                // (the bytes and the FIN came in one event) leaves the client waiting.
                let r = Command.run(Paths.python, [Paths.peers, "tls-fin-client", "--port", "\(port)", "--ca", TestCerts.ca, "--timeout", "5"], timeout: 20)
                #expect(r.stdout.contains("\r\n\r\nweb-h1 GET /fin") && r.stdout.hasSuffix("\neof\n"), "\(r.stdout) \(r.stderr) \(e.log)")
            }
            let active = eventually { () -> String? in
                let m = Command.run("/usr/bin/curl", ["-sS", "http://127.0.0.1:\(admin)/metrics"]).stdout
                return (metricSum(m, "edgemux_connections_active", [:]) == 0) ? m : nil
            }
            #expect(active != nil, "\(e.log)")
        }

        @Test("a relayed backend that accepts and never speaks: 504 after response_timeout over HTTP/1.1 and HTTP/2, not an empty reply")
        func silentBackend() throws {
            // Accepts, reads, and answers only after the client's FIN (which never comes).
            let (hole, holePort) = try startPeer("tcp-sink")
            defer { hole.stop() }
            let port = freePort()
            let yaml = """
                workers: 1
                listeners:
                  - name: public
                    listen: 127.0.0.1:\(port)
                \(tlsBlock())
                    routes:
                      - { name: silent, backend: silent, mode: relay, response_timeout: 1s }
                backends:
                  silent:
                    endpoints: { http1: ["127.0.0.1:\(holePort)"], h2c: ["127.0.0.1:\(holePort)"] }
                """
            let e = try Edgemux(config: yaml, port: port)
            for version in ["--http1.1", "--http2"] {
                let started = Date()
                let r = curl([version, "-w", " %{http_code}", "https://localhost:\(port)/anyone"], port: port, timeout: 10)
                let took = Date().timeIntervalSince(started)
                #expect(r.stdout.hasSuffix(" 504") && r.stdout.contains("did not answer in time"), "\(version): \(r.stdout) \(r.stderr) \(e.log)")
                #expect(took > 0.9 && took < 3, "\(version): \(took) s")
            }
            #expect(e.log.contains("backend 'silent' sent nothing within"), "\(e.log)")
        }

        @Test("a backend that resets mid-response: that client's response ends short (HTTP/1.1 relayed and in request mode; HTTP/2 a reset stream while its sibling completes), logged and counted; others carry on")
        func backendResetMidResponse() throws {
            let (reset, resetPort) = try startPeer("raw-http1", ["--behaviour", "reset-mid-body"])
            defer { reset.stop() }
            let (h1, h1Port) = try startPeer("http1", ["--name", "good"])
            defer { h1.stop() }
            let port = freePort(), admin = freePort()
            let yaml = """
                workers: 1
                access_log: stdout
                admin: { listen: 127.0.0.1:\(admin) }
                listeners:
                  - name: public
                    listen: 127.0.0.1:\(port)
                \(tlsBlock())
                    routes:
                      - { name: relayed, match: { path_prefix: /relay, alpn: http/1.1 }, backend: reset, mode: relay }
                      - { name: requests, match: { path_prefix: /reset }, backend: reset, mode: request }
                      - { name: good, backend: good, mode: request }
                backends:
                  reset:
                    endpoints: { http1: ["127.0.0.1:\(resetPort)"] }
                  good:
                    endpoints: { http1: ["127.0.0.1:\(h1Port)"] }
                """
            let e = try Edgemux(config: yaml, port: port)
            for path in ["/relay", "/reset"] {
                let started = Date()
                let r = curl(["--http1.1", "-o", "/dev/null", "-w", "%{size_download}", "https://localhost:\(port)\(path)"], port: port, timeout: 15)
                // curl: 18, "transfer closed with 95000 bytes remaining to read".
                #expect(r.status == 18 && r.stdout == "5000", "\(path): \(r.status) \(r.stdout) \(r.stderr) \(e.log)")
                #expect(Date().timeIntervalSince(started) < 5)
            }
            // HTTP/2: two streams on one connection; only the one whose backend reset ends short.
            let both = curl(["--http2", "-Z", "--parallel-max", "2", "-w", "[%{url} %{http_code} %{size_download} %{exitcode}]\n",
                             "-o", "/dev/null", "-o", "/dev/null",
                             "https://localhost:\(port)/reset/h2", "https://localhost:\(port)/hello"], port: port, timeout: 15)
            #expect(both.stdout.contains("/hello 200") && both.stdout.contains(" 0]"), "the sibling completes: \(both.stdout) \(both.stderr) \(e.log)")
            #expect(both.stdout.contains("/reset/h2 200 5000 92]") || both.stdout.contains("/reset/h2 200 5000 18]"), "the reset stream ends short: \(both.stdout) \(both.stderr)")
            // Others carry on.
            let after = curl(["--http2", "https://localhost:\(port)/hello"], port: port)
            #expect(after.stdout.hasPrefix("good GET /hello"), "\(after.stdout) \(after.stderr)")
            usleep(300_000)
            let log = e.log
            #expect(log.contains("backend 'reset' failed mid-response"), "\(log)")
            #expect(log.split(separator: "\n").contains { $0.contains("\"route\":\"relayed\"") && $0.contains("\"sni\":\"localhost\"") }, "relayed, with its SNI: \(log)")
            let metrics = Command.run("/usr/bin/curl", ["-sS", "http://127.0.0.1:\(admin)/metrics"]).stdout
            #expect(metrics.contains("edgemux_backend_bad_responses_total{backend=\"reset\"} 2"), "\(metrics)")
            #expect(metricSum(metrics, "edgemux_connection_errors_total", ["side": "backend"]) == 1, "\(metrics)")
        }

        @Test("PROXY protocol v1 and v2: the balancer's client address is the one logged; a bad header closes")
        func proxyProtocol() throws {
            let (h1, h1Port) = try startPeer("http1")
            defer { h1.stop() }
            let port = freePort()
            let yaml = """
                workers: 1
                access_log: stdout
                listeners:
                  - name: behind-lb
                    listen: 127.0.0.1:\(port)
                    proxy_protocol: true
                \(tlsBlock(alpn: "[http/1.1]"))
                    routes:
                      - { name: web, backend: web, mode: relay }
                backends:
                  web:
                    endpoints: ["127.0.0.1:\(h1Port)"]
                """
            let e = try Edgemux(config: yaml, port: port)
            let v1 = Command.run(Paths.python, [Paths.peers, "raw-tls", "--port", "\(port)", "--ca", TestCerts.ca, "--alpn", "http/1.1",
                                                "--proxy-header", "b'PROXY TCP4 203.0.113.7 127.0.0.1 5555 443\\r\\n'",
                                                "--send", "b'GET /v1 HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n'"], timeout: 20)
            #expect(v1.stdout.contains("HTTP/1.1 200 OK"), "\(v1.stdout) \(v1.stderr) \(e.log)")
            // v2: signature, PROXY over TCP/IPv6, [2001:db8::9]:6000 → [::1]:443.
            var v2 = "b'\\r\\n\\r\\n\\x00\\r\\nQUIT\\n\\x21\\x21\\x00\\x24'"
            v2 += " + bytes.fromhex('20010db8000000000000000000000009') + bytes(15) + b'\\x01' + b'\\x17\\x70\\x01\\xbb'"
            let v2r = Command.run(Paths.python, [Paths.peers, "raw-tls", "--port", "\(port)", "--ca", TestCerts.ca, "--alpn", "http/1.1",
                                                 "--proxy-header", v2,
                                                 "--send", "b'GET /v2 HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n'"], timeout: 20)
            #expect(v2r.stdout.contains("HTTP/1.1 200 OK"), "\(v2r.stdout) \(v2r.stderr)")
            let curlv1 = curl(["--haproxy-protocol", "--http1.1", "https://localhost:\(port)/curl"], port: port)
            #expect(curlv1.stdout.hasPrefix("http1 GET /curl"), "\(curlv1.stdout) \(curlv1.stderr)")
            let missing = curl(["--http1.1", "https://localhost:\(port)/none"], port: port)
            #expect(missing.status != 0)
            usleep(200_000)
            #expect(e.log.contains("\"client\":\"203.0.113.7:5555\""), "\(e.log)")
            #expect(e.log.contains("\"client\":\"[2001:db8::9]:6000\""), "\(e.log)")
            #expect(e.log.contains("not a PROXY protocol header"), "\(e.log)")
        }

        @Test("proxy_protocol_from: only the balancers' networks may send a PROXY header; other clients are taken as they come, and one that sends a header is refused")
        func proxyProtocolFrom() throws {
            let (h1, h1Port) = try startPeer("http1")
            defer { h1.stop() }
            let port = freePort(), admin = freePort()
            let yaml = """
                workers: 1
                access_log: stdout
                admin: { listen: 127.0.0.1:\(admin) }
                listeners:
                  - name: behind-lb
                    listen: 127.0.0.1:\(port)
                    proxy_protocol_from: [127.0.0.1, "10.0.0.0/8"]
                \(tlsBlock(alpn: "[http/1.1]"))
                    routes:
                      - { name: web, backend: web }
                backends:
                  web:
                    endpoints: { http1: ["127.0.0.1:\(h1Port)"] }
                """
            let e = try Edgemux(config: yaml, port: port)
            // From the balancer (127.0.0.1): the header names the client.
            let trusted = Command.run(Paths.python, [Paths.peers, "raw-tls", "--port", "\(port)", "--ca", TestCerts.ca, "--alpn", "http/1.1",
                                                     "--proxy-header", "b'PROXY TCP4 203.0.113.7 127.0.0.1 5555 443\\r\\n'",
                                                     "--send", "b'GET /lb HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n'"], timeout: 20)
            #expect(trusted.stdout.contains("HTTP/1.1 200 OK"), "\(trusted.stdout) \(trusted.stderr) \(e.log)")
            // From elsewhere (127.0.0.2): served as a direct client, under its own address...
            let direct = curl(["--interface", "127.0.0.2", "--http1.1", "https://localhost:\(port)/direct"], port: port)
            #expect(direct.stdout.hasPrefix("http1 GET /direct"), "\(direct.stdout) \(direct.stderr) \(e.log)")
            // ...and refused when it claims another address.
            let spoof = curl(["--interface", "127.0.0.2", "--haproxy-protocol", "--http1.1", "https://localhost:\(port)/spoof"], port: port)
            #expect(spoof.status != 0 && !spoof.stdout.contains("/spoof"), "\(spoof.stdout) \(spoof.stderr)")
            usleep(200_000)
            let log = e.log
            let lines = log.split(separator: "\n")
            #expect(lines.contains { $0.contains("\"client\":\"203.0.113.7") && $0.contains("\"path\":\"/lb\"") }, "\(log)")
            #expect(lines.contains { $0.contains("\"client\":\"127.0.0.2") && $0.contains("\"path\":\"/direct\"") }, "\(log)")
            #expect(log.contains("PROXY header from 127.0.0.2, which is not in proxy_protocol_from; closed"), "\(log)")
            let metrics = Command.run("/usr/bin/curl", ["-sS", "http://127.0.0.1:\(admin)/metrics"]).stdout
            #expect(metricSum(metrics, "edgemux_sniff_errors_total", ["kind": "proxy_protocol_untrusted"]) == 1, "\(metrics)")

            // check: a network with host bits, an empty list, proxy_protocol: false beside it.
            let scratch = Scratch("proxy-from")
            for (bad, words) in [("proxy_protocol_from: [10.0.0.1/8]", "host bits zero"), ("proxy_protocol_from: []", "list the load balancers' networks"),
                                 ("proxy_protocol_from: [10.0.0.0/8]\n    proxy_protocol: false", "remove one of them")] {
                try yaml.replacingOccurrences(of: "proxy_protocol_from: [127.0.0.1, \"10.0.0.0/8\"]", with: bad).write(toFile: scratch.file("c.yaml"), atomically: true, encoding: .utf8)
                let check = Command.run(Paths.edgemux, ["check", "--config", scratch.file("c.yaml")], timeout: 15)
                #expect(check.status != 0 && (check.stdout + check.stderr).contains(words), "\(bad): \(check.stdout) \(check.stderr)")
            }
        }
    }
}
