import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The raw HTTP/2 peers (python3-h2) and named gRPC servers of Peers/h2peers.py.
enum H2Peers {
    static let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Peers/h2peers.py").path

    static func run(_ args: [String], timeout: Double = 60) -> CommandResult {
        Command.run(Paths.python, [script] + args, timeout: timeout)
    }

    static func start(_ kind: String, _ args: [String] = []) throws -> (Background, UInt16) {
        let bg = try Background(kind, Paths.python, [script, kind, "--max-seconds", "600"] + args)
        return (bg, try bg.readyPort())
    }
}

/// A listener in front of an HTTP/1.1-only web backend and an h2c backend, with the usual gRPC
/// relay route first: request mode for everything but gRPC.
func requestModeConfig(port: UInt16, http1: UInt16, h2c: UInt16? = nil, grpc: [UInt16] = [], grpcMode: String? = nil, admin: UInt16? = nil) -> String {
    """
    workers: 1
    access_log: stdout
    drain_timeout: 20s
    \(admin.map { "admin:\n  listen: 127.0.0.1:\($0)" } ?? "")
    listeners:
      - name: public
        listen: 127.0.0.1:\(port)
    \(tlsBlock())
        routes:
          - name: agents
            match: { alpn: h2, content_type: application/grpc }
            backend: grpc
            \(grpcMode.map { "mode: \($0)" } ?? "")
    \(h2c == nil ? "" : "      - name: files\n        match: { alpn: h2, path_prefix: /files/ }\n        backend: files")
          - name: web
            backend: web
    backends:
      web:
        endpoints: { http1: ["127.0.0.1:\(http1)"] }
      files:
        protocol: h2c
        endpoints: ["127.0.0.1:\(h2c ?? 1)"]
      grpc:
        protocol: h2c
        endpoints: [\((grpc.isEmpty ? [1] : grpc).map { "\"127.0.0.1:\($0)\"" }.joined(separator: ", "))]
    """
}

/// Lines of the access log (stdout) that are request-mode lines for `path`.
func requestLines(_ log: String, path: String) -> [String] {
    log.split(separator: "\n").map(String.init).filter { $0.contains("\"stream\":") && $0.contains("\"path\":\"\(path)\"") }
}

extension Integration {
    @Suite("request mode: HTTP/2 server, per-request routing and translation", .serialized)
    struct RequestModeTests {
        @Test("HTTP/2 clients reach an HTTP/1.1-only backend: GET, uploads with and without a length, a chunked response, one log line per request")
        func http2ToHTTP1() throws {
            let (h1, h1Port) = try startPeer("http1", ["--name", "only-h1"])
            defer { h1.stop() }
            let port = freePort()
            let e = try Edgemux(config: requestModeConfig(port: port, http1: h1Port), port: port)
            let get = curl(["--http2", "-w", " %{http_version}", "https://localhost:\(port)/hello", "https://localhost:\(port)/again"], port: port)
            #expect(get.stdout.contains("only-h1 GET /hello host=localhost:\(port)\n 2"), "\(get.stdout) \(get.stderr) \(e.log)")
            #expect(get.stdout.contains("only-h1 GET /again host=localhost:\(port)\n 2"), "\(get.stdout)")
            let scratch = Scratch("h2h1")
            let size = 3 << 20
            let want = Command.run(Paths.python, [Paths.peers, "blob-sha256", "--seed", "9", "--size", "\(size)", "--out", scratch.file("up")], timeout: 60).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
            let withLength = curl(["--http2", "--data-binary", "@\(scratch.file("up"))", "https://localhost:\(port)/sha"], port: port)
            #expect(withLength.stdout == "\(want) \(size)\n", "\(withLength.stdout) \(withLength.stderr)")
            // No length: the backend gets it chunked.
            let chunked = Command.run("/bin/bash", ["-c", "cat \(scratch.file("up")) | /usr/bin/curl -sS --cacert \(TestCerts.ca) --resolve localhost:\(port):127.0.0.1 --http2 -T - -X POST https://localhost:\(port)/sha"], timeout: 60)
            #expect(chunked.stdout == "\(want) \(size)\n", "\(chunked.stdout) \(chunked.stderr)")
            let pieces = curl(["--http2", "-o", "/dev/null", "-w", "%{http_code} %{size_download}", "https://localhost:\(port)/chunked"], port: port)
            #expect(pieces.stdout.hasPrefix("200 "), "\(pieces.stdout)")
            let down = curl(["--http2", "-o", scratch.file("down"), "-w", "%{http_code} %{size_download}", "https://localhost:\(port)/blob?size=\(size)&seed=9"], port: port)
            #expect(down.stdout == "200 \(size)", "\(down.stdout) \(down.stderr)")
            #expect(Command.run("/usr/bin/sha256sum", [scratch.file("down")]).stdout.hasPrefix(want))
            let lines = eventually { () -> [String]? in
                let l = requestLines(e.log, path: "/again")
                return l.isEmpty ? nil : l
            } ?? []
            #expect(lines.count == 1, "\(e.log)")
            #expect(lines.first?.contains("\"status\":200") == true && lines.first?.contains("\"upstream_protocol\":\"http/1.1\"") == true && lines.first?.contains("\"route\":\"web\"") == true, "\(lines)")
        }

