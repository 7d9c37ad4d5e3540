import Foundation
import Glibc
import Yams

/// One problem in a config file: where, which field, what was expected.
public struct ConfigIssue: Sendable, CustomStringConvertible, Equatable {
    public let file: String
    /// 1-based line (0: no line applies).
    public let line: Int
    /// The field's path, e.g. `listeners[0].tls.certificates[1].key`.
    public let path: String
    public let message: String

    public var description: String {
        let field = path.isEmpty ? "" : "\(path): "
        return line > 0 ? "\(file):\(line): \(field)\(message)" : "\(file): \(field)\(message)"
    }
}

/// The config file could not be used; every problem found is listed.
public struct ConfigError: Error, CustomStringConvertible, Sendable {
    public let issues: [ConfigIssue]
    public var description: String { issues.map(\.description).joined(separator: "\n") }
}

/// Reads the YAML config into `EdgemuxConfig`, collecting every problem instead of stopping at
/// the first. Unknown keys are errors (they are typos nine times out of ten).
public struct ConfigLoader {
    public static let defaultHandshakeTimeout: Int64 = 10_000
    public static let defaultRequestTimeout: Int64 = 30_000
    public static let defaultMaxRequestHead = 32 * 1024
    public static let defaultConnectTimeout: Int64 = 5_000
    public static let defaultIdleTimeout: Int64 = 300_000
    public static let defaultDrainTimeout: Int64 = 30_000

    /// Loads and validates a file.
    public static func load(path: String, readingFiles: Bool = true) throws -> EdgemuxConfig {
        var info = stat()
        if stat(path, &info) == 0, info.st_mode & S_IFMT == S_IFDIR {
            throw ConfigError(issues: [ConfigIssue(file: path, line: 0, path: "", message: "is a folder, not a config file: name the YAML file in it")])
        }
        guard let text = readFile(path) else {
            throw ConfigError(issues: [ConfigIssue(file: path, line: 0, path: "", message: "cannot read the file: \(String(cString: strerror(errno)))")])
        }
        return try load(yaml: text, file: path, readingFiles: readingFiles)
    }

    /// Loads and validates YAML text; `file` names it in errors, and relative paths in it are
    /// taken from the file's folder.
    public static func load(yaml: String, file: String, readingFiles: Bool = true) throws -> EdgemuxConfig {
        var reader = NodeReader(file: file)
        reader.readsFiles = readingFiles
        let root: Node?
        do {
            root = try Yams.compose(yaml: yaml)
        } catch let e as YamlError {
            throw ConfigError(issues: [NodeReader.issue(for: e, file: file, text: yaml)])
        }
        guard let root else {
            throw ConfigError(issues: [ConfigIssue(file: file, line: 0, path: "", message: "the file is empty")])
        }
        let config = reader.readConfig(root)
        if let config, reader.issues.isEmpty { return config }
        throw ConfigError(issues: reader.issues.sorted { $0.line < $1.line })
    }

