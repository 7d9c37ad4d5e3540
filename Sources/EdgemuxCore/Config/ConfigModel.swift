/// The whole edgemux configuration: immutable, validated, swapped whole on reload.
public struct EdgemuxConfig: Sendable {
    /// Event-loop threads (`auto` in the file: one per core).
    public let workers: Int
    /// The admin listener (`/metrics`, `/healthz`, `/readyz`); nil: none.
    public let admin: AdminConfig?
    /// How long SIGTERM waits for open connections before closing them.
    public let drainTimeoutMillis: Int64
    /// The listeners, in file order.
    public let listeners: [ListenerConfig]
    /// The backends by name.
    public let backends: [String: BackendConfig]
    /// Where the access log goes: one JSON line per connection when it closes; nil: off.
    public let accessLog: String?
    /// Client connections the process holds at most (0: sized from the descriptor limit).
    public var maxConnections = 0
    /// TLS handshakes in progress at most (0: the default, 2048); past it listeners wait.
    public var maxHandshakes = 0

    public init(workers: Int, admin: AdminConfig?, drainTimeoutMillis: Int64, listeners: [ListenerConfig], backends: [String: BackendConfig], accessLog: String? = nil) {
        self.accessLog = accessLog
        self.workers = workers
        self.admin = admin
        self.drainTimeoutMillis = drainTimeoutMillis
        self.listeners = listeners
        self.backends = backends
    }
}

/// The admin listener.
public struct AdminConfig: Sendable {
    /// Where it listens (loopback by default).
    public let address: SocketAddress
}

/// One listening address and what happens to the connections it accepts. A class, so that each
/// connection holds a reference to its listener's settings rather than a copy of them.
public final class ListenerConfig: Sendable {
    /// A name for logs and metrics.
    public let name: String
    /// The address every worker binds (SO_REUSEPORT).
    public let address: SocketAddress
    /// Expect a PROXY protocol v1 or v2 header before anything else.
    public let proxyProtocol: Bool
    /// The networks whose connections carry a PROXY header (the load balancers'); a connection
    /// from elsewhere is taken as it comes, and one that sends a PROXY header is refused: only a
    /// trusted balancer may say who the client is. Empty: every connection must carry one.
    public let proxyProtocolFrom: [CIDR]
    /// TLS termination; nil: plaintext (HTTP/1.1, or HTTP/2 with prior knowledge).
    public let tls: ListenerTLSConfig?
    /// How long a client may take to finish its TLS handshake (and PROXY header).
    public let handshakeTimeoutMillis: Int64
    /// How long a client may take to send its first request head after the handshake.
    public let requestTimeoutMillis: Int64
    /// The largest first request head (HTTP/1.1) or HTTP/2 connection start read for routing.
    public let maxRequestHeadBytes: Int
    /// The routes, first match wins (ingress listeners).
    public let routes: [RouteConfig]
    /// An egress tunnel instead of routes: CONNECT or SNI passthrough, TLS never terminated.
    public let tunnel: TunnelConfig?
    /// What edgemux's own HTTP/2 server announces and enforces (request mode).
    public let http2: HTTP2ServerSettings
    /// Close a request-mode connection gracefully (GOAWAY, or `Connection: close`) once it is
    /// this old, plus up to 10 % jitter, so long-lived clients rebalance after a scale-out; 0: never.
    public let maxConnectionAgeMillis: Int64
    /// How long an idle request-mode connection (no request open) is kept.
    public let keepaliveTimeoutMillis: Int64
    /// Connections this listener holds at most (0: only the process limit); at the limit it
    /// stops accepting and new connections wait in the kernel's backlog.
    public let maxConnections: Int
    /// Connections one client address may hold on this listener (0: no limit); the one over it
    /// is closed at once.
    public let maxConnectionsPerClient: Int
    /// Request mode: requests one connection may carry (0: no limit); the last gets
    /// `Connection: close` (HTTP/1.1), or the connection a graceful GOAWAY (HTTP/2).
    public let maxRequestsPerConnection: Int
    /// A `protocol: tcp` backend that takes, raw, a connection whose first bytes are not a TLS
    /// handshake (SSH on 443, a client with its own framing); nil: such a connection goes the
    /// TLS way (plain HTTP gets its 400, garbage is closed).
    public let fallback: String?
    /// With a fallback: a client that has sent nothing for this long goes to the fallback (the
    /// server speaks first: ssh-keyscan, a port scanner's banner grab; HAProxy's inspect-delay,
    /// sslh's on_timeout); 0: such a client waits out handshake_timeout and is closed.
    public let fallbackTimeoutMillis: Int64
    /// Some route passes TLS through, or a fallback is set: the ClientHello is looked at before
    /// the handshake.
    /// Must a connection from `peer` start with a PROXY header?
    public func expectsProxyHeader(from peer: SocketAddress) -> Bool {
        proxyProtocol && (proxyProtocolFrom.isEmpty || proxyProtocolFrom.contains { $0.contains(peer) })
    }
    public var peeksClientHello: Bool { fallback != nil || routes.contains { $0.passthrough } }