        @Test("h2load multiplexes 4,000 requests of 8 clients onto a few backend sessions of a strict h2c server")
        func multiplexed() throws {
            let (h1, h1Port) = try startPeer("http1")
            defer { h1.stop() }
            let www = Scratch("files")
            try FileManager.default.createDirectory(atPath: www.file("files"), withIntermediateDirectories: true)
            try "file\n".write(toFile: www.file("files/f"), atomically: true, encoding: .utf8)
            let h2cPort = freePort()
            let nghttpd = try Background("nghttpd", "/usr/sbin/nghttpd", ["--no-tls", "-d", www.path, "\(h2cPort)"])
            defer { nghttpd.stop() }
            #expect(waitForPort(h2cPort))
            let port = freePort(), admin = freePort()
            let e = try Edgemux(config: requestModeConfig(port: port, http1: h1Port, h2c: h2cPort, admin: admin), port: port)
            let load = Command.run("/usr/bin/h2load", ["-n", "4000", "-c", "8", "-m", "10", "https://127.0.0.1:\(port)/files/f"], timeout: 120)
            #expect(load.stdout.contains("4000 total, 4000 started, 4000 done, 4000 succeeded, 0 failed, 0 errored"), "\(load.stdout) \(e.log)")
            let metrics = curl(["http://127.0.0.1:\(admin)/metrics"], port: admin).stdout
            let sessions = metrics.split(separator: "\n").first { $0.hasPrefix("edgemux_upstream_h2_sessions ") }.flatMap { Int($0.split(separator: " ")[1]) } ?? -1
            #expect(sessions >= 1 && sessions <= 2, "backend sessions for 80 concurrent streams: \(sessions)\n\(metrics)")
            #expect(metrics.contains("edgemux_requests_total{listener=\"public\",route=\"files\",code_class=\"2xx\"} 4000"), "\(metrics)")
        }

        @Test("a client that waits for the ACK of its SETTINGS before its first request is served (mixed listener)")
        func settingsAckWait() throws {
            let (h1, h1Port) = try startPeer("http1", ["--name", "acked"])
            defer { h1.stop() }
            let port = freePort()
            let e = try Edgemux(config: requestModeConfig(port: port, http1: h1Port), port: port)
            let r = H2Peers.run(["settings-ack-wait", "--port", "\(port)", "--ca", TestCerts.ca, "--path", "/waited"], timeout: 30)
            #expect(r.status == 0 && r.stdout.contains("status 200"), "\(r.stdout) \(r.stderr) \(e.log)")
            #expect(r.stdout.contains("acked GET /waited"), "\(r.stdout)")
        }