    static func readFile(_ path: String) -> String? {
        guard let f = fopen(path, "r") else { return nil }
        defer { fclose(f) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = fread(&chunk, 1, chunk.count, f)
            if n <= 0 { break }
            bytes.append(contentsOf: chunk[0..<n])
            if bytes.count > 16 << 20 { return nil }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Parses `30s`, `5m`, `1h`, `250ms`, `0` into milliseconds.
    public static func parseDuration(_ text: String) -> Int64? {
        let t = text.trimmedSpaces()
        if t == "0" { return 0 }
        let units: [(String, Int64)] = [("ms", 1), ("s", 1000), ("m", 60_000), ("h", 3_600_000), ("d", 86_400_000)]
        for (suffix, factor) in units where t.hasSuffix(suffix) {
            let number = t.dropLast(suffix.count)
            if suffix == "s", number.hasSuffix("m") { continue }
            guard let v = Int64(number), v >= 0 else { return nil }
            let (r, overflow) = v.multipliedReportingOverflow(by: factor)
            return overflow ? nil : r
        }
        return nil
    }

    /// Parses `16KiB`, `1MiB`, `1GiB`, `32768` (nil when it overflows).
    public static func parseSize(_ text: String) -> Int? {
        let t = text.trimmedSpaces()
        for (suffix, factor) in [("KiB", 1024), ("MiB", 1024 * 1024), ("GiB", 1024 * 1024 * 1024), ("k", 1024), ("K", 1024)] where t.hasSuffix(suffix) {
            guard let v = Int(t.dropLast(suffix.count)), v > 0 else { return nil }
            let (r, overflow) = v.multipliedReportingOverflow(by: factor)
            return overflow ? nil : r
        }
        return Int(t)
    }

    /// The longest duration a config may give (365 days): a deadline is `now + duration`, and a
    /// typo of many digits must not overflow it.
    public static let maxDurationMillis: Int64 = 365 * 86_400_000
    /// The largest size a config may give (1 GiB).
    public static let maxSize = 1 << 30
}

extension String {
    func trimmedSpaces() -> String {
        let set: Character = " "
        var s = Substring(self)
        while s.first == set || s.first == "\t" { s = s.dropFirst() }
        while s.last == set || s.last == "\t" { s = s.dropLast() }
        return String(s)
    }
}

/// Walks Yams nodes, recording issues with their line and field path.
struct NodeReader {
    let file: String
    var issues: [ConfigIssue] = []
    /// Read the files the config names (certificates, keys, CAs, OCSP responses, ticket keys,
    /// credentials); false: check syntax, values and references only (`check --no-files`, for a
    /// config repository's CI, where the secrets are not).
    var readsFiles = true
    /// Backends with an error of their own: checks that would follow from it (a protocol a route
    /// cannot reach) are not reported again as a second, misleading error.
    var brokenBackends: Set<String> = []
    /// The folder relative file paths in the config are taken from.
    let baseDirectory: String

    init(file: String) {
        self.file = file
        if let slash = file.lastIndex(of: "/") {
            baseDirectory = String(file[..<slash])
        } else {
            baseDirectory = "."
        }
    }

    static func issue(for error: YamlError, file: String, text: String) -> ConfigIssue {
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        switch error {
        case .scanner(let context, let problem, let mark, _), .parser(let context, let problem, let mark, _):
            let at = mark.line >= 1 && mark.line <= lines.count ? lines[mark.line - 1] : ""
            if at.prefix(while: { $0 == " " || $0 == "\t" }).contains("\t") {
                return ConfigIssue(file: file, line: mark.line, path: "", message: "a tab in the indentation: YAML indents with spaces only")
            }
            let ctx = context.map { "\($0.text) " } ?? ""
            return ConfigIssue(file: file, line: mark.line, path: "", message: "YAML syntax error: \(ctx)\(problem)")
        case .duplicatedKeysInMapping(let duplicates, let context):
            // Yams names the keys and where their mapping starts; the lines of the key are found
            // here: from that line on, at the column the first one has.
            let names = duplicates.sorted()
            guard let name = names.first else { break }
            var first: (line: Int, column: Int)?
            // Yams may place the mapping past the text's last line (found by the fuzzer).
            for i in min(max(0, context.mark.line - 1), lines.count)..<lines.count {
                let line = lines[i]
                let indent = line.prefix { $0 == " " || $0 == "-" }.count
                let rest = line.dropFirst(indent)
                guard rest.hasPrefix("\(name):") || rest.hasPrefix("\"\(name)\":") else { continue }
                if let first {
                    guard indent == first.column else { continue }
                    return ConfigIssue(file: file, line: i + 1, path: name, message: "duplicate key '\(name)' (first at line \(first.line)): each key appears once in a mapping")
                }
                first = (i + 1, indent)
            }
            return ConfigIssue(file: file, line: 0, path: "", message: "duplicate keys: \(names.joined(separator: ", ")): each key appears once in a mapping")
        default:
            break
        }
        return ConfigIssue(file: file, line: 0, path: "", message: "YAML error: \(error)")
    }

    mutating func fail(_ node: Node?, _ path: String, _ message: String) {
        issues.append(ConfigIssue(file: file, line: node?.mark?.line ?? 0, path: path, message: message))
    }

    // MARK: primitives

    /// The pairs of a mapping; reports keys outside `allowed`.
    mutating func mapping(_ node: Node, _ path: String, allowed: [String]) -> [String: Node]? {
        guard case .mapping(let m) = node else {
            fail(node, path, "expected a mapping with keys \(allowed.joined(separator: ", "))")
            return nil
        }
        var out: [String: Node] = [:]
        for (k, v) in m {
            guard let key = k.string else {
                fail(k, path, "keys must be strings")
                continue
            }
            if !allowed.contains(key) {
                let hint = allowed.first { editDistance($0, key) <= 2 }.map { " (did you mean '\($0)'?)" } ?? ""
                fail(k, join(path, key), "unknown key '\(key)'\(hint); expected one of: \(allowed.joined(separator: ", "))")
                continue
            }
            if out[key] != nil { fail(k, join(path, key), "duplicate key") }
            out[key] = v
        }
        return out
    }

    mutating func string(_ node: Node, _ path: String) -> String? {
        guard case .scalar(let s) = node else {
            fail(node, path, "expected a string")
            return nil
        }
        return s.string
    }

    mutating func bool(_ node: Node, _ path: String) -> Bool? {
        guard case .scalar = node, let b = node.bool else {
            fail(node, path, "expected true or false")
            return nil
        }
        return b
    }

    mutating func duration(_ node: Node, _ path: String) -> Int64? {
        guard let s = string(node, path) else { return nil }
        guard let ms = ConfigLoader.parseDuration(s) else {
            fail(node, path, "expected a duration such as 500ms, 30s, 5m, 1h or 0 (never), not '\(s)'")
            return nil
        }
        guard ms <= ConfigLoader.maxDurationMillis else {
            fail(node, path, "expected a duration of at most 365d, not '\(s)'")
            return nil
        }
        return ms
    }

    /// A count from 0 (no limit) to 10,000,000.
    mutating func count(_ node: Node, _ path: String) -> Int? {
        guard let s = string(node, path) else { return nil }
        guard let v = Int(s), v >= 0, v <= 10_000_000 else {
            fail(node, path, "expected a count from 0 (no limit) to 10000000, not '\(s)'")
            return nil
        }
        return v
    }

    mutating func size(_ node: Node, _ path: String) -> Int? {
        guard let s = string(node, path) else { return nil }
        guard let n = ConfigLoader.parseSize(s), n > 0, n <= ConfigLoader.maxSize else {
            fail(node, path, "expected a size from 1 byte to 1GiB such as 16KiB, 1MiB or a byte count, not '\(s)'")
            return nil
        }
        return n
    }

    mutating func sequence(_ node: Node, _ path: String) -> [Node]? {
        guard case .sequence(let s) = node else {
            fail(node, path, "expected a list")
            return nil
        }
        return Array(s)
    }

    mutating func address(_ node: Node, _ path: String) -> SocketAddress? {
        guard let s = string(node, path) else { return nil }
        guard let (host, port) = SocketAddress.splitHostPort(s) else {
            fail(node, path, "expected host:port (IPv6 as [addr]:port), not '\(s)'")
            return nil
        }
        if let a = SocketAddress.parse(ip: host, port: port) { return a }
        if host == "localhost" { return SocketAddress.parse(ip: "127.0.0.1", port: port) }
        if host == "*" { return SocketAddress.parse(ip: "0.0.0.0", port: port) }
        fail(node, path, "a listen address must be an IP literal, not '\(host)'")
        return nil
    }

    mutating func endpoint(_ node: Node, _ path: String) -> Endpoint? {
        guard let s = string(node, path) else { return nil }
        guard SocketAddress.splitHostPort(s) != nil else {
            fail(node, path, "expected host:port (IPv6 as [addr]:port), not '\(s)'")
            return nil
        }
        if !readsFiles, let (host, port) = SocketAddress.splitHostPort(s), SocketAddress.parse(ip: host, port: port) == nil {
            // check --no-files runs where the config's names need not resolve (a config
            // repository's CI, outside the cluster whose Service names it uses).
            return Endpoint(text: s, address: SocketAddress.parse(ip: "0.0.0.0", port: port)!)
        }
        guard let a = SocketAddress.resolve(s).first else {
            fail(node, path, "cannot resolve '\(s)'")
            return nil
        }
        return Endpoint(text: s, address: a)
    }

    mutating func readablePath(_ node: Node, _ path: String) -> String? {
        guard let s = string(node, path) else { return nil }
        let full = s.hasPrefix("/") ? s : "\(baseDirectory)/\(s)"
        if !readsFiles { return full }
        if access(full, R_OK) != 0 {
            fail(node, path, "cannot read '\(full)': \(String(cString: strerror(errno)))")
            return nil
        }
        // A folder, FIFO or device is no certificate or key: reading one would hang a reload
        // (a FIFO, /dev/zero) or say something confusing.
        var info = stat()
        if stat(full, &info) == 0, info.st_mode & S_IFMT != S_IFREG {
            fail(node, path, "'\(full)' is not a regular file")
            return nil
        }
        return full
    }

    func join(_ path: String, _ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }

    // MARK: the document

    mutating func readConfig(_ root: Node) -> EdgemuxConfig? {
        guard let top = mapping(root, "", allowed: ConfigKeys.top) else { return nil }
        var workers = max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))
        if let w = top["workers"] {
            if w.string == "auto" {
            } else if let n = w.int, n >= 1, n <= 256 {
                workers = n
            } else {
                fail(w, "workers", "expected auto or a number from 1 to 256")
            }
        }
        var admin: AdminConfig?
        if let a = top["admin"], let m = mapping(a, "admin", allowed: ConfigKeys.admin) {
            if let l = m["listen"] {
                if let addr = address(l, "admin.listen") { admin = AdminConfig(address: addr) }
            } else {
                fail(a, "admin", "missing 'listen'")
            }
        }
        let drain = top["drain_timeout"].flatMap { duration($0, "drain_timeout") } ?? ConfigLoader.defaultDrainTimeout
        var accessLog: String?
        if let a = top["access_log"], let s = string(a, "access_log") {
            switch s {
            case "off": accessLog = nil
            case "stdout", "stderr": accessLog = s
            default:
                if s.hasPrefix("/") { accessLog = s } else { fail(a, "access_log", "expected stdout, stderr, off or an absolute file path, not '\(s)'") }
            }
        }

        var backends: [String: BackendConfig] = [:]
        var backendLines: [String: Node] = [:]
        if let b = top["backends"] {
            if case .mapping(let m) = b {
                for (k, v) in m {
                    guard let name = k.string, !name.isEmpty else {
                        fail(k, "backends", "backend names must be strings")
                        continue
                    }
                    backendLines[name] = v
                    let before = issues.count
                    if let backend = readBackend(v, name: name) { backends[name] = backend }
                    if issues.count > before { brokenBackends.insert(name) }
                }
            } else {
                fail(b, "backends", "expected a mapping of backend names to backends")
            }
        }

        var listeners: [ListenerConfig] = []
        if let l = top["listeners"], let seq = sequence(l, "listeners") {
            if seq.isEmpty { fail(l, "listeners", "define at least one listener") }
            for (i, node) in seq.enumerated() {
                if let listener = readListener(node, "listeners[\(i)]", backends: backends, backendNames: Set(backendLines.keys)) {
                    listeners.append(listener)
                }
            }
            // Every socket of the config binds with SO_REUSEPORT: two on one address (or a
            // wildcard and a specific address on one port) would both bind, and the kernel would
            // split connections between them. The admin listener counts too.
            var bound: [(address: SocketAddress, owner: String)] = []
            if let admin { bound.append((admin.address, "the admin listener")) }
            var names: Set<String> = []
            for (i, listener) in listeners.enumerated() {
                let node = i < seq.count ? seq[i] : l
                if let other = bound.first(where: { Self.overlap($0.address, listener.address) }) {
                    let how = other.address == listener.address ? "is already used by" : "overlaps \(other.address) of"
                    fail(node, "listeners[\(i)].listen", "\(listener.address) \(how) \(other.owner): give each listener its own address or port")
                }
                bound.append((listener.address, "listener '\(listener.name)'"))
                if !names.insert(listener.name).inserted {
                    fail(node, "listeners[\(i)].name", "duplicate listener name '\(listener.name)'")
                }
            }
        } else if top["listeners"] == nil {
            fail(root, "listeners", "missing: define at least one listener")
        }
        var config = EdgemuxConfig(workers: workers, admin: admin, drainTimeoutMillis: drain, listeners: listeners, backends: backends, accessLog: accessLog)
        if let n = top["max_connections"], let v = count(n, "max_connections") { config.maxConnections = v }
        if let n = top["max_handshakes"], let v = count(n, "max_handshakes") { config.maxHandshakes = v }
        return config
    }

