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
            if let alpn = route.match.alpn, !hello.alpn.contains(alpn.rawValue) { return false }
            return true
        }
    }

    static func matches(_ m: RouteMatch, protocol proto: ClientProtocol, sni: String?, request: RequestInfo) -> Bool {
        if let alpn = m.alpn, alpn != proto { return false }
        if let want = m.sni, !nameMatches(pattern: want, name: sni?.lowercased() ?? "") { return false }
        if let ct = m.contentType, !request.contentType.lowercased().hasPrefix(ct.lowercased()) { return false }
        if let p = m.pathPrefix, !request.path.hasPrefix(p) { return false }
        if let h = m.host, !nameMatches(pattern: h, name: request.host) { return false }
        if let method = m.method, method != request.method { return false }
        if let up = m.upgrade, up != request.upgrade { return false }
        return true
    }

    /// `example.com` matches itself; `*.example.com` matches one or more labels before it.
    static func nameMatches(pattern: String, name: String) -> Bool {
        if pattern.hasPrefix("*.") {
            let suffix = pattern.dropFirst(1)
            return name.count > suffix.count && name.hasSuffix(suffix)
        }
        return pattern == name
    }
}
