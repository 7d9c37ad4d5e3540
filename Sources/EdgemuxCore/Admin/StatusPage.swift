import Glibc

/// The admin listener's `/`: one server-rendered HTML page that refreshes itself every 5 s, no
/// script and no external asset, for an operator at a browser: listeners, routes with their
/// rates, backends with each endpoint's health and last error, open tunnels by destination,
/// the recent config loads. Built from the config worker 0 serves and the summed counters.
struct StatusPage {
    /// Counts at one moment, for rates between two of them.
    struct Sample {
        let at: Int64
        /// `listener/route` -> connections and requests routed.
        let routed: [String: Int]
        /// listener -> connections accepted.
        let accepted: [String: Int]

        init(at: Int64, _ totals: WorkerMetrics.Values) {
            self.at = at
            var routed: [String: Int] = [:]
            var accepted: [String: Int] = [:]
            for (listener, v) in totals.listeners {
                accepted[listener] = v.accepted
                for (route, n) in v.routed { routed["\(listener)/\(route)"] = n }
            }
            self.routed = routed
            self.accepted = accepted
        }
    }

    let snapshot: Snapshot
    let totals: WorkerMetrics.Values
    let config: ConfigState
    let now: Sample
    let earlier: Sample?
    let startedAt: Double
    let draining: Bool

    func render() -> String {
        let wall = Metrics.unixTime()
        var h = """
            <!doctype html>
            <html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="5">
            <meta name="viewport" content="width=device-width, initial-scale=1">
            <title>edgemux status</title>
            <style>
            body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #1d2330; background: #f7f8fa; }
            h1 { font-size: 20px; margin: 0 0 .2em; } h2 { font-size: 16px; margin: 1.6em 0 .4em; }
            .sub { color: #5b6478; margin-bottom: 1em; }
            table { border-collapse: collapse; background: #fff; box-shadow: 0 1px 2px #0002; min-width: 60%; }
            th, td { text-align: left; padding: .35em .8em; border-bottom: 1px solid #e3e6ec; vertical-align: top; }
            th { background: #eef1f5; font-weight: 600; } td.when { white-space: nowrap; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
            .ok { color: #0a7d32; font-weight: 600; } .bad { color: #b3261e; font-weight: 600; } .idle { color: #7a8194; }
            .err { color: #b3261e; font-family: ui-monospace, monospace; font-size: 12px; }
            code { font-family: ui-monospace, monospace; font-size: 12px; }
            </style></head><body>

            """
        let c = snapshot.config
        let open = totals.listeners.values.reduce(0) { $0 + $1.active }
        h += "<h1>edgemux \(esc(EdgemuxBuild.version))</h1>\n"
        h += "<div class=\"sub\">\(draining ? "<span class=\"bad\">draining</span> · " : "<span class=\"ok\">serving</span> · ")"
        h += "up \(esc(Self.age(wall - startedAt))) · config generation \(config.generation) · \(c.workers) workers · \(open) connections open · "
        h += "OpenSSL \(esc(EdgemuxBuild.openSSL)) · nghttp2 \(esc(EdgemuxBuild.nghttp2)) · refreshes every 5 s</div>\n"

        h += "<h2>Listeners</h2>\n<table><tr><th>listener</th><th>address</th><th>kind</th><th>open</th><th>accepted</th><th>new/s</th><th>handshake failures</th></tr>\n"
        for l in c.listeners {
            let v = totals.listeners[l.name] ?? WorkerMetrics.ListenerValues()
            let kind = l.tunnel.map { "tunnel (\($0.mode.rawValue))" } ?? (l.tls.map { "TLS \($0.alpn.joined(separator: ", "))" } ?? "plain")
            h += "<tr><td>\(esc(l.name))</td><td><code>\(esc(l.address.description))</code></td><td>\(esc(kind))\(l.proxyProtocol ? ", PROXY" : "")</td>"
            h += "<td class=\"n\">\(v.active)</td><td class=\"n\">\(v.accepted)</td><td class=\"n\">\(rate(now.accepted[l.name], earlier?.accepted[l.name]))</td>"
            h += "<td class=\"n\">\(v.handshakeFailures.values.reduce(0, +))</td></tr>\n"
        }
        h += "</table>\n"