    /// Two addresses a listening socket each could bind at once: the same port, and the same IP
    /// or a wildcard on either side (`[::]` takes IPv4 too, as Linux binds it by default).
    static func overlap(_ a: SocketAddress, _ b: SocketAddress) -> Bool {
        guard a.port == b.port else { return false }
        if a == b { return true }
        let anyA = a.ip.allSatisfy { $0 == 0 }, anyB = b.ip.allSatisfy { $0 == 0 }
        if anyA && (a.family == AF_INET6 || b.family == AF_INET) { return true }
        if anyB && (b.family == AF_INET6 || a.family == AF_INET) { return true }
        return false
    }

    mutating func readListener(_ node: Node, _ path: String, backends: [String: BackendConfig], backendNames: Set<String>) -> ListenerConfig? {
        guard let m = mapping(node, path, allowed: ConfigKeys.listener) else { return nil }
        let name = m["name"].flatMap { string($0, join(path, "name")) } ?? path
        var addr: SocketAddress?
        if let l = m["listen"] { addr = address(l, join(path, "listen")) } else { fail(node, join(path, "listen"), "missing: the address to listen on, e.g. 0.0.0.0:443") }
        var proxyProtocol = m["proxy_protocol"].flatMap { bool($0, join(path, "proxy_protocol")) } ?? false
        var proxyFrom: [CIDR] = []
        if let n = m["proxy_protocol_from"], let seq = sequence(n, join(path, "proxy_protocol_from")) {
            for (i, item) in seq.enumerated() {
                let itemPath = "\(path).proxy_protocol_from[\(i)]"
                guard let text = string(item, itemPath) else { continue }
                if let cidr = CIDR(text) { proxyFrom.append(cidr) } else { fail(item, itemPath, "expected a network such as 10.0.0.0/8 or fd00::/8 (host bits zero), or an address, not '\(text)'") }
            }
            if seq.isEmpty { fail(n, join(path, "proxy_protocol_from"), "list the load balancers' networks, or leave the key out") }
            if m["proxy_protocol"] != nil, !proxyProtocol {
                fail(m["proxy_protocol"], join(path, "proxy_protocol"), "false, but proxy_protocol_from is set: remove one of them")
            }
            proxyProtocol = true
        }
        var tls: ListenerTLSConfig?
        if let t = m["tls"] { tls = readListenerTLS(t, join(path, "tls")) }
        let handshake = m["handshake_timeout"].flatMap { duration($0, join(path, "handshake_timeout")) } ?? ConfigLoader.defaultHandshakeTimeout
        let request = m["request_timeout"].flatMap { duration($0, join(path, "request_timeout")) } ?? ConfigLoader.defaultRequestTimeout
        let maxHead = m["max_request_head"].flatMap { size($0, join(path, "max_request_head")) } ?? ConfigLoader.defaultMaxRequestHead
        if maxHead < 1024 || maxHead > 1 << 20 {
            fail(m["max_request_head"], join(path, "max_request_head"), "expected between 1KiB and 1MiB")
        }
        var routes: [RouteConfig] = []
        var routeNames: Set<String> = []
        var tunnel: TunnelConfig?
        if let t = m["tunnel"] {
            tunnel = readTunnel(t, join(path, "tunnel"))
            if m["tls"] != nil { fail(m["tls"], join(path, "tls"), "a tunnel listener never terminates TLS (clients authenticate end to end): remove tls") }
            if m["routes"] != nil { fail(m["routes"], join(path, "routes"), "a tunnel listener has no routes: its destinations come from CONNECT or the SNI map") }
            if proxyProtocol { fail(m["proxy_protocol"], join(path, "proxy_protocol"), "PROXY protocol is for ingress listeners; a tunnel listener serves local clients") }
        } else if let r = m["routes"], let seq = sequence(r, join(path, "routes")) {
            for (i, rn) in seq.enumerated() {
                guard let route = readRoute(rn, "\(path).routes[\(i)]", backends: backends, backendNames: backendNames) else { continue }
                routes.append(route)
                if !routeNames.insert(route.name).inserted {
                    fail(rn, "\(path).routes[\(i)].name", "duplicate route name '\(route.name)' in this listener: its logs and metrics would be counted under the other one")
                }
            }
            if seq.isEmpty { fail(r, join(path, "routes"), "define at least one route") }
            // A route after a catch-all of its kind can never match: almost certainly a mistake.
            // (Passthrough routes are tried first, on the ClientHello; the others after the handshake.)
            for passthrough in [true, false] {
                let kind = routes.indices.filter { routes[$0].passthrough == passthrough }
                if let k = kind.firstIndex(where: { routes[$0].match.isCatchAll }), k < kind.count - 1, kind[k + 1] < seq.count {
                    fail(seq[kind[k + 1]], "\(path).routes[\(kind[k + 1])]", "unreachable: route '\(routes[kind[k]].name)' before it matches everything")
                }
            }
            if routes.contains(where: { $0.passthrough }), m["tls"] == nil {
                fail(r, join(path, "routes"), "passthrough routes choose by the TLS ClientHello: the listener needs tls (the routes it terminates use its certificates)")
            }
        } else if m["routes"] == nil {
            fail(node, join(path, "routes"), "missing: at least one route (or a tunnel)")
        }
        var http2 = HTTP2ServerSettings()
        // Never below what an HTTP/1.1 client of the same listener may send as its head.
        http2.maxHeaderListSize = max(maxHead, http2.maxHeaderListSize)
        if let h = m["http2"] { readHTTP2Settings(h, join(path, "http2"), into: &http2) }
        let age = m["max_connection_age"].flatMap { duration($0, join(path, "max_connection_age")) } ?? 0
        let keepalive = m["keepalive_timeout"].flatMap { duration($0, join(path, "keepalive_timeout")) } ?? 75_000
        if tunnel != nil, m["http2"] != nil || m["max_connection_age"] != nil || m["keepalive_timeout"] != nil {
            fail(m["http2"] ?? m["max_connection_age"] ?? m["keepalive_timeout"], path, "http2, max_connection_age and keepalive_timeout apply to listeners with routes, not to tunnels")
        }
        var fallback: String?
        if let n = m["fallback"], let s = string(n, join(path, "fallback")) {
            if m["tls"] == nil { fail(n, join(path, "fallback"), "a fallback takes connections that do not start a TLS handshake: the listener needs tls") }
            if let b = backends[s] {
                if b.proto != .tcp { fail(n, join(path, "fallback"), "backend '\(s)' must be protocol: tcp: the connection goes to it raw") } else { fallback = s }
            } else {
                fail(n, join(path, "fallback"), "unknown backend '\(s)'; defined backends: \(backendNames.sorted().joined(separator: ", "))")
            }
        }
        var fallbackTimeout: Int64 = 0
        if let n = m["fallback_timeout"], let t = duration(n, join(path, "fallback_timeout")) {
            if m["fallback"] == nil {
                fail(n, join(path, "fallback_timeout"), "sends silent clients to the fallback: set fallback: BACKEND too")
            } else if t >= handshake {
                fail(n, join(path, "fallback_timeout"), "\(DurationText.of(t)) is not shorter than handshake_timeout (\(DurationText.of(handshake))): a silent client would be closed first")
            } else {
                fallbackTimeout = t
            }
        }
        guard let addr else { return nil }
        let maxConnections = m["max_connections"].flatMap { count($0, join(path, "max_connections")) } ?? 0
        let perClient = m["max_connections_per_client"].flatMap { count($0, join(path, "max_connections_per_client")) } ?? 0
        let perConnection = m["max_requests_per_connection"].flatMap { count($0, join(path, "max_requests_per_connection")) } ?? 0
        let listener = ListenerConfig(name: name, address: addr, proxyProtocol: proxyProtocol, tls: tls, handshakeTimeoutMillis: handshake, requestTimeoutMillis: request, maxRequestHeadBytes: maxHead, routes: routes, tunnel: tunnel,
                                      http2: http2, maxConnectionAgeMillis: age, keepaliveTimeoutMillis: keepalive, maxConnections: maxConnections, maxConnectionsPerClient: perClient,
                                      maxRequestsPerConnection: perConnection, fallback: fallback, fallbackTimeoutMillis: fallbackTimeout,
                                      proxyProtocolFrom: proxyFrom)
        checkProtocols(listener, node: node, path: path, routes: m["routes"], backends: backends)
        return listener
    }

