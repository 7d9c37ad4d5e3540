
/// Client connections counted across every worker: the process's limit, each listener's and
/// each client address's (`max_connections`, `max_connections_per_client`). A listener at its
/// limit stops accepting (the connection waits in the kernel's backlog, as HAProxy does at
/// maxconn) instead of taking descriptors it cannot serve; a client address over its limit is
/// accepted and closed at once (its connection cannot be told apart before accept).
final class ConnectionLimiter: Sendable {
    /// The process limit when the config sets none: what the descriptor limit allows, with two
    /// descriptors per connection (client and backend) and some kept for listeners and logs.
    let automaticMax: Int

    private struct Counts {
        var total = 0
        var handshakes = 0
        var perListener: [String: Int] = [:]
        var perClient: [String: Int] = [:]
    }
    private let counts = Lock(Counts())

    enum Refusal: String {
        case process
        case listener
        case client
        case handshakes
    }

    /// TLS handshakes in progress the process allows when the config sets none: past it,
    /// listeners wait (a reconnect storm is paced instead of every handshake timing out).
    static let defaultMaxHandshakes = 2048

    func maxHandshakes(_ config: EdgemuxConfig) -> Int { config.maxHandshakes > 0 ? config.maxHandshakes : Self.defaultMaxHandshakes }

    init(descriptorLimit: Int) {
        automaticMax = max(64, (descriptorLimit - 128) / 2)
    }

    func processMax(_ config: EdgemuxConfig) -> Int { config.maxConnections > 0 ? config.maxConnections : automaticMax }

    /// Room for one more connection on `listener` (asked before accept).
    func hasRoom(_ listener: ListenerConfig, config: EdgemuxConfig) -> Refusal? {
        let processMax = processMax(config)
        let handshakeMax = listener.tls == nil ? Int.max : maxHandshakes(config)
        return counts.withLock { c in
            if c.total >= processMax { return .process }
            if listener.maxConnections > 0, c.perListener[listener.name, default: 0] >= listener.maxConnections { return .listener }
            if c.handshakes >= handshakeMax { return .handshakes }
            return nil
        }
    }

    /// A TLS handshake has started / is over (done, failed, or its connection closed).
    func handshakeStarted() { counts.withLock { $0.handshakes += 1 } }
    func handshakeEnded() { counts.withLock { $0.handshakes -= 1 } }

    /// Counts an accepted connection in, or says which limit it is over (then nothing is counted).
    /// `client`: the address, when the listener limits per client.
    func admit(_ listener: ListenerConfig, client: String?, config: EdgemuxConfig) -> Refusal? {
        let processMax = processMax(config)
        return counts.withLock { c in
            if c.total >= processMax { return .process }
            let onListener = c.perListener[listener.name, default: 0]
            if listener.maxConnections > 0, onListener >= listener.maxConnections { return .listener }
            if let client, listener.maxConnectionsPerClient > 0 {
                let mine = c.perClient[client, default: 0]
                if mine >= listener.maxConnectionsPerClient { return .client }
                c.perClient[client] = mine + 1
            }
            c.total += 1
            c.perListener[listener.name] = onListener + 1
            return nil
        }
    }

    /// A connection counted by `admit` has closed.
    func release(listener: String, client: String?) {
        counts.withLock { c in
            c.total -= 1
            c.perListener[listener, default: 1] -= 1
            if c.perListener[listener] == 0 { c.perListener[listener] = nil }
            if let client {
                c.perClient[client, default: 1] -= 1
                if c.perClient[client] == 0 { c.perClient[client] = nil }
            }
        }
    }

    var total: Int { counts.withLock { $0.total } }
}
