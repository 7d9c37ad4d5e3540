import Glibc

/// Counters of one worker. Each worker writes only its own (the mutex is uncontended except
/// while the admin listener reads it for a scrape).
///
/// Why not swift-prometheus's Counter and Histogram objects: they are shared by every worker (an
/// atomic or a lock on one cache line that both cores write), and a label set is found through
/// the registry's lock and dictionary. What one request records (its count by listener, route
/// and status class, and its duration) costs 145-232 ns here against 232-957 ns with
/// swift-prometheus's objects made once and kept, and 3.5-5.2 µs with a registry lookup per
/// request (`Benchmarks/tools/metrics-cost`, two threads at once, release build). The text
/// format is checked by `promtool check metrics` and a real Prometheus scrape in the tests.
public final class WorkerMetrics: Sendable {
    /// What happens on one listener (every series of these carries `listener`).
    struct ListenerValues {
        var accepted = 0
        var active = 0
        var handshakeFailures: [String: Int] = [:]
        var handshakes = DurationHistogram()
        var sniffErrors: [String: Int] = [:]
        var routed: [String: Int] = [:]
        var noRoute = 0
        var timeouts: [String: Int] = [:]
        var bytesIn = 0
        var bytesOut = 0
        var closedWithError: [String: Int] = [:]
        var tunnelDenied: [String: Int] = [:]
        var tunnelFailures: [String: Int] = [:]
        var tunnelConnectFailures: [String: Int] = [:]
        var connectionsRefused: [String: Int] = [:]
        var acceptPauses: [String: Int] = [:]
        /// Request mode: requests by route and status class (the names are the config's own
        /// strings: counting allocates nothing).
        var requests: [RequestKey: Int] = [:]
        /// Request mode: duration histograms by route.
        var durations: [String: DurationHistogram] = [:]
        /// Request-mode client connections open now, by protocol.
        var serverConnections: [String: Int] = [:]
        /// Connections open now by what they are doing (before request mode or a relay takes
        /// them over, and while relayed).
        var states: [String: Int] = [:]
        /// GOAWAYs edgemux sent to clients, by reason.
        var goaways: [String: Int] = [:]
        /// HTTP/2 streams refused (REFUSED_STREAM) beyond a connection's stream limit.
        var refusedStreams = 0
        /// Passthrough routes and fallbacks: connections and their bytes, by route and what was
        /// passed on (TLS untouched, or raw TCP to a fallback).
        var passthrough: [PassthroughKey: PassthroughTotals] = [:]
        var passthroughActive = 0
        /// Tunnels open now by destination (the status page only: as a label, a client could
        /// grow the series at will). An entry goes when its last tunnel closes.
        var tunnelsOpen: [String: Int] = [:]

        mutating func add(_ v: ListenerValues) {
            accepted += v.accepted
            active += v.active
            handshakeFailures.merge(v.handshakeFailures, uniquingKeysWith: +)
            handshakes.merge(v.handshakes)
            sniffErrors.merge(v.sniffErrors, uniquingKeysWith: +)
            routed.merge(v.routed, uniquingKeysWith: +)
            noRoute += v.noRoute
            timeouts.merge(v.timeouts, uniquingKeysWith: +)
            bytesIn += v.bytesIn
            bytesOut += v.bytesOut
            closedWithError.merge(v.closedWithError, uniquingKeysWith: +)
            tunnelDenied.merge(v.tunnelDenied, uniquingKeysWith: +)
            tunnelFailures.merge(v.tunnelFailures, uniquingKeysWith: +)
            tunnelConnectFailures.merge(v.tunnelConnectFailures, uniquingKeysWith: +)
            connectionsRefused.merge(v.connectionsRefused, uniquingKeysWith: +)
            acceptPauses.merge(v.acceptPauses, uniquingKeysWith: +)
            requests.merge(v.requests, uniquingKeysWith: +)
            for (k, h) in v.durations { durations[k, default: DurationHistogram()].merge(h) }
            serverConnections.merge(v.serverConnections, uniquingKeysWith: +)
            states.merge(v.states, uniquingKeysWith: +)
            goaways.merge(v.goaways, uniquingKeysWith: +)
            refusedStreams += v.refusedStreams
            for (k, t) in v.passthrough { passthrough[k, default: PassthroughTotals()].add(t) }
            passthroughActive += v.passthroughActive
            tunnelsOpen.merge(v.tunnelsOpen, uniquingKeysWith: +)
        }

