import Glibc

/// An IPv4 or IPv6 network, `10.10.0.0/16` or `fd00::/8`.
public struct CIDR: Sendable, Hashable, CustomStringConvertible {
    public let family: Int32
    public let network: [UInt8]
    public let prefixLength: Int

    /// Parses `addr/len` (a bare address is a /32 or /128). Host bits must be zero.
    public init?(_ text: String) {
        let parts = text.split(separator: "/", maxSplits: 1).map(String.init)
        guard let base = SocketAddress.parse(ip: parts[0], port: 1) else { return nil }
        let bits = base.ip.count * 8
        var length = bits
        if parts.count == 2 {
            guard let n = Int(parts[1]), n >= 0, n <= bits else { return nil }
            length = n
        }
        var net = base.ip
        for i in 0..<net.count {
            let keep = max(0, min(8, length - i * 8))
            let mask: UInt8 = keep == 0 ? 0 : UInt8(truncatingIfNeeded: 0xff << (8 - keep))
            if net[i] & ~mask != 0 { return nil }
            net[i] &= mask
        }
        family = base.family
        network = net
        prefixLength = length
    }

    public func contains(_ a: SocketAddress) -> Bool {
        var ip = a.ip
        var fam = a.family
        // An IPv4-mapped IPv6 address (::ffff:a.b.c.d) is the IPv4 address it maps.
        if fam == AF_INET6, family == AF_INET, ip[0..<10].allSatisfy({ $0 == 0 }), ip[10] == 0xff, ip[11] == 0xff {
            ip = Array(ip[12...])
            fam = AF_INET
        }
        guard fam == family else { return false }
        var left = prefixLength
        for i in 0..<ip.count where left > 0 {
            let take = min(8, left)
            let mask = UInt8(truncatingIfNeeded: 0xff << (8 - take))
            if ip[i] & mask != network[i] { return false }
            left -= take
        }
        return true
    }

    public var description: String {
        "\(SocketAddress(family: family, ip: network, port: 0).ipString)/\(prefixLength)"
    }
}

/// Where a tunnel may go: host patterns and networks, each with its ports. Deny by default.
public struct Allowlist: Sendable {
    public enum Target: Sendable, Equatable {
        case host(String)
        case network(CIDR)
    }

    public struct Rule: Sendable, Equatable {
        public let target: Target
        public let ports: Set<UInt16>
    }

    public let rules: [Rule]

    public init(rules: [Rule]) { self.rules = rules }

    /// The verdict on a destination before any resolution.
    public enum Verdict: Equatable {
        /// An IP literal that a network rule allows.
        case allowedAddress(SocketAddress)
        /// A name that a host rule allows; every address it resolves to must pass `allows(_:)`.
        case allowedName
        case denied(String)
    }

    public func check(host: String, port: UInt16) -> Verdict {
        if let literal = SocketAddress.parse(ip: host, port: port) {
            return allows(literal) ? .allowedAddress(literal) : .denied("address \(literal) is not in an allowed network for port \(port)")
        }
        let name = host.lowercased()
        let nameRules = rules.filter {
            if case .host(let pattern) = $0.target { return Router.nameMatches(pattern: pattern, name: name) }
            return false
        }
        if nameRules.isEmpty { return .denied("host '\(name)' matches no allow rule") }
        if !nameRules.contains(where: { $0.ports.contains(port) }) { return .denied("port \(port) is not allowed for host '\(name)'") }
        return .allowedName
    }

    /// Is this address (and its port) inside an allowed network?
    public func allows(_ address: SocketAddress) -> Bool {
        rules.contains {
            if case .network(let cidr) = $0.target { return cidr.contains(address) && $0.ports.contains(address.port) }
            return false
        }
    }

    var hasHostRules: Bool { rules.contains { if case .host = $0.target { return true } else { return false } } }
}
