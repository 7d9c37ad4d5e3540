import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A stand-in Kubernetes API server: TLS that requires a client certificate from the test CA and
/// answers with the client certificate's name.
final class StandInAPIServer {
    let server: Background
    let port: UInt16
    init() throws {
        (server, port) = try startPeer("http1", ["--name", "apiserver", "--cert", TestCerts.cert, "--key", TestCerts.key, "--client-ca", TestCerts.ca])
    }
}

extension Integration {
    @Suite("egress tunnel: CONNECT and SNI passthrough, deny by default", .serialized)
    struct TunnelTests {
        func tunnelConfig(port: UInt16, mode: String = "connect", allow: String, extra: String = "") -> String {
            """
            workers: 1
            access_log: stdout
            listeners:
              - name: egress
                listen: 127.0.0.1:\(port)
                request_timeout: 2s
                tunnel:
                  mode: \(mode)
                  allow:
            \(allow)
            \(extra)
            """
        }

        func viaProxy(_ proxy: UInt16, _ url: String, _ extra: [String] = []) -> CommandResult {
            Command.run("/usr/bin/curl", ["-sS", "--max-time", "20", "-x", "http://127.0.0.1:\(proxy)", "--proxytunnel", "--cacert", TestCerts.ca,
                                          "--cert", "\(TestCerts.dir)/client.pem", "--key", "\(TestCerts.dir)/client.key", "-w", " %{http_code}"] + extra + [url], timeout: 30)
        }

        @Test("CONNECT with a client certificate reaches the API server (mTLS end to end); denials are 403 and connect nothing")
        func connectAndAllowlist() throws {
            let api = try StandInAPIServer()
            let port = freePort()
            let e = try Edgemux(config: tunnelConfig(port: port, allow: """
                        - { host: localhost, ports: [\(api.port)] }
                        - { cidr: 127.0.0.0/8, ports: [\(api.port)] }
                        - { host: "*.denied.test", ports: [\(api.port)] }
              """), port: port)
            let ok = viaProxy(port, "https://localhost:\(api.port)/api/v1/namespaces")
            #expect(ok.stdout == "apiserver GET /api/v1/namespaces host=localhost:\(api.port) client-cert=client\n 200", "\(ok.stdout) \(ok.stderr) \(e.log)")
            // An IP literal inside the allowed network works too.
            let literal = Command.run("/usr/bin/curl", ["-sS", "-x", "http://127.0.0.1:\(port)", "--proxytunnel", "--cacert", TestCerts.ca,
                                                        "--cert", "\(TestCerts.dir)/client.pem", "--key", "\(TestCerts.dir)/client.key",
                                                        "https://127.0.0.1:\(api.port)/ip"], timeout: 20)
            #expect(literal.stdout.contains("client-cert=client"), "\(literal.stdout) \(literal.stderr)")

            let otherHost = viaProxy(port, "https://example.com:\(api.port)/")
            #expect(otherHost.stderr.contains("CONNECT tunnel failed, response 403"), "\(otherHost.stderr)")
            let otherPort = viaProxy(port, "https://localhost:22/")
            #expect(otherPort.stderr.contains("response 403"), "\(otherPort.stderr)")
            let outsideNetwork = viaProxy(port, "https://10.1.2.3:\(api.port)/")
            #expect(outsideNetwork.stderr.contains("response 403"), "\(outsideNetwork.stderr)")
            e.stop()

            // A name whose addresses are all outside the allowed networks: localhost is 127.0.0.1
            // (and ::1), the network allows 127.0.0.2 only.
            let port2 = freePort()
            let e2 = try Edgemux(config: tunnelConfig(port: port2, allow: """
                        - { host: localhost, ports: [\(api.port)] }
                        - { cidr: 127.0.0.2/32, ports: [\(api.port)] }
              """), port: port2)
            let smuggled = viaProxy(port2, "https://localhost:\(api.port)/")
            #expect(smuggled.stderr.contains("response 403"), "\(smuggled.stderr)")
            usleep(200_000)
            #expect(e2.log.contains("resolves only to addresses outside the allowed networks"), "\(e2.log)")
            #expect(!e2.log.contains("\"endpoint\":\"127.0.0.1"), "nothing was connected: \(e2.log)")
            #expect(e.log.components(separatedBy: "\"endpoint\":null").count - 1 >= 3, "the denied ones connected nothing: \(e.log)")
        }

