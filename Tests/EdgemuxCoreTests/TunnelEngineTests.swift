import CEdgemux
import Testing

@testable import EdgemuxCore

/// A real ClientHello from OpenSSL (memory BIOs, no socket), with `sni` if given.
func opensslClientHello(sni: String?, alpn: [String] = []) -> [UInt8] {
    let ctx = SSL_CTX_new(TLS_client_method())!
    defer { SSL_CTX_free(ctx) }
    let ssl = SSL_new(ctx)!
    defer { SSL_free(ssl) }
    let rbio = BIO_new(BIO_s_mem())!, wbio = BIO_new(BIO_s_mem())!
    SSL_set_bio(ssl, rbio, wbio)
    if let sni { _ = CEdgemux_SSL_set_tlsext_host_name(ssl, sni) }
    if !alpn.isEmpty {
        let wire = alpn.flatMap { [UInt8($0.utf8.count)] + Array($0.utf8) }
        _ = SSL_set_alpn_protos(ssl, wire, UInt32(wire.count))
    }
    SSL_set_connect_state(ssl)
    _ = SSL_do_handshake(ssl)
    var out = [UInt8](repeating: 0, count: 65536)
    let n = BIO_read(wbio, &out, Int32(out.count))
    return Array(out[0..<Int(max(0, n))])
}

/// The same handshake message re-framed into records of `size` bytes.
func reframe(_ hello: [UInt8], recordSize size: Int) -> [UInt8] {
    let body = Array(hello[5...])
    var out: [UInt8] = []
    for i in stride(from: 0, to: body.count, by: size) {
        let piece = body[i..<min(body.count, i + size)]
        out += [22, 3, 1, UInt8(piece.count >> 8), UInt8(piece.count & 0xff)] + piece
    }
    return out
}

@Suite("ClientHello SNI peek")
struct ClientHelloParserTests {
    func parse(_ b: [UInt8]) -> ClientHelloParser.Result { b.withUnsafeBytes { ClientHelloParser.parse($0) } }

    @Test func findsTheServerNameWhateverTheFraming() {
        let hello = opensslClientHello(sni: "api.c1.clusters.example")
        #expect(parse(hello) == .done(serverName: "api.c1.clusters.example"))
        for size in [1, 7, 64, 300] {
            let framed = reframe(hello, recordSize: size)
            #expect(parse(framed) == .done(serverName: "api.c1.clusters.example"), "records of \(size)")
            for cut in stride(from: 0, to: framed.count - 1, by: 13) {
                #expect(parse(Array(framed[0...cut])) == .needMore, "records of \(size), cut at \(cut)")
            }
        }
        #expect(parse(opensslClientHello(sni: nil)) == .done(serverName: nil))
    }

    @Test func alpnAndPassthroughRoutes() {
        let hello = opensslClientHello(sni: "Cluster-7.Proxy.Example.com", alpn: ["h2", "http/1.1"])
        let parsed = hello.withUnsafeBytes { ClientHelloParser.parseHello($0) }
        #expect(parsed == .done(ClientHelloParser.Hello(serverName: "cluster-7.proxy.example.com", alpn: ["h2", "http/1.1"])))
        var sni = RouteMatch()
        sni.sni = "*.proxy.example.com"
        var h2Only = RouteMatch()
        h2Only.sni = "grpc.example.com"
        h2Only.offeredALPN = "h2"
        let router = Router(routes: [
            RouteConfig(name: "grpc-through", match: h2Only, backend: "b", idleTimeoutMillis: 0, passthrough: true),
            RouteConfig(name: "frps", match: sni, backend: "frps", idleTimeoutMillis: 0, passthrough: true),
            RouteConfig(name: "web", match: RouteMatch(), backend: "web", idleTimeoutMillis: 0),
        ])
        #expect(router.routes.map(\.name) == ["web"], "terminated routes never see passthrough ones")
        #expect(router.selectPassthrough(.init(serverName: "cluster-7.proxy.example.com", alpn: [])).map(\.name) == "frps")
        #expect(router.selectPassthrough(.init(serverName: "proxy.example.com", alpn: [])) == nil)
        #expect(router.selectPassthrough(.init(serverName: nil, alpn: ["h2"])) == nil, "no SNI: terminated with the default certificate")
        #expect(router.selectPassthrough(.init(serverName: "grpc.example.com", alpn: ["h2"])).map(\.name) == "grpc-through")
        #expect(router.selectPassthrough(.init(serverName: "grpc.example.com", alpn: ["http/1.1"])) == nil)
    }

    @Test func rejectsWhatIsNotAClientHello() {
        guard case .error = parse(Array("GET / HTTP/1.1\r\n\r\n".utf8)) else { Issue.record("HTTP accepted"); return }
        guard case .error = parse([22, 3, 1, 0, 4, 2, 0, 0, 0]) else { Issue.record("ServerHello accepted"); return }
        guard case .error = parse([22, 3, 1, 0x50, 0]) else { Issue.record("oversized record accepted"); return }
        var hello = opensslClientHello(sni: "x.example")
        hello[5 + 4 + 34] = 250  // session id length beyond the message
        guard case .error = parse(hello) else { Issue.record("overrun accepted"); return }
    }
}