    public init(name: String, address: SocketAddress, proxyProtocol: Bool, tls: ListenerTLSConfig?, handshakeTimeoutMillis: Int64, requestTimeoutMillis: Int64, maxRequestHeadBytes: Int, routes: [RouteConfig], tunnel: TunnelConfig?,
                http2: HTTP2ServerSettings = HTTP2ServerSettings(), maxConnectionAgeMillis: Int64 = 0, keepaliveTimeoutMillis: Int64 = 75_000,
                maxConnections: Int = 0, maxConnectionsPerClient: Int = 0, maxRequestsPerConnection: Int = 0, fallback: String? = nil, fallbackTimeoutMillis: Int64 = 0, proxyProtocolFrom: [CIDR] = []) {
        self.proxyProtocolFrom = proxyProtocolFrom
        self.fallback = fallback
        self.fallbackTimeoutMillis = fallbackTimeoutMillis
        self.maxRequestsPerConnection = maxRequestsPerConnection
        self.maxConnections = maxConnections
        self.maxConnectionsPerClient = maxConnectionsPerClient
        self.http2 = http2
        self.maxConnectionAgeMillis = maxConnectionAgeMillis
        self.keepaliveTimeoutMillis = keepaliveTimeoutMillis
        self.name = name
        self.address = address
        self.proxyProtocol = proxyProtocol
        self.tls = tls
        self.handshakeTimeoutMillis = handshakeTimeoutMillis
        self.requestTimeoutMillis = requestTimeoutMillis
        self.maxRequestHeadBytes = maxRequestHeadBytes
        self.routes = routes
        self.tunnel = tunnel
    }
}

/// The SETTINGS of edgemux's HTTP/2 server on a listener (request mode), and the limits it
/// enforces beyond them.
public struct HTTP2ServerSettings: Sendable, Equatable {
    /// SETTINGS_MAX_CONCURRENT_STREAMS. A stream counts until its backend side has closed too, so
    /// a client that resets streams cannot open more than this many at the backends.
    public var maxConcurrentStreams = 256
    /// SETTINGS_INITIAL_WINDOW_SIZE: what a client may send on one stream before the backend
    /// has taken it, and so the bound of one stream's request buffer.
    public var initialWindowSize = 65_535
    /// The connection's receive window. Bytes are acknowledged on this level as soon as they land
    /// in a stream's buffer, so it never lets one slow stream stall the others.
    public var connectionWindowSize = 16 << 20
    /// SETTINGS_MAX_FRAME_SIZE.
    public var maxFrameSize = 16_384
    /// SETTINGS_MAX_HEADER_LIST_SIZE (also the bound of one request's header block).
    public var maxHeaderListSize = 64 * 1024
    /// RST_STREAMs a client may send in a burst, then per second (CVE-2023-44487, rapid reset).
    public var resetBurst = 1000
    public var resetRate = 33
    /// CONTINUATION frames after one HEADERS (a flood of them is CVE-2024-27316's shape).
    public var maxContinuations = 8
    /// Requests accepted from one connection in one event-loop pass; the rest wait for the next.
    public var requestsPerPass = 128

    public init() {}
}

/// How a route carries what it matches.
public enum RouteMode: String, Sendable {
    /// The connection's first request decides: the connection is pinned to this route's backend
    /// and its bytes are relayed (gRPC agent streams: no per-frame work, 16 KiB per agent).
    case relay
    /// Each request is handled on its own: edgemux is the HTTP/1.1 or HTTP/2 server and the
    /// backend's client, translating between the two.
    case request
}

/// Which forwarding fields edgemux sets on requests it passes on.
public enum ForwardedMode: String, Sendable {
    /// Add the client to what the request already carries (behind a trusted balancer).
    case append
    /// Drop what the client sent and set edgemux's own view (the default at the edge).
    case replace
    /// Pass the request's fields on untouched.
    case off
}

/// An egress tunnel listener (the platform's outbound calls to cluster API servers).
public struct TunnelConfig: Sendable {
    public enum Mode: String, Sendable {
        /// HTTP/1.1 CONNECT host:port (HTTPS_PROXY, kubeconfig proxy-url).
        case connect
        /// TLS ClientHello passthrough, the destination chosen by SNI through `map`.
        case sni
    }

