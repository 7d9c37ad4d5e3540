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

    /// The most bytes looked at (records included).
    public static let cap = 16 * 1024

    public static func parse(_ b: UnsafeRawBufferPointer) -> Result {
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
        return serverName(in: Array(handshake[4..<needed!]))
    }

    /// Walks the ClientHello body to the server_name extension (RFC 8446 4.1.2, RFC 6066 3).
    static func serverName(in h: [UInt8]) -> Result {
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
        if p == h.count { return .done(serverName: nil) }
        guard need(2) else { return .error("ClientHello extensions length missing") }
        let extEnd = p + 2 + (Int(h[p]) << 8 | Int(h[p + 1]))
        p += 2
        guard extEnd <= h.count else { return .error("ClientHello extensions overrun") }
        while p + 4 <= extEnd {
            let type = u16()
            let length = u16()
            guard p + length <= extEnd else { return .error("ClientHello extension overruns") }
            if type == 0 {
                var q = p + 2
                let listEnd = min(p + length, p + 2 + (length >= 2 ? Int(h[p]) << 8 | Int(h[p + 1]) : 0))
                while q + 3 <= listEnd {
                    let nameType = h[q]
                    let nameLength = Int(h[q + 1]) << 8 | Int(h[q + 2])
                    guard q + 3 + nameLength <= listEnd else { return .error("server_name overruns") }
                    if nameType == 0 {
                        let name = String(decoding: h[(q + 3)..<(q + 3 + nameLength)], as: UTF8.self)
                        return .done(serverName: name.lowercased())
                    }
                    q += 3 + nameLength
                }
                return .error("server_name extension without a host name")
            }
            p += length
        }
        return .done(serverName: nil)
    }
}
