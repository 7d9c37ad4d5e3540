import Foundation
import Testing

extension Integration {
    @Suite("metrics: the text format, a real Prometheus scrape, the Grafana dashboard's queries", .serialized)
    struct MetricsTests {
        func config(port: UInt16, admin: UInt16, web: UInt16) -> String {
            """
            workers: 2
            admin: { listen: 127.0.0.1:\(admin) }
            listeners:
              - name: public
                listen: 127.0.0.1:\(port)
            \(tlsBlock())
                routes:
                  - { name: web, backend: web }
            backends:
              web: { endpoints: { http1: ["127.0.0.1:\(web)"] } }
            """
        }

        /// One PromQL query against Prometheus's HTTP API: its status and result vector.
        func query(_ prometheus: UInt16, _ promql: String) -> (status: String, values: [Double]) {
            let r = Command.run("/usr/bin/curl", ["-sS", "--max-time", "10", "http://127.0.0.1:\(prometheus)/api/v1/query", "--data-urlencode", "query=\(promql)"], timeout: 15)
            guard let json = try? JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any] else { return ("unreadable: \(r.stdout) \(r.stderr)", []) }
            let status = json["status"] as? String ?? "?"
            let result = (json["data"] as? [String: Any])?["result"] as? [[String: Any]] ?? []
            let values = result.compactMap { ($0["value"] as? [Any])?.last as? String }.compactMap(Double.init)
            return (status == "success" ? status : "\(status): \(json["error"] ?? "")", values)
        }