    /// One SNI mapping: an exact name or `*.suffix`, to `host:port` (`{sni}` stands for the name).
    public struct Mapping: Sendable {
        public let pattern: String
        public let host: String
        public let port: UInt16
    }

    public let mode: Mode
    /// Where tunnels may go; everything else is refused.
    public let allow: Allowlist
    /// Accepted `Proxy-Authorization: Basic` tokens (nil: no authentication).
    public let basicTokens: Set<String>?
    /// An upstream CONNECT proxy to reach destinations through.
    public let parent: Endpoint?
    /// `Proxy-Authorization` value for the parent.
    public let parentAuthorization: String?
    /// SNI mode: name → destination.
    public let map: [Mapping]
    /// How long a connect to a destination (or the parent's answer) may take.
    public let connectTimeoutMillis: Int64
    /// Close a tunnel idle this long both ways; 0: never (the default: kubectl watch, exec).
    public let idleTimeoutMillis: Int64

    /// The destination for an SNI name, if mapped.
    public func destination(forSNI name: String) -> (host: String, port: UInt16)? {
        guard let m = map.first(where: { Router.nameMatches(pattern: $0.pattern, name: name) }) else { return nil }
        return (m.host == "{sni}" ? name : m.host, m.port)
    }
}

/// TLS termination on a listener.
public struct ListenerTLSConfig: Sendable {
    /// Certificates chosen by SNI; the first is the default.
    public let certificates: [CertificatePair]
    /// ALPN protocols offered, in preference order.
    public let alpn: [String]
    /// "1.2" or "1.3".
    public let minVersion: String
    /// Session ticket keys from files, 80 bytes each, one after the other: the first encrypts,
    /// all decrypt, so replicas that read the same files resume each other's sessions while a
    /// key is rotated (add it second everywhere, then first, then drop the old one); nil:
    /// random keys per process.
    public var ticketKeys: [UInt8]? = nil
    /// Where `ticketKeys` came from, in order (watched with `--watch`).
    public var ticketKeyPaths: [String] = []
    /// Cipher choice and key exchange groups.
    public var policy = TLSPolicy()
    /// Client certificates: the CA that signs them (PEM), nil: not asked for.
    public var clientCA: String? = nil
    public var clientAuth: ClientAuth = .none
    /// Request mode: the header that carries a verified client certificate's subject (RFC 2253)
    /// to the backend; the client's own fields of that name are dropped.
    public var clientSubjectHeader = "x-client-cert-subject"
}

/// Whether a listener asks for client certificates, and whether it requires one.
public enum ClientAuth: String, Sendable {
    case none
    case optional
    case required
}

/// Which ciphers and groups a listener offers, as OpenSSL lists. The defaults are Mozilla's
/// "intermediate" profile without finite-field DH: TLS 1.2 only with ECDHE and an AEAD cipher
/// (AES-GCM, ChaCha20-Poly1305; no CBC, RC4, 3DES, NULL, export or anonymous suites), TLS 1.3's
/// three suites, X25519 then P-256; the server's order wins.
public struct TLSPolicy: Sendable, Equatable {
    public static let defaultCiphers = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
    public static let defaultCiphersuites = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
    public static let defaultGroups = "X25519:P-256"
    /// TLS 1.2 cipher list (`ciphers`).
    public var ciphers = TLSPolicy.defaultCiphers
    /// TLS 1.3 cipher suites (`ciphersuites`).
    public var ciphersuites = TLSPolicy.defaultCiphersuites
    /// Key exchange groups (`groups`).
    public var groups = TLSPolicy.defaultGroups

    public init() {}
}

/// One routing rule.
public final class RouteConfig: Sendable {
    public let name: String
    public let match: RouteMatch
    /// The backend's name.
    public let backend: String
    /// Close a relayed connection (in request mode: a stream) idle this long in both directions; 0: never.
    public let idleTimeoutMillis: Int64
    /// Relay the connection or handle each request (default: relay for gRPC matches, else request).
    public let mode: RouteMode
    /// Request mode: how long the backend may take to send the response head (504, or gRPC
    /// DEADLINE_EXCEEDED); 0: no limit (the default for gRPC routes: a stream may answer late).
    public let responseTimeoutMillis: Int64
    /// Request mode: `X-Forwarded-For`/`-Proto`/`-Host` and `Forwarded`.
    public let forwarded: ForwardedMode
    /// Request mode: add `Via: 2 edgemux` (RFC 9110 section 7.6.3).
    public let via: Bool

