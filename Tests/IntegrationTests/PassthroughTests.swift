import Foundation
import Testing

extension Integration {
    @Suite("TLS passthrough by SNI beside terminated routes, and a fallback for what is not TLS", .serialized)
    struct PassthroughTests {
        var client: [String] { ["--cert", "\(TestCerts.dir)/client.pem", "--key", "\(TestCerts.dir)/client.key"] }

        /// A listener that terminates `localhost` (edgemux's certificate) and passes `*.other.test`
        /// through to TLS servers that hold the `other` certificate and require a client one.
        func config(port: UInt16, admin: UInt16, sServer: UInt16, inner: UInt16, web: UInt16, fallback: UInt16, proxyHeader: String = "none", fallbackTimeout: String? = nil) -> String {
            """
            workers: 2
            access_log: stdout
            admin: { listen: 127.0.0.1:\(admin) }
            listeners:
              - name: public
                listen: 127.0.0.1:\(port)
            \(tlsBlock())
                fallback: raw
            \(fallbackTimeout.map { "    fallback_timeout: \($0)" } ?? "")
                routes:
                  - { name: bulk, match: { sni: bulk.other.test }, passthrough: true, backend: inner }
                  - { name: acme, match: { sni: "*.other.test", alpn: acme-tls/1 }, passthrough: true, backend: inner }
                  - { name: cluster, match: { sni: "*.other.test" }, passthrough: true, backend: sserver }
                  - { name: web, backend: web }
            backends:
              sserver: { protocol: tcp, endpoints: ["127.0.0.1:1", "127.0.0.1:\(sServer)"] }
              inner: { protocol: tcp, endpoints: ["127.0.0.1:\(inner)"], proxy_protocol: \(proxyHeader) }
              raw: { protocol: tcp, endpoints: ["127.0.0.1:\(fallback)"] }
              web: { endpoints: { http1: ["127.0.0.1:\(web)"] } }
            """
        }