        /// Counts one finished request-mode request.
        mutating func recordRequest(route: String, status: Int, millis: Int64) {
            requests[RequestKey(route: route, statusClass: status >= 100 && status < 600 ? status / 100 : 0), default: 0] += 1
            durations[route, default: DurationHistogram()].observe(millis)
        }
    }

    /// What is not one listener's: backends, kept connections, memory.
    struct Values {
        var listeners: [String: ListenerValues] = [:]
        var memoryTrims = 0
        /// Connections opened to each backend (relays, HTTP/1.1 requests, HTTP/2 sessions).
        var backendConnections: [String: Int] = [:]
        var backendConnectFailures: [EndpointKey: Int] = [:]
        /// Time to a backend's established TCP connection (and TLS, for tls backends), by backend.
        var backendConnectTimes: [String: DurationHistogram] = [:]
        var backendUnavailable: [String: Int] = [:]
        var upstreamReused = 0
        var upstreamRetries = 0
        var upstreamIdle = 0
        var badResponses: [String: Int] = [:]
        /// HTTP/2 backend sessions open now, and the streams on them.
        var upstreamSessions = 0
        var upstreamStreams = 0
        /// What each endpoint did last (the status page).
        var endpointHealth: [EndpointKey: EndpointHealth] = [:]

        mutating func add(_ v: Values) {
            for (name, l) in v.listeners { listeners[name, default: ListenerValues()].add(l) }
            memoryTrims += v.memoryTrims
            backendConnections.merge(v.backendConnections, uniquingKeysWith: +)
            backendConnectFailures.merge(v.backendConnectFailures, uniquingKeysWith: +)
            for (k, h) in v.backendConnectTimes { backendConnectTimes[k, default: DurationHistogram()].merge(h) }
            backendUnavailable.merge(v.backendUnavailable, uniquingKeysWith: +)
            upstreamReused += v.upstreamReused
            upstreamRetries += v.upstreamRetries
            upstreamIdle += v.upstreamIdle
            badResponses.merge(v.badResponses, uniquingKeysWith: +)
            upstreamSessions += v.upstreamSessions
            upstreamStreams += v.upstreamStreams
            for (k, h) in v.endpointHealth { endpointHealth[k, default: EndpointHealth()].merge(h) }
        }
    }

    let values = Lock(Values())

    public init() {}

    /// Updates what is not one listener's.
    func update(_ body: (inout Values) -> Void) {
        values.withLock { body(&$0) }
    }

    /// Updates one listener's values.
    func update(_ listener: String, _ body: (inout ListenerValues) -> Void) {
        values.withLock { body(&$0.listeners[listener, default: ListenerValues()]) }
    }
}

/// One series of `edgemux_requests_total` within a listener.
struct RequestKey: Hashable {
    let route: String
    /// 1 to 5 for 1xx to 5xx; 0: no response.
    let statusClass: Int

    var label: String { statusClass == 0 ? "none" : "\(statusClass)xx" }
}

/// A backend and one of its endpoints, as two labels.
struct EndpointKey: Hashable {
    let backend: String
    let endpoint: String
}

/// An endpoint's last connect success and failure (Unix times), across workers.
struct EndpointHealth {
    var lastSuccessAt: Double = 0
    var lastFailureAt: Double = 0
    var lastError = ""
    var failures = 0

    mutating func failed(at time: Double, _ why: String) {
        lastFailureAt = time
        lastError = why
        failures += 1
    }

    mutating func merge(_ o: EndpointHealth) {
        lastSuccessAt = max(lastSuccessAt, o.lastSuccessAt)
        if o.lastFailureAt > lastFailureAt {
            lastFailureAt = o.lastFailureAt
            lastError = o.lastError
        }
        failures += o.failures
    }
}