        @Test("gRPC in request mode: unary calls spread over 3 endpoints, 16 MiB messages both ways, a cancel reaches the backend")
        func grpcRequestMode() throws {
            let (h1, h1Port) = try startPeer("http1")
            defer { h1.stop() }
            let scratch = Scratch("grpcnamed")
            var servers: [Background] = []
            var ports: [UInt16] = []
            for name in ["a", "b", "c"] {
                let (bg, p) = try H2Peers.start("grpc-named", ["--name", name, "--log", scratch.file("\(name).log")])
                servers.append(bg)
                ports.append(p)
            }
            defer { servers.forEach { $0.stop() } }
            let port = freePort()
            let e = try Edgemux(config: requestModeConfig(port: port, http1: h1Port, grpc: ports, grpcMode: "request"), port: port)
            let unary = H2Peers.run(["grpc-call", "--target", "localhost:\(port)", "--ca", TestCerts.ca, "--method", "Unary", "--count", "30"], timeout: 60)
            #expect(unary.stdout.contains("ok unary 30 by a="), "\(unary.stdout) \(unary.stderr) \(e.log)")
            #expect(unary.stdout.contains(",b=") && unary.stdout.contains(",c="), "every endpoint gets some: \(unary.stdout)")
            let size = 16 << 20
            let big = H2Peers.run(["grpc-call", "--target", "localhost:\(port)", "--ca", TestCerts.ca, "--method", "Big", "--size", "\(size)", "--timeout", "60"], timeout: 90)
            #expect(big.stdout.contains("ok big \(size)"), "\(big.stdout) \(big.stderr) \(e.log)")
            let echo = H2Peers.run(["grpc-call", "--target", "localhost:\(port)", "--ca", TestCerts.ca, "--method", "EchoBig", "--size", "\(size)", "--timeout", "60"], timeout: 90)
            #expect(echo.stdout.contains("ok echo \(size)"), "\(echo.stdout) \(echo.stderr) \(e.log)")
            let cancel = H2Peers.run(["cancel", "--port", "\(port)", "--ca", TestCerts.ca, "--grpc", "--grpc-message", "1000,50", "--path", "/test.Svc/Stream", "--after-bytes", "1"], timeout: 30)
            #expect(cancel.stdout.contains("cancelled after"), "\(cancel.stdout) \(cancel.stderr)")
            func cancelsSeen() -> Int {
                ["a", "b", "c"].map { (try? String(contentsOfFile: scratch.file("\($0).log"), encoding: .utf8)) ?? "" }.joined()
                    .components(separatedBy: "cancelled Stream").count - 1
            }
            #expect(eventually(timeout: 10) { cancelsSeen() >= 1 ? true : nil } == true, "the backend saw no cancel: \(e.log)")
            // The connection goes away under an open stream (no RST_STREAM): the backend's stream
            // is cancelled too, and edgemux (whose request outlives its client connection until
            // the backend's stream has closed) serves on.
            let gone = H2Peers.run(["cancel", "--close", "--port", "\(port)", "--ca", TestCerts.ca, "--grpc", "--grpc-message", "1000,50", "--path", "/test.Svc/Stream", "--after-bytes", "1"], timeout: 30)
            #expect(gone.stdout.contains("closed after"), "\(gone.stdout) \(gone.stderr)")
            #expect(eventually(timeout: 10) { cancelsSeen() >= 2 ? true : nil } == true, "the backend saw no second cancel: \(e.log)")
            let after = H2Peers.run(["grpc-call", "--target", "localhost:\(port)", "--ca", TestCerts.ca, "--method", "Unary", "--count", "3"], timeout: 30)
            #expect(after.stdout.contains("ok unary 3"), "\(after.stdout) \(after.stderr) \(e.log)")
        }

        @Test("one slow reader does not stall another stream of its connection")
        func slowReader() throws {
            let (slow, slowPort) = try H2Peers.start("slow-http1", ["--delay-ms", "0"])
            defer { slow.stop() }
            let port = freePort()
            let e = try Edgemux(config: requestModeConfig(port: port, http1: slowPort), port: port)
            let r = H2Peers.run(["slow-reader", "--port", "\(port)", "--ca", TestCerts.ca, "--slow-path", "/big?size=20000000", "--fast-path", "/small", "--timeout", "20"], timeout: 40)
            #expect(r.status == 0 && r.stdout.contains("fast ok status 200"), "\(r.stdout) \(r.stderr) \(e.log)")
        }

        @Test("requests after idle gaps run on the pages an idle session gave back, also with idle streams from PRIORITY frames")
        func idleSessionReleasesMemory() throws {
            let (h1, h1Port) = try startPeer("http1", ["--name", "gaps"])
            defer { h1.stop() }
            let port = freePort()
            let e = try Edgemux(config: requestModeConfig(port: port, http1: h1Port), port: port)
            for extra in [[], ["--priority"]] {
                let r = H2Peers.run(["idle-gaps", "--port", "\(port)", "--ca", TestCerts.ca, "--rounds", "3", "--gap", "2.5", "--timeout", "30"] + extra, timeout: 40)
                #expect(r.status == 0 && r.stdout.contains("rounds ok 3"), "\(extra) \(r.stdout) \(r.stderr) \(e.log)")
            }
            #expect(e.background.process.isRunning, "\(e.log)")
        }

