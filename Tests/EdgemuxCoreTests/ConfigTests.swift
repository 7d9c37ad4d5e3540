import CEdgemux
import Foundation
import Testing
import Glibc

@testable import EdgemuxCore

@Suite("config loading and validation")
struct ConfigTests {
    let good = """
        workers: 2
        admin:
          listen: 127.0.0.1:9901
        listeners:
          - name: public
            listen: 0.0.0.0:8443
            routes:
              - name: agents
                match: { alpn: h2, content_type: application/grpc }
                backend: grpc
              - name: web
                backend: web
        backends:
          web:
            endpoints: { http1: [127.0.0.1:8080], h2c: [127.0.0.1:8081] }
          grpc:
            protocol: h2c
            endpoints: [127.0.0.1:9090]
            idle_timeout: 0
        """

    func issues(_ yaml: String) -> [ConfigIssue] {
        do {
            _ = try ConfigLoader.load(yaml: yaml, file: "edgemux.yaml")
            return []
        } catch let e as ConfigError {
            return e.issues
        } catch {
            return [ConfigIssue(file: "", line: 0, path: "", message: "\(error)")]
        }
    }

    @Test func loadsTheDesignShape() throws {
        let c = try ConfigLoader.load(yaml: good, file: "edgemux.yaml")
        #expect(c.workers == 2)
        #expect(c.listeners[0].routes.map(\.name) == ["agents", "web"])
        #expect(c.listeners[0].routes[0].match.contentType == "application/grpc")
        #expect(c.listeners[0].routes[0].idleTimeoutMillis == 0)
        #expect(c.listeners[0].routes[1].idleTimeoutMillis == ConfigLoader.defaultIdleTimeout)
        #expect(c.backends["web"]?.protocols == [.http1, .h2])
        #expect(c.backends["grpc"]?.proto == .h2c)
    }

    @Test func reportsEveryProblemWithItsLine() {
        let bad = good
            .replacingOccurrences(of: "backend: grpc", with: "backend: grcp")
            .replacingOccurrences(of: "    listen: 0.0.0.0:8443", with: "    listen: 0.0.0.0:8443\n    handshake_timout: 10s")
            .replacingOccurrences(of: "idle_timeout: 0", with: "idle_timeout: soon")
        let found = issues(bad)
        #expect(found.count == 3, "\(found)")
        #expect(found.contains { $0.line == 7 && $0.message.contains("unknown key 'handshake_timout'") && $0.message.contains("did you mean 'handshake_timeout'") })
        #expect(found.contains { $0.line == 11 && $0.path == "listeners[0].routes[0].backend" && $0.message.contains("unknown backend 'grcp'") })
        #expect(found.contains { $0.path == "backends.grpc.idle_timeout" && $0.message.contains("expected a duration") })
    }

    @Test func syntaxErrorsHaveALine() {
        let found = issues("listeners:\n  - name: [oops\n")
        #expect(found.count == 1)
        #expect(found.first?.message.contains("YAML syntax error") == true)
        #expect((found.first?.line ?? 0) > 0)
    }

    @Test func refusesAProtocolTheBackendCannotSpeak() {
        // A request route translates: an HTTP/1.1-only backend serves HTTP/2 clients.
        let translated = good.replacingOccurrences(of: "{ http1: [127.0.0.1:8080], h2c: [127.0.0.1:8081] }", with: "[127.0.0.1:8080]")
        #expect(issues(translated).isEmpty, "\(issues(translated))")
        // A relay route passes bytes: its backend must speak the client's protocol.
        let h1Only = translated.replacingOccurrences(of: "      - name: web\n        backend: web", with: "      - name: web\n        backend: web\n        mode: relay")
        let found = issues(h1Only)
        #expect(found.count == 1)
        #expect(found.first?.message.contains("relay route 'web' can receive h2 connections but backend 'web' cannot speak h2") == true, "\(found)")
        // Fixed by offering only HTTP/1.1, or by a route that takes h2 first.
        let alpnOnly = h1Only.replacingOccurrences(of: "    routes:", with: "    tls:\n      certificates: []\n      alpn: [http/1.1]\n    routes:")
        #expect(!issues(alpnOnly).contains { $0.message.contains("cannot speak") })
    }