/// One series of the `edgemux_passthrough_*` counters within a listener.
struct PassthroughKey: Hashable {
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

/// A Prometheus histogram of durations (exposed in seconds), kept in milliseconds (the loop's
/// clock).
struct DurationHistogram {
    static let bounds: [Int64] = [1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000, 60_000, 300_000]
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

/// What the process knows of its config: for `edgemux_config_*` and the status page.
public struct ConfigState: Sendable {
    public struct Load: Sendable {
        public let at: Double
        public let generation: Int
        public let ok: Bool
        public let detail: String
    }
    public var generation = 1
    public var reloads = 0
    public var failedReloads = 0
    public var lastReloadSuccessful = true
    /// Unix time of the last successful load (the first one at start).
    public var lastSuccessAt: Double = 0
    /// The start and the last reloads, newest last (at most `keptLoads`).
    public var recent: [Load] = []
    static let keptLoads = 10
}

/// All workers' counters, rendered as Prometheus text exposition.
public final class Metrics: Sendable {
    public let workers: [WorkerMetrics]
    public let config = Lock(ConfigState())
    /// Unix time the process started (process_start_time_seconds).
    let startedAt: Double

    public init(workerCount: Int) {
        workers = (0..<workerCount).map { _ in WorkerMetrics() }
        startedAt = Metrics.unixTime()
        let at = startedAt
        config.withLock {
            $0.lastSuccessAt = at
            $0.recent = [ConfigState.Load(at: at, generation: 1, ok: true, detail: "started")]
        }
    }

    static func unixTime() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }

    /// A successful reload to `generation`, or a rejected one (`detail`: what it changed, or why
    /// it was refused).
    public func recordReload(ok: Bool, generation: Int, detail: String) {
        let now = Metrics.unixTime()
        config.withLock {
            $0.recent.append(ConfigState.Load(at: now, generation: generation, ok: ok, detail: detail))
            if $0.recent.count > ConfigState.keptLoads { $0.recent.removeFirst($0.recent.count - ConfigState.keptLoads) }
            if ok {
                $0.reloads += 1
                $0.generation = generation
                $0.lastSuccessAt = now
            } else {
                $0.failedReloads += 1
            }
            $0.lastReloadSuccessful = ok
        }
    }

    /// Every worker's values, summed.
    func totals() -> WorkerMetrics.Values {
        var total = WorkerMetrics.Values()
        for w in workers { total.add(w.values.withLock { $0 }) }
        return total
    }

