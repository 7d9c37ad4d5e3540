/// A config with everything built that connections need: TLS contexts and routers. Built whole
/// before it is used (a failure leaves nothing half-built), shared read-only by every worker.
public final class Snapshot: Sendable {
    public let config: EdgemuxConfig
    /// Server TLS per listener name, one context per worker (absent: plaintext listener). Each
    /// worker creates its connections from its own SSL_CTX, so no reference count or lock inside
    /// OpenSSL's context is shared between cores; the ticket keys are the same in all, so a
    /// ticket from one worker resumes on any.
    let serverTLS: [String: [TLSServerContext]]
    /// Client TLS per backend name (`protocol: tls` backends only).
    let clientTLS: [String: TLSClientContext]
    let routers: [String: Router]
    /// Monotonic generation (1 for the first config).
    public let generation: Int
    /// The access log, opened (nil: off).
    let accessLog: AccessLog?
    /// Some backend takes a PROXY header: connections note whom it would name.
    let sendsProxyHeaders: Bool

    /// The server TLS context worker `worker` uses for `listener` (nil: plaintext).
    func serverContext(listener: String, worker: Int) -> TLSServerContext? {
        guard let all = serverTLS[listener], !all.isEmpty else { return nil }
        return all[worker % all.count]
    }

    public init(config: EdgemuxConfig, generation: Int, ticketKeys: [UInt8]) throws {
        var issues: [ConfigIssue] = []
        var server: [String: [TLSServerContext]] = [:]
        var client: [String: TLSClientContext] = [:]
        var routers: [String: Router] = [:]
        for l in config.listeners {
            routers[l.name] = Router(routes: l.routes)
            guard let tls = l.tls else { continue }
            do {
                server[l.name] = try (0..<max(1, config.workers)).map { _ in
                    try TLSServerContext(certificates: tls.certificates, alpn: tls.alpn, minVersion: tls.minVersion, ticketKeys: tls.ticketKeys ?? ticketKeys, policy: tls.policy,
                                         clientCA: tls.clientCA, clientAuth: tls.clientAuth)
                }
            } catch {
                issues.append(ConfigIssue(file: "", line: 0, path: "listeners.\(l.name).tls", message: "\(error)"))
            }
        }
        for (name, b) in config.backends {
            guard b.proto == .tls, let tls = b.tls else { continue }
            do {
                client[name] = try TLSClientContext(caPath: tls.caPath, serverName: tls.serverName, clientCertificate: tls.clientCertificate, verify: tls.verify)
            } catch {
                issues.append(ConfigIssue(file: "", line: 0, path: "backends.\(name).tls", message: "\(error)"))
            }
        }
        var log: AccessLog?
        if let target = config.accessLog {
            do { log = try AccessLog(target: target) } catch {
                issues.append(ConfigIssue(file: "", line: 0, path: "access_log", message: "\(error)"))
            }
        }
        if !issues.isEmpty { throw ConfigError(issues: issues) }
        self.accessLog = log
        self.sendsProxyHeaders = config.backends.values.contains { $0.proxyProtocol != .none }
        self.config = config
        self.serverTLS = server
        self.clientTLS = client
        self.routers = routers
        self.generation = generation
    }
}