    /// A listener's `http2:` block: each value range-checked against RFC 9113's limits.
    mutating func readHTTP2Settings(_ node: Node, _ path: String, into settings: inout HTTP2ServerSettings) {
        guard let m = mapping(node, path, allowed: ConfigKeys.http2) else { return }
        func number(_ key: String, _ range: ClosedRange<Int>, sized: Bool) -> Int? {
            guard let n = m[key], let s = string(n, join(path, key)) else { return nil }
            let v = sized ? ConfigLoader.parseSize(s) : Int(s)
            guard let v, range.contains(v) else {
                fail(n, join(path, key), "expected \(sized ? "a size" : "a number") from \(range.lowerBound) to \(range.upperBound), not '\(s)'")
                return nil
            }
            return v
        }
        if let v = number("max_concurrent_streams", 1...10_000, sized: false) { settings.maxConcurrentStreams = v }
        if let v = number("initial_window_size", 1024...(1 << 24), sized: true) { settings.initialWindowSize = v }
        if let v = number("connection_window_size", 65_535...Int(Int32.max), sized: true) { settings.connectionWindowSize = v }
        if let v = number("max_frame_size", 16_384...16_777_215, sized: true) { settings.maxFrameSize = v }
        if let v = number("max_header_list_size", 4096...(1 << 20), sized: true) { settings.maxHeaderListSize = v }
        if let v = number("requests_per_pass", 1...100_000, sized: false) { settings.requestsPerPass = v }
    }

    /// Ticket keys a listener may hold (a rotation needs two or three).
    static let maxTicketKeys = 16

    /// Ticket keys, 80 bytes each (16 name, 32 HMAC, 32 AES): a file of exactly 80 bytes is one
    /// raw key (nginx's format); else each non-empty line is one key in base64 (HAProxy's).
    static func ticketKeys(fromFile file: String) -> [UInt8]? {
        guard let f = fopen(file, "r") else { return nil }
        defer { fclose(f) }
        let cap = (maxTicketKeys + 1) * 120
        var raw = [UInt8](repeating: 0, count: cap)
        let n = fread(&raw, 1, raw.count, f)
        if n == 80 { return Array(raw[0..<80]) }
        guard n < cap else { return nil }
        var keys: [UInt8] = []
        for line in String(decoding: raw[0..<n], as: UTF8.self).split(whereSeparator: \.isNewline) {
            let text = String(line).trimmedSpaces()
            if text.isEmpty { continue }
            guard let decoded = Data(base64Encoded: text), decoded.count == 80 else { return nil }
            keys += decoded
        }
        return keys.isEmpty ? nil : keys
    }

