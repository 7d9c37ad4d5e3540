/// A config with everything built that connections need: TLS contexts and routers. Built whole
/// before it is used (a failure leaves nothing half-built), shared read-only by every worker.
public final class Snapshot: Sendable {
    public let config: EdgemuxConfig
    /// Server TLS per listener name (absent: plaintext listener).
    let serverTLS: [String: TLSServerContext]
    /// Client TLS per backend name (`protocol: tls` backends only).
    let clientTLS: [String: TLSClientContext]
    let routers: [String: Router]
    /// Monotonic generation (1 for the first config).
    public let generation: Int
    /// The access log, opened (nil: off).
    let accessLog: AccessLog?

    public init(config: EdgemuxConfig, generation: Int, ticketKeys: [UInt8]) throws {
        var issues: [ConfigIssue] = []
        var server: [String: TLSServerContext] = [:]
        var client: [String: TLSClientContext] = [:]
        var routers: [String: Router] = [:]
        for l in config.listeners {
            routers[l.name] = Router(routes: l.routes)
            guard let tls = l.tls else { continue }
            do {
                server[l.name] = try TLSServerContext(certificates: tls.certificates, alpn: tls.alpn, minVersion: tls.minVersion, ticketKeys: ticketKeys)
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
        self.config = config
        self.serverTLS = server
        self.clientTLS = client
        self.routers = routers
        self.generation = generation
    }
}
