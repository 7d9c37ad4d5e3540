import Foundation
import Testing

extension Integration {
    /// nginx behind edgemux with `listen ... proxy_protocol` (plain HTTP/1.1, h2c and TLS with
    /// HTTP/2): each answer says which client and destination the PROXY header on its connection
    /// named, and which nginx connection carried it.
    @Suite("PROXY headers to HTTP backends: nginx sees each client; a connection that named one client never carries another's requests", .serialized)
    struct ProxyHeaderTests {
        static let nginxPath = "/usr/sbin/nginx"

        /// nginx in the foreground, one process (master_process off: SIGKILL stops all of it).
        func startNginx(plain: UInt16, h2c: UInt16, tls: UInt16, scratch: Scratch) throws -> Background {
            let answer = "$proxy_protocol_addr:$proxy_protocol_port -> $proxy_protocol_server_addr:$proxy_protocol_server_port conn $connection req $connection_requests\\n"
            let conf = """
                master_process off;
                daemon off;
                worker_processes 1;
                error_log \(scratch.file("error.log")) info;
                pid \(scratch.file("nginx.pid"));
                events { worker_connections 256; }
                http {
                    access_log off;
                    client_body_temp_path \(scratch.file("body"));
                    proxy_temp_path \(scratch.file("proxy"));
                    fastcgi_temp_path \(scratch.file("fastcgi"));
                    uwsgi_temp_path \(scratch.file("uwsgi"));
                    scgi_temp_path \(scratch.file("scgi"));
                    keepalive_requests 1000;
                    default_type text/plain;
                    server { listen 127.0.0.1:\(plain) proxy_protocol; location / { return 200 "http1 \(answer)"; } }
                    server { listen 127.0.0.1:\(h2c) proxy_protocol http2; location / { return 200 "h2c \(answer)"; } }
                    server {
                        listen 127.0.0.1:\(tls) ssl proxy_protocol http2;
                        ssl_certificate \(TestCerts.cert);
                        ssl_certificate_key \(TestCerts.key);
                        location / { return 200 "tls \(answer)"; }
                    }
                }
                """
            try conf.write(toFile: scratch.file("nginx.conf"), atomically: true, encoding: .utf8)
            let nginx = try Background("nginx", Self.nginxPath, ["-e", scratch.file("error.log"), "-c", scratch.file("nginx.conf")])
            for port in [plain, h2c, tls] where !waitForPort(port, while: nginx) {
                throw HarnessError("nginx did not listen on \(port): \(nginx.log) \((try? String(contentsOfFile: scratch.file("error.log"), encoding: .utf8)) ?? "")")
            }
            return nginx
        }

        func config(port: UInt16, balanced: UInt16, plain: UInt16, h2c: UInt16, tls: UInt16) -> String {
            """
            workers: 1
            access_log: stdout
            listeners:
              - name: public
                listen: 127.0.0.1:\(port)
            \(tlsBlock())
                routes:
                  - { name: relayed, match: { alpn: http/1.1, path_prefix: /relay }, mode: relay, backend: plain }
                  - { name: h2c, match: { path_prefix: /h2c }, backend: multiplexed }
                  - { name: tls, match: { path_prefix: /tls }, backend: secure }
                  - { name: plain, backend: plain }
              - name: behind-balancer
                listen: 127.0.0.1:\(balanced)
                proxy_protocol: true
            \(tlsBlock())
                routes:
                  - { name: balanced, backend: plain }
            backends:
              plain: { protocol: http1, endpoints: [127.0.0.1:\(plain)], proxy_protocol: v2 }
              multiplexed: { protocol: h2c, endpoints: [127.0.0.1:\(h2c)], proxy_protocol: v1 }
              secure:
                protocol: tls
                endpoints: [127.0.0.1:\(tls)]
                tls: { ca: \(TestCerts.ca), server_name: localhost }
                proxy_protocol: v2
            """
        }

        /// The answers of one curl run, each with the local port curl used for it.
        struct Answer {
            let kind: String, source: String, destination: String, connection: String, request: Int, curlPort: String
        }

        func answers(_ r: CommandResult) -> [Answer] {
            // nginx's line "KIND SRC -> DST conn N req M", then curl's "|LOCALPORT".
            var out: [Answer] = []
            var body: [Substring] = []
            for line in r.stdout.split(separator: "\n") {
                if line.hasPrefix("|") {
                    if body.count == 8, body[2] == "->", let req = Int(body[7]) {
                        out.append(Answer(kind: String(body[0]), source: String(body[1]), destination: String(body[3]), connection: String(body[5]), request: req, curlPort: String(line.dropFirst())))
                    }
                    body = []
                } else {
                    body = line.split(separator: " ")
                }
            }
            return out
        }

