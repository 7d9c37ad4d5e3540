
/// Counters of one worker. Each worker writes only its own (the mutex is uncontended except
/// while the admin listener reads it for a scrape).
public final class WorkerMetrics: Sendable {
    struct Values {
        var accepted = 0
        var active = 0
        var handshakeFailures: [String: Int] = [:]
        var sniffErrors: [String: Int] = [:]
        var routed: [String: Int] = [:]
        var noRoute = 0
        var backendConnectFailures: [String: Int] = [:]
        /// Connections opened to each backend (relays, HTTP/1.1 requests, HTTP/2 sessions).
        var backendConnections: [String: Int] = [:]
        var backendUnavailable: [String: Int] = [:]
        var timeouts: [String: Int] = [:]
        var bytesIn = 0
        var bytesOut = 0
        var closedWithError: [String: Int] = [:]
        var tunnelDenied: [String: Int] = [:]
        var tunnelFailures: [String: Int] = [:]
        var tunnelConnectFailures: [String: Int] = [:]
        var memoryTrims = 0
        var connectionsRefused: [String: Int] = [:]
        var acceptPauses: [String: Int] = [:]
        var upstreamReused = 0
        var upstreamRetries = 0
        var upstreamIdle = 0
        var badResponses: [String: Int] = [:]
        /// Request mode: requests by listener, route and status class (the names are the
        /// config's own strings: counting allocates nothing).
        var requests: [RequestKey: Int] = [:]
        /// Request mode: duration histograms by route.
        var durations: [String: DurationHistogram] = [:]
        /// HTTP/2 backend sessions open now, and the streams on them.
        var upstreamSessions = 0
        var upstreamStreams = 0
        /// Request-mode client connections open now, by protocol.
        var serverConnections: [String: Int] = [:]
        /// GOAWAYs edgemux sent to clients, by reason.
        var goaways: [String: Int] = [:]
        /// HTTP/2 streams refused (REFUSED_STREAM) beyond a connection's stream limit.
        var refusedStreams = 0
        /// Passthrough routes and fallbacks: connections and their bytes, by listener, route and
        /// what was passed on (TLS untouched, or raw TCP to a fallback).
        var passthrough: [PassthroughKey: PassthroughTotals] = [:]
        var passthroughActive = 0

        /// Counts one finished request-mode request.
        mutating func recordRequest(listener: String, route: String, status: Int, millis: Int64) {
            requests[RequestKey(listener: listener, route: route, statusClass: status >= 100 && status < 600 ? status / 100 : 0), default: 0] += 1
            durations[route, default: DurationHistogram()].observe(millis)
        }
    }

    let values = Lock(Values())

    public init() {}

    func update(_ body: (inout Values) -> Void) {
        values.withLock { body(&$0) }
    }
}

/// One series of `edgemux_requests_total`.
struct RequestKey: Hashable {
    let listener: String
    let route: String
    /// 1 to 5 for 1xx to 5xx; 0: no response.
    let statusClass: Int

    var label: String { statusClass == 0 ? "none" : "\(statusClass)xx" }
}

/// One series of the `edgemux_passthrough_*` counters.
struct PassthroughKey: Hashable {
    let listener: String
    /// The passthrough route, or "fallback" for a listener's fallback (protocol tcp).
    let route: String
    /// "tls" (a passthrough route) or "tcp" (the fallback).
    let kind: String
}

struct PassthroughTotals {
    var connections = 0
    var bytesFromClient = 0
    var bytesToClient = 0

    mutating func add(_ o: PassthroughTotals) {
        connections += o.connections
        bytesFromClient += o.bytesFromClient
        bytesToClient += o.bytesToClient
    }
}

/// A Prometheus histogram of request durations (seconds), kept in milliseconds.
struct DurationHistogram {
    static let bounds: [Int64] = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000, 60_000, 300_000]
    var counts = [Int](repeating: 0, count: DurationHistogram.bounds.count)
    var total = 0
    var sumMillis: Int64 = 0

    mutating func observe(_ millis: Int64) {
        total += 1
        sumMillis += millis
        if let i = Self.bounds.firstIndex(where: { millis <= $0 }) { counts[i] += 1 }
    }

    mutating func merge(_ o: DurationHistogram) {
        for i in counts.indices { counts[i] += o.counts[i] }
        total += o.total
        sumMillis += o.sumMillis
    }
}

/// All workers' counters, rendered as Prometheus text exposition.
public final class Metrics: Sendable {
    public let workers: [WorkerMetrics]
    public let reloads = Lock<(ok: Int, failed: Int)>((0, 0))

    public init(workerCount: Int) {
        workers = (0..<workerCount).map { _ in WorkerMetrics() }
    }