    /// The text for `GET /metrics`.
    public func render() -> String {
        let total = totals()
        var out = Exposition()
        let listeners = total.listeners.sorted { $0.key < $1.key }

        out.family("edgemux_build_info", "gauge", "edgemux's version and the libraries it runs on (always 1).")
        out.sample("edgemux_build_info", [("version", EdgemuxBuild.version), ("openssl", EdgemuxBuild.openSSL), ("nghttp2", EdgemuxBuild.nghttp2)], 1)
        renderProcess(&out)
        let c = config.withLock { $0 }
        out.family("edgemux_config_generation", "gauge", "The config generation serving new connections (1 at start, +1 a successful reload).")
        out.sample("edgemux_config_generation", [], c.generation)
        out.family("edgemux_config_last_reload_successful", "gauge", "1 if the last reload (or the start) loaded its config, 0 if it was rejected.")
        out.sample("edgemux_config_last_reload_successful", [], c.lastReloadSuccessful ? 1 : 0)
        out.family("edgemux_config_last_reload_success_timestamp_seconds", "gauge", "Unix time of the last successful config load (the start, or a reload).")
        out.sample("edgemux_config_last_reload_success_timestamp_seconds", [], c.lastSuccessAt)
        out.counter("edgemux_config_reloads_total", "Successful config reloads.", [], c.reloads)
        out.counter("edgemux_config_reload_failures_total", "Rejected config reloads.", [], c.failedReloads)

        // Per listener.
        func each(_ name: String, _ type: String, _ help: String, _ body: (String, WorkerMetrics.ListenerValues) -> Void) {
            out.family(name, type, help)
            for (l, v) in listeners { body(l, v) }
        }
        func labelled(_ name: String, _ help: String, _ label: String, _ field: KeyPath<WorkerMetrics.ListenerValues, [String: Int]>, type: String = "counter") {
            each(name, type, help) { l, v in
                for (k, n) in v[keyPath: field].sorted(by: { $0.key < $1.key }) { out.sample(name, [("listener", l), (label, k)], n) }
            }
        }
        each("edgemux_connections_accepted_total", "counter", "Client connections accepted.") { l, v in out.sample("edgemux_connections_accepted_total", [("listener", l)], v.accepted) }
        each("edgemux_connections_active", "gauge", "Client connections open now.") { l, v in out.sample("edgemux_connections_active", [("listener", l)], v.active) }
        labelled("edgemux_connections", "Client connections open now by state: handshake (PROXY header, ClientHello, TLS), request (the first request), connecting (to the backend), relaying, exchanging (one request on a kept backend connection), closing (an answer going out); request-mode and tunnel connections are in edgemux_server_connections and edgemux_connections_active.", "state", \.states, type: "gauge")
        labelled("edgemux_connections_refused_total", "Connections closed at accept for a limit (client: max_connections_per_client).", "limit", \.connectionsRefused)
        labelled("edgemux_accept_pauses_total", "Times a listener stopped accepting for 100 ms at max_connections (process or listener).", "limit", \.acceptPauses)
        labelled("edgemux_tls_handshake_failures_total", "Client TLS handshakes that failed, by reason.", "reason", \.handshakeFailures)
        each("edgemux_tls_handshake_duration_seconds", "histogram", "Client TLS handshakes that completed: from the accept (or the PROXY header) to the finished handshake.") { l, v in
            out.histogram("edgemux_tls_handshake_duration_seconds", [("listener", l)], v.handshakes)
        }
        labelled("edgemux_sniff_errors_total", "Connections closed for a bad first request, by kind.", "kind", \.sniffErrors)
        labelled("edgemux_routed_total", "Connections (relay, passthrough, tunnel) and requests (request mode) routed, by route.", "route", \.routed)
        each("edgemux_no_route_total", "counter", "Connections and requests no route matched.") { l, v in out.sample("edgemux_no_route_total", [("listener", l)], v.noRoute) }
        labelled("edgemux_timeouts_total", "Connections and requests ended by a timeout, by phase.", "phase", \.timeouts)
        labelled("edgemux_connection_errors_total", "Connections closed on an I/O error, by side.", "side", \.closedWithError)
        labelled("edgemux_tunnel_refused_total", "Tunnel requests refused, by reason (allowlist, auth, SNI problems).", "reason", \.tunnelDenied)
        labelled("edgemux_tunnel_failures_total", "Tunnel requests answered with an error status.", "status", \.tunnelFailures)
        labelled("edgemux_tunnel_connect_failures_total", "Failed connects to tunnel destinations (or the parent proxy), by reason.", "reason", \.tunnelConnectFailures)
        each("edgemux_requests_total", "counter", "Requests handled in request mode, by listener, route and status class.") { l, v in
            for (k, n) in v.requests.sorted(by: { ($0.key.route, $0.key.statusClass) < ($1.key.route, $1.key.statusClass) }) {
                out.sample("edgemux_requests_total", [("listener", l), ("route", k.route), ("code_class", k.label)], n)
            }
        }
        each("edgemux_request_duration_seconds", "histogram", "Request-mode request durations, from the head to the end of the response, by listener and route.") { l, v in
            for (route, h) in v.durations.sorted(by: { $0.key < $1.key }) { out.histogram("edgemux_request_duration_seconds", [("listener", l), ("route", route)], h) }
        }
        labelled("edgemux_server_connections", "Request-mode client connections open now, by protocol.", "protocol", \.serverConnections, type: "gauge")
        each("edgemux_h2_streams_refused_total", "counter", "HTTP/2 streams refused with REFUSED_STREAM because their connection had max_concurrent_streams open.") { l, v in
            out.sample("edgemux_h2_streams_refused_total", [("listener", l)], v.refusedStreams)
        }
        labelled("edgemux_goaway_sent_total", "GOAWAY frames edgemux sent to HTTP/2 clients, by reason.", "reason", \.goaways)
        each("edgemux_client_bytes_received_total", "counter", "Bytes received from clients (after TLS).") { l, v in out.sample("edgemux_client_bytes_received_total", [("listener", l)], v.bytesIn) }
        each("edgemux_client_bytes_sent_total", "counter", "Bytes sent to clients (before TLS).") { l, v in out.sample("edgemux_client_bytes_sent_total", [("listener", l)], v.bytesOut) }
        for (name, help, value) in [("edgemux_passthrough_connections_total", "Connections sent on untouched by a passthrough route (protocol tls) or a listener's fallback (tcp).", \PassthroughTotals.connections),
                                    ("edgemux_passthrough_received_bytes_total", "Bytes received from clients on passthrough and fallback connections (TLS records as they are).", \PassthroughTotals.bytesFromClient),
                                    ("edgemux_passthrough_sent_bytes_total", "Bytes sent to clients on passthrough and fallback connections.", \PassthroughTotals.bytesToClient)] {
            each(name, "counter", help) { l, v in
                for (k, t) in v.passthrough.sorted(by: { ($0.key.route, $0.key.kind) < ($1.key.route, $1.key.kind) }) {
                    out.sample(name, [("listener", l), ("route", k.route), ("protocol", k.kind)], t[keyPath: value])
                }
            }
        }
        each("edgemux_passthrough_connections_active", "gauge", "Passthrough and fallback connections open now.") { l, v in
            out.sample("edgemux_passthrough_connections_active", [("listener", l)], v.passthroughActive)
        }

        // Backends and the process.
        func byBackend(_ name: String, _ help: String, _ values: [String: Int]) {
            out.counter(name, help, values.sorted { $0.key < $1.key }.map { ([("backend", $0.key)], $0.value) })
        }
        byBackend("edgemux_backend_connections_opened_total", "Connections edgemux opened to a backend (relayed connections, HTTP/1.1 requests not served by a kept one, HTTP/2 sessions).", total.backendConnections)
        out.counter("edgemux_backend_connect_failures_total", "Failed connects to a backend endpoint.",
                    total.backendConnectFailures.sorted { ($0.key.backend, $0.key.endpoint) < ($1.key.backend, $1.key.endpoint) }.map { ([("backend", $0.key.backend), ("endpoint", $0.key.endpoint)], $0.value) })
        out.family("edgemux_backend_connect_duration_seconds", "histogram", "Connects to backends that succeeded: from the connect to an established connection (its TLS handshake included for tls backends).")
        for (backend, h) in total.backendConnectTimes.sorted(by: { $0.key < $1.key }) { out.histogram("edgemux_backend_connect_duration_seconds", [("backend", backend)], h) }
        byBackend("edgemux_backend_unavailable_total", "Connections and requests answered 502 because no endpoint of the backend was reachable.", total.backendUnavailable)
        byBackend("edgemux_backend_bad_responses_total", "Backend responses edgemux could not follow (answered 502 or cut), by backend.", total.badResponses)
        out.counter("edgemux_upstream_reused_total", "HTTP/1.1 requests sent on a kept backend connection.", [], total.upstreamReused)
        out.counter("edgemux_upstream_retries_total", "Requests sent again on a new connection after a kept one turned out closed.", [], total.upstreamRetries)
        out.family("edgemux_upstream_idle_connections", "gauge", "Backend connections kept idle for reuse now.")
        out.sample("edgemux_upstream_idle_connections", [], total.upstreamIdle)
        out.family("edgemux_upstream_h2_sessions", "gauge", "HTTP/2 backend sessions open now.")
        out.sample("edgemux_upstream_h2_sessions", [], total.upstreamSessions)
        out.family("edgemux_upstream_h2_streams", "gauge", "Streams open now on HTTP/2 backend sessions (divide by the sessions for streams per session).")
        out.sample("edgemux_upstream_h2_streams", [], total.upstreamStreams)
        out.counter("edgemux_memory_trims_total", "Times free heap memory went back to the kernel after a burst of connections closed.", [], total.memoryTrims)
        return out.text
    }