    /// A route must not receive connections in a protocol its backend cannot speak: edgemux relays
    /// bytes, so the backend must speak what the client chose (DESIGN: "the client's protocol
    /// decides the backend's").
    mutating func checkProtocols(_ listener: ListenerConfig, node: Node, path: String, routes: Node?, backends: [String: BackendConfig]) {
        var offered: Set<ClientProtocol> = [.http1]
        if let tls = listener.tls {
            if tls.alpn.contains("h2") { offered.insert(.h2) }
        } else {
            offered.insert(.h2)  // prior knowledge
        }
        let routeNodes = routes.flatMap { n -> [Node]? in if case .sequence(let s) = n { return Array(s) } else { return nil } } ?? []
        // Protocols not yet taken whole by an earlier route (one that matches on ALPN alone).
        var remaining = offered
        for (i, route) in listener.routes.enumerated() where !route.passthrough {
            var receives = remaining
            if let alpn = route.match.alpn { receives = receives.intersection([alpn]) }
            // Upgrade exists in HTTP/1.1 only (HTTP/2 WebSockets use extended CONNECT instead).
            if route.match.upgrade != nil { receives = receives.intersection([.http1]) }
            var rest = route.match
            rest.alpn = nil
            if rest.isCatchAll { remaining.subtract(receives) }
            guard let backend = backends[route.backend], !brokenBackends.contains(route.backend) else { continue }
            let routeNode = i < routeNodes.count ? routeNodes[i] : node
            if route.mode == .request {
                // Request routes translate between HTTP/1.1 and HTTP/2, but gRPC needs HTTP/2 to
                // the backend (its status travels in trailers).
                if route.match.targetsGRPC, !backend.protocols.contains(.h2) {
                    fail(routeNode, "\(path).routes[\(i)]", "route '\(route.name)' carries gRPC but backend '\(backend.name)' has no HTTP/2 endpoints (gRPC needs HTTP/2 trailers): give it protocol: h2c, h2c endpoints, or protocol: tls with ALPN h2")
                    continue
                }
            }
            // A request route translates each request to what the backend speaks, except
            // HTTP/1.1 Upgrade requests (WebSocket), which are relayed as they are: a route made
            // for them needs HTTP/1.1 endpoints.
            let needed = route.mode == .request ? (route.match.upgrade != nil ? receives.intersection([.http1]) : []) : receives
            let missing = needed.subtracting(backend.protocols)
            for p in missing.sorted(by: { $0.rawValue < $1.rawValue }) {
                let fix: String
                switch p {
                case .h2: fix = "give backend '\(backend.name)' h2c endpoints (endpoints: {http1: [...], h2c: [...]}) or protocol: tls, or add match: {alpn: http/1.1} to this route and another route for h2"
                case .http1: fix = "give backend '\(backend.name)' http1 endpoints (endpoints: {http1: [...], h2c: [...]}) or protocol: tls, or add match: {alpn: h2} to this route and another route for HTTP/1.1"
                }
                let kind = route.mode == .relay ? "relay route" : "route"
                let alternative = route.mode == .relay && p == .h2 ? ", or set mode: request (edgemux then translates HTTP/2 to HTTP/1.1)" : ""
                fail(routeNode, "\(path).routes[\(i)]",
                     "\(kind) '\(route.name)' can receive \(p.rawValue) connections but backend '\(backend.name)' cannot speak \(p.rawValue): \(fix)\(alternative)")
            }
        }
    }

    mutating func readTunnel(_ node: Node, _ path: String) -> TunnelConfig? {
        guard let m = mapping(node, path, allowed: ConfigKeys.tunnel) else { return nil }
        var mode = TunnelConfig.Mode.connect
        if let n = m["mode"], let s = string(n, join(path, "mode")) {
            if let v = TunnelConfig.Mode(rawValue: s) { mode = v } else { fail(n, join(path, "mode"), "expected connect or sni, not '\(s)'") }
        }
        var rules: [Allowlist.Rule] = []
        var wroteNetworkRule = false
        if let a = m["allow"], let seq = sequence(a, join(path, "allow")) {
            for (i, rn) in seq.enumerated() {
                let rp = "\(path).allow[\(i)]"
                guard let rm = mapping(rn, rp, allowed: ConfigKeys.tunnelAllow) else { continue }
                var ports: Set<UInt16> = [6443]
                if let pn = rm["ports"], let ps = sequence(pn, join(rp, "ports")) {
                    ports = []
                    for (j, x) in ps.enumerated() {
                        if let v = x.int, v >= 1, v <= 65535 { ports.insert(UInt16(v)) } else { fail(x, "\(rp).ports[\(j)]", "expected a port from 1 to 65535") }
                    }
                }
                switch (rm["host"], rm["cidr"]) {
                case (let h?, nil):
                    if let s = string(h, join(rp, "host")) {
                        let pattern = s.lowercased()
                        if pattern.isEmpty || pattern.dropFirst(pattern.hasPrefix("*.") ? 2 : 0).contains("*") {
                            fail(h, join(rp, "host"), "expected a name or *.suffix, not '\(s)'")
                        } else {
                            rules.append(Allowlist.Rule(target: .host(pattern), ports: ports))
                        }
                    }
                case (nil, let c?):
                    wroteNetworkRule = true
                    if let s = string(c, join(rp, "cidr")) {
                        if let cidr = CIDR(s) { rules.append(Allowlist.Rule(target: .network(cidr), ports: ports)) } else {
                            fail(c, join(rp, "cidr"), "expected a network such as 10.10.0.0/16 or fd00::/8 (host bits zero), not '\(s)'")
                        }
                    }
                default:
                    fail(rn, rp, "each allow rule has either host or cidr")
                }
            }
        } else if m["allow"] == nil {
            fail(node, join(path, "allow"), "missing: a tunnel denies every destination not listed under allow")
        }
        let allow = Allowlist(rules: rules)
        var parent: Endpoint?
        if let p = m["parent"] { parent = endpoint(p, join(path, "parent")) }
        if allow.hasHostRules && !wroteNetworkRule && parent == nil {
            fail(m["allow"], join(path, "allow"), "host rules need cidr rules too: every address a name resolves to is checked against them (add the networks the names live in, or cidr: 0.0.0.0/0 to trust DNS)")
        }
        var tokens: Set<String>?
        if let a = m["auth_file"], let file = readablePath(a, join(path, "auth_file")) {
            if mode != .connect { fail(a, join(path, "auth_file"), "proxy authentication applies to connect mode only") }
            tokens = []
            for (n, line) in (readsFiles ? ConfigLoader.readFile(file) ?? "" : "-:-").split(separator: "\n").enumerated() {
                let entry = String(line).trimmedSpaces()
                if entry.isEmpty || entry.hasPrefix("#") { continue }
                guard entry.contains(":") else {
                    fail(a, join(path, "auth_file"), "\(file) line \(n + 1): expected user:password")
                    continue
                }
                tokens?.insert(Base64.encode(Array(entry.utf8)))
            }
            if tokens?.isEmpty == true { fail(a, join(path, "auth_file"), "\(file) lists no user:password") }
        }
        var parentAuth: String?
        if let a = m["parent_auth_file"], let file = readablePath(a, join(path, "parent_auth_file")) {
            let entry = (readsFiles ? ConfigLoader.readFile(file) ?? "" : "-:-").split(separator: "\n").first.map { String($0).trimmedSpaces() } ?? ""
            if entry.contains(":") { parentAuth = "Basic " + Base64.encode(Array(entry.utf8)) } else { fail(a, join(path, "parent_auth_file"), "expected one line user:password") }
        }
        var map: [TunnelConfig.Mapping] = []
        if let mn = m["map"], let seq = sequence(mn, join(path, "map")) {
            if mode != .sni { fail(mn, join(path, "map"), "the SNI map applies to sni mode only") }
            for (i, en) in seq.enumerated() {
                let ep = "\(path).map[\(i)]"
                guard let em = mapping(en, ep, allowed: ConfigKeys.tunnelMap), let sn = em["sni"], let tn = em["to"] else {
                    fail(en, ep, "each mapping has sni and to")
                    continue
                }
                guard let name = string(sn, join(ep, "sni")), let to = string(tn, join(ep, "to")) else { continue }
                guard let (host, port) = SocketAddress.splitHostPort(to) else {
                    fail(tn, join(ep, "to"), "expected host:port ({sni} for the name itself), not '\(to)'")
                    continue
                }
                map.append(TunnelConfig.Mapping(pattern: name.lowercased(), host: host.lowercased(), port: port))
            }
        }
        if mode == .sni && map.isEmpty { fail(node, join(path, "map"), "sni mode needs a map from server names to host:port") }
        let connect = m["connect_timeout"].flatMap { duration($0, join(path, "connect_timeout")) } ?? 10_000
        if connect == 0 { fail(m["connect_timeout"], join(path, "connect_timeout"), "a connect timeout of 0 would wait forever") }
        let idle = m["idle_timeout"].flatMap { duration($0, join(path, "idle_timeout")) } ?? 0
        return TunnelConfig(mode: mode, allow: allow, basicTokens: tokens, parent: parent, parentAuthorization: parentAuth, map: map, connectTimeoutMillis: connect, idleTimeoutMillis: idle)
    }