    @Test func routeModes() throws {
        let cfg = try ConfigLoader.load(yaml: good, file: "t.yaml")
        let routes = cfg.listeners[0].routes
        #expect(routes.first { $0.name == "agents" }?.mode == .relay)
        #expect(routes.first { $0.name == "web" }?.mode == .request)
        #expect(routes.first { $0.name == "agents" }?.responseTimeoutMillis == 0)
        #expect(RouteDescription.mode(routes[0]).hasPrefix("relay (the default"))
        // gRPC in request mode needs HTTP/2 to the backend.
        let grpcToH1 = good.replacingOccurrences(of: "backend: grpc", with: "backend: grpc\n        mode: request")
            .replacingOccurrences(of: "protocol: h2c", with: "protocol: http1")
        #expect(issues(grpcToH1).contains { $0.message.contains("carries gRPC but backend 'grpc' has no HTTP/2 endpoints") }, "\(issues(grpcToH1))")
        let badMode = good.replacingOccurrences(of: "backend: grpc", with: "backend: grpc\n        mode: sometimes")
        #expect(issues(badMode).contains { $0.message.contains("expected relay or request") })
        #expect(cfg.listeners[0].http2.maxHeaderListSize == 64 * 1024, "the documented default, above max_request_head's 32 KiB")
        let bigHeads = try ConfigLoader.load(yaml: good.replacingOccurrences(of: "    routes:", with: "    max_request_head: 128KiB\n    routes:"), file: "t.yaml")
        #expect(bigHeads.listeners[0].http2.maxHeaderListSize == 128 * 1024, "never below max_request_head")
        let h2Settings = good.replacingOccurrences(of: "    routes:", with: "    http2: { max_concurrent_streams: 0, initial_window_size: 1MiB }\n    routes:")
        #expect(issues(h2Settings).map(\.path) == ["listeners[0].http2.max_concurrent_streams"], "\(issues(h2Settings))")
    }

    @Test("sockets that would share an address (SO_REUSEPORT would split their connections) and duplicate route names are refused at their line")
    func sharedAddressesAndRouteNames() {
        // The admin listener on a listener's address; a specific address under a wildcard one.
        let adminClash = good.replacingOccurrences(of: "listen: 127.0.0.1:9901", with: "listen: 127.0.0.1:8443")
        #expect(issues(adminClash).contains { $0.message.contains("overlaps 127.0.0.1:8443 of the admin listener") && $0.line == 5 }, "\(issues(adminClash))")
        let second = good.replacingOccurrences(of: "backends:", with: """
              - name: second
                listen: 127.0.0.1:8443
                routes: [{ name: w, backend: web }]
            backends:
            """)
        #expect(issues(second).contains { $0.message.contains("127.0.0.1:8443 overlaps 0.0.0.0:8443 of listener 'public'") }, "\(issues(second))")
        #expect(issues(second.replacingOccurrences(of: "listen: 127.0.0.1:8443", with: "listen: 127.0.0.1:8444")).isEmpty)
        #expect(NodeReader.overlap(SocketAddress.parse(ip: "::", port: 1)!, SocketAddress.parse(ip: "10.0.0.1", port: 1)!))
        #expect(!NodeReader.overlap(SocketAddress.parse(ip: "10.0.0.2", port: 1)!, SocketAddress.parse(ip: "10.0.0.1", port: 1)!))
        let twice = good.replacingOccurrences(of: "- name: web", with: "- name: agents")
        #expect(issues(twice).map(\.message) == ["duplicate route name 'agents' in this listener: its logs and metrics would be counted under the other one"], "\(issues(twice))")
        #expect(issues(twice).first?.line == 11)
    }

