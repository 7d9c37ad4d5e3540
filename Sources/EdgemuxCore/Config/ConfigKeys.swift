/// Every key the config file may hold, by the place it appears in: the one list the loader
/// accepts (anything else is "unknown key", with a hint) and README's reference documents (a
/// test holds the two to the same keys, so a new key cannot land undocumented).
public enum ConfigKeys {
    public static let top = ["workers", "admin", "drain_timeout", "access_log", "listeners", "backends", "max_connections", "max_handshakes"]
    public static let admin = ["listen"]
    public static let listener = ["name", "listen", "proxy_protocol", "proxy_protocol_from", "tls", "handshake_timeout", "request_timeout", "max_request_head", "routes", "tunnel", "http2",
                                  "max_connection_age", "keepalive_timeout", "max_connections", "max_connections_per_client", "max_requests_per_connection", "fallback", "fallback_timeout"]
    public static let listenerTLS = ["certificates", "alpn", "min_version", "ticket_keys", "ciphers", "ciphersuites", "groups", "client_ca", "client_auth", "client_subject_header"]
    public static let certificate = ["cert", "key", "ocsp_response"]
    public static let http2 = ["max_concurrent_streams", "initial_window_size", "connection_window_size", "max_frame_size", "max_header_list_size", "requests_per_pass"]
    public static let route = ["name", "match", "backend", "idle_timeout", "mode", "response_timeout", "forwarded", "via", "passthrough"]
    public static let match = ["alpn", "sni", "content_type", "path_prefix", "host", "method", "upgrade"]
    public static let tunnel = ["mode", "allow", "auth_file", "parent", "parent_auth_file", "map", "connect_timeout", "idle_timeout"]
    public static let tunnelAllow = ["host", "cidr", "ports"]
    public static let tunnelMap = ["sni", "to"]
    public static let backend = ["protocol", "endpoints", "tls", "connect_timeout", "idle_timeout", "pool", "balance", "proxy_protocol"]
    public static let endpointsByProtocol = ["http1", "h2c"]
    public static let backendTLS = ["ca", "server_name", "cert", "key", "verify", "alpn"]
    public static let pool = ["max_idle", "idle_timeout"]

    /// Each place as README's reference heads it, with its keys.
    public static let sections: [(place: String, keys: [String])] = [
        ("top level", top), ("admin", admin), ("listeners[]", listener), ("listeners[].tls", listenerTLS), ("listeners[].tls.certificates[]", certificate),
        ("listeners[].http2", http2), ("listeners[].routes[]", route), ("listeners[].routes[].match", match), ("listeners[].tunnel", tunnel),
        ("listeners[].tunnel.allow[]", tunnelAllow), ("listeners[].tunnel.map[]", tunnelMap), ("backends.NAME", backend), ("backends.NAME.endpoints", endpointsByProtocol),
        ("backends.NAME.tls", backendTLS), ("backends.NAME.pool", pool),
    ]
}
