import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The usual backends: a Python HTTP/1.1 server, nghttpd (a strict HTTP/2 server: it treats a
/// SETTINGS ACK it did not ask for as a connection error) serving a folder over h2c, and a Python
/// grpcio server.
final class StandardBackends {
    let http1: Background
    let http1Port: UInt16
    let nghttpd: Background
    let h2cPort: UInt16
    let grpc: Background
    let grpcPort: UInt16
    let www = Scratch("www")

    init(bigFile: Int? = nil) throws {
        (http1, http1Port) = try startPeer("http1", ["--name", "web-h1"])
        (grpc, grpcPort) = try startPeer("grpc")
        try "web-h2c\n".write(toFile: www.file("hello"), atomically: true, encoding: .utf8)
        if let size = bigFile {
            let r = Command.run(Paths.python, [Paths.peers, "blob-sha256", "--seed", "5", "--size", "\(size)", "--out", www.file("big")], timeout: 120)
            precondition(r.status == 0, r.stderr)
        }
        h2cPort = freePort()
        nghttpd = try Background("nghttpd", "/usr/sbin/nghttpd", ["--no-tls", "-d", www.path, "\(h2cPort)"])
        guard waitForPort(h2cPort) else { throw HarnessError("nghttpd did not start: \(nghttpd.log)") }
    }

    /// The default routing of DESIGN.md: gRPC over h2 to `grpc`, the rest to `web`.
    func config(port: UInt16, listenerExtra: String = "", webEndpoints: String? = nil, workers: Int = 2, admin: UInt16? = nil) -> String {
        """
        workers: \(workers)
        \(admin.map { "admin:\n  listen: 127.0.0.1:\($0)" } ?? "")
        listeners:
          - name: public
            listen: 127.0.0.1:\(port)
        \(tlsBlock())
        \(listenerExtra)
            routes:
              - name: agents
                match: { alpn: h2, content_type: application/grpc }
                backend: grpc
              - name: websocket
                match: { upgrade: websocket }
                backend: web
              - name: web
                backend: web
        backends:
          web:
            endpoints: \(webEndpoints ?? "{ http1: [\"127.0.0.1:\(http1Port)\"], h2c: [\"127.0.0.1:\(h2cPort)\"] }")
          grpc:
            protocol: h2c
            endpoints: ["127.0.0.1:\(grpcPort)"]
        """
    }
}

extension Integration {
    @Suite("ingress, end to end with real peers", .serialized)
    struct IngressTests {
        @Test("curl over HTTP/1.1 and HTTP/2 reaches the web backend; gRPC content-type reaches the gRPC backend")
        func routing() throws {
            let b = try StandardBackends()
            let port = freePort()
            let e = try Edgemux(config: b.config(port: port), port: port)
            let h1 = curl(["--http1.1", "-w", " %{http_version}", "https://localhost:\(port)/hello"], port: port)
            #expect(h1.stdout.hasPrefix("web-h1 GET /hello host=localhost:\(port)"), "\(h1.stdout) \(h1.stderr) \(e.log)")
            #expect(h1.stdout.hasSuffix(" 1.1"))
            let h2 = curl(["--http2", "-w", " %{http_version}", "https://localhost:\(port)/hello"], port: port)
            #expect(h2.stdout == "web-h2c\n 2", "\(h2.stdout) \(h2.stderr) \(e.log)")
            // A gRPC request by curl: framed message "x", routed on content-type to grpcio.
            let framed = Command.run("/bin/bash", ["-c", "printf '\\x00\\x00\\x00\\x00\\x01x' | /usr/bin/curl -sS --cacert \(TestCerts.ca) --resolve localhost:\(port):127.0.0.1 --http2 -D - -o /dev/null -H 'content-type: application/grpc' -H 'te: trailers' --data-binary @- https://localhost:\(port)/test.Svc/Unary"], timeout: 20)
            #expect(framed.stdout.lowercased().contains("content-type: application/grpc"), "\(framed.stdout) \(framed.stderr)")
            #expect(framed.stdout.lowercased().contains("grpc-status: 0"), "\(framed.stdout)")
            // HTTP/2 without the gRPC content-type goes to web.
            let notGRPC = curl(["--http2", "https://localhost:\(port)/hello"], port: port)
            #expect(notGRPC.stdout == "web-h2c\n")
        }

        @Test("a real gRPC client (waits for SETTINGS): 20 unary calls on one channel and a 3 s server stream")
        func grpcClient() throws {
            let b = try StandardBackends()
            let port = freePort()
            let e = try Edgemux(config: b.config(port: port), port: port)
            let unary = Command.run(Paths.python, [Paths.peers, "grpc-client", "--target", "localhost:\(port)", "--ca", TestCerts.ca, "--mode", "unary", "--count", "20", "--timeout", "10"], timeout: 60)
            #expect(unary.stdout.contains("ok unary 20"), "\(unary.stdout) \(unary.stderr) \(e.log)")
            let stream = Command.run(Paths.python, [Paths.peers, "grpc-client", "--target", "localhost:\(port)", "--ca", TestCerts.ca, "--mode", "stream", "--count", "30", "--interval", "100", "--timeout", "30"], timeout: 60)
            #expect(stream.stdout.contains("ok stream 30"), "\(stream.stdout) \(stream.stderr) \(e.log)")
        }

        @Test("a strict HTTP/2 backend (nghttpd rejects a stray SETTINGS ACK) serves thousands of requests on shared connections")
        func strictBackend() throws {
            let b = try StandardBackends(bigFile: 8 << 20)
            // The control: nghttpd really does hang up on an unsolicited ACK, so this test can fail.
            let probe = Command.run(Paths.python, [Paths.peers, "stray-ack-probe", "--port", "\(b.h2cPort)"], timeout: 20)
            #expect(probe.stdout.contains("goaway 1"), "nghttpd should reject a stray ACK: \(probe.stdout) \(probe.stderr)")
            let port = freePort()
            let e = try Edgemux(config: b.config(port: port), port: port)
            let load = Command.run("/usr/bin/h2load", ["-n", "4000", "-c", "4", "-m", "10", "https://127.0.0.1:\(port)/hello"], timeout: 120)
            #expect(load.stdout.contains("4000 total, 4000 started, 4000 done, 4000 succeeded, 0 failed, 0 errored"), "\(load.stdout) \(e.log)")
            // A long stream on one connection: 8 MiB from the strict server.
            let big = curl(["--http2", "-o", "/dev/null", "-w", "%{http_code} %{size_download}", "https://localhost:\(port)/big"], port: port, timeout: 60)
            #expect(big.stdout == "200 \(8 << 20)", "\(big.stdout) \(big.stderr)")
        }

        @Test("64 MiB up and down over HTTP/1.1 and HTTP/2, checksums equal at both ends")
        func byteExact() throws {
            let size = 64 << 20
            let b = try StandardBackends(bigFile: size)
            let port = freePort()
            let e = try Edgemux(config: b.config(port: port), port: port)
            let scratch = Scratch("bulk")
            let want = Command.run(Paths.python, [Paths.peers, "blob-sha256", "--seed", "3", "--size", "\(size)", "--out", scratch.file("up")], timeout: 120).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
            // HTTP/1.1 download.
            let down = curl(["--http1.1", "-o", scratch.file("down"), "-w", "%{http_code} %{size_download}", "https://localhost:\(port)/blob?size=\(size)&seed=3"], port: port, timeout: 120)
            #expect(down.stdout == "200 \(size)", "\(down.stdout) \(down.stderr) \(e.log)")
            let got = Command.run("/usr/bin/sha256sum", [scratch.file("down")]).stdout.split(separator: " ").first.map(String.init)
            #expect(got == want)
            // HTTP/1.1 upload.
            let up = curl(["--http1.1", "--data-binary", "@\(scratch.file("up"))", "-H", "content-type: application/octet-stream", "https://localhost:\(port)/sha256"], port: port, timeout: 120)
            #expect(up.stdout == "\(want) \(size)\n", "\(up.stdout) \(up.stderr)")
            // HTTP/2 download by curl from nghttpd.
            let wantBig = Command.run("/usr/bin/sha256sum", [b.www.file("big")]).stdout.split(separator: " ").first.map(String.init)
            let h2down = curl(["--http2", "-o", scratch.file("down2"), "-w", "%{http_code} %{http_version}", "https://localhost:\(port)/big"], port: port, timeout: 120)
            #expect(h2down.stdout == "200 2", "\(h2down.stdout) \(h2down.stderr)")
            #expect(Command.run("/usr/bin/sha256sum", [scratch.file("down2")]).stdout.split(separator: " ").first.map(String.init) == wantBig)
            // HTTP/2 both ways through gRPC streams.
            let gup = Command.run(Paths.python, [Paths.peers, "grpc-client", "--target", "localhost:\(port)", "--ca", TestCerts.ca, "--mode", "upload", "--seed", "3", "--size", "\(size)", "--timeout", "120"], timeout: 180)
            #expect(gup.stdout.contains("ok upload \(size) \(want)"), "\(gup.stdout) \(gup.stderr)")
            let gdown = Command.run(Paths.python, [Paths.peers, "grpc-client", "--target", "localhost:\(port)", "--ca", TestCerts.ca, "--mode", "download", "--seed", "3", "--size", "\(size)", "--timeout", "120"], timeout: 180)
            #expect(gdown.stdout.contains("ok download \(size) \(want)"), "\(gdown.stdout) \(gdown.stderr)")
        }

        @Test("WebSocket upgrade through edgemux, messages both ways")
        func websocket() throws {
            let (ws, wsPort) = try startPeer("ws")
            defer { ws.stop() }
            let b = try StandardBackends()
            let port = freePort()
            let config = b.config(port: port).replacingOccurrences(of: "match: { upgrade: websocket }\n        backend: web", with: "match: { upgrade: websocket }\n        backend: ws")
                + "\n  ws:\n    endpoints: [\"127.0.0.1:\(wsPort)\"]\n"
            let e = try Edgemux(config: config, port: port)
            let r = Command.run(Paths.python, [Paths.peers, "ws-client", "--url", "wss://localhost:\(port)/chat", "--ca", TestCerts.ca, "--count", "10"], timeout: 30)
            #expect(r.stdout.contains("ok websocket 10"), "\(r.stdout) \(r.stderr) \(e.log)")
        }

        @Test("one of two endpoints down: every request succeeds; all down: 502 over HTTP/1.1 and HTTP/2")
        func endpointFailover() throws {
            let b = try StandardBackends()
            let dead = freePort()
            let port = freePort()
            let e = try Edgemux(config: b.config(port: port, webEndpoints: "{ http1: [\"127.0.0.1:\(dead)\", \"127.0.0.1:\(b.http1Port)\"], h2c: [\"127.0.0.1:\(dead)\", \"127.0.0.1:\(b.h2cPort)\"] }"), port: port)
            for i in 0..<10 {
                let r = curl(["--http1.1", "-o", "/dev/null", "-w", "%{http_code}", "https://localhost:\(port)/n\(i)"], port: port)
                #expect(r.stdout == "200", "request \(i): \(r.stdout) \(r.stderr)")
                let r2 = curl(["--http2", "-o", "/dev/null", "-w", "%{http_code}", "https://localhost:\(port)/hello"], port: port)
                #expect(r2.stdout == "200", "h2 request \(i): \(r2.stdout) \(r2.stderr)")
            }
            #expect(e.log.contains("127.0.0.1:\(dead)"), "the failed endpoint is logged")
            e.stop()

            // An endpoint that never completes the connect: after connect_timeout, the next one.
            let (hole, holePort) = try startPeer("blackhole")
            defer { hole.stop() }
            let port3 = freePort()
            let slowConfig = b.config(port: port3, webEndpoints: "{ http1: [\"127.0.0.1:\(holePort)\", \"127.0.0.1:\(b.http1Port)\"], h2c: [\"127.0.0.1:\(b.h2cPort)\"] }")
                .replacingOccurrences(of: "  web:\n    endpoints:", with: "  web:\n    connect_timeout: 500ms\n    endpoints:")
            let slow = try Edgemux(config: slowConfig, port: port3)
            for i in 0..<4 {
                let r = curl(["--http1.1", "-o", "/dev/null", "-w", "%{http_code}", "https://localhost:\(port3)/slow\(i)"], port: port3)
                #expect(r.stdout == "200", "request \(i): \(r.stdout) \(r.stderr) \(slow.log)")
            }
            #expect(slow.log.contains("endpoint 127.0.0.1:\(holePort): connect timed out after 500ms"), "\(slow.log)")
            slow.stop()

            let port2 = freePort()
            let down = try Edgemux(config: b.config(port: port2, webEndpoints: "{ http1: [\"127.0.0.1:\(dead)\"], h2c: [\"127.0.0.1:\(dead)\"] }"), port: port2)
            let h1 = curl(["--http1.1", "-w", " %{http_code}", "https://localhost:\(port2)/x"], port: port2)
            #expect(h1.stdout.hasSuffix(" 502"), "\(h1.stdout) \(h1.stderr)")
            let h2 = curl(["--http2", "-w", " %{http_code}", "https://localhost:\(port2)/x"], port: port2)
            #expect(h2.stdout.hasSuffix(" 502"), "\(h2.stdout) \(h2.stderr)")
            #expect(down.log.contains("backend 'web' unavailable"), "\(down.log)")
            // gRPC to a backend that is down: a real gRPC status (UNAVAILABLE), not a bare 502.
            let port4 = freePort()
            let grpcDown = try Edgemux(config: b.config(port: port4).replacingOccurrences(of: "endpoints: [\"127.0.0.1:\(b.grpcPort)\"]", with: "endpoints: [\"127.0.0.1:\(dead)\"]"), port: port4)
            let unavailable = Command.run(Paths.python, [Paths.peers, "grpc-client", "--target", "localhost:\(port4)", "--ca", TestCerts.ca, "--mode", "expect-unavailable", "--timeout", "10"], timeout: 30)
            #expect(unavailable.stdout.contains("status UNAVAILABLE details edgemux: backend 'grpc' is unavailable"), "\(unavailable.stdout) \(unavailable.stderr) \(grpcDown.log)")
            #expect(!unavailable.stderr.contains("Error parsing metadata"), "\(unavailable.stderr)")
            #expect(down.log.contains("127.0.0.1:\(dead) (Connection refused)"), "\(down.log)")
            // The only endpoint failed: no "trying the next endpoint" when there is none.
            #expect(grpcDown.log.contains("endpoint 127.0.0.1:\(dead): ") && !grpcDown.log.contains("trying the next endpoint"), "\(grpcDown.log)")
            #expect(!down.log.contains("trying the next endpoint"), "\(down.log)")
        }
    }
}

extension Integration {
    @Suite("misbehaving clients are closed at their cap or timeout; others carry on", .serialized)
    struct BadClientTests {
        func rawTLS(_ port: UInt16, _ args: [String], timeout: Double = 15) -> String {
            Command.run(Paths.python, [Paths.peers, "raw-tls", "--port", "\(port)", "--ca", TestCerts.ca] + args, timeout: timeout + 5).stdout
        }

        /// Seconds in "closed after N.Ns".
        func closedAfter(_ out: String) -> Double? {
            guard let r = out.range(of: "closed after ") else { return nil }
            return Double(out[r.upperBound...].prefix { $0 != "s" })
        }

        @Test("slowhttptest: slowloris and slow-body attacks of 300 connections each, while curl clients keep succeeding, every one")
        func slowHTTP() throws {
            let b = try StandardBackends()
            let port = freePort(), admin = freePort()
            let e = try Edgemux(config: b.config(port: port, listenerExtra: "    request_timeout: 2s", admin: admin), port: port)
            for mode in ["-H", "-B"] {
                // 300 connections at 150 a second, each sending a little more every second, 8 s.
                let attack = try Background("slowhttptest", "/usr/bin/slowhttptest",
                                            [mode, "-c", "300", "-r", "150", "-i", "1", "-l", "8", "-s", "8192", "-u", "https://localhost:\(port)/hello"])
                usleep(2_500_000)
                var failed: [String] = []
                for _ in 0..<25 {
                    let r = curl(["--http1.1", "--max-time", "5", "https://localhost:\(port)/hello"], port: port, timeout: 10)
                    if !r.stdout.hasPrefix("web-h1 GET /hello") { failed.append("\(r.status) \(r.stdout.prefix(80)) \(r.stderr)") }
                    usleep(200_000)
                }
                _ = attack.waitExit(timeout: 30)
                attack.stop()
                #expect(failed.isEmpty, "\(mode): \(failed.count) of 25 failed: \(failed.prefix(3)) \(attack.log.suffix(1500))")
                // The attack did reach edgemux.
                #expect(attack.log.contains("connected:"), "\(attack.log.suffix(1500))")
            }
            // Slowloris heads were cut at the request timeout, each with its metric.
            let metrics = Command.run("/usr/bin/curl", ["-sS", "http://127.0.0.1:\(admin)/metrics"]).stdout
            let timeouts = metricSum(metrics, "edgemux_timeouts_total", ["phase": "request"])
            #expect(timeouts >= 100, "\(timeouts) \(e.log.suffix(2000))")
        }

        @Test("limits: the connection over max_connections_per_client is closed while another address connects; a listener at max_connections stops accepting until one closes")
        func connectionLimits() throws {
            let b = try StandardBackends()
            let port = freePort(), admin = freePort()
            let e = try Edgemux(config: b.config(port: port, listenerExtra: "    max_connections_per_client: 3", workers: 2, admin: admin), port: port)
            let script = """
                import socket, ssl, sys, time
                ctx = ssl.create_default_context(cafile="\(TestCerts.ca)")
                def tls(src, timeout=5):
                    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=timeout, source_address=(src, 0))
                    return ctx.wrap_socket(s, server_hostname="localhost")
                held = [tls("127.0.0.1") for _ in range(int(sys.argv[2]))]
                try:
                    x = tls("127.0.0.1", 0.7)
                    x.sendall(b"GET /hello HTTP/1.1\\r\\nHost: localhost\\r\\n\\r\\n")
                    print("over: answered" if x.recv(100) else "over: closed")
                except socket.timeout:
                    print("over: waits")
                except (OSError, ssl.SSLError) as e:
                    print("over: refused", type(e).__name__)
                try:
                    other = tls("127.0.0.2", 0.7)
                    print("other address:", other.version())
                except socket.timeout:
                    print("other address: waits")
                held.pop().close()
                time.sleep(0.4)
                again = tls("127.0.0.1", 2)
                print("after one closed:", again.version())
                """
            let perClient = Command.run(Paths.python, ["-c", script, "\(port)", "3"], timeout: 30)
            #expect(perClient.stdout.contains("over: refused") || perClient.stdout.contains("over: closed"), "\(perClient.stdout) \(perClient.stderr) \(e.log)")
            #expect(perClient.stdout.contains("other address: TLSv1.3") && perClient.stdout.contains("after one closed: TLSv1.3"), "\(perClient.stdout) \(perClient.stderr)")
            let m = curl(["http://127.0.0.1:\(admin)/metrics"], port: admin).stdout
            #expect(metricSum(m, "edgemux_connections_refused_total", ["limit": "client"]) == 1, "\(m)")
            #expect(e.log.contains("max_connections_per_client (3) for 127.0.0.1"), "\(e.log)")

            let port2 = freePort()
            let e2 = try Edgemux(config: b.config(port: port2, listenerExtra: "    max_connections: 2", workers: 2), port: port2)
            // Connections that carried requests (handed to the request-mode servers) give their
            // place back when they close: more of them, one after another, than the limit.
            for i in 1...5 {
                let r = curl(["--http1.1", "https://localhost:\(port2)/hello"], port: port2, timeout: 5)
                #expect(r.stdout.hasPrefix("web-h1"), "request \(i): \(r.stdout) \(r.stderr) \(e2.log)")
            }
            let listenerFull = Command.run(Paths.python, ["-c", script, "\(port2)", "2"], timeout: 30)
            // The third waits in the backlog (no handshake), and is served once one has closed.
            #expect(listenerFull.stdout.contains("over: waits") && listenerFull.stdout.contains("other address: waits") && listenerFull.stdout.contains("after one closed: TLSv1.3"),
                    "\(listenerFull.stdout) \(listenerFull.stderr) \(e2.log)")
            #expect(e2.log.contains("at its max_connections: not accepting for now"), "\(e2.log)")

            // Two handshakes in progress (half a ClientHello each) fill max_handshakes: 2; a third
            // client waits until they go, established connections are not counted.
            let port3 = freePort()
            let e3 = try Edgemux(config: "max_handshakes: 2\n" + b.config(port: port3, workers: 2), port: port3)
            let paced = Command.run(Paths.python, ["-c", """
                import socket, ssl, time
                ctx = ssl.create_default_context(cafile="\(TestCerts.ca)")
                def tls(timeout):
                    return ctx.wrap_socket(socket.create_connection(("127.0.0.1", \(port3)), timeout=timeout), server_hostname="localhost")
                done = tls(5)  # a finished handshake does not count
                stuck = []
                for _ in range(2):
                    s = socket.create_connection(("127.0.0.1", \(port3)), timeout=5)
                    s.sendall(b"\\x16\\x03\\x01\\x02\\x00\\x01")
                    stuck.append(s)
                time.sleep(0.3)
                try:
                    tls(0.7)
                    print("third: served")
                except socket.timeout:
                    print("third: waits")
                for s in stuck:
                    s.close()
                time.sleep(0.3)
                print("after:", tls(3).version())
                """], timeout: 30)
            #expect(paced.stdout.contains("third: waits") && paced.stdout.contains("after: TLSv1.3"), "\(paced.stdout) \(paced.stderr) \(e3.log)")
            #expect(e3.log.contains("max_handshakes (2 TLS handshakes in progress)"), "\(e3.log)")
        }

        @Test("under ulimit -n 256 the process limit comes from the descriptors: 300 clients at once make no error storm, and service comes back at once")
        func descriptorLimit() throws {
            let b = try StandardBackends()
            let port = freePort()
            let scratch = Scratch("nofile")
            try b.config(port: port, workers: 1).write(toFile: scratch.file("edgemux.yaml"), atomically: true, encoding: .utf8)
            let e = try Background("edgemux", "/bin/bash", ["-c", "ulimit -n 256 && exec \(Paths.edgemux) run --config \(scratch.file("edgemux.yaml"))"])
            defer { e.stop(signal: SIGTERM) }
            #expect(waitForPort(port, while: e), "\(e.log)")
            let many = Command.run(Paths.python, ["-c", """
                import socket, time
                held = []
                for _ in range(300):
                    s = socket.create_connection(("127.0.0.1", \(port)), timeout=5)
                    s.sendall(b"\\x16\\x03\\x01")  # a ClientHello that never ends: each holds a descriptor
                    held.append(s)
                time.sleep(1.5)
                for s in held:
                    s.close()
                print("held", len(held))
                """], timeout: 30)
            #expect(many.stdout.contains("held 300"), "\(many.stdout) \(many.stderr)")
            let started = Date()
            var served = false
            while !served, Date().timeIntervalSince(started) < 3 {
                served = curl(["--http1.1", "https://localhost:\(port)/hello"], port: port, timeout: 2).stdout.hasPrefix("web-h1")
            }
            #expect(served && Date().timeIntervalSince(started) < 1.5, "not served again at once: \(e.log)")
            let log = e.log
            #expect(log.contains("at most 64 client connections"), "\(log)")
            #expect(!log.contains("Too many open files"), "\(log)")
            #expect(log.components(separatedBy: "\n").filter { $0.contains("max_connections") }.count <= 3, "\(log)")
        }

        @Test("an admin client that gets a finished scrape's descriptor keeps its own 5 s, not what was left of the old one")
        func adminTimerBelongsToItsClient() throws {
            let b = try StandardBackends()
            let port = freePort(), admin = freePort()
            let e = try Edgemux(config: b.config(port: port, workers: 1, admin: admin), port: port)
            // A quick scrape: answered and closed at once (its 5 s timer was left armed).
            #expect(curl(["http://127.0.0.1:\(admin)/healthz"], port: admin).stdout == "ok\n")
            usleep(1_000_000)
            // Then a slow one on the same descriptor number: its head takes 4.5 s. The old timer
            // would cut it about 4 s in.
            let slow = Command.run(Paths.python, ["-c", """
                import socket, time
                s = socket.create_connection(("127.0.0.1", \(admin)))
                s.sendall(b"GET /healthz HTTP/1.1\\r\\n")
                time.sleep(4.5)
                try:
                    s.sendall(b"Host: x\\r\\n\\r\\n")
                    print(s.recv(4096).decode().split("\\r\\n")[0])
                except OSError as e:
                    print("failed", e)
                """], timeout: 15)
            #expect(slow.stdout.contains("HTTP/1.1 200 OK"), "\(slow.stdout) \(slow.stderr) \(e.log)")
        }

        @Test("silent, garbage, preface-only and oversized clients each get closed with a log line and a metric")
        func badClients() throws {
            let b = try StandardBackends()
            let port = freePort()
            let admin = freePort()
            let e = try Edgemux(config: b.config(port: port, listenerExtra: """
                    handshake_timeout: 1s
                    request_timeout: 1s
                    max_request_head: 4KiB
                """, admin: admin), port: port)

            // A good client keeps working while the bad ones misbehave, before and after.
            func good() -> Bool { curl(["--http2", "https://localhost:\(port)/hello"], port: port).stdout == "web-h2c\n" }
            #expect(good())

            // Never starts the handshake (TCP only): closed after the 1 s handshake timeout.
            let silent = rawTLS(port, ["--plain", "--timeout", "10"])
            #expect((closedAfter(silent) ?? 99) < 5, "\(silent)")
            // Plain HTTP instead of a ClientHello: a 400 in clear text, as nginx does, and closed.
            let plain = rawTLS(port, ["--plain", "--send", "b'GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n'", "--timeout", "10", "--show", "200"])
            #expect((closedAfter(plain) ?? 99) < 1 && plain.contains("HTTP/1.1 400 Bad Request") && plain.contains("plain HTTP request sent to an HTTPS port"), "\(plain)")
            let curlPlain = Command.run("/usr/bin/curl", ["-sS", "-w", " %{http_code}", "http://127.0.0.1:\(port)/"], timeout: 15)
            #expect(curlPlain.stdout.hasSuffix(" 400") && curlPlain.stdout.contains("use https://"), "\(curlPlain.stdout) \(curlPlain.stderr)")
            // Binary garbage instead of a ClientHello: closed at once.
            let garbage = rawTLS(port, ["--plain", "--send", "b'\\x00\\x01\\x02\\x03 junk junk junk'", "--timeout", "10"])
            #expect((closedAfter(garbage) ?? 99) < 1, "\(garbage)")
            // Half a ClientHello, then nothing: closed after the handshake timeout.
            let half = rawTLS(port, ["--plain", "--send", "b'\\x16\\x03\\x01\\x02\\x00\\x01\\x00\\x01\\xfc\\x03\\x03'", "--timeout", "10"])
            #expect((closedAfter(half) ?? 99) < 5, "\(half)")
            // HTTP/2 preface and SETTINGS, then nothing: edgemux's SETTINGS, then GOAWAY after 1 s.
            let preface = rawTLS(port, ["--alpn", "h2", "--send", "b'PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n\\x00\\x00\\x00\\x04\\x00\\x00\\x00\\x00\\x00'"])
            #expect((closedAfter(preface) ?? 99) < 5, "\(preface)")
            #expect(preface.contains("received b'\\x00\\x00\\x00\\x04\\x00\\x00\\x00\\x00\\x00\\x00\\x00"), "SETTINGS then GOAWAY: \(preface)")
            // A request head over the 4 KiB cap: 431 at once.
            let big = rawTLS(port, ["--alpn", "http/1.1", "--send", "b'GET / HTTP/1.1\\r\\nHost: localhost\\r\\nX-Big: ' + b'a' * 8000 + b'\\r\\n\\r\\n'"])
            #expect(big.contains("HTTP/1.1 431"), "\(big)")
            // An incomplete request head: 408 after the request timeout.
            let slow = rawTLS(port, ["--alpn", "http/1.1", "--send", "b'GET / HTTP/1.1\\r\\nHost: loc'"])
            #expect(slow.contains("HTTP/1.1 408"), "\(slow)")
            #expect((closedAfter(slow) ?? 99) < 5, "\(slow)")
            // Junk that never ends a line: 400 at once, not at the 1 s request timeout.
            let junk = rawTLS(port, ["--alpn", "http/1.1", "--send", "b'hello world\\r'", "--timeout", "10"])
            #expect(junk.contains("HTTP/1.1 400") && (closedAfter(junk) ?? 99) < 0.5, "\(junk)")
            // A malformed request line: 400.
            let bad = rawTLS(port, ["--alpn", "http/1.1", "--send", "b'GET /\\x00 HTTP/1.1\\r\\n\\r\\n'"])
            #expect(bad.contains("HTTP/1.1 400"), "\(bad)")
            // A bad HTTP/2 frame sequence (DATA before HEADERS): GOAWAY PROTOCOL_ERROR.
            let badH2 = rawTLS(port, ["--alpn", "h2", "--send", "b'PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n\\x00\\x00\\x00\\x04\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x01x'"])
            #expect(badH2.contains("\\x07" + String(repeating: "\\x00", count: 12) + "\\x01"), "GOAWAY(PROTOCOL_ERROR): \(badH2)")
            // Frame rules a frame header alone breaks: refused when those 9 bytes arrive, not at
            // the request timeout. WINDOW_UPDATE on an idle stream: PROTOCOL_ERROR ...
            let idleStream = rawTLS(port, ["--alpn", "h2", "--timeout", "10", "--send", "b'PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n\\x00\\x00\\x00\\x04\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x04\\x08\\x00\\x00\\x00\\x00\\x05'"])
            #expect(idleStream.contains("\\x07" + String(repeating: "\\x00", count: 12) + "\\x01") && (closedAfter(idleStream) ?? 99) < 0.5, "GOAWAY(PROTOCOL_ERROR) at once: \(idleStream)")
            // ... and a PING of 7 bytes: FRAME_SIZE_ERROR.
            let shortPing = rawTLS(port, ["--alpn", "h2", "--timeout", "10", "--send", "b'PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n\\x00\\x00\\x00\\x04\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x07\\x06\\x00\\x00\\x00\\x00\\x00'"])
            #expect(shortPing.contains("\\x07" + String(repeating: "\\x00", count: 12) + "\\x06") && (closedAfter(shortPing) ?? 99) < 0.5, "GOAWAY(FRAME_SIZE_ERROR) at once: \(shortPing)")

            #expect(good())
            let log = e.log
            #expect(log.contains("TLS handshake not finished within 1s"), "\(log)")
            #expect(log.contains("request head exceeds 4096 bytes"), "\(log)")
            #expect(log.contains("no complete first request within 1s"), "\(log)")
            #expect(log.contains("frame type 0 before any HEADERS"), "\(log)")
            let metrics = Command.run("/usr/bin/curl", ["-sS", "http://127.0.0.1:\(admin)/metrics"]).stdout
            #expect(metricSum(metrics, "edgemux_timeouts_total", ["phase": "handshake"]) == 2, "\(metrics)")
            #expect(metricSum(metrics, "edgemux_sniff_errors_total", ["kind": "h1_head_too_large"]) == 1, "\(metrics)")
            #expect(metricSum(metrics, "edgemux_sniff_errors_total", ["kind": "h2_protocol"]) == 2, "\(metrics)")
            #expect(metricSum(metrics, "edgemux_sniff_errors_total", ["kind": "h2_frame_size"]) == 1, "\(metrics)")
            #expect(metricSum(metrics, "edgemux_tls_handshake_failures_total", ["reason": "protocol"]) == 1, "\(metrics)")
            #expect(metricSum(metrics, "edgemux_tls_handshake_failures_total", ["reason": "plain_http"]) == 2, "\(metrics)")
            #expect(log.contains("plain HTTP request sent to a TLS port; answered 400"), "\(log)")
        }
    }
}