@Suite("allowlist")
struct AllowlistTests {
    let list = Allowlist(rules: [
        .init(target: .host("*.clusters.example.internal"), ports: [6443]),
        .init(target: .network(CIDR("10.10.0.0/16")!), ports: [6443]),
        .init(target: .network(CIDR("fd00:10::/32")!), ports: [6443, 443]),
    ])

    @Test func namesPortsAndNetworks() {
        #expect(list.check(host: "api.c1.clusters.example.internal", port: 6443) == .allowedName)
        #expect(list.check(host: "clusters.example.internal", port: 6443) != .allowedName)
        #expect(list.check(host: "api.c1.clusters.example.internal", port: 22) != .allowedName)
        #expect(list.check(host: "10.10.3.4", port: 6443) == .allowedAddress(SocketAddress.parse(ip: "10.10.3.4", port: 6443)!))
        #expect(list.check(host: "10.11.3.4", port: 6443) != .allowedAddress(SocketAddress.parse(ip: "10.11.3.4", port: 6443)!))
        #expect(list.allows(SocketAddress.parse(ip: "::ffff:10.10.0.1", port: 6443)!))
        #expect(list.allows(SocketAddress.parse(ip: "fd00:10::5", port: 443)!))
        #expect(!list.allows(SocketAddress.parse(ip: "fd00:11::5", port: 443)!))
        #expect(!list.allows(SocketAddress.parse(ip: "127.0.0.1", port: 6443)!))
    }

    @Test func cidrParsing() {
        #expect(CIDR("10.0.0.0/8")?.description == "10.0.0.0/8")
        #expect(CIDR("10.0.0.1/8") == nil)  // host bits set
        #expect(CIDR("10.0.0.0/33") == nil)
        #expect(CIDR("0.0.0.0/0")!.contains(SocketAddress.parse(ip: "1.2.3.4", port: 1)!))
        #expect(CIDR("192.168.1.7")!.prefixLength == 32)
    }
}

@Suite("CONNECT request parser")
struct ConnectRequestParserTests {
    func parse(_ s: String) -> ConnectRequestParser.Result { Array(s.utf8).withUnsafeBytes { ConnectRequestParser.parse($0, cap: 8192) } }

    @Test func requests() {
        guard case .done(let r) = parse("CONNECT API.c1.example:6443 HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Basic abc=\r\n\r\n\u{16}") else {
            Issue.record("not done")
            return
        }
        #expect(r.host == "api.c1.example" && r.port == 6443 && r.proxyAuthorization == "Basic abc=")
        guard case .done(let v6) = parse("CONNECT [fd00::1]:6443 HTTP/1.1\r\n\r\n") else { Issue.record("v6"); return }
        #expect(v6.host == "fd00::1")
        #expect(parse("CONNECT api:6443 HTTP/1.1\r\n") == .needMore)
        guard case .error(405, _) = parse("GET http://x/ HTTP/1.1\r\n\r\n") else { Issue.record("GET accepted"); return }
        guard case .error(400, _) = parse("CONNECT api HTTP/1.1\r\n\r\n") else { Issue.record("no port accepted"); return }
        guard case .error(400, _) = parse("CONNECT a/b:1 HTTP/1.1\r\n\r\n") else { Issue.record("bad host accepted"); return }
        guard case .error(400, _) = parse("CONNECT api:0 HTTP/1.1\r\n\r\n") else { Issue.record("port 0 accepted"); return }
    }
}

@Suite("tunnel config")
struct TunnelConfigTests {
    func issues(_ yaml: String) -> [ConfigIssue] {
        do { _ = try ConfigLoader.load(yaml: yaml, file: "t.yaml"); return [] } catch let e as ConfigError { return e.issues } catch { return [] }
    }

    @Test func validation() {
        let ok = """
            listeners:
              - name: egress
                listen: 127.0.0.1:6443
                tunnel:
                  allow:
                    - { host: "*.clusters.example.internal" }
                    - { cidr: 10.10.0.0/16 }
            """
        #expect(issues(ok).isEmpty, "\(issues(ok))")
        let hostsOnly = ok.replacingOccurrences(of: "\n        - { cidr: 10.10.0.0/16 }", with: "")
        #expect(issues(hostsOnly).first?.message.contains("host rules need cidr rules too") == true, "\(issues(hostsOnly))")
        let badCIDR = ok.replacingOccurrences(of: "10.10.0.0/16", with: "10.10.0.1/16")
        #expect(issues(badCIDR).count == 1 && issues(badCIDR).first?.line == 7, "\(issues(badCIDR))")
        let withTLS = ok.replacingOccurrences(of: "    tunnel:", with: "    tls: { certificates: [] }\n    tunnel:")
        #expect(issues(withTLS).contains { $0.message.contains("never terminates TLS") })
        let sniNoMap = ok.replacingOccurrences(of: "      allow:", with: "      mode: sni\n      allow:")
        #expect(issues(sniNoMap).contains { $0.message.contains("sni mode needs a map") })
    }
}