        @Test("max_requests_per_connection: the last request gets Connection: close (HTTP/1.1) or a graceful GOAWAY (HTTP/2); curl goes on on a new connection")
        func requestsPerConnection() throws {
            let (h1, h1Port) = try startPeer("http1", ["--name", "count"])
            defer { h1.stop() }
            let port = freePort(), admin = freePort()
            let yaml = requestModeConfig(port: port, http1: h1Port, admin: admin)
                .replacingOccurrences(of: "    listen: 127.0.0.1:\(port)\n", with: "    listen: 127.0.0.1:\(port)\n    max_requests_per_connection: 2\n")
            let e = try Edgemux(config: yaml, port: port)
            for version in ["--http1.1", "--http2"] {
                let urls = (1...4).map { "https://localhost:\(port)/n\($0)" }
                let r = curl([version, "-w", "connects=%{num_connects}\\n"] + urls, port: port)
                let connects = r.stdout.components(separatedBy: "connects=").dropFirst().compactMap { Int($0.prefix { $0.isNumber }) }
                #expect(connects.count == 4 && connects.reduce(0, +) == 2, "\(version): \(r.stdout) \(r.stderr) \(e.log)")
                #expect((1...4).allSatisfy { r.stdout.contains("count GET /n\($0)") }, "\(version): \(r.stdout)")
            }
            let m = curl(["http://127.0.0.1:\(admin)/metrics"], port: admin).stdout
            #expect(m.contains("reason=\"max_requests\""), "\(m)")
        }

        @Test("rapid reset and a CONTINUATION flood close their own connection; other clients go on")
        func abuse() throws {
            let (h1, h1Port) = try startPeer("http1", ["--name", "calm"])
            defer { h1.stop() }
            let port = freePort()
            let e = try Edgemux(config: requestModeConfig(port: port, http1: h1Port), port: port)
            let reset = H2Peers.run(["rapid-reset", "--port", "\(port)", "--ca", TestCerts.ca, "--count", "5000", "--timeout", "20"], timeout: 40)
            #expect(reset.stdout.contains("goaway") && reset.stdout.contains("closed"), "\(reset.stdout) \(reset.stderr) \(e.log)")
            let flood = H2Peers.run(["continuation-flood", "--port", "\(port)", "--ca", TestCerts.ca, "--count", "10000", "--timeout", "20"], timeout: 40)
            #expect(flood.stdout.contains("closed"), "\(flood.stdout) \(flood.stderr) \(e.log)")
            let ok = curl(["--http2", "https://localhost:\(port)/after"], port: port)
            #expect(ok.stdout.contains("calm GET /after"), "\(ok.stdout) \(ok.stderr) \(e.log)")
        }

        @Test("SIGTERM with 100 open streams: the client sees GOAWAY, every stream completes, edgemux exits 0")
        func drain() throws {
            let (slow, slowPort) = try H2Peers.start("slow-http1", ["--delay-ms", "1500"])
            defer { slow.stop() }
            let port = freePort()
            let e = try Edgemux(config: requestModeConfig(port: port, http1: slowPort), port: port)
            let scratch = Scratch("drain")
            let out = scratch.file("out")
            let client = try Background("many", "/bin/bash", ["-c", "\(Paths.python) \(H2Peers.script) many-streams --port \(port) --ca \(TestCerts.ca) --count 100 --path /slow --expect-goaway --timeout 30 > \(out) 2>&1"])
            // The streams are open and waiting on the backend (it answers after 1.5 s).
            usleep(800_000)
            e.background.signal(SIGTERM)
            #expect(client.waitExit(timeout: 30) == 0, "\((try? String(contentsOfFile: out, encoding: .utf8)) ?? "") \(e.log)")
            let text = (try? String(contentsOfFile: out, encoding: .utf8)) ?? ""
            #expect(text.contains("goaway last-stream") && text.contains("completed 100 of 100"), "\(text)")
            #expect(e.background.waitExit(timeout: 25) == 0, "\(e.log)")
        }
    }
}