        @Test("answers: 405 for other methods, 400 malformed, 502 refused, 504 connect timeout, 407 without credentials")
        func answers() throws {
            let (hole, holePort) = try startPeer("blackhole")
            defer { hole.stop() }
            let dead = freePort()
            let port = freePort()
            let scratch = Scratch("auth")
            try "# user:password\nplatform:s3cret\n".write(toFile: scratch.file("users"), atomically: true, encoding: .utf8)
            let e = try Edgemux(config: tunnelConfig(port: port, allow: """
                        - { host: localhost, ports: [\(dead), \(holePort)] }
                        - { cidr: 127.0.0.0/8, ports: [\(dead), \(holePort)] }
              """, extra: "      connect_timeout: 500ms\n      auth_file: \(scratch.file("users"))"), port: port)
            func raw(_ request: String) -> String {
                Command.run(Paths.python, [Paths.peers, "raw-tls", "--plain", "--port", "\(port)", "--send", "b'\(request)'", "--timeout", "10"], timeout: 15).stdout
            }
            let auth = "Proxy-Authorization: Basic cGxhdGZvcm06czNjcmV0\\r\\n"
            #expect(raw("GET http://localhost/ HTTP/1.1\\r\\nHost: localhost\\r\\n\(auth)\\r\\n").contains("HTTP/1.1 405"))
            #expect(raw("CONNECT localhost HTTP/1.1\\r\\n\(auth)\\r\\n").contains("HTTP/1.1 400"))
            #expect(raw("CONNECT localhost:\(dead) HTTP/1.1\\r\\n\\r\\n").contains("HTTP/1.1 407"))
            #expect(raw("CONNECT localhost:\(dead) HTTP/1.1\\r\\nProxy-Authorization: Basic d3Jvbmc6d3Jvbmc=\\r\\n\\r\\n").contains("HTTP/1.1 407"))
            #expect(raw("CONNECT localhost:\(dead) HTTP/1.1\\r\\n\(auth)\\r\\n").contains("HTTP/1.1 502"))
            let slow = raw("CONNECT 127.0.0.1:\(holePort) HTTP/1.1\\r\\n\(auth)\\r\\n")
            #expect(slow.contains("HTTP/1.1 504"), "\(slow) \(e.log)")
            // curl with --proxy-user gets through the authentication (and then 502: nothing listens).
            let withUser = Command.run("/usr/bin/curl", ["-sS", "-x", "http://127.0.0.1:\(port)", "--proxy-user", "platform:s3cret", "--proxytunnel", "https://localhost:\(dead)/"], timeout: 20)
            #expect(withUser.stderr.contains("response 502"), "\(withUser.stderr)")
            usleep(200_000)
            let log = e.log
            for line in ["405 method GET is not CONNECT", "400 CONNECT target 'localhost' is not host:port", "without valid proxy credentials",
                         "localhost:\(dead): 502 cannot reach localhost:\(dead): Connection refused", "127.0.0.1:\(holePort): 504 cannot reach 127.0.0.1:\(holePort): timed out after 500ms"] {
                #expect(log.contains(line), "a log line with '\(line)': \(log)")
            }
        }