    mutating func readListenerTLS(_ node: Node, _ path: String) -> ListenerTLSConfig? {
        guard let m = mapping(node, path, allowed: ConfigKeys.listenerTLS) else { return nil }
        var certs: [CertificatePair] = []
        if let c = m["certificates"], let seq = sequence(c, join(path, "certificates")) {
            for (i, cn) in seq.enumerated() {
                let p = "\(path).certificates[\(i)]"
                guard let cm = mapping(cn, p, allowed: ConfigKeys.certificate) else { continue }
                guard let certNode = cm["cert"], let keyNode = cm["key"] else {
                    fail(cn, p, "each certificate needs 'cert' and 'key'")
                    continue
                }
                let cert = readablePath(certNode, join(p, "cert"))
                let key = readablePath(keyNode, join(p, "key"))
                var ocsp: String?
                if let n = cm["ocsp_response"] {
                    guard let path = readablePath(n, join(p, "ocsp_response")) else { continue }
                    ocsp = path
                }
                if let cert, let key {
                    if !readsFiles {
                        certs.append(CertificatePair(cert: cert, key: key, ocspResponse: ocsp))
                    } else if let problem = TLSServerContext.problem(cert: cert, key: key) {
                        fail(keyNode, p, problem)
                    } else if let ocsp, let problem = TLSServerContext.problem(cert: cert, key: key, ocspResponse: ocsp) {
                        fail(cm["ocsp_response"]!, join(p, "ocsp_response"), problem)
                    } else {
                        certs.append(CertificatePair(cert: cert, key: key, ocspResponse: ocsp))
                    }
                }
            }
            if seq.isEmpty { fail(c, join(path, "certificates"), "list at least one certificate") }
        } else if m["certificates"] == nil {
            fail(node, join(path, "certificates"), "missing: at least one {cert, key}")
        }
        var alpn = ["h2", "http/1.1"]
        if let a = m["alpn"], let seq = sequence(a, join(path, "alpn")) {
            alpn = []
            for (i, pn) in seq.enumerated() {
                guard let s = string(pn, "\(path).alpn[\(i)]") else { continue }
                if s != "h2" && s != "http/1.1" {
                    fail(pn, "\(path).alpn[\(i)]", "expected h2 or http/1.1, not '\(s)'")
                } else {
                    alpn.append(s)
                }
            }
            if seq.isEmpty { fail(a, join(path, "alpn"), "list at least one of h2, http/1.1") }
        }
        var minVersion = "1.2"
        if let v = m["min_version"], let s = string(v, join(path, "min_version")) {
            if s == "1.2" || s == "1.3" { minVersion = s } else { fail(v, join(path, "min_version"), "expected \"1.2\" or \"1.3\"") }
        }
        var config = ListenerTLSConfig(certificates: certs, alpn: alpn, minVersion: minVersion)
        if let n = m["client_ca"], let ca = readablePath(n, join(path, "client_ca")) {
            if readsFiles, let problem = TLSServerContext.caProblem(ca) { fail(n, join(path, "client_ca"), problem) } else { config.clientCA = ca }
            config.clientAuth = .required
        }
        if let n = m["client_auth"], let s = string(n, join(path, "client_auth")) {
            if let a = ClientAuth(rawValue: s) {
                config.clientAuth = a
                if a != .none, m["client_ca"] == nil { fail(n, join(path, "client_auth"), "client_auth \(s) needs client_ca: the CA that signs client certificates") }
            } else {
                fail(n, join(path, "client_auth"), "expected none, optional or required, not '\(s)'")
            }
        }
        if let n = m["client_subject_header"], let s = string(n, join(path, "client_subject_header")) {
            if !s.isEmpty, s.utf8.allSatisfy({ HTTP1HeadParser.tokenChars[Int($0)] }) { config.clientSubjectHeader = s.lowercased() } else { fail(n, join(path, "client_subject_header"), "expected a header name, not '\(s)'") }
        }
        for (key, set) in [("ciphers", \TLSPolicy.ciphers), ("ciphersuites", \TLSPolicy.ciphersuites), ("groups", \TLSPolicy.groups)] as [(String, WritableKeyPath<TLSPolicy, String>)] {
            guard let n = m[key], let list = string(n, join(path, key)) else { continue }
            var policy = config.policy
            policy[keyPath: set] = list
            if let problem = TLSServerContext.policyProblem(policy) {
                fail(n, join(path, key), problem)
            } else {
                config.policy = policy
            }
        }
        if let kn = m["ticket_keys"] {
            // One file or a list of them; a file holds one raw key or base64 keys, one a line.
            var items: [(Node, String)] = []
            if case .scalar = kn {
                items = [(kn, join(path, "ticket_keys"))]
            } else if let seq = sequence(kn, join(path, "ticket_keys")) {
                items = seq.enumerated().map { ($1, "\(path).ticket_keys[\($0)]") }
                if seq.isEmpty { fail(kn, join(path, "ticket_keys"), "list at least one key file, or leave the key out for random keys") }
            }
            var keys: [UInt8] = []
            for (node, itemPath) in items {
                guard let file = readablePath(node, itemPath) else { continue }
                config.ticketKeyPaths.append(file)
                guard readsFiles else { continue }
                if let found = Self.ticketKeys(fromFile: file) {
                    keys += found
                } else {
                    fail(node, itemPath, "\(file) must hold 80 bytes raw, or base64 lines of 80 bytes each (make one with: openssl rand 80 > \(file))")
                }
            }
            if keys.count > Self.maxTicketKeys * 80 {
                fail(kn, join(path, "ticket_keys"), "\(keys.count / 80) keys: at most \(Self.maxTicketKeys) (each one is tried on every resumption)")
            } else if !keys.isEmpty {
                config.ticketKeys = keys
            }
        }
        return config
    }

