/// Finds the server name in a TLS ClientHello without consuming it. The ClientHello may span
/// several TLS records and arrive in several TCP segments (post-quantum key shares make it
/// larger than one segment), so it is reassembled from the records' fragments, up to a cap.
/// No I/O; feed everything peeked so far.
public enum ClientHelloParser {
    public enum Result: Equatable {
        case needMore
        /// The SNI host name (nil: the ClientHello has none).
        case done(serverName: String?)
        case error(String)
    }

    /// What a ClientHello says that routing can use before the handshake.
    public struct Hello: Equatable, Sendable {
        /// The SNI host name, lowercased (nil: none).
        public var serverName: String?
        /// The ALPN protocols offered, in the client's order (empty: no ALPN extension).
        public var alpn: [String] = []
    }

    public enum HelloResult: Equatable {
        case needMore
        case done(Hello)
        case error(String)
    }

    /// The most bytes looked at (records included).
    public static let cap = 16 * 1024

    public static func parse(_ b: UnsafeRawBufferPointer) -> Result {
        switch parseHello(b) {
        case .needMore: return .needMore
        case .done(let hello): return .done(serverName: hello.serverName)
        case .error(let why): return .error(why)
        }
    }

    /// The server name and the ALPN list of a ClientHello.
    public static func parseHello(_ b: UnsafeRawBufferPointer) -> HelloResult {
        // Reassemble the handshake layer from consecutive handshake records.
        var handshake: [UInt8] = []
        var i = 0
        var needed: Int?
        while true {
            if let n = needed, handshake.count >= n { break }
            guard b.count - i >= 5 else { return b.count >= cap ? .error("no complete ClientHello within \(cap) bytes") : .needMore }
            guard b[i] == 22 else { return .error(i == 0 ? "not a TLS handshake record" : "ClientHello interrupted by a record of type \(b[i])") }
            guard b[i + 1] == 3 else { return .error("not a TLS record version") }
            let length = Int(b[i + 3]) << 8 | Int(b[i + 4])
            guard length > 0, length <= 16384 else { return .error("TLS record of \(length) bytes") }
            guard b.count - i - 5 >= length else { return i + 5 + length > cap ? .error("no complete ClientHello within \(cap) bytes") : .needMore }
            handshake += b[(i + 5)..<(i + 5 + length)]
            i += 5 + length
            if needed == nil, handshake.count >= 4 {
                guard handshake[0] == 1 else { return .error("first handshake message is not a ClientHello") }
                needed = 4 + (Int(handshake[1]) << 16 | Int(handshake[2]) << 8 | Int(handshake[3]))
                if needed! > cap { return .error("ClientHello of \(needed!) bytes exceeds \(cap)") }
            }
        }
        return hello(in: Array(handshake[4..<needed!]))
    }

    /// Walks the ClientHello body's extensions (RFC 8446 4.1.2) for server_name (RFC 6066 3) and
    /// application_layer_protocol_negotiation (RFC 7301 3.1).
    static func hello(in h: [UInt8]) -> HelloResult {
        var p = 0
        func need(_ n: Int) -> Bool { p + n <= h.count }
        func u8() -> Int { defer { p += 1 }; return Int(h[p]) }
        func u16() -> Int { defer { p += 2 }; return Int(h[p]) << 8 | Int(h[p + 1]) }
        guard need(2 + 32 + 1) else { return .error("ClientHello too short") }
        p += 2 + 32
        let sessionID = u8()
        guard need(sessionID + 2) else { return .error("ClientHello session id overruns") }
        p += sessionID
        let suites = u16()
        guard need(suites + 1) else { return .error("ClientHello cipher suites overrun") }
        p += suites
        let compression = u8()
        guard need(compression) else { return .error("ClientHello compression methods overrun") }
        p += compression
        var result = Hello()
        if p == h.count { return .done(result) }
        guard need(2) else { return .error("ClientHello extensions length missing") }
        let extEnd = p + 2 + (Int(h[p]) << 8 | Int(h[p + 1]))
        p += 2
        guard extEnd <= h.count else { return .error("ClientHello extensions overrun") }
        while p + 4 <= extEnd {
            let type = u16()
            let length = u16()
            guard p + length <= extEnd else { return .error("ClientHello extension overruns") }
            let listEnd = min(p + length, p + 2 + (length >= 2 ? Int(h[p]) << 8 | Int(h[p + 1]) : 0))
            if type == 0 {
                var q = p + 2
                while q + 3 <= listEnd, result.serverName == nil {
                    let nameType = h[q]
                    let nameLength = Int(h[q + 1]) << 8 | Int(h[q + 2])
                    guard q + 3 + nameLength <= listEnd else { return .error("server_name overruns") }
                    if nameType == 0 {
                        result.serverName = String(decoding: h[(q + 3)..<(q + 3 + nameLength)], as: UTF8.self).lowercased()
                    }
                    q += 3 + nameLength
                }
                if result.serverName == nil { return .error("server_name extension without a host name") }
            } else if type == 16 {
                var q = p + 2
                while q < listEnd {
                    let n = Int(h[q])
                    guard n > 0, q + 1 + n <= listEnd else { return .error("ALPN protocol list overruns") }
                    result.alpn.append(String(decoding: h[(q + 1)..<(q + 1 + n)], as: UTF8.self))
                    q += 1 + n
                }
            }
            p += length
        }
        return .done(result)
    }
}