        @Test("connect failures to many destinations count by reason: one metric series, not one per address")
        func boundedFailureLabels() throws {
            let port = freePort(), admin = freePort()
            let dead = (0..<20).map { _ in freePort() }
            let e = try Edgemux(config: "admin:\n  listen: 127.0.0.1:\(admin)\n" + tunnelConfig(port: port, allow: """
                        - { cidr: 127.0.0.0/8, ports: [\(dead.map(String.init).joined(separator: ", "))] }
              """), port: port)
            for d in dead {
                let out = Command.run(Paths.python, [Paths.peers, "raw-tls", "--plain", "--port", "\(port)", "--send", "b'CONNECT 127.0.0.1:\(d) HTTP/1.1\\r\\n\\r\\n'", "--timeout", "10"], timeout: 15).stdout
                #expect(out.contains("HTTP/1.1 502"), "\(out) \(e.log)")
            }
            let m = curl(["http://127.0.0.1:\(admin)/metrics"], port: admin).stdout
            #expect(metricSum(m, "edgemux_tunnel_connect_failures_total", ["reason": "refused"]) == 20, "\(m)")
            for d in dead { #expect(!m.contains(":\(d)\""), "a series names the destination \(d)") }
        }

        @Test("SNI passthrough: a mapped name reaches its server with the client certificate verified; an unmapped one is closed")
        func sniPassthrough() throws {
            let api = try StandInAPIServer()
            let port = freePort()
            let e = try Edgemux(config: tunnelConfig(port: port, mode: "sni", allow: """
                        - { host: localhost, ports: [\(api.port)] }
                        - { cidr: 127.0.0.0/8, ports: [\(api.port)] }
              """, extra: """
                  map:
                    - { sni: localhost, to: "localhost:\(api.port)" }
                    - { sni: "*.other.test", to: "127.0.0.1:\(api.port)" }
            """), port: port)
            let request = "GET /sni HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
            let mapped = Command.run("/usr/bin/openssl", ["s_client", "-connect", "127.0.0.1:\(port)", "-servername", "localhost", "-CAfile", TestCerts.ca,
                                                          "-cert", "\(TestCerts.dir)/client.pem", "-key", "\(TestCerts.dir)/client.key", "-ign_eof", "-quiet"], timeout: 20, stdin: request)
            #expect(mapped.stdout.contains("apiserver GET /sni host=localhost client-cert=client"), "\(mapped.stdout) \(mapped.stderr) \(e.log)")
            let unmapped = Command.run("/usr/bin/openssl", ["s_client", "-connect", "127.0.0.1:\(port)", "-servername", "nowhere.example", "-CAfile", TestCerts.ca, "-ign_eof", "-quiet"], timeout: 20, stdin: request)
            #expect(!unmapped.stdout.contains("apiserver"), "\(unmapped.stdout)")
            usleep(200_000)
            #expect(e.log.contains("SNI 'nowhere.example' is not in the map"), "\(e.log)")
            // A ClientHello in 64-byte records, written 7 bytes at a time, is still routed.
            let fragmented = Command.run(Paths.python, [Paths.peers, "fragmented-hello", "--port", "\(port)", "--ca", TestCerts.ca,
                                                        "--cert", "\(TestCerts.dir)/client.pem", "--key", "\(TestCerts.dir)/client.key"], timeout: 30)
            #expect(fragmented.stdout.contains("apiserver GET /fragmented host=localhost client-cert=client"), "\(fragmented.stdout) \(fragmented.stderr) \(e.log)")
            let records = fragmented.stdout.split(separator: " ").dropFirst().first.flatMap { Int($0) } ?? 0
            #expect(records >= 4, "the ClientHello really was split: \(fragmented.stdout)")
        }

        @Test("64 MiB each way through a tunnel, checksums equal; half-close in each direction")
        func bulkAndHalfClose() throws {
            let size = 64 << 20
            let (sink, sinkPort) = try startPeer("tcp-sink", ["--reply-size", "\(size)"])
            defer { sink.stop() }
            let (replyFirst, replyFirstPort) = try startPeer("tcp-sink", ["--mode", "reply-then-sink", "--reply-size", "100000"])
            defer { replyFirst.stop() }
            let port = freePort()
            let e = try Edgemux(config: tunnelConfig(port: port, allow: """
                        - { host: localhost, ports: [\(sinkPort), \(replyFirstPort)] }
                        - { cidr: 127.0.0.0/8, ports: [\(sinkPort), \(replyFirstPort)] }
              """), port: port)
            func sha(_ seed: Int, _ n: Int) -> String {
                Command.run(Paths.python, [Paths.peers, "blob-sha256", "--seed", "\(seed)", "--size", "\(n)"], timeout: 60).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
            }
            let up = Command.run(Paths.python, [Paths.peers, "halfclose-client", "--port", "\(port)", "--connect", "localhost:\(sinkPort)", "--size", "\(size)", "--timeout", "60"], timeout: 120)
            #expect(up.stdout == "reply \(sha(4, size)) \(size) payload \(size) \(sha(9, size))\n", "\(up.stdout) \(up.stderr) \(e.log)")
            let down = Command.run(Paths.python, [Paths.peers, "halfclose-client", "--port", "\(port)", "--connect", "localhost:\(replyFirstPort)", "--mode", "reply-then-sink", "--size", "5000000"], timeout: 60)
            #expect(down.stdout == "reply reply first payload 100000 \(sha(9, 100_000))\n", "\(down.stdout) \(down.stderr)")
            usleep(300_000)
            #expect(replyFirst.log.contains("received 5000000 \(sha(4, 5_000_000))"), "\(replyFirst.log)")
        }

        @Test("through a parent CONNECT proxy (a second edgemux, with credentials) the API server is reached")
        func parentProxy() throws {
            let api = try StandInAPIServer()
            let scratch = Scratch("parent")
            try "platform:s3cret\n".write(toFile: scratch.file("users"), atomically: true, encoding: .utf8)
            try "platform:s3cret\n".write(toFile: scratch.file("parent-credentials"), atomically: true, encoding: .utf8)
            let parentPort = freePort()
            let parent = try Edgemux(config: tunnelConfig(port: parentPort, allow: """
                        - { host: localhost, ports: [\(api.port)] }
                        - { cidr: 127.0.0.0/8, ports: [\(api.port)] }
              """, extra: "      auth_file: \(scratch.file("users"))"), port: parentPort)
            let port = freePort()
            let child = try Edgemux(config: tunnelConfig(port: port, allow: """
                        - { host: localhost, ports: [\(api.port)] }
              """, extra: "      parent: 127.0.0.1:\(parentPort)\n      parent_auth_file: \(scratch.file("parent-credentials"))"), port: port)
            let r = viaProxy(port, "https://localhost:\(api.port)/through-parent")
            #expect(r.stdout == "apiserver GET /through-parent host=localhost:\(api.port) client-cert=client\n 200", "\(r.stdout) \(r.stderr) \(child.log) \(parent.log)")
            #expect(parent.log.contains("\"destination\":\"localhost:\(api.port)\""), "the parent carried it: \(parent.log)")
            // The child still refuses what its own allowlist does not allow.
            let denied = viaProxy(port, "https://localhost:22/")
            #expect(denied.stderr.contains("response 403"), "\(denied.stderr)")
        }
    }
}