    @Test("check's words for the usual slips: a duplicate key at its second line, a tab in the indentation, a folder or missing file, swapped certificate and key")
    func plainWordsForSlips() throws {
        let dup = issues("listeners:\n  - name: a\n    listen: 127.0.0.1:1\n    name: b\n")
        #expect(dup.map(\.description) == ["edgemux.yaml:4: name: duplicate key 'name' (first at line 2): each key appears once in a mapping"], "\(dup)")
        let tab = issues("listeners:\n\t- name: x\n")
        #expect(tab.map(\.description) == ["edgemux.yaml:2: a tab in the indentation: YAML indents with spaces only"], "\(tab)")
        #expect(throws: ConfigError.self) { try ConfigLoader.load(path: "/tmp") }
        do { _ = try ConfigLoader.load(path: "/tmp") } catch { #expect("\(error)" == "/tmp: is a folder, not a config file: name the YAML file in it") }
        do { _ = try ConfigLoader.load(path: "/nonexistent/e.yaml") } catch { #expect("\(error)" == "/nonexistent/e.yaml: cannot read the file: No such file or directory") }
        let dir = NSTemporaryDirectory() + "edgemux-config-test-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(CEdgemux_make_self_signed("localhost", 1, "\(dir)/c.pem", "\(dir)/k.pem") == 1)
        #expect(TLSServerContext.problem(cert: "\(dir)/k.pem", key: "\(dir)/c.pem") == "the key file \(dir)/c.pem holds a certificate, not a private key (cert and key swapped?)")
        #expect(TLSServerContext.problem(cert: "\(dir)/c.pem", key: "\(dir)/c.pem") == "the key file \(dir)/c.pem holds a certificate, not a private key")
        #expect(TLSServerContext.problem(cert: "\(dir)/k.pem", key: "\(dir)/k.pem") == "the certificate file \(dir)/k.pem holds a private key, not a certificate")
        #expect(TLSServerContext.problem(cert: "\(dir)/c.pem", key: "\(dir)/k.pem") == nil)
        // A backend's own error, not a "cannot speak h2" that follows from it.
        let unknown = good.replacingOccurrences(of: "protocol: h2c", with: "protocol: h3")
        #expect(issues(unknown).map(\.path) == ["backends.grpc.protocol"], "\(issues(unknown))")
        let noPort = good.replacingOccurrences(of: "h2c: [127.0.0.1:8081]", with: "h2c: [\"[127.0.0.1]\"]")
        #expect(issues(noPort).map(\.path) == ["backends.web.endpoints.h2c[0]"], "\(issues(noPort))")
    }

    @Test("--no-files: syntax, values and references checked, the files a config names not read")
    func withoutFiles() throws {
        let tls = good.replacingOccurrences(of: "    routes:", with: """
                tls:
                  certificates:
                    - { cert: /nonexistent/a.crt, key: /nonexistent/a.key, ocsp_response: /nonexistent/a.ocsp }
                  client_ca: /nonexistent/ca.pem
                  ticket_keys: /nonexistent/ticket.key
                routes:
            """)
        #expect(issues(tls).count == 5, "\(issues(tls))")
        let cfg = try ConfigLoader.load(yaml: tls, file: "edgemux.yaml", readingFiles: false)
        #expect(cfg.listeners[0].tls?.certificates.first?.certPath == "/nonexistent/a.crt")
        #expect(throws: ConfigError.self) {
            try ConfigLoader.load(yaml: tls.replacingOccurrences(of: "backend: web", with: "backend: nope"), file: "edgemux.yaml", readingFiles: false)
        }
    }

    @Test func durationsAsTheConfigWritesThem() {
        let cases: [(Int64, String)] = [(0, "0ms"), (500, "500ms"), (1000, "1s"), (1500, "1.5s"), (30_000, "30s"), (90_000, "90s"), (300_000, "5m"), (7_200_000, "2h"), (61_250, "61.3s")]
        for (ms, text) in cases { #expect(DurationText.of(ms) == text, "\(ms)") }
    }

    @Test func missingCertificateFiles() {
        let tls = good.replacingOccurrences(of: "    routes:", with: "    tls:\n      certificates:\n        - { cert: /nonexistent/a.crt, key: /nonexistent/a.key }\n    routes:", options: [], range: nil)
        let found = issues(tls)
        #expect(found.count == 2)
        #expect(found.allSatisfy { $0.message.contains("cannot read '/nonexistent/") && $0.line == 9 })
        // A folder or a device is refused by name, not read (/dev/zero would never end).
        let special = good.replacingOccurrences(of: "    routes:", with: "    tls:\n      certificates:\n        - { cert: /dev/zero, key: /tmp }\n    routes:", options: [], range: nil)
        let refused = issues(special)
        #expect(refused.count == 2 && refused.allSatisfy { $0.message.contains("is not a regular file") }, "\(refused)")
    }

    @Test func ticketKeyFiles() throws {
        let dir = "/tmp/edgemux-unit-\(getpid())"
        _ = mkdir(dir, 0o700)
        defer { _ = unlink("\(dir)/short"); _ = unlink("\(dir)/raw"); _ = rmdir(dir) }
        FileManagerShim.write("\(dir)/short", [UInt8](repeating: 1, count: 10))
        FileManagerShim.write("\(dir)/raw", [UInt8](repeating: 2, count: 80))
        #expect(NodeReader.ticketKeysForTest("\(dir)/raw") == [UInt8](repeating: 2, count: 80))
        #expect(NodeReader.ticketKeysForTest("\(dir)/short") == nil)
    }

    @Test func durationsAndSizes() {
        #expect(ConfigLoader.parseDuration("30s") == 30_000)
        #expect(ConfigLoader.parseDuration("250ms") == 250)
        #expect(ConfigLoader.parseDuration("5m") == 300_000)
        #expect(ConfigLoader.parseDuration("0") == 0)
        #expect(ConfigLoader.parseDuration("10") == nil)
        #expect(ConfigLoader.parseDuration("-1s") == nil)
        #expect(ConfigLoader.parseSize("16KiB") == 16384)
        #expect(ConfigLoader.parseSize("1MiB") == 1 << 20)
        #expect(ConfigLoader.parseSize("99999999999999MiB") == nil)  // overflowed: was a trap
        #expect(ConfigLoader.parseDuration("9223372036854775807s") == nil)
    }

    @Test("numbers too large for a deadline or a buffer are refused at their line, without a trap")
    func outOfRangeNumbers() {
        let sized = good.replacingOccurrences(of: "    listen: 0.0.0.0:8443\n", with: "    listen: 0.0.0.0:8443\n    max_request_head: 99999999999999MiB\n")
        let found = issues(sized)
        #expect(found.contains { $0.line == 7 && $0.message.contains("from 1 byte to 1GiB") && $0.message.contains("99999999999999MiB") }, "\(found)")
        #expect(!issues(sized.replacingOccurrences(of: "99999999999999MiB", with: "2GiB")).isEmpty)
        #expect(issues(sized.replacingOccurrences(of: "99999999999999MiB", with: "64KiB")).isEmpty)
        let long = good.replacingOccurrences(of: "workers: 2\n", with: "workers: 2\ndrain_timeout: 9223372036854775807ms\n")
        #expect(issues(long).contains { $0.line == 2 && $0.message.contains("at most 365d") }, "\(issues(long))")
        #expect(issues(long.replacingOccurrences(of: "9223372036854775807ms", with: "366d")).contains { $0.message.contains("at most 365d") })
        #expect(issues(long.replacingOccurrences(of: "9223372036854775807ms", with: "30s")).isEmpty)
    }
}

@Suite("router")
struct RouterTests {
    @Test func firstMatchWins() {
        var grpc = RouteMatch()
        grpc.alpn = .h2
        grpc.contentType = "application/grpc"
        var api = RouteMatch()
        api.host = "*.example.com"
        api.pathPrefix = "/api/"
        let router = Router(routes: [
            RouteConfig(name: "agents", match: grpc, backend: "grpc", idleTimeoutMillis: 0),
            RouteConfig(name: "api", match: api, backend: "api", idleTimeoutMillis: 0),
            RouteConfig(name: "web", match: RouteMatch(), backend: "web", idleTimeoutMillis: 0),
        ])
        var r = RequestInfo()
        r.contentType = "application/grpc+proto"
        r.host = "x.example.com"
        r.path = "/api/v1"
        #expect(router.select(protocol: .h2, sni: nil, request: r)?.name == "agents")
        #expect(router.select(protocol: .http1, sni: nil, request: r)?.name == "api")
        r.host = "example.com"
        #expect(router.select(protocol: .http1, sni: nil, request: r)?.name == "web")
    }

    @Test("path routes match the RFC 3986 normalised path: dot segments and encoded unreserved characters do not slip past")
    func normalisedPaths() {
        var admin = RouteMatch()
        admin.pathPrefix = "/admin/"
        let router = Router(routes: [
            RouteConfig(name: "admin", match: admin, backend: "admin", idleTimeoutMillis: 0),
            RouteConfig(name: "web", match: RouteMatch(), backend: "web", idleTimeoutMillis: 0),
        ])
        var r = RequestInfo()
        for path in ["/admin/x", "/x/../admin/x", "/%61dmin/x", "/./admin/x", "/a/b/../../admin/x?q=/../", "/%2e%2e/admin/x", "/x/%2E%2E/admin/"] {
            r.path = path
            #expect(router.select(protocol: .http1, sni: nil, request: r)?.name == "admin", "\(path)")
        }
        // Bytes, not grapheme clusters: a combining mark after the prefix does not hide it.
        r.path = "/admin/\u{0301}x"
        #expect(router.select(protocol: .http1, sni: nil, request: r)?.name == "admin", "a combining mark")
        for path in ["/adminx", "/x/admin/", "/%2Fadmin/x", "/admin%2Fx"] {
            r.path = path
            #expect(router.select(protocol: .http1, sni: nil, request: r)?.name == "web", "\(path)")
        }
    }

    @Test("RFC 3986 normalisation: section 5.2.4 dot segments, unreserved escapes decoded, others uppercased, query kept")
    func pathNormalizer() {
        let cases: [(String, String)] = [
            ("/a/b/c/./../../g", "/a/g"), ("/mid/content=5/../6", "/mid/6"), ("/../a", "/a"), ("/a/..", "/"),
            ("/a/b/..", "/a/"), ("/a/.", "/a/"), ("/.", "/"), ("/", "/"), ("/a//b", "/a//b"),
            ("/%7Euser/%41%2f", "/~user/A%2F"), ("/p?x=/../y", "/p?x=/../y"), ("*", "*"), ("/plain/path", "/plain/path"),
        ]
        for (input, want) in cases { #expect(PathNormalizer.normalize(input) == want, "\(input)") }
        // A "%" that starts no escape is refused before routing (400), as nginx does.
        for bad in ["/%zz", "/a/%4", "/%", "/%%361dmin", "/x%g0"] { #expect(!PathNormalizer.hasValidEscapes(bad), "\(bad)") }
        for good in ["/%41", "/a%2Fb", "/p?q=%zz", "*", "/plain"] { #expect(PathNormalizer.hasValidEscapes(good), "\(good)") }
    }
}

enum FileManagerShim {
    static func write(_ path: String, _ bytes: [UInt8]) {
        let f = fopen(path, "w")
        _ = bytes.withUnsafeBytes { fwrite($0.baseAddress, 1, $0.count, f) }
        fclose(f)
    }
}

extension NodeReader {
    static func ticketKeysForTest(_ file: String) -> [UInt8]? { ticketKeys(fromFile: file) }
}

@Suite("TLS contexts")
struct TLSContextTests {
    @Test func aBackendContextThatCannotLoadItsFilesFailsCleanly() {
        // A file that is not PEM: the error path must free the context exactly once (a double
        // free would crash this test process).
        for _ in 0..<3 {
            #expect(throws: TLSError.self) {
                _ = try TLSClientContext(caPath: "/etc/hostname", serverName: "x", clientCertificate: nil, verify: true)
            }
            #expect(throws: TLSError.self) {
                _ = try TLSClientContext(caPath: nil, serverName: "x", clientCertificate: CertificatePair(cert: "/etc/hostname", key: "/etc/hostname"), verify: true)
            }
        }
    }
}
