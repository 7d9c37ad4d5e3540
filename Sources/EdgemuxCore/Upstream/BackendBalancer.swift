/// Round robin over a backend's endpoints for one client protocol, skipping endpoints that failed
/// recently (passive health: a failed connect takes an endpoint out for `cooldownMillis`, unless
/// every endpoint is out). One per worker: no locks.
final class BackendBalancer {
    static let cooldownMillis: Int64 = 2_000
    private var next: [ClientProtocol: Int] = [:]
    private var failedUntil: [SocketAddress: Int64] = [:]

    /// The order in which to try `endpoints` for one connection: healthy ones first, starting at
    /// the round-robin position, then the ones in cooldown.
    func plan(_ endpoints: [Endpoint], protocol proto: ClientProtocol, now: Int64) -> [Endpoint] {
        guard !endpoints.isEmpty else { return [] }
        let start = (next[proto] ?? 0) % endpoints.count
        next[proto] = start + 1
        if failedUntil.isEmpty {
            // Nothing in cooldown (the usual case): the rotation alone; a single endpoint's list
            // is shared as it is, with no allocation per connection.
            return start == 0 ? endpoints : Array(endpoints[start...] + endpoints[..<start])
        }
        var healthy: [Endpoint] = []
        var cooling: [Endpoint] = []
        for i in 0..<endpoints.count {
            let e = endpoints[(start + i) % endpoints.count]
            if let until = failedUntil[e.address], until > now { cooling.append(e) } else { healthy.append(e) }
        }
        return healthy + cooling
    }

    /// Whether `endpoint` failed lately and sits out its cooldown.
    func isCoolingDown(_ endpoint: Endpoint, now: Int64) -> Bool {
        (failedUntil[endpoint.address] ?? 0) > now
    }

    func markFailed(_ endpoint: Endpoint, now: Int64) {
        failedUntil[endpoint.address] = now + BackendBalancer.cooldownMillis
    }

    func markHealthy(_ endpoint: Endpoint) {
        if failedUntil[endpoint.address] != nil { failedUntil[endpoint.address] = nil }
    }
}
