import Testing

@testable import EdgemuxCore

@Suite("PROXY protocol parser")
struct ProxyProtocolTests {
    func parse(_ bytes: [UInt8]) -> ProxyProtocolParser.Result {
        bytes.withUnsafeBytes { ProxyProtocolParser.parse($0) }
    }

    @Test("a PROXY signature is told from a ClientHello or HTTP at its first differing byte")
    func startsHeader() {
        func starts(_ b: [UInt8]) -> Bool? { b.withUnsafeBytes { ProxyProtocolParser.startsHeader($0) } }
        #expect(starts([]) == nil)
        #expect(starts(Array("PROX".utf8)) == nil)
        #expect(starts(Array("PROXY TCP4".utf8)) == true)
        #expect(starts([0x0d, 0x0a, 0x0d]) == nil)
        #expect(starts([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x21]) == true)
        #expect(starts([22, 3, 1]) == false)
        #expect(starts(Array("PRI * HTTP/2.0".utf8)) == false)
        #expect(starts(Array("POST".utf8)) == false)
    }

    @Test func version1() {
        let line = Array("PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n".utf8)
        #expect(parse(line + Array("\u{16}\u{3}".utf8)) == .done(source: SocketAddress.parse(ip: "192.0.2.1", port: 56324), destination: SocketAddress.parse(ip: "198.51.100.2", port: 443), length: line.count))
        for n in 1..<line.count { #expect(parse(Array(line[0..<n])) == .needMore) }
        #expect(parse(Array("PROXY UNKNOWN\r\n".utf8)) == .done(source: nil, destination: nil, length: 15))
        #expect(parse(Array("PROXY TCP6 ::1 ::1 1 2\r\n".utf8)) == .done(source: SocketAddress.parse(ip: "::1", port: 1), destination: SocketAddress.parse(ip: "::1", port: 2), length: 24))
        guard case .error = parse(Array("PROXY TCP4 ::1 1.2.3.4 1 2\r\n".utf8)) else { Issue.record("family mismatch accepted"); return }
        guard case .error = parse(Array("PROXY TCP4 1.2.3.4 1.2.3.4 1 2\n".utf8)) else { Issue.record("bare LF accepted"); return }
        guard case .error = parse(Array("GET / HTTP/1.1\r\n".utf8)) else { Issue.record("HTTP accepted"); return }
        guard case .error = parse(Array(("PROXY " + String(repeating: "x", count: 120)).utf8)) else { Issue.record("endless line accepted"); return }
    }

    @Test func version2() {
        let sig = ProxyProtocolParser.v2Signature
        let v4: [UInt8] = sig + [0x21, 0x11, 0, 12, 10, 0, 0, 1, 10, 0, 0, 2, 0x1f, 0x90, 0x01, 0xbb]
        #expect(parse(v4) == .done(source: SocketAddress.parse(ip: "10.0.0.1", port: 8080), destination: SocketAddress.parse(ip: "10.0.0.2", port: 443), length: 28))
        #expect(parse(Array(v4[0..<20])) == .needMore)
        let local: [UInt8] = sig + [0x20, 0x00, 0, 0]
        #expect(parse(local) == .done(source: nil, destination: nil, length: 16))
        guard case .error = parse(sig + [0x31, 0x11, 0, 12]) else { Issue.record("version 3 accepted"); return }
        guard case .error = parse(sig + [0x21, 0x11, 0xff, 0xff]) else { Issue.record("64 KiB header accepted"); return }
    }
}