        @Test("a passthrough SNI reaches its own TLS server end to end (its certificate, mTLS, a ClientHello in three segments, 32 MiB each way byte-exact); other names are terminated by edgemux; logged and counted")
        func passthrough() throws {
            let certs = TestCerts.dir
            let sPort = freePort()
            let sServer = try Background("s_server", "/usr/bin/openssl", ["s_server", "-accept", "127.0.0.1:\(sPort)", "-cert", "\(certs)/other.pem", "-key", "\(certs)/other.key",
                                                                          "-CAfile", TestCerts.ca, "-Verify", "1", "-www", "-quiet"])
            defer { sServer.stop() }
            #expect(waitForPort(sPort, while: sServer))
            let (inner, innerPort) = try startPeer("http1", ["--name", "inner", "--cert", "\(certs)/other.pem", "--key", "\(certs)/other.key", "--client-ca", TestCerts.ca])
            defer { inner.stop() }
            let (web, webPort) = try startPeer("http1", ["--name", "web"])
            defer { web.stop() }
            let (raw, rawPort) = try startPeer("first-bytes", ["--reply", "SSH-2.0-stand-in\r\n"])
            defer { raw.stop() }
            let port = freePort(), admin = freePort()
            let e = try Edgemux(config: config(port: port, admin: admin, sServer: sPort, inner: innerPort, web: webPort, fallback: rawPort), port: port)

            // openssl s_client with that SNI sees the server's own certificate and completes
            // mTLS through edgemux (the first endpoint refuses: failover before the first byte).
            let mtls = Command.run("/usr/bin/openssl", ["s_client", "-connect", "127.0.0.1:\(port)", "-servername", "c1.other.test", "-CAfile", TestCerts.ca, "-ign_eof"] + client,
                                   timeout: 15, stdin: "GET / HTTP/1.0\r\n\r\n")
            #expect(mtls.stdout.contains("CN = other") && mtls.stdout.contains("Verify return code: 0 (ok)"), "\(mtls.stdout) \(mtls.stderr) \(e.log)")
            #expect(mtls.stdout.contains("HTTP/1.0 200 ok"), "s_server -www answered: \(mtls.stdout)")
            // ALPN is matched on any name the ClientHello offers (a TLS-ALPN-01 challenge here).
            let acme = Command.run("/usr/bin/openssl", ["s_client", "-connect", "127.0.0.1:\(port)", "-servername", "c4.other.test", "-alpn", "acme-tls/1", "-CAfile", TestCerts.ca, "-ign_eof"] + client,
                                   timeout: 15, stdin: "GET /challenge HTTP/1.0\r\n\r\n")
            #expect(acme.stdout.contains("inner GET /challenge"), "\(acme.stdout) \(acme.stderr) \(e.log)")
            // curl too; without a client certificate the server (not edgemux) refuses.
            let viaCurl = Command.run("/usr/bin/curl", ["-sS", "--cacert", TestCerts.ca, "--resolve", "c2.other.test:\(port):127.0.0.1", "-w", " %{http_code}"] + client
                                      + ["https://c2.other.test:\(port)/"], timeout: 15)
            #expect(viaCurl.stdout.hasSuffix(" 200") && viaCurl.stdout.contains("s_server"), "\(viaCurl.stdout) \(viaCurl.stderr)")
            let noCert = Command.run("/usr/bin/curl", ["-sS", "--cacert", TestCerts.ca, "--resolve", "c3.other.test:\(port):127.0.0.1", "https://c3.other.test:\(port)/"], timeout: 15)
            #expect(noCert.status != 0, "\(noCert.stdout) \(noCert.stderr)")
            // Another SNI: edgemux's certificate and the web backend.
            let terminated = curl(["--http1.1", "https://localhost:\(port)/here"], port: port)
            #expect(terminated.stdout.hasPrefix("web GET /here"), "\(terminated.stdout) \(terminated.stderr)")
            let edgemuxCert = Command.run("/usr/bin/openssl", ["s_client", "-connect", "127.0.0.1:\(port)", "-servername", "localhost", "-CAfile", TestCerts.ca], timeout: 15, stdin: "")
            #expect(edgemuxCert.stdout.contains("CN = localhost"), "\(edgemuxCert.stdout)")

            // A ClientHello in three TCP segments is reassembled before the route is chosen.
            let split = Command.run(Paths.python, [Paths.peers, "split-hello", "--port", "\(port)", "--ca", TestCerts.ca, "--servername", "bulk.other.test",
                                                   "--cert", "\(certs)/client.pem", "--key", "\(certs)/client.key"], timeout: 20)
            #expect(split.stdout.contains("peer CN=other status=HTTP/1.1"), "\(split.stdout) \(split.stderr)")
            let splitLocal = Command.run(Paths.python, [Paths.peers, "split-hello", "--port", "\(port)", "--ca", TestCerts.ca, "--servername", "localhost"], timeout: 20)
            #expect(splitLocal.stdout.contains("peer CN=localhost status=HTTP/1.1 200"), "\(splitLocal.stdout) \(splitLocal.stderr)")

            // 32 MiB each way through the passthrough, byte-exact at both ends.
            let scratch = Scratch("passthrough")
            let size = 32 << 20
            let bulk = ["-sS", "--cacert", TestCerts.ca, "--resolve", "bulk.other.test:\(port):127.0.0.1"] + client
            let down = Command.run("/usr/bin/curl", bulk + ["-o", scratch.file("down"), "https://bulk.other.test:\(port)/blob?size=\(size)&seed=3"], timeout: 60)
            let want = Command.run(Paths.python, [Paths.peers, "blob-sha256", "--seed", "3", "--size", "\(size)", "--out", scratch.file("up")], timeout: 60).stdout
            let got = Command.run("/usr/bin/sha256sum", [scratch.file("down")]).stdout.split(separator: " ").first.map(String.init) ?? ""
            #expect(down.status == 0 && want.hasPrefix(got) && !got.isEmpty, "\(down.stderr) \(got) \(want)")
            let up = Command.run("/usr/bin/curl", bulk + ["--data-binary", "@\(scratch.file("up"))", "https://bulk.other.test:\(port)/upload"], timeout: 60)
            #expect(up.stdout == "\(want.trimmingCharacters(in: .whitespacesAndNewlines)) \(size)\n", "\(up.stdout) \(up.stderr)")

            // Not TLS at all (an SSH client speaks first): the fallback backend gets it raw.
            let ssh = Command.run(Paths.python, ["-c", """
                import socket
                s = socket.create_connection(("127.0.0.1", \(port)), timeout=5)
                s.sendall(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\\r\\n")
                print(s.recv(100))
                """], timeout: 15)
            #expect(ssh.stdout.contains("SSH-2.0-stand-in"), "\(ssh.stdout) \(ssh.stderr) \(e.log)")
            #expect(raw.log.contains("got 32 \(Array("SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n".utf8).map { String(format: "%02x", $0) }.joined())"), "\(raw.log)")
            // Plain HTTP is not TLS either: with a fallback it goes there too (without one: 400).

            usleep(300_000)
            let log = e.log
            #expect(log.contains("\"sni\":\"c1.other.test\"") && log.contains("\"protocol\":\"tls\"") && log.contains("\"route\":\"cluster\""), "\(log)")
            #expect(log.contains("\"endpoint\":\"127.0.0.1:\(sPort)\""), "\(log)")
            // The terminated requests log their SNI too.
            #expect(log.split(separator: "\n").contains { $0.contains("\"route\":\"web\"") && $0.contains("\"sni\":\"localhost\"") }, "\(log)")
            #expect(log.contains("\"protocol\":\"tcp\"") && log.contains("\"backend\":\"raw\""), "\(log)")
            let metrics = Command.run("/usr/bin/curl", ["-sS", "http://127.0.0.1:\(admin)/metrics"]).stdout
            #expect(metricSum(metrics, "edgemux_routed_total", ["route": "cluster"]) == 3, "\(metrics)")
            #expect(metricSum(metrics, "edgemux_routed_total", ["route": "public/fallback"]) == 1, "\(metrics)")
            #expect(metrics.contains("edgemux_passthrough_connections_total{listener=\"public\",route=\"cluster\",protocol=\"tls\"} 3"), "\(metrics)")
            #expect(metrics.contains("edgemux_passthrough_connections_total{listener=\"public\",route=\"acme\",protocol=\"tls\"} 1"), "\(metrics)")
            #expect(metrics.contains("edgemux_passthrough_connections_total{listener=\"public\",route=\"fallback\",protocol=\"tcp\"} 1"), "\(metrics)")
            #expect(metrics.contains("edgemux_passthrough_received_bytes_total{listener=\"public\",route=\"fallback\",protocol=\"tcp\"} 32"), "\(metrics)")
            #expect(metricSum(metrics, "edgemux_passthrough_connections_active", ["listener": "public"]) == 0 && metrics.contains("edgemux_passthrough_connections_active{listener=\"public\"} 0"), "\(metrics)")
            // 32 MiB went each way on the bulk route (plus TLS framing and the handshake).
            let bulkIn = metrics.split(separator: "\n").first { $0.hasPrefix("edgemux_passthrough_received_bytes_total{listener=\"public\",route=\"bulk\"") }
            #expect(bulkIn.flatMap { Int($0.split(separator: " ").last ?? "") }.map { $0 > size } ?? false, "\(metrics)")
        }