        @Test("request mode (HTTP/1.1 kept connections, h2c and TLS HTTP/2 sessions) and relay: the backend sees curl's own address and port, and edgemux's listener, as the client")
        func eachClientItsOwnConnection() throws {
            guard FileManager.default.isExecutableFile(atPath: Self.nginxPath) else {
                Issue.record("nginx is not installed (Deploy/dev.sh test installs it)")
                return
            }
            let scratch = Scratch("proxy-header")
            let (plain, h2c, tls) = (freePort(), freePort(), freePort())
            let nginx = try startNginx(plain: plain, h2c: h2c, tls: tls, scratch: scratch)
            defer { nginx.stop() }
            let port = freePort(), balanced = freePort()
            let e = try Edgemux(config: config(port: port, balanced: balanced, plain: plain, h2c: h2c, tls: tls), port: port)
            let me = "127.0.0.1:\(port)"
            let mark = ["-w", "|%{local_port}\\n"]

            for (version, path, kind) in [("--http1.1", "/a", "http1"), ("--http2", "/h2c/a", "h2c"), ("--http2", "/tls/a", "tls"), ("--http1.1", "/relay/a", "http1")] {
                // Two requests on one client connection, then a second client: each is named by
                // its own port, and the second never rides the first one's backend connection.
                let first = answers(curl([version] + mark + ["https://localhost:\(port)\(path)", "https://localhost:\(port)\(path)2"], port: port))
                let second = answers(curl([version] + mark + ["https://localhost:\(port)\(path)"], port: port))
                #expect(first.count == 2 && second.count == 1, "\(version) \(path): \(first) \(second) \(e.log)")
                guard first.count == 2, second.count == 1 else { continue }
                for a in first + second {
                    #expect(a.kind == kind && a.source == "127.0.0.1:\(a.curlPort)" && a.destination == me, "\(version) \(path): \(a)")
                }
                #expect(first[0].curlPort == first[1].curlPort && first[0].curlPort != second[0].curlPort, "\(first) \(second)")
                // Request mode keeps the backend connection (or session) for the client's next
                // request; a relay is pinned to its one.
                #expect(first[0].connection == first[1].connection && first[1].request == 2, "\(version) \(path): \(first)")
                #expect(second[0].connection != first[0].connection, "\(version) \(path): a second client got the first one's backend connection: \(first) \(second)")
                // The access log names the same client, address and port (request-mode lines as relayed ones).
                let logged = eventually { e.log.contains("\"client\":\"127.0.0.1:\(second[0].curlPort)\"") ? true : nil }
                #expect(logged == true, "\(version) \(path): no access-log line names client 127.0.0.1:\(second[0].curlPort): \(e.log)")
                // Once the clients have gone, the backend connections and sessions that spoke
                // for them close at once, not after the pool's 15 s idle timeout.
                let backendPort = path.hasPrefix("/h2c") ? h2c : path.hasPrefix("/tls") ? tls : plain
                let open = { Command.run("/bin/ss", ["-Htn", "state", "established", "( dport = :\(backendPort) )"]).stdout.split(separator: "\n").count }
                #expect(eventually(timeout: 3) { open() == 0 ? true : nil } == true, "\(version) \(path): \(open()) connections to the backend still open")
            }

            // Behind a balancer: its PROXY v2 header's client and destination are passed on.
            let script = """
                import socket, ssl, struct, sys
                port, ca = int(sys.argv[1]), sys.argv[2]
                s = socket.create_connection(("127.0.0.1", port), timeout=10)
                addrs = socket.inet_aton("203.0.113.7") + socket.inet_aton("198.51.100.9") + struct.pack("!HH", 4711, 443)
                s.sendall(b"\\r\\n\\r\\n\\x00\\r\\nQUIT\\n" + bytes([0x21, 0x11]) + struct.pack("!H", len(addrs)) + addrs)
                ctx = ssl.create_default_context(cafile=ca)
                t = ctx.wrap_socket(s, server_hostname="localhost")
                t.sendall(b"GET /lb HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n")
                data = b""
                while True:
                    chunk = t.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                print(data.decode().split("\\r\\n\\r\\n", 1)[1])
                """
            try script.write(toFile: scratch.file("balancer.py"), atomically: true, encoding: .utf8)
            let lb = Command.run(Paths.python, [scratch.file("balancer.py"), "\(balanced)", TestCerts.ca], timeout: 20)
            #expect(lb.stdout.hasPrefix("http1 203.0.113.7:4711 -> 198.51.100.9:443 "), "\(lb.stdout) \(lb.stderr) \(e.log)")

        }
    }
}