    /// `mode` was not given: the default rule chose it.
    public let modeWasDefault: Bool
    /// TLS passthrough: chosen from the ClientHello before any handshake (on `sni` and `alpn`,
    /// which the ClientHello carries), the raw connection goes to a `protocol: tcp` backend.
    public let passthrough: Bool

    public init(name: String, match: RouteMatch, backend: String, idleTimeoutMillis: Int64, mode: RouteMode? = nil, responseTimeoutMillis: Int64? = nil, forwarded: ForwardedMode = .replace, via: Bool = false,
                passthrough: Bool = false) {
        self.passthrough = passthrough
        self.modeWasDefault = mode == nil
        self.name = name
        self.match = match
        self.backend = backend
        self.idleTimeoutMillis = idleTimeoutMillis
        self.mode = mode ?? (match.targetsGRPC ? .relay : .request)
        self.responseTimeoutMillis = responseTimeoutMillis ?? (match.targetsGRPC ? 0 : 60_000)
        self.forwarded = forwarded
        self.via = via
    }
}

/// The conditions of a route; all given ones must hold. An empty match is a catch-all.
public struct RouteMatch: Sendable, Equatable {
    /// The connection's protocol (ALPN result, or what the client spoke without ALPN).
    public var alpn: ClientProtocol?
    /// Passthrough routes: a protocol name the ClientHello must offer. Any name, not only the two
    /// edgemux speaks: the TLS server behind decides (`acme-tls/1` for TLS-ALPN-01 challenges).
    public var offeredALPN: String?
    /// The TLS server name, exact or `*.suffix`.
    public var sni: String?
    /// A prefix of the first request's `content-type`.
    public var contentType: String?
    /// A prefix of the first request's path.
    public var pathPrefix: String?
    /// The first request's Host / :authority, exact or `*.suffix`.
    public var host: String?
    /// The first request's method.
    public var method: String?
    /// The first request's Upgrade header (HTTP/1.1), e.g. `websocket`.
    public var upgrade: String?

    public init() {}

    public var isCatchAll: Bool { self == RouteMatch() }

    /// Does this match look for gRPC (so its idle timeout defaults to off)?
    var targetsGRPC: Bool { contentType?.hasPrefix("application/grpc") ?? false }
}

/// How edgemux speaks to a backend.
public enum BackendProtocol: String, Sendable {
    /// HTTP/1.1 in cleartext.
    case http1
    /// HTTP/2 in cleartext with prior knowledge.
    case h2c
    /// TLS; ALPN passes the client's protocol on.
    case tls
    /// Raw TCP: passthrough routes and a listener's fallback send connections here untouched.
    case tcp
}

/// The PROXY protocol header edgemux sends first to a backend, so that it sees the client's
/// address (HAProxy's send-proxy / send-proxy-v2, nginx's proxy_protocol on, Envoy's upstream
/// proxy_protocol transport socket).
public enum ProxyProtocolOut: String, Sendable {
    case none
    case v1
    case v2
}

/// One backend: endpoints per client protocol.
public final class BackendConfig: Sendable {
    public let name: String
    public let proto: BackendProtocol
    /// The endpoints that serve each client protocol (round robin).
    public let endpoints: [ClientProtocol: [Endpoint]]
    /// TLS towards the backend (`protocol: tls`).
    public let tls: BackendTLSConfig?
    /// How long one connect (and backend TLS handshake) may take before the next endpoint is tried.
    public let connectTimeoutMillis: Int64
    /// Default idle timeout of routes to this backend (nil: the route's own default).
    public let idleTimeoutMillis: Int64?
    /// Idle HTTP/1.1 connections kept for reuse.
    public let pool: BackendPoolConfig
    /// Request mode: how the endpoint of each request is chosen.
    public let balance: BalancePolicy
    /// The PROXY header sent first on every connection to this backend (off by default), so
    /// that it sees the client's address. A connection then speaks for one client only: kept
    /// HTTP/1.1 connections and HTTP/2 sessions are reused only by requests of that client
    /// connection (HAProxy's private connections), never shared with other clients.
    public let proxyProtocol: ProxyProtocolOut

    /// What goes first on a new connection to this backend for `client` (empty: nothing).
    func proxyHeader(for client: ProxiedClient?) -> [UInt8] {
        guard proxyProtocol != .none, let client else { return [] }
        return ProxyProtocolWriter.header(proxyProtocol, for: client)
    }

    /// The client protocols this backend can carry.
    /// The protocols some endpoint speaks (kept: request mode asks for every request).
    public let protocols: Set<ClientProtocol>