    mutating func readRoute(_ node: Node, _ path: String, backends: [String: BackendConfig], backendNames: Set<String>) -> RouteConfig? {
        guard let m = mapping(node, path, allowed: ConfigKeys.route) else { return nil }
        let passthrough = m["passthrough"].flatMap { bool($0, join(path, "passthrough")) } ?? false
        let name = m["name"].flatMap { string($0, join(path, "name")) } ?? path
        var match = RouteMatch()
        if let mn = m["match"], let mm = mapping(mn, join(path, "match"), allowed: ConfigKeys.match) {
            let mp = join(path, "match")
            if let a = mm["alpn"], let s = string(a, join(mp, "alpn")) {
                if passthrough {
                    // RFC 7301: a name is 1 to 255 bytes.
                    if s.utf8.isEmpty || s.utf8.count > 255 { fail(a, join(mp, "alpn"), "a protocol name is 1 to 255 bytes") } else { match.offeredALPN = s }
                } else if let p = ClientProtocol(rawValue: s) {
                    match.alpn = p
                } else {
                    fail(a, join(mp, "alpn"), "expected h2 or http/1.1, not '\(s)' (edgemux speaks these two; a passthrough route may match any name the ClientHello offers)")
                }
            }
            match.sni = mm["sni"].flatMap { string($0, join(mp, "sni")) }?.lowercased()
            match.contentType = mm["content_type"].flatMap { string($0, join(mp, "content_type")) }
            if let p = mm["path_prefix"], let s = string(p, join(mp, "path_prefix")) {
                if !s.hasPrefix("/") { fail(p, join(mp, "path_prefix"), "a path prefix starts with /") }
                match.pathPrefix = s
            }
            match.host = mm["host"].flatMap { string($0, join(mp, "host")) }?.lowercased()
            match.method = mm["method"].flatMap { string($0, join(mp, "method")) }?.uppercased()
            match.upgrade = mm["upgrade"].flatMap { string($0, join(mp, "upgrade")) }?.lowercased()
            if passthrough {
                // Chosen before the handshake: only what the ClientHello carries can decide.
                for key in ["content_type", "path_prefix", "host", "method", "upgrade"] where mm[key] != nil {
                    fail(mm[key], join(mp, key), "a passthrough route is chosen from the TLS ClientHello, before anything is decrypted: '\(key)' is inside the encrypted stream; match on sni (and alpn) only")
                }
            }
        }
        var backendName = ""
        if let b = m["backend"], let s = string(b, join(path, "backend")) {
            backendName = s
            if !backendNames.contains(s) {
                let known = backendNames.sorted().joined(separator: ", ")
                fail(b, join(path, "backend"), "unknown backend '\(s)'; defined backends: \(known.isEmpty ? "none" : known)")
            }
        } else if m["backend"] == nil {
            fail(node, join(path, "backend"), "missing: the backend this route sends to")
        }
        if let backend = backends[backendName] {
            if passthrough, backend.proto != .tcp {
                fail(m["backend"], join(path, "backend"), "a passthrough route sends the raw TLS connection on: backend '\(backendName)' must be protocol: tcp")
            } else if !passthrough, backend.proto == .tcp {
                fail(m["backend"], join(path, "backend"), "backend '\(backendName)' is protocol: tcp (raw bytes): only passthrough routes and a listener's fallback send to it; add passthrough: true")
            }
        }
        if passthrough {
            for key in ["mode", "response_timeout", "forwarded", "via"] where m[key] != nil {
                fail(m[key], join(path, key), "\(key) applies to routes edgemux terminates; a passthrough route relays the TLS bytes as they are")
            }
        }
        // Passthrough connections are tunnels (kubectl watch, exec): no idle timeout by default.
        let defaultIdle = backends[backendName]?.idleTimeoutMillis ?? (match.targetsGRPC || passthrough ? 0 : ConfigLoader.defaultIdleTimeout)
        let idle = m["idle_timeout"].flatMap { duration($0, join(path, "idle_timeout")) } ?? defaultIdle
        var mode: RouteMode?
        if let n = m["mode"], let s = string(n, join(path, "mode")) {
            mode = RouteMode(rawValue: s)
            if mode == nil { fail(n, join(path, "mode"), "expected relay or request, not '\(s)'") }
        }
        let responseTimeout = m["response_timeout"].flatMap { duration($0, join(path, "response_timeout")) }
        var forwarded = ForwardedMode.replace
        if let n = m["forwarded"], let s = string(n, join(path, "forwarded")) {
            if let f = ForwardedMode(rawValue: s) { forwarded = f } else { fail(n, join(path, "forwarded"), "expected append, replace or off, not '\(s)'") }
        }
        let via = m["via"].flatMap { bool($0, join(path, "via")) } ?? false
        if mode == .relay || (mode == nil && match.targetsGRPC) {
            // (response_timeout applies to relays too: the wait for the backend's first byte.)
            for key in ["forwarded", "via"] where m[key] != nil {
                fail(m[key], join(path, key), "\(key) applies to request mode; this route relays (set mode: request)")
            }
        }
        return RouteConfig(name: name, match: match, backend: backendName, idleTimeoutMillis: idle, mode: passthrough ? .relay : mode, responseTimeoutMillis: responseTimeout, forwarded: forwarded, via: via,
                           passthrough: passthrough)
    }