        @Test("promtool check metrics finds nothing to say; a real Prometheus scrapes the admin listener and a PromQL query sees the request counter move; every series family named in the exposition is there with listener labels, histograms, process series, build info and the config generation",
              .enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/prometheus"), "needs Debian's prometheus"))
        func prometheusScrape() throws {
            let (web, webPort) = try startPeer("http1", ["--name", "web"])
            defer { web.stop() }
            let port = freePort(), admin = freePort()
            let e = try Edgemux(config: config(port: port, admin: admin, web: webPort), port: port)
            for i in 0..<6 {
                let r = curl([i % 2 == 0 ? "--http2" : "--http1.1", "https://localhost:\(port)/warm/\(i)"], port: port)
                #expect(r.stdout.hasPrefix("web GET /warm/\(i)"), "\(r.stdout) \(r.stderr)")
            }
            let metrics = Command.run("/usr/bin/curl", ["-sS", "http://127.0.0.1:\(admin)/metrics"]).stdout
            // The text format, as Prometheus's own linter reads it.
            let lint = Command.run("/bin/sh", ["-c", "curl -sS http://127.0.0.1:\(admin)/metrics | /usr/bin/promtool check metrics"], timeout: 30)
            #expect(lint.status == 0 && lint.stdout.isEmpty && lint.stderr.isEmpty, "promtool: \(lint.stdout) \(lint.stderr)")
            #expect(metricSum(metrics, "edgemux_requests_total", ["listener": "public", "route": "web", "code_class": "2xx"]) == 6, "\(metrics)")
            #expect(metricSum(metrics, "edgemux_connections_accepted_total", ["listener": "public"]) >= 6, "\(metrics)")
            #expect(metricSum(metrics, "edgemux_tls_handshake_duration_seconds_count", ["listener": "public"]) >= 6, "\(metrics)")
            #expect(metricSum(metrics, "edgemux_backend_connect_duration_seconds_count", ["backend": "web"]) >= 1, "\(metrics)")
            #expect(metricSum(metrics, "edgemux_request_duration_seconds_count", ["listener": "public", "route": "web"]) == 6, "\(metrics)")
            #expect(metrics.contains("edgemux_build_info{version=\"") && metrics.contains("openssl=\"3."), "\(metrics)")
            #expect(metricSum(metrics, "edgemux_config_generation") == 1 && metricSum(metrics, "edgemux_config_last_reload_successful") == 1, "\(metrics)")
            #expect(metricSum(metrics, "process_open_fds") > 5 && metricSum(metrics, "process_resident_memory_bytes") > 1 << 20, "\(metrics)")
            #expect(metricSum(metrics, "process_start_time_seconds") > 1_700_000_000, "\(metrics)")

            // A real Prometheus, scraping every second.
            let scratch = Scratch("prometheus")
            let promPort = freePort()
            try """
                global: { scrape_interval: 1s, evaluation_interval: 1s }
                scrape_configs:
                  - job_name: edgemux
                    static_configs: [{ targets: ["127.0.0.1:\(admin)"] }]
                """.write(toFile: scratch.file("prometheus.yml"), atomically: true, encoding: .utf8)
            let prometheus = try Background("prometheus", "/usr/bin/prometheus", [
                "--config.file=\(scratch.file("prometheus.yml"))", "--storage.tsdb.path=\(scratch.file("data"))",
                "--web.listen-address=127.0.0.1:\(promPort)", "--log.level=warn",
            ])
            defer { prometheus.stop() }
            #expect(waitForPort(promPort, timeout: 30, while: prometheus), "\(prometheus.log)")
            let up = eventually(timeout: 30) { query(promPort, "up{job=\"edgemux\"}").values.first == 1 ? true : nil }
            #expect(up == true, "target not up: \(query(promPort, "up")) \(prometheus.log)")
            let before = eventually(timeout: 20) { query(promPort, "sum(edgemux_requests_total{listener=\"public\"})").values.first.flatMap { $0 >= 6 ? $0 : nil } }
            #expect(before == 6, "\(query(promPort, "edgemux_requests_total"))")
            for i in 0..<4 { _ = curl(["--http2", "https://localhost:\(port)/more/\(i)"], port: port) }
            let after = eventually(timeout: 20) { query(promPort, "sum(edgemux_requests_total{listener=\"public\"})").values.first.flatMap { $0 >= 10 ? $0 : nil } }
            #expect(after == 10, "the counter moved in Prometheus: \(query(promPort, "edgemux_requests_total"))")
            let p50 = query(promPort, "histogram_quantile(0.5, sum by (le) (rate(edgemux_tls_handshake_duration_seconds_bucket{listener=\"public\"}[1m])))")
            #expect(p50.status == "success" && !p50.values.isEmpty, "\(p50)")

            // The Grafana dashboard: every query is valid PromQL to this Prometheus and names
            // only series families edgemux exports.
            let dashboardPath = Paths.packageRoot.appendingPathComponent("Deploy/grafana/edgemux-dashboard.json").path
            let dashboard = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dashboardPath))) as? [String: Any] ?? [:]
            var expressions: [String] = []
            for panel in dashboard["panels"] as? [[String: Any]] ?? [] {
                for target in panel["targets"] as? [[String: Any]] ?? [] { if let expr = target["expr"] as? String { expressions.append(expr) } }
            }
            #expect(expressions.count >= 30, "\(expressions.count) queries")
            let families = Set(metrics.split(separator: "\n").filter { $0.hasPrefix("# TYPE ") }.map { String($0.split(separator: " ")[2]) })
            let nameRegex = try NSRegularExpression(pattern: "\\b(edgemux_[a-z0-9_]+|process_[a-z_]+)\\b")
            for expr in expressions {
                let promql = expr.replacingOccurrences(of: "$__rate_interval", with: "1m").replacingOccurrences(of: "$instance", with: ".*").replacingOccurrences(of: "$listener", with: ".*")
                let answer = query(promPort, promql)
                #expect(answer.status == "success", "\(expr): \(answer.status)")
                for match in nameRegex.matches(in: expr, range: NSRange(expr.startIndex..., in: expr)) {
                    let name = String(expr[Range(match.range, in: expr)!])
                    let family = ["_bucket", "_sum", "_count"].reduce(name) { n, suffix in n.hasSuffix(suffix) && families.contains(String(n.dropLast(suffix.count))) ? String(n.dropLast(suffix.count)) : n }
                    #expect(families.contains(family), "\(name) in \(expr) is not a series edgemux exports")
                }
            }
            e.stop()
        }

        @Test("the status page on the admin listener: listeners, routes with rates, each endpoint's health and last error, open tunnels by destination, config loads with a rejected one; rendered by headless Chromium (DOM and a screenshot)",
              .enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/chromium"), "needs Debian's chromium"))
        func statusPage() throws {
            let (web, webPort) = try startPeer("http1", ["--name", "web"])
            defer { web.stop() }
            let port = freePort(), admin = freePort(), egress = freePort()
            let yaml = """
                workers: 2
                admin: { listen: 127.0.0.1:\(admin) }
                listeners:
                  - name: public
                    listen: 127.0.0.1:\(port)
                \(tlsBlock())
                    routes:
                      - { name: api, match: { path_prefix: /api/ }, backend: api }
                      - { name: web, backend: web }
                  - name: egress
                    listen: 127.0.0.1:\(egress)
                    tunnel:
                      mode: connect
                      allow:
                        - { cidr: 127.0.0.1/32, ports: [\(webPort)] }
                backends:
                  api: { endpoints: { http1: ["127.0.0.1:1", "127.0.0.1:\(webPort)"] } }
                  web: { endpoints: { http1: ["127.0.0.1:\(webPort)"] } }
                """
            let e = try Edgemux(config: yaml, port: port)
            for i in 0..<8 {
                _ = curl(["--http2", "https://localhost:\(port)/page/\(i)"], port: port)
                _ = curl(["--http1.1", "https://localhost:\(port)/api/\(i)"], port: port)
            }
            // A tunnel held open while the page renders.
            let held = try Background("tunnel-client", Paths.python, ["-c", """
                import socket, time
                s = socket.create_connection(("127.0.0.1", \(egress)), timeout=5)
                s.sendall(b"CONNECT 127.0.0.1:\(webPort) HTTP/1.1\\r\\nHost: 127.0.0.1:\(webPort)\\r\\n\\r\\n")
                print(s.recv(100), flush=True)
                time.sleep(30)
                """])
            defer { held.stop() }
            #expect(eventually(timeout: 10) { held.log.contains("200 Connection Established") ? true : nil } == true, "\(held.log)")
            // A reload that is refused.
            try reload(e, to: yaml.replacingOccurrences(of: "workers: 2", with: "workers: 2\nbogus: 1"))
            #expect(waitForLog(e, "reload rejected"), "\(e.log)")

            let scratch = Scratch("status")
            let chromium = ["--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--user-data-dir=\(scratch.file("profile"))"]
            let dom = Command.run("/usr/bin/chromium", chromium + ["--dump-dom", "http://127.0.0.1:\(admin)/"], timeout: 60)
            let page = dom.stdout
            #expect(page.contains("<h2>Listeners</h2>") && page.contains("127.0.0.1:\(port)") && page.contains("tunnel (connect)"), "\(page) \(dom.stderr)")
            #expect(page.contains(">api</td>") && page.contains("path /api/*") && page.contains(">8 / 0 / <span"), "\(page)")
            #expect(page.contains("Connection refused") && page.contains(">failing<") && page.contains(">ok<"), "endpoint health: \(page)")
            #expect(page.contains("127.0.0.1:\(webPort)</code></td><td class=\"n\">1</td>"), "the open tunnel: \(page)")
            #expect(page.contains(">rejected<") && page.contains("unknown key 'bogus'"), "config loads: \(page)")
            #expect(page.contains("http-equiv=\"refresh\"") && !page.contains("<script") && !page.contains("src=\"http"), "self-refreshing, no script, no external asset")
            // The picture a person would read (kept beside the test's scratch files).
            let png = scratch.file("status.png")
            let shot = Command.run("/usr/bin/chromium", chromium + ["--window-size=1280,1400", "--screenshot=\(png)", "http://127.0.0.1:\(admin)/"], timeout: 60)
            let size = (try? FileManager.default.attributesOfItem(atPath: png)[.size] as? Int) ?? 0
            #expect(size > 20_000, "screenshot \(size) bytes: \(shot.stderr)")
        }
    }
}
