import Foundation
import Testing

@testable import EdgemuxCore

/// README's configuration reference is the operator's manual of the config file: it must list
/// exactly the keys the loader takes, place by place, and the defaults it gives must be the
/// ones a config that leaves them out gets.
@Suite("README configuration reference")
struct ConfigReferenceTests {
    /// place → key → the first backticked value of its default column.
    static func reference() throws -> [String: [String: String]] {
        try references().mapValues { $0.mapValues { $0.first ?? "" } }
    }

    /// place → key → every backticked value of its default column, in order.
    static func references() throws -> [String: [String: [String]]] {
        let readme = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("README.md")
        let text = try String(contentsOf: readme, encoding: .utf8)
        guard let start = text.range(of: "\n## Configuration reference\n") else { return [:] }
        let body = text[start.upperBound...]
        let section = body.range(of: "\n## ").map { body[..<$0.lowerBound] } ?? body
        var places: [String: [String: [String]]] = [:]
        var place: String?
        for line in section.split(separator: "\n") {
            if line.hasPrefix("#### `"), line.hasSuffix("`") {
                place = String(line.dropFirst(6).dropLast())
                places[place!] = [:]
            } else if let p = place, line.hasPrefix("| `") {
                let cells = line.split(separator: "|", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
                guard cells.count >= 5 else { continue }
                let key = cells[1].trimmingCharacters(in: CharacterSet(charactersIn: "`"))
                // Between backticks: the odd pieces of the cell split at each one.
                let values = cells[3].split(separator: "`", omittingEmptySubsequences: false).enumerated().filter { $0.offset % 2 == 1 }.map { String($0.element) }
                places[p, default: [:]][key] = values
            }
        }
        return places
    }

    @Test("lists exactly the keys the loader accepts, in every place a key can appear")
    func everyKeyDocumented() throws {
        let reference = try Self.reference()
        #expect(!reference.isEmpty, "README.md has no '## Configuration reference' section")
        for (place, keys) in ConfigKeys.sections {
            let documented = Set(reference[place]?.keys.map { $0 } ?? [])
            #expect(reference[place] != nil, "README reference has no '#### `\(place)`' table")
            #expect(Set(keys).subtracting(documented).sorted() == [], "\(place): keys the loader takes that README does not document")
            #expect(documented.subtracting(keys).sorted() == [], "\(place): keys README documents that the loader refuses")
        }
        #expect(Set(reference.keys).subtracting(ConfigKeys.sections.map { $0.place }).sorted() == [], "README reference tables for places the loader does not have")
    }

    @Test("the defaults it gives are what a config that leaves the keys out gets")
    func defaultsAreTheLoadersDefaults() throws {
        let reference = try Self.reference()
        let config = try ConfigLoader.load(yaml: """
            listeners:
              - listen: 127.0.0.1:8443
                routes:
                  - backend: web
              - listen: 127.0.0.1:3128
                tunnel:
                  allow: [{ cidr: 10.0.0.0/8 }]
            backends:
              web:
                endpoints: [127.0.0.1:8080]
            """, file: "defaults.yaml")
        let listener = config.listeners[0], route = listener.routes[0], tunnel = config.listeners[1].tunnel!
        let backend = config.backends["web"]!
        func duration(_ place: String, _ key: String) -> Int64? { reference[place]?[key].flatMap { ConfigLoader.parseDuration($0) } }
        func size(_ place: String, _ key: String) -> Int? { reference[place]?[key].flatMap { ConfigLoader.parseSize($0) } }

        #expect(duration("top level", "drain_timeout") == config.drainTimeoutMillis)
        #expect(size("top level", "max_connections") == config.maxConnections)
        #expect(size("top level", "max_handshakes") == config.maxHandshakes)
        #expect(reference["top level"]?["access_log"] == "off" && config.accessLog == nil)
        #expect(reference["top level"]?["workers"] == "auto")

        #expect(duration("listeners[]", "handshake_timeout") == listener.handshakeTimeoutMillis)
        #expect(duration("listeners[]", "request_timeout") == listener.requestTimeoutMillis)
        #expect(size("listeners[]", "max_request_head") == listener.maxRequestHeadBytes)
        #expect(duration("listeners[]", "max_connection_age") == listener.maxConnectionAgeMillis)
        #expect(duration("listeners[]", "keepalive_timeout") == listener.keepaliveTimeoutMillis)
        #expect(size("listeners[]", "max_connections") == listener.maxConnections)
        #expect(size("listeners[]", "max_connections_per_client") == listener.maxConnectionsPerClient)
        #expect(size("listeners[]", "max_requests_per_connection") == listener.maxRequestsPerConnection)
        #expect(duration("listeners[]", "fallback_timeout") == listener.fallbackTimeoutMillis)
        #expect(reference["listeners[]"]?["proxy_protocol"] == "false" && !listener.proxyProtocol)

        let h2 = listener.http2
        #expect(size("listeners[].http2", "max_concurrent_streams") == h2.maxConcurrentStreams)
        #expect(size("listeners[].http2", "initial_window_size") == h2.initialWindowSize)
        #expect(size("listeners[].http2", "connection_window_size") == h2.connectionWindowSize)
        #expect(size("listeners[].http2", "max_frame_size") == h2.maxFrameSize)
        #expect(size("listeners[].http2", "max_header_list_size") == h2.maxHeaderListSize)
        #expect(size("listeners[].http2", "requests_per_pass") == h2.requestsPerPass)

        #expect(duration("listeners[].routes[]", "idle_timeout") == route.idleTimeoutMillis)
        #expect(reference["listeners[].routes[]"]?["mode"] == "relay" && route.mode == .request, "a catch-all is request mode; relay is the default of gRPC matches only")
        #expect(duration("listeners[].routes[]", "response_timeout") == route.responseTimeoutMillis)
        #expect(reference["listeners[].routes[]"]?["forwarded"] == route.forwarded.rawValue)
        #expect(reference["listeners[].routes[]"]?["via"] == "false" && !route.via)
        #expect(reference["listeners[].routes[]"]?["passthrough"] == "false" && !route.passthrough)

        #expect(reference["listeners[].tunnel"]?["mode"] == tunnel.mode.rawValue)
        #expect(duration("listeners[].tunnel", "connect_timeout") == tunnel.connectTimeoutMillis)
        #expect(duration("listeners[].tunnel", "idle_timeout") == tunnel.idleTimeoutMillis)

        #expect(reference["backends.NAME"]?["protocol"] == backend.proto.rawValue)
        #expect(duration("backends.NAME", "connect_timeout") == backend.connectTimeoutMillis)
        #expect(reference["backends.NAME"]?["balance"] == backend.balance.rawValue)
        #expect(reference["backends.NAME"]?["proxy_protocol"] == backend.proxyProtocol.rawValue)
        #expect(size("backends.NAME.pool", "max_idle") == backend.pool.maxIdle)
        #expect(duration("backends.NAME.pool", "idle_timeout") == backend.pool.idleTimeoutMillis)

        let tls = try ConfigLoader.load(yaml: """
            listeners:
              - listen: 127.0.0.1:8443
                tls: { certificates: [{ cert: c.pem, key: k.pem }] }
                routes: [{ backend: web }]
            backends:
              web: { protocol: tls, endpoints: [127.0.0.1:8443] }
            """, file: "defaults.yaml", readingFiles: false)
        let listenerTLS = tls.listeners[0].tls!, backendTLS = tls.backends["web"]!.tls!
        #expect(reference["listeners[].tls"]?["min_version"] == "\"\(listenerTLS.minVersion)\"")
        #expect(reference["listeners[].tls"]?["ciphersuites"] == listenerTLS.policy.ciphersuites)
        #expect(reference["listeners[].tls"]?["groups"] == listenerTLS.policy.groups)
        #expect(reference["listeners[].tls"]?["alpn"] == "[" + listenerTLS.alpn.joined(separator: ", ") + "]")
        #expect(reference["listeners[].tls"]?["client_subject_header"] == listenerTLS.clientSubjectHeader)
        #expect(reference["listeners[].tls"]?["client_auth"] == "required", "the default with client_ca")
        #expect(listenerTLS.clientAuth == .none)
        #expect(reference["backends.NAME.tls"]?["verify"] == "true" && backendTLS.verify)
    }

    @Test("the conditional defaults too: gRPC routes, h2c-only backends, tunnel ports, the handshake limit")
    func conditionalDefaults() throws {
        let all = try Self.references()
        let config = try ConfigLoader.load(yaml: """
            listeners:
              - listen: 127.0.0.1:8443
                routes:
                  - { name: agents, match: { alpn: h2, content_type: application/grpc }, backend: grpc }
                  - { name: web, backend: web }
              - listen: 127.0.0.1:3128
                tunnel:
                  allow: [{ cidr: 10.0.0.0/8 }]
            backends:
              web: { endpoints: { h2c: [127.0.0.1:8081] } }
              grpc: { endpoints: { h2c: [127.0.0.1:9090] } }
            """, file: "defaults.yaml")
        let grpc = config.listeners[0].routes[0], web = config.listeners[0].routes[1]
        let route = all["listeners[].routes[]"] ?? [:]
        // idle_timeout: `5m`; `0` for a `content_type: application/grpc…` match and passthrough.
        #expect(route["idle_timeout"]?.first.flatMap(ConfigLoader.parseDuration) == web.idleTimeoutMillis)
        #expect(route["idle_timeout"]?.dropFirst().first.flatMap(ConfigLoader.parseDuration) == grpc.idleTimeoutMillis)
        // mode: `relay` for a gRPC match, else `request`.
        #expect(route["mode"]?.first == grpc.mode.rawValue && route["mode"]?.last == web.mode.rawValue, "\(route["mode"] ?? [])")
        // response_timeout: `60s`; `0` for a gRPC match.
        #expect(route["response_timeout"]?.first.flatMap(ConfigLoader.parseDuration) == web.responseTimeoutMillis)
        #expect(route["response_timeout"]?.dropFirst().first.flatMap(ConfigLoader.parseDuration) == grpc.responseTimeoutMillis)
        // protocol: `http1`, `h2c` when only h2c endpoints are listed.
        #expect(all["backends.NAME"]?["protocol"]?.dropFirst().first == config.backends["web"]?.proto.rawValue)
        // A tunnel rule's ports.
        let ports = config.listeners[1].tunnel?.allow.rules.first?.ports.sorted().map(String.init).joined(separator: ", ")
        #expect(all["listeners[].tunnel.allow[]"]?["ports"]?.first == ports.map { "[\($0)]" })
        // max_handshakes: `0`: `2048`.
        #expect(all["top level"]?["max_handshakes"]?.dropFirst().first == String(ConnectionLimiter.defaultMaxHandshakes))
    }
}
