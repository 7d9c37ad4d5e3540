import CEdgemux
import Glibc

/// An IPv4 or IPv6 socket address.
public struct SocketAddress: Sendable, Hashable, CustomStringConvertible {
    /// AF_INET or AF_INET6.
    public let family: Int32
    /// The port in host order.
    public let port: UInt16
    /// The address bytes, inline (no heap allocation per address: every connection has one).
    private let high: UInt64
    private let low: UInt64

    public init(family: Int32, ip: [UInt8], port: UInt16) {
        self = ip.withUnsafeBytes { SocketAddress(family: family, ipBytes: $0, port: port) }
    }

    init(family: Int32, ipBytes ip: UnsafeRawBufferPointer, port: UInt16) {
        self.family = family
        self.port = port
        var h: UInt64 = 0, l: UInt64 = 0
        for (i, b) in ip.prefix(16).enumerated() {
            if i < 8 { h |= UInt64(b) << (56 - 8 * UInt64(i)) } else { l |= UInt64(b) << (56 - 8 * UInt64(i - 8)) }
        }
        high = h
        low = l
    }

    /// The address bytes (4 or 16) in network order.
    public var ip: [UInt8] {
        let count = family == AF_INET6 ? 16 : 4
        return (0..<count).map { i in
            i < 8 ? UInt8(truncatingIfNeeded: high >> (56 - 8 * UInt64(i))) : UInt8(truncatingIfNeeded: low >> (56 - 8 * UInt64(i - 8)))
        }
    }

    init(storage: sockaddr_storage) {
        let s = storage
        if Int32(s.ss_family) == AF_INET6 {
            let sin6 = withUnsafeBytes(of: s) { $0.load(as: sockaddr_in6.self) }
            self = withUnsafeBytes(of: sin6.sin6_addr) { SocketAddress(family: AF_INET6, ipBytes: $0, port: UInt16(bigEndian: sin6.sin6_port)) }
        } else {
            let sin = withUnsafeBytes(of: s) { $0.load(as: sockaddr_in.self) }
            self = withUnsafeBytes(of: sin.sin_addr) { SocketAddress(family: AF_INET, ipBytes: $0, port: UInt16(bigEndian: sin.sin_port)) }
        }
    }

    /// Parses a literal `1.2.3.4:443`, `[::1]:443` or `::1` plus a port.
    public static func parse(ip text: String, port: UInt16) -> SocketAddress? {
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 {
            return SocketAddress(family: AF_INET, ip: withUnsafeBytes(of: v4) { Array($0) }, port: port)
        }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, text, &v6) == 1 {
            return SocketAddress(family: AF_INET6, ip: withUnsafeBytes(of: v6) { Array($0) }, port: port)
        }
        return nil
    }

    /// Splits `host:port` or `[v6]:port` into its parts (no resolution).
    public static func splitHostPort(_ text: String) -> (host: String, port: UInt16)? {
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { return nil }
            let host = String(text[text.index(after: text.startIndex)..<close])
            let rest = text[text.index(after: close)...]
            guard rest.hasPrefix(":"), let port = UInt16(rest.dropFirst()), port > 0 else { return nil }
            return (host, port)
        }
        guard let colon = text.lastIndex(of: ":") else { return nil }
        let host = String(text[..<colon])
        guard !host.isEmpty, !host.contains(":"), let port = UInt16(text[text.index(after: colon)...]), port > 0 else { return nil }
        return (host, port)
    }

    /// Parses `host:port`, resolving a name with getaddrinfo (blocking: config load time only).
    public static func resolve(_ text: String) -> [SocketAddress] {
        guard let (host, port) = splitHostPort(text) else { return [] }
        if let literal = parse(ip: host, port: port) { return [literal] }
        guard case .success(let list) = lookUp(host: host, port: port) else { return [] }
        return list
    }

    /// getaddrinfo for TCP: the distinct addresses of `host`, with `port`, or why there are none.
    /// Blocks: call it off the event loops (config load, the resolver thread).
    static func lookUp(host: String, port: UInt16) -> Result<[SocketAddress], LookUpError> {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var result: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host, nil, &hints, &result)
        guard rc == 0, let first = result else { return .failure(LookUpError(message: String(cString: gai_strerror(rc)))) }
        defer { freeaddrinfo(first) }
        var out: [SocketAddress] = []
        var cursor: UnsafeMutablePointer<addrinfo>? = first
        while let ai = cursor {
            if let sa = ai.pointee.ai_addr {
                var storage = sockaddr_storage()
                withUnsafeMutableBytes(of: &storage) { dst in
                    dst.copyMemory(from: UnsafeRawBufferPointer(start: sa, count: Int(ai.pointee.ai_addrlen)))
                }
                let a = SocketAddress(storage: storage)
                let withPort = SocketAddress(family: a.family, ip: a.ip, port: port)
                if !out.contains(withPort) { out.append(withPort) }
            }
            cursor = ai.pointee.ai_next
        }
        return out.isEmpty ? .failure(LookUpError(message: "no addresses")) : .success(out)
    }

    /// Why a name has no addresses (getaddrinfo's words).
    struct LookUpError: Error {
        let message: String
    }

    func withSockAddr<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) throws -> R) rethrows -> R {
        if family == AF_INET6 {
            var sin6 = sockaddr_in6()
            sin6.sin6_family = sa_family_t(AF_INET6)
            sin6.sin6_port = port.bigEndian
            withUnsafeMutableBytes(of: &sin6.sin6_addr) { $0.copyBytes(from: ip) }
            return try withUnsafePointer(to: &sin6) {
                try $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { try body($0, socklen_t(MemoryLayout<sockaddr_in6>.size)) }
            }
        }
        var sin = sockaddr_in()
        sin.sin_family = sa_family_t(AF_INET)
        sin.sin_port = port.bigEndian
        withUnsafeMutableBytes(of: &sin.sin_addr) { $0.copyBytes(from: ip) }
        return try withUnsafePointer(to: &sin) {
            try $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { try body($0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
    }

    /// The address without the port, as text.
    public var ipString: String {
        var buf = [CChar](repeating: 0, count: 64)
        var bytes = ip
        _ = inet_ntop(family, &bytes, &buf, 64)
        return String(cChars: buf)
    }

    public var description: String {
        family == AF_INET6 ? "[\(ipString)]:\(port)" : "\(ipString):\(port)"
    }
}

extension String {
    /// The NUL-terminated text a C function wrote into `buffer`.
    init(cChars buffer: [CChar]) {
        self.init(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