    /// The text for `GET /metrics`.
    public func render() -> String {
        var total = WorkerMetrics.Values()
        for w in workers {
            let v = w.values.withLock { $0 }
            total.accepted += v.accepted
            total.memoryTrims += v.memoryTrims
            total.connectionsRefused.merge(v.connectionsRefused, uniquingKeysWith: +)
            total.acceptPauses.merge(v.acceptPauses, uniquingKeysWith: +)
            total.active += v.active
            total.noRoute += v.noRoute
            total.bytesIn += v.bytesIn
            total.bytesOut += v.bytesOut
            total.handshakeFailures.merge(v.handshakeFailures, uniquingKeysWith: +)
            total.sniffErrors.merge(v.sniffErrors, uniquingKeysWith: +)
            total.routed.merge(v.routed, uniquingKeysWith: +)
            total.backendConnectFailures.merge(v.backendConnectFailures, uniquingKeysWith: +)
            total.backendConnections.merge(v.backendConnections, uniquingKeysWith: +)
            total.backendUnavailable.merge(v.backendUnavailable, uniquingKeysWith: +)
            total.timeouts.merge(v.timeouts, uniquingKeysWith: +)
            total.closedWithError.merge(v.closedWithError, uniquingKeysWith: +)
            total.tunnelDenied.merge(v.tunnelDenied, uniquingKeysWith: +)
            total.tunnelFailures.merge(v.tunnelFailures, uniquingKeysWith: +)
            total.tunnelConnectFailures.merge(v.tunnelConnectFailures, uniquingKeysWith: +)
            total.upstreamReused += v.upstreamReused
            total.upstreamRetries += v.upstreamRetries
            total.upstreamIdle += v.upstreamIdle
            total.badResponses.merge(v.badResponses, uniquingKeysWith: +)
            total.requests.merge(v.requests, uniquingKeysWith: +)
            for (k, h) in v.durations { total.durations[k, default: DurationHistogram()].merge(h) }
            total.upstreamSessions += v.upstreamSessions
            total.upstreamStreams += v.upstreamStreams
            total.serverConnections.merge(v.serverConnections, uniquingKeysWith: +)
            total.goaways.merge(v.goaways, uniquingKeysWith: +)
            total.refusedStreams += v.refusedStreams
            for (k, t) in v.passthrough { total.passthrough[k, default: PassthroughTotals()].add(t) }
            total.passthroughActive += v.passthroughActive
        }
        var out = ""
        func counter(_ name: String, _ help: String, _ value: Int) {
            out += "# HELP \(name) \(help)\n# TYPE \(name) counter\n\(name) \(value)\n"
        }
        func labelled(_ name: String, _ help: String, _ label: String, _ values: [String: Int]) {
            out += "# HELP \(name) \(help)\n# TYPE \(name) counter\n"
            for (k, v) in values.sorted(by: { $0.key < $1.key }) {
                out += "\(name){\(label)=\"\(k)\"} \(v)\n"
            }
        }
        counter("edgemux_connections_accepted_total", "Client connections accepted.", total.accepted)
        labelled("edgemux_connections_refused_total", "Connections closed at accept for a limit (client: max_connections_per_client).", "limit", total.connectionsRefused)
        labelled("edgemux_accept_pauses_total", "Times a listener stopped accepting for 100 ms at max_connections (process or listener).", "limit", total.acceptPauses)
        counter("edgemux_memory_trims_total", "Times free heap memory went back to the kernel after a burst of connections closed.", total.memoryTrims)
        out += "# HELP edgemux_connections_active Client connections open now.\n# TYPE edgemux_connections_active gauge\nedgemux_connections_active \(total.active)\n"
        labelled("edgemux_tls_handshake_failures_total", "Client TLS handshakes that failed, by reason.", "reason", total.handshakeFailures)
        labelled("edgemux_sniff_errors_total", "Connections closed for a bad first request, by kind.", "kind", total.sniffErrors)
        labelled("edgemux_routed_total", "Connections routed, by route.", "route", total.routed)
        counter("edgemux_no_route_total", "Connections no route matched.", total.noRoute)
        labelled("edgemux_backend_connections_opened_total", "Connections edgemux opened to a backend (relayed connections, HTTP/1.1 requests not served by a kept one, HTTP/2 sessions).", "backend", total.backendConnections)
        labelled("edgemux_backend_connect_failures_total", "Failed connects to a backend endpoint.", "endpoint", total.backendConnectFailures)
        labelled("edgemux_backend_unavailable_total", "Connections answered 502 because no endpoint of the backend was reachable.", "backend", total.backendUnavailable)
        labelled("edgemux_timeouts_total", "Connections closed by a timeout, by phase.", "phase", total.timeouts)
        labelled("edgemux_connection_errors_total", "Relayed connections closed on an I/O error, by side.", "side", total.closedWithError)
        labelled("edgemux_tunnel_refused_total", "Tunnel requests refused, by reason (allowlist, auth, SNI problems).", "reason", total.tunnelDenied)
        labelled("edgemux_tunnel_failures_total", "Tunnel requests answered with an error status.", "status", total.tunnelFailures)
        labelled("edgemux_tunnel_connect_failures_total", "Failed connects to tunnel destinations (or the parent proxy), by reason.", "reason", total.tunnelConnectFailures)
        counter("edgemux_upstream_reused_total", "HTTP/1.1 requests sent on a kept backend connection.", total.upstreamReused)
        counter("edgemux_upstream_retries_total", "Requests sent again on a new connection after a kept one turned out closed.", total.upstreamRetries)
        out += "# HELP edgemux_upstream_idle_connections Backend connections kept idle for reuse now.\n# TYPE edgemux_upstream_idle_connections gauge\nedgemux_upstream_idle_connections \(total.upstreamIdle)\n"
        labelled("edgemux_backend_bad_responses_total", "Backend responses edgemux could not follow (answered 502 or cut), by backend.", "backend", total.badResponses)
        out += "# HELP edgemux_requests_total Requests handled in request mode, by listener, route and status class.\n# TYPE edgemux_requests_total counter\n"
        for (k, v) in total.requests.sorted(by: { ($0.key.listener, $0.key.route, $0.key.statusClass) < ($1.key.listener, $1.key.route, $1.key.statusClass) }) {
            out += "edgemux_requests_total{listener=\"\(k.listener)\",route=\"\(k.route)\",code_class=\"\(k.label)\"} \(v)\n"
        }
        out += "# HELP edgemux_request_duration_seconds Request-mode request durations, from the head to the end of the response, by route.\n# TYPE edgemux_request_duration_seconds histogram\n"
        for (route, h) in total.durations.sorted(by: { $0.key < $1.key }) {
            var cumulative = 0
            for (i, b) in DurationHistogram.bounds.enumerated() {
                cumulative += h.counts[i]
                out += "edgemux_request_duration_seconds_bucket{route=\"\(route)\",le=\"\(Double(b) / 1000)\"} \(cumulative)\n"
            }
            out += "edgemux_request_duration_seconds_bucket{route=\"\(route)\",le=\"+Inf\"} \(h.total)\n"
            out += "edgemux_request_duration_seconds_sum{route=\"\(route)\"} \(Double(h.sumMillis) / 1000)\n"
            out += "edgemux_request_duration_seconds_count{route=\"\(route)\"} \(h.total)\n"
        }
        out += "# HELP edgemux_upstream_h2_sessions HTTP/2 backend sessions open now.\n# TYPE edgemux_upstream_h2_sessions gauge\nedgemux_upstream_h2_sessions \(total.upstreamSessions)\n"
        out += "# HELP edgemux_upstream_h2_streams Streams open now on HTTP/2 backend sessions (divide by the sessions for streams per session).\n# TYPE edgemux_upstream_h2_streams gauge\nedgemux_upstream_h2_streams \(total.upstreamStreams)\n"
        out += "# HELP edgemux_server_connections Request-mode client connections open now, by protocol.\n# TYPE edgemux_server_connections gauge\n"
        for (k, v) in total.serverConnections.sorted(by: { $0.key < $1.key }) { out += "edgemux_server_connections{protocol=\"\(k)\"} \(v)\n" }
        counter("edgemux_h2_streams_refused_total", "HTTP/2 streams refused with REFUSED_STREAM because their connection had max_concurrent_streams open (backend sides included).", total.refusedStreams)
        labelled("edgemux_goaway_sent_total", "GOAWAY frames edgemux sent to HTTP/2 clients, by reason.", "reason", total.goaways)
        let passthrough = total.passthrough.sorted { ($0.key.listener, $0.key.route, $0.key.kind) < ($1.key.listener, $1.key.route, $1.key.kind) }
        for (name, help, value) in [("edgemux_passthrough_connections_total", "Connections sent on untouched by a passthrough route (protocol tls) or a listener's fallback (tcp).", \PassthroughTotals.connections),
                                    ("edgemux_passthrough_received_bytes_total", "Bytes received from clients on passthrough and fallback connections (TLS records as they are).", \PassthroughTotals.bytesFromClient),
                                    ("edgemux_passthrough_sent_bytes_total", "Bytes sent to clients on passthrough and fallback connections.", \PassthroughTotals.bytesToClient)] {
            out += "# HELP \(name) \(help)\n# TYPE \(name) counter\n"
            for (k, t) in passthrough {
                out += "\(name){listener=\"\(k.listener)\",route=\"\(k.route)\",protocol=\"\(k.kind)\"} \(t[keyPath: value])\n"
            }
        }
        out += "# HELP edgemux_passthrough_connections_active Passthrough and fallback connections open now.\n# TYPE edgemux_passthrough_connections_active gauge\nedgemux_passthrough_connections_active \(total.passthroughActive)\n"
        counter("edgemux_client_bytes_received_total", "Bytes received from clients (after TLS).", total.bytesIn)
        counter("edgemux_client_bytes_sent_total", "Bytes sent to clients (before TLS).", total.bytesOut)
        let r = reloads.withLock { $0 }
        counter("edgemux_config_reloads_total", "Successful config reloads.", r.ok)
        counter("edgemux_config_reload_failures_total", "Rejected config reloads.", r.failed)
        return out
    }
}