    mutating func readBackend(_ node: Node, name: String) -> BackendConfig? {
        let path = "backends.\(name)"
        guard let m = mapping(node, path, allowed: ConfigKeys.backend) else { return nil }
        var proto: BackendProtocol?
        if let p = m["protocol"], let s = string(p, join(path, "protocol")) {
            proto = BackendProtocol(rawValue: s)
            if proto == nil { fail(p, join(path, "protocol"), "expected http1, h2c, tls or tcp, not '\(s)'") }
        }
        var proxyOut = ProxyProtocolOut.none
        if let n = m["proxy_protocol"], let s = string(n, join(path, "proxy_protocol")) {
            if let v = ProxyProtocolOut(rawValue: s) { proxyOut = v } else { fail(n, join(path, "proxy_protocol"), "expected none, v1 or v2, not '\(s)'") }
        }
        var endpoints: [ClientProtocol: [Endpoint]] = [:]
        if let e = m["endpoints"] {
            switch e {
            case .sequence(let seq):
                let list = seq.enumerated().compactMap { endpoint($0.element, "\(path).endpoints[\($0.offset)]") }
                if seq.isEmpty { fail(e, join(path, "endpoints"), "list at least one endpoint") }
                switch proto ?? .http1 {
                case .http1: endpoints[.http1] = list
                case .h2c: endpoints[.h2] = list
                case .tls:
                    endpoints[.http1] = list
                    endpoints[.h2] = list
                case .tcp:
                    // (Kept under http1: the connection machinery picks endpoints by protocol.)
                    endpoints[.http1] = list
                }
            case .mapping:
                if proto == .tls {
                    fail(e, join(path, "endpoints"), "a tls backend takes one list of endpoints (ALPN picks the protocol)")
                }
                if proto == .tcp {
                    fail(e, join(path, "endpoints"), "a tcp backend takes one list of endpoints (bytes pass untouched)")
                }
                if let em = mapping(e, join(path, "endpoints"), allowed: ConfigKeys.endpointsByProtocol) {
                    for (key, cp) in [("http1", ClientProtocol.http1), ("h2c", ClientProtocol.h2)] {
                        guard let ln = em[key], let seq = sequence(ln, "\(path).endpoints.\(key)") else { continue }
                        endpoints[cp] = seq.enumerated().compactMap { endpoint($0.element, "\(path).endpoints.\(key)[\($0.offset)]") }
                    }
                }
            default:
                fail(e, join(path, "endpoints"), "expected a list of host:port, or {http1: [...], h2c: [...]}")
            }
        } else {
            fail(node, join(path, "endpoints"), "missing: the addresses of this backend")
        }
        var tls: BackendTLSConfig?
        if let t = m["tls"] {
            if proto != .tls { fail(t, join(path, "tls"), "only a backend with protocol: tls takes tls settings") }
            if let tm = mapping(t, join(path, "tls"), allowed: ConfigKeys.backendTLS) {
                let tp = join(path, "tls")
                var ca = tm["ca"].flatMap { readablePath($0, join(tp, "ca")) }
                if readsFiles, let path = ca, let problem = TLSServerContext.caProblem(path) {
                    fail(tm["ca"], join(tp, "ca"), problem)
                    ca = nil
                }
                let sn = tm["server_name"].flatMap { string($0, join(tp, "server_name")) }
                var client: CertificatePair?
                if tm["cert"] != nil || tm["key"] != nil {
                    if let c = tm["cert"], let k = tm["key"] {
                        if let cert = readablePath(c, join(tp, "cert")), let key = readablePath(k, join(tp, "key")) {
                            if readsFiles, let problem = TLSServerContext.problem(cert: cert, key: key) {
                                fail(k, tp, problem)
                            } else {
                                client = CertificatePair(cert: cert, key: key)
                            }
                        }
                    } else {
                        fail(t, tp, "a client certificate needs both 'cert' and 'key'")
                    }
                }
                let verify = tm["verify"].flatMap { bool($0, join(tp, "verify")) } ?? true
                tls = BackendTLSConfig(caPath: ca, serverName: sn, clientCertificate: client, verify: verify)
                if let an = tm["alpn"], let seq = sequence(an, join(tp, "alpn")) {
                    var list: [ClientProtocol] = []
                    for (i, pn) in seq.enumerated() {
                        guard let v = string(pn, "\(tp).alpn[\(i)]") else { continue }
                        if let p = ClientProtocol(rawValue: v) { list.append(p) } else { fail(pn, "\(tp).alpn[\(i)]", "expected h2 or http/1.1, not '\(v)'") }
                    }
                    if seq.isEmpty { fail(an, join(tp, "alpn"), "list at least one of h2, http/1.1") }
                    tls?.alpn = list
                }
            }
        } else if proto == .tls {
            tls = BackendTLSConfig(caPath: nil, serverName: nil, clientCertificate: nil, verify: true)
        }
        let connect = m["connect_timeout"].flatMap { duration($0, join(path, "connect_timeout")) } ?? ConfigLoader.defaultConnectTimeout
        if connect == 0 { fail(m["connect_timeout"], join(path, "connect_timeout"), "a connect timeout of 0 would wait forever on a dead endpoint") }
        let idle = m["idle_timeout"].flatMap { duration($0, join(path, "idle_timeout")) }
        var pool = BackendPoolConfig()
        if let p = m["pool"], let pm = mapping(p, join(path, "pool"), allowed: ConfigKeys.pool) {
            let pp = join(path, "pool")
            if let n = pm["max_idle"], let s = string(n, join(pp, "max_idle")) {
                if let v = Int(s), v >= 0, v <= 100_000 { pool.maxIdle = v } else { fail(n, join(pp, "max_idle"), "expected a count from 0 (no reuse) to 100000, not '\(s)'") }
            }
            if let t = pm["idle_timeout"], let ms = duration(t, join(pp, "idle_timeout")) {
                if ms == 0 { fail(t, join(pp, "idle_timeout"), "an idle connection must time out: give a duration, or max_idle: 0 to turn reuse off") } else { pool.idleTimeoutMillis = ms }
            }
        }
        if proto == .tls, let offered = tls?.alpn {
            for p in ClientProtocol.allCases where !offered.contains(p) { endpoints[p] = nil }
        }
        var balance = BalancePolicy.roundRobin
        if let n = m["balance"], let s = string(n, join(path, "balance")) {
            if let b = BalancePolicy(rawValue: s) { balance = b } else { fail(n, join(path, "balance"), "expected round_robin or least_request, not '\(s)'") }
        }
        return BackendConfig(name: name, proto: proto ?? (endpoints[.h2] != nil && endpoints[.http1] == nil ? .h2c : .http1), endpoints: endpoints, tls: tls, connectTimeoutMillis: connect, idleTimeoutMillis: idle, pool: pool, balance: balance,
                             proxyProtocol: proxyOut)
    }
}

/// Levenshtein distance, for "did you mean" hints on unknown keys.
func editDistance(_ a: String, _ b: String) -> Int {
    let a = Array(a), b = Array(b)
    if a.isEmpty { return b.count }
    if b.isEmpty { return a.count }
    var prev = Array(0...b.count)
    var cur = [Int](repeating: 0, count: b.count + 1)
    for i in 1...a.count {
        cur[0] = i
        for j in 1...b.count {
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
        }
        swap(&prev, &cur)
    }
    return prev[b.count]
}
