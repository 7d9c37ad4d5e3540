/// Chooses a route for a connection from what the handshake and the first request showed.
/// Pure: no state, no I/O.
public struct Router: Sendable {
    /// The routes edgemux terminates TLS for, in file order.
    public let routes: [RouteConfig]
    /// The passthrough routes, in file order: tried on the ClientHello, before the others.
    public let passthroughRoutes: [RouteConfig]

    public init(routes: [RouteConfig]) {
        self.routes = routes.filter { !$0.passthrough }
        passthroughRoutes = routes.filter { $0.passthrough }
    }

    /// The first route whose every condition holds, or nil.
    /// The path is matched in its normalised form (`PathNormalizer`).
    public func select(protocol proto: ClientProtocol, sni: String?, request: RequestInfo) -> RouteConfig? {
        var request = request
        request.path = PathNormalizer.normalize(request.path)
        return routes.first { Self.matches($0.match, protocol: proto, sni: sni, request: request) }
    }

    /// The first passthrough route for a ClientHello: its `sni` matches the server name (a
    /// ClientHello without one matches only a route without `sni`) and its `alpn` is among the
    /// protocols the client offers.
    public func selectPassthrough(_ hello: ClientHelloParser.Hello) -> RouteConfig? {
        passthroughRoutes.first { route in
            if let want = route.match.sni, !Self.nameMatches(pattern: want, name: hello.serverName ?? "") { return false }
            if let alpn = route.match.offeredALPN, !hello.alpn.contains(alpn) { return false }
            return true
        }
    }

    /// Every comparison is on bytes, as the backend sees them: Swift's String comparisons work on
    /// grapheme clusters and canonical equivalence, so "/admin" followed by a combining mark
    /// would not start with "/admin" there, while a backend matching bytes serves it as /admin
    /// (found by the fuzzer).
    static func matches(_ m: RouteMatch, protocol proto: ClientProtocol, sni: String?, request: RequestInfo) -> Bool {
        if let alpn = m.alpn, alpn != proto { return false }
        if let want = m.sni, !nameMatches(pattern: want, name: sni?.lowercased() ?? "") { return false }
        if let ct = m.contentType, !bytesStart(request.contentType.lowercased(), with: ct.lowercased()) { return false }
        if let p = m.pathPrefix, !bytesStart(request.path, with: p) { return false }
        if let h = m.host, !nameMatches(pattern: h, name: request.host) { return false }
        if let method = m.method, !request.method.utf8.elementsEqual(method.utf8) { return false }
        if let up = m.upgrade, !request.upgrade.utf8.elementsEqual(up.utf8) { return false }
        return true
    }

    static func bytesStart(_ s: String, with prefix: String) -> Bool { s.utf8.starts(with: prefix.utf8) }

    /// `example.com` matches itself; `*.example.com` matches one or more labels before it.
    static func nameMatches(pattern: String, name: String) -> Bool {
        if pattern.hasPrefix("*.") {
            let suffix = pattern.utf8.dropFirst(1)
            return name.utf8.count > suffix.count && name.utf8.reversed().starts(with: suffix.reversed())
        }
        return name.utf8.elementsEqual(pattern.utf8)
    }
}