    /// The standard process series (as Prometheus's client libraries name them).
    private func renderProcess(_ out: inout Exposition) {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        let cpu = Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6
        out.family("process_cpu_seconds_total", "counter", "User and system CPU time spent, in seconds.")
        out.sample("process_cpu_seconds_total", [], cpu)
        out.family("process_open_fds", "gauge", "Open file descriptors.")
        out.sample("process_open_fds", [], Posix.openDescriptorCount())
        var limit = rlimit()
        getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        out.family("process_max_fds", "gauge", "The limit of open file descriptors.")
        out.sample("process_max_fds", [], limit.rlim_cur >= UInt64(Int.max) ? Int.max : Int(limit.rlim_cur))
        out.family("process_resident_memory_bytes", "gauge", "Resident memory, in bytes.")
        out.sample("process_resident_memory_bytes", [], Posix.residentKiB() * 1024)
        out.family("process_virtual_memory_bytes", "gauge", "Virtual memory, in bytes.")
        out.sample("process_virtual_memory_bytes", [], Posix.virtualKiB() * 1024)
        out.family("process_start_time_seconds", "gauge", "Start time of the process since the Unix epoch, in seconds.")
        out.sample("process_start_time_seconds", [], startedAt)
    }
}

/// Prometheus text exposition (version 0.0.4): a family's HELP and TYPE once, then its samples.
struct Exposition {
    private(set) var text = ""

