/// Reaching one backend endpoint (relays, exchanges and request mode): the non-blocking TCP connect, then for a
/// `protocol: tls` backend the TLS handshake offering `alpn` (which the backend must accept).
/// No I/O of its own beyond what the transport does; each event answers pending / ready / failed.
struct BackendDial {
    enum Progress: Equatable {
        case pending
        case ready
        case failed(String)
    }

    let alpn: ClientProtocol
    /// The TCP connect has completed (the TLS handshake may still be under way).
    private(set) var connected = false

    init(alpn: ClientProtocol) { self.alpn = alpn }

    mutating func advance(_ t: Transport, events: UInt32, backend: BackendConfig, snapshot: Snapshot) -> Progress {
        if !connected {
            switch t.connectProgress(events: events) {
            case .pending: return .pending
            case .failed(let why): return .failed(why)
            case .connected: break
            }
            connected = true
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