    /// The protocol request mode speaks to this backend for a client in `client`'s protocol
    /// (`grpc`: HTTP/2 is required for trailers): the client's own when the backend serves it
    /// (no translation), else the other one; nil when the backend can serve none that fits.
    public func requestProtocol(for client: ClientProtocol, grpc: Bool) -> ClientProtocol? {
        let have = protocols
        if grpc { return have.contains(.h2) ? .h2 : nil }
        if have.contains(client) { return client }
        return have.first
    }

    public init(name: String, proto: BackendProtocol, endpoints: [ClientProtocol: [Endpoint]], tls: BackendTLSConfig?, connectTimeoutMillis: Int64, idleTimeoutMillis: Int64?, pool: BackendPoolConfig = BackendPoolConfig(), balance: BalancePolicy = .roundRobin,
                proxyProtocol: ProxyProtocolOut = .none) {
        self.proxyProtocol = proxyProtocol
        self.name = name
        self.balance = balance
        self.pool = pool
        self.proto = proto
        self.endpoints = endpoints
        self.protocols = Set(endpoints.filter { !$0.value.isEmpty }.keys)
        self.tls = tls
        self.connectTimeoutMillis = connectTimeoutMillis
        self.idleTimeoutMillis = idleTimeoutMillis
    }
}

/// How request mode picks an endpoint for each request.
public enum BalancePolicy: String, Sendable {
    /// In turn (passive health skips endpoints that failed lately).
    case roundRobin = "round_robin"
    /// The one with the fewest requests open from this worker (two different ones picked at
    /// random, the better taken: the "power of two choices", as Envoy's LEAST_REQUEST).
    case leastRequest = "least_request"
}

/// The backend connections an HTTP/1.1 exchange leaves open, kept per worker and endpoint for
/// the next one (nginx's upstream `keepalive`, HAProxy's idle server connections).
public struct BackendPoolConfig: Sendable, Equatable {
    /// Idle connections kept per endpoint and worker; 0 turns reuse off. Request mode needs one
    /// backend connection per concurrent request (640 for 64 HTTP/2 clients with 10 streams
    /// each): a smaller cap closes and reopens connections under load. HAProxy keeps idle server
    /// connections without a cap by default; the idle timeout returns them.
    public var maxIdle: Int = 1024
    /// How long an idle connection is kept. Shorter than the backend's own keep-alive timeout
    /// avoids most races with its close (a request that meets one is retried on a new connection).
    public var idleTimeoutMillis: Int64 = 15_000

    public init(maxIdle: Int = 1024, idleTimeoutMillis: Int64 = 15_000) {
        self.maxIdle = maxIdle
        self.idleTimeoutMillis = idleTimeoutMillis
    }
}

/// A backend address as written, with what it resolved to at load time.
public struct Endpoint: Sendable, Hashable, CustomStringConvertible {
    public let text: String
    public let address: SocketAddress
    public var description: String { text }
}

/// TLS towards a backend.
public struct BackendTLSConfig: Sendable {
    /// CA bundle that verifies the backend; nil: the system's.
    public let caPath: String?
    /// SNI and the name verified in the backend's certificate.
    public let serverName: String?
    /// A client certificate to present.
    public let clientCertificate: CertificatePair?
    /// Verify the backend's certificate (default true).
    public let verify: Bool
    /// The protocols the backend speaks over TLS (ALPN offers the client's one of these);
    /// default both. A client protocol not listed cannot be routed here (`check` says so).
    public var alpn: [ClientProtocol] = [.h2, .http1]
}

/// What `edgemux check` says about a route's mode.
public enum RouteDescription {
    public static func mode(_ r: RouteConfig) -> String {
        if r.passthrough {
            return "passthrough (chosen from the TLS ClientHello, before any handshake: the connection, its TLS untouched, goes to a tcp backend)"
        }
        switch r.mode {
        case .relay:
            return r.match.targetsGRPC && r.modeWasDefault
                ? "relay (the default for a content_type: application/grpc match: the first request pins the connection, its bytes are relayed)"
                : "relay (mode: relay: the first request pins the connection, its bytes are relayed)"
        case .request:
            let why = r.modeWasDefault ? "the default for a route that does not match gRPC" : "mode: request"
            let timeout = r.responseTimeoutMillis > 0 ? "response_timeout \(r.responseTimeoutMillis / 1000)s" : "no response_timeout"
            return "request (\(why): each request routed on its own, HTTP/1.1 and HTTP/2 translated; \(timeout))"
        }
    }
}