    mutating func family(_ name: String, _ type: String, _ help: String) {
        text += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
    }

    mutating func sample(_ name: String, _ labels: [(String, String)], _ value: Int) {
        text += "\(name)\(Self.labels(labels)) \(value)\n"
    }

    mutating func sample(_ name: String, _ labels: [(String, String)], _ value: Double) {
        text += "\(name)\(Self.labels(labels)) \(Self.number(value))\n"
    }

    mutating func counter(_ name: String, _ help: String, _ labels: [(String, String)], _ value: Int) {
        family(name, "counter", help)
        sample(name, labels, value)
    }

    mutating func counter(_ name: String, _ help: String, _ series: [([(String, String)], Int)]) {
        family(name, "counter", help)
        for (labels, value) in series { sample(name, labels, value) }
    }

    mutating func histogram(_ name: String, _ labels: [(String, String)], _ h: DurationHistogram) {
        var cumulative = 0
        for (i, b) in DurationHistogram.bounds.enumerated() {
            cumulative += h.counts[i]
            sample("\(name)_bucket", labels + [("le", Self.number(Double(b) / 1000))], cumulative)
        }
        sample("\(name)_bucket", labels + [("le", "+Inf")], h.total)
        sample("\(name)_sum", labels, Double(h.sumMillis) / 1000)
        sample("\(name)_count", labels, h.total)
    }

    static func number(_ v: Double) -> String {
        v == v.rounded() && abs(v) < 1e15 ? String(Int64(v)) : "\(v)"
    }

    /// `{a="x",b="y"}` with values escaped as the format says (backslash, quote, newline).
    static func labels(_ labels: [(String, String)]) -> String {
        guard !labels.isEmpty else { return "" }
        var s = "{"
        for (i, (k, v)) in labels.enumerated() {
            if i > 0 { s += "," }
            s += k
            s += "=\""
            for ch in v.unicodeScalars {
                switch ch {
                case "\\": s += "\\\\"
                case "\"": s += "\\\""
                case "\n": s += "\\n"
                default: s.unicodeScalars.append(ch)
                }
            }
            s += "\""
        }
        return s + "}"
    }
}