        h += "<h2>Routes</h2>\n<table><tr><th>listener</th><th>route</th><th>match</th><th>mode</th><th>backend</th><th>routed</th><th>per s</th><th>requests 2xx / 4xx / 5xx</th></tr>\n"
        for l in c.listeners {
            let v = totals.listeners[l.name] ?? WorkerMetrics.ListenerValues()
            for r in l.routes {
                let key = "\(l.name)/\(r.name)"
                var byClass = [Int](repeating: 0, count: 6)
                for (k, n) in v.requests where k.route == r.name { byClass[k.statusClass] += n }
                let mode = r.passthrough ? "passthrough" : r.mode.rawValue
                h += "<tr><td>\(esc(l.name))</td><td>\(esc(r.name))</td><td><code>\(esc(Self.matchText(r.match)))</code></td><td>\(esc(mode))</td><td>\(esc(r.backend))</td>"
                h += "<td class=\"n\">\(now.routed[key] ?? 0)</td><td class=\"n\">\(rate(now.routed[key], earlier?.routed[key]))</td>"
                h += "<td class=\"n\">\(r.mode == .request && !r.passthrough ? "\(byClass[2]) / \(byClass[4]) / <span class=\"\(byClass[5] > 0 ? "bad" : "")\">\(byClass[5])</span>" : "–")</td></tr>\n"
            }
            if l.tunnel != nil {
                let key = "\(l.name)/tunnel:\(l.name)"
                h += "<tr><td>\(esc(l.name))</td><td>(tunnel)</td><td>allowlist</td><td>tunnel</td><td>destinations</td><td class=\"n\">\(now.routed[key] ?? 0)</td><td class=\"n\">\(rate(now.routed[key], earlier?.routed[key]))</td><td class=\"n\">–</td></tr>\n"
            }
        }
        h += "</table>\n"

        h += "<h2>Backends</h2>\n<table><tr><th>backend</th><th>protocol</th><th>endpoint</th><th>health</th><th>last success</th><th>failures</th><th>last error</th></tr>\n"
        for (name, b) in c.backends.sorted(by: { $0.key < $1.key }) {
            var endpoints: [(String, Endpoint)] = []
            for (proto, list) in b.endpoints.sorted(by: { $0.key.rawValue < $1.key.rawValue }) {
                for e in list where !endpoints.contains(where: { $0.1.text == e.text }) { endpoints.append((b.endpoints.count > 1 ? proto.rawValue : "", e)) }
            }
            for (i, (proto, e)) in endpoints.enumerated() {
                let health = totals.endpointHealth[EndpointKey(backend: name, endpoint: e.text)]
                let state: String
                if let health, health.lastFailureAt > health.lastSuccessAt {
                    state = "<span class=\"bad\">failing</span>"
                } else if let health, health.lastSuccessAt > 0 {
                    state = "<span class=\"ok\">ok</span>"
                } else {
                    state = "<span class=\"idle\">not used yet</span>"
                }
                let protocolText = "\(b.proto.rawValue)\(proto.isEmpty ? "" : " (\(proto))")"
                h += "<tr><td>\(i == 0 ? esc(name) : "")</td><td>\(esc(protocolText))</td><td><code>\(esc(e.text))</code></td><td>\(state)</td>"
                h += "<td>\(health.map { $0.lastSuccessAt > 0 ? "\(esc(Self.age(wall - $0.lastSuccessAt))) ago" : "never" } ?? "–")</td>"
                h += "<td class=\"n\">\(health?.failures ?? 0)</td>"
                h += "<td>\(health.map { $0.lastFailureAt > 0 ? "<span class=\"err\">\(esc($0.lastError))</span> (\(esc(Self.age(wall - $0.lastFailureAt))) ago)" : "" } ?? "")</td></tr>\n"
            }
        }
        h += "</table>\n"

        var tunnels: [(String, String, Int)] = []
        for (listener, v) in totals.listeners { for (d, n) in v.tunnelsOpen { tunnels.append((listener, d, n)) } }
        tunnels.sort { ($0.2, $1.1) > ($1.2, $0.1) }
        h += "<h2>Open tunnels by destination</h2>\n"
        if tunnels.isEmpty {
            h += "<p class=\"idle\">none open</p>\n"
        } else {
            h += "<table><tr><th>listener</th><th>destination</th><th>open</th></tr>\n"
            for (listener, d, n) in tunnels.prefix(50) { h += "<tr><td>\(esc(listener))</td><td><code>\(esc(d))</code></td><td class=\"n\">\(n)</td></tr>\n" }
            h += "</table>\n"
            if tunnels.count > 50 { h += "<p class=\"idle\">and \(tunnels.count - 50) more destinations</p>\n" }
        }

        h += "<h2>Config loads</h2>\n<table><tr><th>when</th><th>generation</th><th>result</th><th>detail</th></tr>\n"
        for load in config.recent.reversed() {
            h += "<tr><td class=\"when\">\(esc(Self.age(wall - load.at))) ago</td><td class=\"n\">\(load.generation)</td>"
            h += "<td>\(load.ok ? "<span class=\"ok\">loaded</span>" : "<span class=\"bad\">rejected</span>")</td><td>\(load.ok ? esc(load.detail) : "<span class=\"err\">\(esc(load.detail))</span>")</td></tr>\n"
        }
        h += "</table>\n<p class=\"sub\">Also here: <a href=\"/metrics\">/metrics</a> · <a href=\"/healthz\">/healthz</a> · <a href=\"/readyz\">/readyz</a></p>\n</body></html>\n"
        return h
    }

    /// Per second between the earlier sample and now, as text.
    private func rate(_ current: Int?, _ before: Int?) -> String {
        guard let earlier, now.at > earlier.at else { return "–" }
        let r = Double((current ?? 0) - (before ?? 0)) * 1000 / Double(now.at - earlier.at)
        return r < 10 ? format1(r) : "\(Int(r.rounded()))"
    }

    private func format1(_ v: Double) -> String {
        let tenths = Int((v * 10).rounded())
        return "\(tenths / 10).\(tenths % 10)"
    }

    static func matchText(_ m: RouteMatch) -> String {
        var parts: [String] = []
        if let v = m.sni { parts.append("sni \(v)") }
        if let v = m.alpn { parts.append("alpn \(v.rawValue)") }
        if let v = m.offeredALPN { parts.append("alpn \(v)") }
        if let v = m.host { parts.append("host \(v)") }
        if let v = m.pathPrefix { parts.append("path \(v)*") }
        if let v = m.contentType { parts.append("content-type \(v)*") }
        if let v = m.method { parts.append("method \(v)") }
        if let v = m.upgrade { parts.append("upgrade \(v)") }
        return parts.isEmpty ? "everything else" : parts.joined(separator: ", ")
    }

    /// "4 s", "12 min", "3 h 5 min", "2 d 4 h".
    static func age(_ seconds: Double) -> String {
        let s = max(0, Int(seconds))
        if s < 120 { return "\(s) s" }
        if s < 3600 { return "\(s / 60) min" }
        if s < 86_400 { return "\(s / 3600) h \(s % 3600 / 60) min" }
        return "\(s / 86_400) d \(s % 86_400 / 3600) h"
    }

    /// HTML text: & < > " escaped.
    func esc(_ s: String) -> String {
        var out = ""
        out.reserveCapacity(s.utf8.count)
        for ch in s.unicodeScalars {
            switch ch {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            default: out.unicodeScalars.append(ch)
            }
        }
        return out
    }
}