        @Test("kubectl with a kubeconfig whose server name is a passthrough name reaches the API server behind it with its client certificate",
              .enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/kubectl"), "needs kubectl (not a Debian 12 package): here when installed"))
        func kubectl() throws {
            let certs = TestCerts.dir
            let (api, apiPort) = try startPeer("http1", ["--name", "apiserver", "--cert", "\(certs)/other.pem", "--key", "\(certs)/other.key", "--client-ca", TestCerts.ca])
            defer { api.stop() }
            let (web, webPort) = try startPeer("http1", ["--name", "web"])
            defer { web.stop() }
            let port = freePort(), admin = freePort()
            let e = try Edgemux(config: config(port: port, admin: admin, sServer: 1, inner: apiPort, web: webPort, fallback: 1), port: port)
            let scratch = Scratch("kubeconfig")
            // The address is edgemux's; the name kubectl sends (SNI) and verifies is the cluster's.
            try """
                apiVersion: v1
                kind: Config
                clusters:
                - name: workload
                  cluster:
                    server: https://127.0.0.1:\(port)
                    tls-server-name: bulk.other.test
                    certificate-authority: \(TestCerts.ca)
                users:
                - name: platform
                  user:
                    client-certificate: \(certs)/client.pem
                    client-key: \(certs)/client.key
                contexts:
                - name: workload
                  context: { cluster: workload, user: platform }
                current-context: workload
                """.write(toFile: scratch.file("kubeconfig"), atomically: true, encoding: .utf8)
            let r = Command.run("/usr/bin/kubectl", ["--kubeconfig", scratch.file("kubeconfig"), "get", "--raw", "/api/v1/namespaces"], timeout: 30)
            #expect(r.status == 0 && r.stdout.hasPrefix("apiserver GET /api/v1/namespaces") && r.stdout.contains("client-cert=client"), "\(r.stdout) \(r.stderr) \(e.log)")
        }

        @Test("a real ssh client reaches a real sshd through the listener's fallback, on the same port that terminates and passes TLS through",
              .enabled(if: getuid() == 0 && FileManager.default.isExecutableFile(atPath: "/usr/sbin/sshd") && FileManager.default.isExecutableFile(atPath: "/usr/bin/ssh"),
                       "needs Debian's openssh-server and openssh-client, and root (sshd's privilege separation)"))
        func sshFallback() throws {
            let scratch = Scratch("ssh")
            for key in ["host", "user"] {
                let gen = Command.run("/usr/bin/ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", key, "-f", scratch.file(key)], timeout: 15)
                #expect(gen.status == 0, "\(gen.stderr)")
            }
            try FileManager.default.copyItem(atPath: scratch.file("user.pub"), toPath: scratch.file("authorized_keys"))
            // sshd's privilege-separated child chroots here; the package makes it at boot only.
            try? FileManager.default.createDirectory(atPath: "/run/sshd", withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
            let sshdPort = freePort()
            let user = String(cString: getpwuid(getuid())!.pointee.pw_name)
            // As a daemon with a PID file: sshd closes every inherited descriptor at start, which
            // Foundation's Process takes for the child's exit (and then blocks waiting for it).
            let pidFile = scratch.file("sshd.pid")
            let start = Command.run("/usr/sbin/sshd", [
                "-f", "/dev/null", "-h", scratch.file("host"), "-E", scratch.file("sshd.log"),
                "-o", "ListenAddress=127.0.0.1:\(sshdPort)", "-o", "AuthorizedKeysFile=\(scratch.file("authorized_keys"))",
                "-o", "StrictModes=no", "-o", "PermitRootLogin=prohibit-password", "-o", "PasswordAuthentication=no",
                "-o", "KbdInteractiveAuthentication=no", "-o", "UsePAM=no", "-o", "PidFile=\(pidFile)", "-o", "LogLevel=VERBOSE",
            ], timeout: 15)
            #expect(start.status == 0, "\(start.stderr)")
            defer {
                // SIGTERM: sshd handles it itself (the runner's children inherit it ignored).
                if let text = try? String(contentsOfFile: pidFile, encoding: .utf8), let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)) { kill(pid, SIGTERM) }
            }
            var sshdLog: String { (try? String(contentsOfFile: scratch.file("sshd.log"), encoding: .utf8)) ?? "" }
            #expect(waitForPort(sshdPort), "\(sshdLog)")
            let (web, webPort) = try startPeer("http1", ["--name", "web"])
            defer { web.stop() }
            let port = freePort(), admin = freePort()
            // ssh-keyscan waits for the server's banner: silent for 1 s, it goes to the fallback.
            let e = try Edgemux(config: config(port: port, admin: admin, sServer: 1, inner: 1, web: webPort, fallback: sshdPort, fallbackTimeout: "1s"), port: port)

