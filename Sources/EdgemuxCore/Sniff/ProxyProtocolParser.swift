import Glibc

/// Reads a PROXY protocol header (HAProxy's spec, versions 1 and 2), which an L4 load balancer
/// puts before the client's first byte to say who the client really is. No I/O: the caller peeks
/// at the socket, and consumes exactly `length` bytes once the header is complete.
public enum ProxyProtocolParser {
    public enum Result: Equatable {
        case needMore
        /// `source`: the original client, `destination`: the address it connected to (both nil
        /// for LOCAL / UNKNOWN: the balancer's own checks).
        case done(source: SocketAddress?, destination: SocketAddress?, length: Int)
        case error(String)
    }

    static let v2Signature: [UInt8] = [0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]
    static let v1Signature: [UInt8] = Array("PROXY ".utf8)
    /// The longest v1 header, CRLF included.
    static let v1MaxLength = 107
    /// The largest v2 header accepted (addresses plus TLVs).
    public static let v2MaxLength = 16 + 2048

    /// Do these first bytes start a PROXY header (v1 or v2)? true once a whole signature is
    /// there, false at the first byte that rules both out, nil while either could still follow.
    public static func startsHeader(_ b: UnsafeRawBufferPointer) -> Bool? {
        for signature in [v2Signature, v1Signature] {
            let n = min(b.count, signature.count)
            guard n > 0, (0..<n).allSatisfy({ b[$0] == signature[$0] }) else { continue }
            return n == signature.count ? true : nil
        }
        return b.isEmpty ? nil : false
    }

    public static func parse(_ b: UnsafeRawBufferPointer) -> Result {
        guard !b.isEmpty else { return .needMore }
        if b[0] == 0x0d {
            for i in 0..<min(b.count, 12) where b[i] != v2Signature[i] { return .error("not a PROXY protocol header") }
            return b.count < 16 ? .needMore : parseV2(b)
        }
        for i in 0..<min(b.count, 6) where b[i] != v1Signature[i] { return .error("not a PROXY protocol header") }
        return parseV1(b)
    }

    private static func parseV1(_ b: UnsafeRawBufferPointer) -> Result {
        var end = -1
        for i in 0..<min(b.count, v1MaxLength) where b[i] == 0x0a {
            end = i
            break
        }
        if end < 0 { return b.count >= v1MaxLength ? .error("PROXY v1 header longer than 107 bytes") : .needMore }
        guard end > 0, b[end - 1] == 0x0d else { return .error("PROXY v1 header not ended by CRLF") }
        let line = String(decoding: b[0..<(end - 1)], as: UTF8.self)
        let parts = line.split(separator: " ", omittingEmptySubsequences: false).map(String.init)
        guard parts.count >= 2 else { return .error("PROXY v1 header without a protocol") }
        switch parts[1] {
        case "UNKNOWN":
            return .done(source: nil, destination: nil, length: end + 1)
        case "TCP4", "TCP6":
            guard parts.count == 6, let sport = UInt16(parts[4]), let dport = UInt16(parts[5]),
                  let src = SocketAddress.parse(ip: parts[2], port: sport), let dst = SocketAddress.parse(ip: parts[3], port: dport),
                  (src.family == AF_INET) == (parts[1] == "TCP4"), dst.family == src.family
            else { return .error("malformed PROXY v1 header '\(line.prefix(107))'") }
            return .done(source: src, destination: dst, length: end + 1)
        default:
            return .error("PROXY v1 protocol '\(parts[1].prefix(16))' is not TCP4, TCP6 or UNKNOWN")
        }
    }

    private static func parseV2(_ b: UnsafeRawBufferPointer) -> Result {
        let verCmd = b[12], family = b[13]
        guard verCmd >> 4 == 2 else { return .error("PROXY v2 header with version \(verCmd >> 4)") }
        let length = Int(b[14]) << 8 | Int(b[15])
        guard 16 + length <= v2MaxLength else { return .error("PROXY v2 header of \(16 + length) bytes exceeds \(v2MaxLength)") }
        guard b.count >= 16 + length else { return .needMore }
        switch verCmd & 0x0f {
        case 0x0:  // LOCAL: the balancer's own connection (health check)
            return .done(source: nil, destination: nil, length: 16 + length)
        case 0x1:
            break
        default:
            return .error("PROXY v2 command \(verCmd & 0x0f) is neither LOCAL nor PROXY")
        }
        switch family {
        case 0x11:  // TCP over IPv4
            guard length >= 12 else { return .error("PROXY v2 IPv4 block too short") }
            let source = SocketAddress(family: AF_INET, ip: Array(b[16..<20]), port: UInt16(b[24]) << 8 | UInt16(b[25]))
            let destination = SocketAddress(family: AF_INET, ip: Array(b[20..<24]), port: UInt16(b[26]) << 8 | UInt16(b[27]))
            return .done(source: source, destination: destination, length: 16 + length)
        case 0x21:  // TCP over IPv6
            guard length >= 36 else { return .error("PROXY v2 IPv6 block too short") }
            let source = SocketAddress(family: AF_INET6, ip: Array(b[16..<32]), port: UInt16(b[48]) << 8 | UInt16(b[49]))
            let destination = SocketAddress(family: AF_INET6, ip: Array(b[32..<48]), port: UInt16(b[50]) << 8 | UInt16(b[51]))
            return .done(source: source, destination: destination, length: 16 + length)
        default:
            return .done(source: nil, destination: nil, length: 16 + length)  // UNSPEC, UDP, UNIX: keep the socket's address
        }
    }
}

/// Whom a PROXY header sent to a backend names: the client and the address it connected to
/// (what the balancer's own header said when one is in front, else the socket's two ends).
public struct ProxiedClient: Sendable, Hashable {
    public let source: SocketAddress
    public let destination: SocketAddress

    public init(source: SocketAddress, destination: SocketAddress) {
        self.source = source
        self.destination = destination
    }
}

/// Writes the PROXY protocol header edgemux sends first on a backend connection (HAProxy's
/// spec: v1 text, v2 binary with PROXY command over TCP). Pure.
public enum ProxyProtocolWriter {
    public static func header(_ version: ProxyProtocolOut, for client: ProxiedClient) -> [UInt8] {
        header(version, source: client.source, destination: client.destination)
    }

    public static func header(_ version: ProxyProtocolOut, source: SocketAddress, destination: SocketAddress) -> [UInt8] {
        // A mix of families (a v4-mapped client on a v6 socket) cannot be told in one header.
        let sameFamily = source.family == destination.family
        switch version {
        case .none:
            return []
        case .v1:
            guard sameFamily else { return Array("PROXY UNKNOWN\r\n".utf8) }
            let family = source.family == AF_INET6 ? "TCP6" : "TCP4"
            return Array("PROXY \(family) \(source.ipString) \(destination.ipString) \(source.port) \(destination.port)\r\n".utf8)
        case .v2:
            var h = ProxyProtocolParser.v2Signature
            guard sameFamily else {
                h += [0x20, 0x00, 0x00, 0x00]  // LOCAL: the backend uses the connection's own addresses
                return h
            }
            let v6 = source.family == AF_INET6
            h += [0x21, v6 ? 0x21 : 0x11]  // version 2, PROXY; TCP over IPv6 / IPv4
            let length = v6 ? 36 : 12
            h += [UInt8(length >> 8), UInt8(length & 0xff)]
            h += source.ip + destination.ip
            h += [UInt8(source.port >> 8), UInt8(source.port & 0xff), UInt8(destination.port >> 8), UInt8(destination.port & 0xff)]
            return h
        }
    }
}
