/// Reaching one backend endpoint (relays, exchanges and request mode): the non-blocking TCP connect, the
/// PROXY header of a backend that takes one, then for a `protocol: tls` backend the TLS
/// handshake offering `alpn` (which the backend must accept).
/// No I/O of its own beyond what the transport does; each event answers pending / ready / failed.
struct BackendDial {
    enum Progress: Equatable {
        case pending
        case ready
        case failed(String)
    }

    let alpn: ClientProtocol
    /// Whom the PROXY header names, sent first (before any TLS) to a backend that takes one.
    let proxied: ProxiedClient?
    /// The TCP connect has completed (the TLS handshake may still be under way).
    private(set) var connected = false

    init(alpn: ClientProtocol, proxied: ProxiedClient? = nil) {
        self.alpn = alpn
        self.proxied = proxied
    }

    mutating func advance(_ t: Transport, events: UInt32, backend: BackendConfig, snapshot: Snapshot) -> Progress {
        if !connected {
            switch t.connectProgress(events: events) {
            case .pending: return .pending
            case .failed(let why): return .failed(why)
            case .connected: break
            }
            connected = true
            let header = backend.proxyHeader(for: proxied)
            if !header.isEmpty {
                // At most 107 bytes (v1 over IPv6) into the empty send buffer of a new
                // connection: all of it goes at once, or the connection is broken.
                let written = header.withUnsafeBytes { t.writeAvailable(from: $0).written }
                if written != header.count { return .failed("cannot send the PROXY header (\(written) of \(header.count) bytes)") }
            }
            if backend.proto == .tls {
                guard let ctx = snapshot.clientTLS[backend.name] else { return .failed("no TLS context") }
                do {
                    t.tls = try TLSStream(client: ctx, fd: t.fd, alpn: alpn.rawValue)
                } catch {
                    return .failed("\(error)")
                }
            }
        }
        guard let tls = t.tls else { return .ready }
        switch tls.handshake() {
        case .bytes:
            let got = tls.negotiatedALPN
            switch alpn {
            case .h2 where got != "h2": return .failed("TLS backend did not accept ALPN h2 (got '\(got)')")
            case .http1 where !(got.isEmpty || got == "http/1.1"): return .failed("TLS backend chose ALPN '\(got)' for an HTTP/1.1 client")
            default: return .ready
            }
        case .wantRead, .wantWrite: return .pending
        case .eof: return .failed("closed during the TLS handshake")
        case .failed(let why): return .failed(why)
        }
    }
}