            // The host key, as ssh-keyscan sees it through edgemux, must be the sshd's own.
            let scan = Command.run("/usr/bin/ssh-keyscan", ["-p", "\(port)", "-t", "ed25519", "127.0.0.1"], timeout: 20)
            let hostKey = (try? String(contentsOfFile: scratch.file("host.pub"), encoding: .utf8))?.split(separator: " ").dropFirst().first.map(String.init) ?? "?"
            #expect(scan.stdout.contains(hostKey), "keyscan through edgemux: \(scan.stdout) \(scan.stderr) \(e.log)")
            try scan.stdout.write(toFile: scratch.file("known_hosts"), atomically: true, encoding: .utf8)
            let session = Command.run("/usr/bin/ssh", [
                "-p", "\(port)", "-i", scratch.file("user"), "-F", "/dev/null",
                "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", "UserKnownHostsFile=\(scratch.file("known_hosts"))",
                "-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=10",
                "\(user)@127.0.0.1", "echo through-edgemux; sha256sum",
            ], timeout: 30, stdin: String(repeating: "ssh bytes over 443\n", count: 50_000))
            let want = Command.run("/bin/sh", ["-c", "yes 'ssh bytes over 443' | head -n 50000 | sha256sum"]).stdout
            #expect(session.status == 0 && session.stdout == "through-edgemux\n\(want)", "\(session.stdout) \(session.stderr) \(sshdLog) \(e.log)")
            // The same port still terminates TLS for the web route.
            let terminated = curl(["--http1.1", "https://localhost:\(port)/still"], port: port)
            #expect(terminated.stdout.hasPrefix("web GET /still"), "\(terminated.stdout) \(terminated.stderr)")
            usleep(300_000)
            #expect(e.log.contains("\"protocol\":\"tcp\"") && e.log.contains("\"endpoint\":\"127.0.0.1:\(sshdPort)\""), "\(e.log)")
        }

        @Test("PROXY protocol v2 (and v1) before the ClientHello, per backend; off by default")
        func proxyProtocolOut() throws {
            let (sink, sinkPort) = try startPeer("first-bytes")
            defer { sink.stop() }
            for (version, prefix) in [("v2", "0d0a0d0a000d0a515549540a2111000c7f0000017f000001"), ("v1", Array("PROXY TCP4 127.0.0.1 127.0.0.1 ".utf8).map { String(format: "%02x", $0) }.joined()),
                                      ("none", "16030")] {
                let port = freePort(), admin = freePort()
                let e = try Edgemux(config: config(port: port, admin: admin, sServer: 1, inner: sinkPort, web: 1, fallback: 1, proxyHeader: version), port: port)
                _ = Command.run("/usr/bin/openssl", ["s_client", "-connect", "127.0.0.1:\(port)", "-servername", "bulk.other.test"], timeout: 10, stdin: "")
                let seen = eventually(timeout: 5) { sink.log.split(separator: "\n").last { $0.contains(" \(prefix)") } }
                #expect(seen != nil, "\(version): \(sink.log) \(e.log)")
                e.stop()
            }
        }

        @Test("check refuses a passthrough route that matches on what the ClientHello does not carry, or whose backend is not tcp; and a tcp backend behind a terminated route")
        func checkRules() throws {
            let scratch = Scratch("passthrough-check")
            let base = config(port: 1, admin: 2, sServer: 3, inner: 4, web: 5, fallback: 6)
            let cases: [(String, String)] = [
                (base.replacingOccurrences(of: "match: { sni: bulk.other.test }", with: "match: { sni: bulk.other.test, path_prefix: /api }"),
                 "'path_prefix' is inside the encrypted stream"),
                (base.replacingOccurrences(of: "passthrough: true, backend: inner", with: "passthrough: true, backend: web"), "must be protocol: tcp"),
                (base.replacingOccurrences(of: "- { name: web, backend: web }", with: "- { name: web, backend: raw }"), "only passthrough routes and a listener's fallback"),
                (base.replacingOccurrences(of: "fallback: raw", with: "fallback: web"), "must be protocol: tcp"),
                (config(port: 1, admin: 2, sServer: 3, inner: 4, web: 5, fallback: 6, fallbackTimeout: "1h"), "is not shorter than handshake_timeout"),
                (base.replacingOccurrences(of: "match: { sni: bulk.other.test }", with: "match: { sni: bulk.other.test, alpn: \"\" }"), "a protocol name is 1 to 255 bytes"),
                (base.replacingOccurrences(of: "- { name: web, backend: web }", with: "- { name: web, match: { alpn: acme-tls/1 }, backend: web }"), "a passthrough route may match any name"),
            ]
            for (text, words) in cases {
                try text.write(toFile: scratch.file("c.yaml"), atomically: true, encoding: .utf8)
                let check = Command.run(Paths.edgemux, ["check", "--config", scratch.file("c.yaml")], timeout: 15)
                #expect(check.status != 0 && (check.stdout + check.stderr).contains(words), "\(words): \(check.stdout) \(check.stderr)")
            }
            try base.write(toFile: scratch.file("ok.yaml"), atomically: true, encoding: .utf8)
            let ok = Command.run(Paths.edgemux, ["check", "--config", scratch.file("ok.yaml")], timeout: 15)
            #expect(ok.status == 0, "\(ok.stdout) \(ok.stderr)")
        }
    }
}
