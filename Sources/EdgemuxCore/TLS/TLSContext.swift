import CEdgemux
import Glibc

/// A certificate and its private key, as PEM file paths.
public struct CertificatePair: Sendable, Hashable {
    public let certPath: String
    public let keyPath: String
    /// A DER OCSP response for the certificate, stapled to handshakes that ask (nil: none).
    public let ocspResponsePath: String?
    public init(cert: String, key: String, ocspResponse: String? = nil) {
        certPath = cert
        keyPath = key
        ocspResponsePath = ocspResponse
    }
}

/// The server side of a TLS listener: one SSL_CTX per certificate, the first being the default,
/// with SNI switching between them and ALPN chosen by server preference.
///
/// `@unchecked Sendable`: the contexts are fully configured in `init` and never mutated after, and
/// OpenSSL's SSL_CTX is safe to share between threads for creating connections (it is
/// reference-counted and locks its session cache internally).
public final class TLSServerContext: @unchecked Sendable {
    let contexts: [OpaquePointer]
    private let sniTable: UnsafeMutablePointer<CEdgemux_sni_table>
    private let sniContexts: UnsafeMutablePointer<OpaquePointer?>
    private let alpnList: UnsafeMutablePointer<CEdgemux_alpn_list>
    private let alpnWire: UnsafeMutableBufferPointer<UInt8>
    /// OCSP responses stapled by the contexts (each context's callback points at its own).
    private let staples: [UnsafeMutablePointer<CEdgemux_ocsp_staple>]

    /// The default (first) context: new connections start on it.
    var defaultContext: OpaquePointer { contexts[0] }

    /// - Parameters:
    ///   - certificates: chosen by SNI; the first is the default.
    ///   - alpn: the protocols offered, in preference order.
    ///   - minVersion: "1.2" or "1.3".
    ///   - ticketKeys: 80 bytes a key, the first encrypting, shared by every context (so a
    ///     ticket from any worker, or any replica with the same keys, resumes).
    ///   - policy: ciphers and groups.
    ///   - clientCA, clientAuth: client certificates asked for, verified against this CA.
    public init(certificates: [CertificatePair], alpn: [String], minVersion: String, ticketKeys: [UInt8], policy: TLSPolicy = TLSPolicy(),
                clientCA: String? = nil, clientAuth: ClientAuth = .none) throws {
        precondition(!certificates.isEmpty)
        var wire: [UInt8] = []
        for p in alpn {
            wire.append(UInt8(p.utf8.count))
            wire.append(contentsOf: p.utf8)
        }
        alpnWire = .allocate(capacity: max(1, wire.count))
        _ = alpnWire.initialize(from: wire)
        alpnList = .allocate(capacity: 1)
        alpnList.initialize(to: CEdgemux_alpn_list(wire: UnsafePointer(alpnWire.baseAddress), len: UInt32(wire.count)))
        sniTable = .allocate(capacity: 1)
        sniContexts = .allocate(capacity: certificates.count)

        var built: [OpaquePointer] = []
        var loadedStaples: [UnsafeMutablePointer<CEdgemux_ocsp_staple>] = []
        do {
            for pair in certificates {
                guard let ctx = SSL_CTX_new(TLS_server_method()) else { throw TLSError.fromQueue("SSL_CTX_new") }
                built.append(ctx)
                _ = CEdgemux_SSL_CTX_set_mode(ctx, CEdgemux_default_modes())
                _ = CEdgemux_SSL_CTX_set_options(ctx, CEdgemux_default_server_options())
                let min = minVersion == "1.3" ? CEdgemux_TLS1_3_VERSION() : CEdgemux_TLS1_2_VERSION()
                _ = CEdgemux_SSL_CTX_set_min_proto_version(ctx, min)
                ERR_clear_error()
                if let problem = Self.apply(policy, to: ctx) { throw TLSError(problem) }
                if let clientCA, clientAuth != .none {
                    guard CEdgemux_SSL_CTX_request_client_certificates(ctx, clientCA, clientAuth == .required ? 1 : 0) == 1 else {
                        throw TLSError.fromQueue("cannot load client_ca \(clientCA)")
                    }
                }
                guard SSL_CTX_use_certificate_chain_file(ctx, pair.certPath) == 1 else {
                    throw TLSError.fromQueue("cannot load certificate chain \(pair.certPath)")
                }
                guard SSL_CTX_use_PrivateKey_file(ctx, pair.keyPath, SSL_FILETYPE_PEM) == 1 else {
                    throw TLSError.fromQueue("cannot load private key \(pair.keyPath)")
                }
                guard CEdgemux_SSL_CTX_check_private_key(ctx) == 1 else {
                    throw TLSError.fromQueue("private key \(pair.keyPath) does not match certificate \(pair.certPath)")
                }
                if let path = pair.ocspResponsePath {
                    let staple = try Self.loadStaple(ctx, path).staple
                    loadedStaples.append(staple)
                    CEdgemux_SSL_CTX_set_ocsp_staple(ctx, staple)
                }
                // One ticket per handshake (a second costs an encryption and a record that no
                // client here uses), and not at the end of the handshake: TLSStream issues it
                // with the connection's first application data, so that it rides in the same
                // send(2) and packet as the response (DESIGN: performance budget).
                SSL_CTX_set_num_tickets(ctx, 0)
                // Resumption by stateless tickets only (TLS 1.2 and 1.3): no session cache to
                // lock, fill and sweep, and no memory held per past client.
                _ = CEdgemux_SSL_CTX_set_session_cache_mode(ctx, Int(SSL_SESS_CACHE_OFF))
                // One read(2) per record batch instead of one for the header and one for the body.
                CEdgemux_SSL_CTX_set_read_ahead(ctx, 1)
                let sid: [UInt8] = Array("edgemux".utf8)
                _ = SSL_CTX_set_session_id_context(ctx, sid, UInt32(sid.count))
                if !ticketKeys.isEmpty {
                    guard ticketKeys.count % 80 == 0, CEdgemux_SSL_CTX_set_ticket_keys(ctx, ticketKeys, Int32(ticketKeys.count / 80)) == 1 else {
                        throw TLSError.fromQueue("OpenSSL refused the session ticket keys")
                    }
                }
                CEdgemux_SSL_CTX_set_alpn_server_protocols(ctx, alpnList)
            }
        } catch {
            for ctx in built { SSL_CTX_free(ctx) }
            for staple in loadedStaples { CEdgemux_ocsp_staple_free(staple) }
            alpnWire.deallocate()
            alpnList.deallocate()
            sniTable.deallocate()
            sniContexts.deallocate()
            throw error
        }
        contexts = built
        staples = loadedStaples
        for (i, ctx) in built.enumerated() { sniContexts[i] = ctx }
        sniTable.initialize(to: CEdgemux_sni_table(ctxs: sniContexts, count: built.count))
        if built.count > 1 {
            for ctx in built { CEdgemux_SSL_CTX_set_sni_table(ctx, sniTable) }
        }
    }

    deinit {
        for ctx in contexts { SSL_CTX_free(ctx) }
        for staple in staples { CEdgemux_ocsp_staple_free(staple) }
        alpnWire.deallocate()
        alpnList.deallocate()
        sniTable.deallocate()
        sniContexts.deallocate()
    }

    /// Loads and checks the OCSP response in `path` for the certificate loaded in `ctx`.
    static func loadStaple(_ ctx: OpaquePointer, _ path: String) throws -> (staple: UnsafeMutablePointer<CEdgemux_ocsp_staple>, status: String) {
        var why = [CChar](repeating: 0, count: 512)
        var status = [CChar](repeating: 0, count: 32)
        guard let staple = CEdgemux_ocsp_staple_load(ctx, path, &why, why.count, &status, status.count) else {
            throw TLSError(String(cChars: why))
        }
        return (staple, String(cChars: status))
    }

    /// 80 random bytes for session ticket keys.
    /// Sets `policy` on `ctx`; what OpenSSL refused, if anything.
    static func apply(_ policy: TLSPolicy, to ctx: OpaquePointer) -> String? {
        ERR_clear_error()
        guard SSL_CTX_set_cipher_list(ctx, policy.ciphers) == 1 else {
            return "OpenSSL knows no cipher in '\(policy.ciphers)' (an OpenSSL cipher list such as \(TLSPolicy.defaultCiphers.split(separator: ":").prefix(2).joined(separator: ":")))"
        }
        guard SSL_CTX_set_ciphersuites(ctx, policy.ciphersuites) == 1 else {
            return "OpenSSL refuses the TLS 1.3 suites '\(policy.ciphersuites)' (expected names such as \(TLSPolicy.defaultCiphersuites))"
        }
        guard CEdgemux_SSL_CTX_set1_groups_list(ctx, policy.groups) == 1 else {
            return "OpenSSL refuses the groups '\(policy.groups)' (expected names such as X25519:P-256:P-384)"
        }
        ERR_clear_error()
        return nil
    }

    /// Why `policy` cannot be used, or nil (checked on a scratch context, for `check`).
    public static func policyProblem(_ policy: TLSPolicy) -> String? {
        guard let ctx = SSL_CTX_new(TLS_server_method()) else { return "OpenSSL cannot make a context" }
        defer { SSL_CTX_free(ctx) }
        return apply(policy, to: ctx)
    }

    public static func randomTicketKeys() -> [UInt8] {
        var keys = [UInt8](repeating: 0, count: 80)
        _ = RAND_bytes(&keys, 80)
        return keys
    }
}

/// The client side towards a `tls` backend: CA verification, SNI, optional client certificate.
///
/// `@unchecked Sendable`: configured in `init`, never mutated after (see `TLSServerContext`).
public final class TLSClientContext: @unchecked Sendable {
    let context: OpaquePointer
    /// The name sent as SNI and verified against the backend's certificate (nil: no SNI, and
    /// the certificate is verified against the CA only).
    public let serverName: String?
    let verify: Bool

    public init(caPath: String?, serverName: String?, clientCertificate: CertificatePair?, verify: Bool) throws {
        guard let ctx = SSL_CTX_new(TLS_client_method()) else { throw TLSError.fromQueue("SSL_CTX_new") }
        // Every stored property is set from here on, so a throw below runs deinit, which frees
        // the context: no SSL_CTX_free on the error paths (it would free it twice).
        context = ctx
        self.serverName = serverName
        self.verify = verify
        _ = CEdgemux_SSL_CTX_set_mode(ctx, CEdgemux_default_modes())
        _ = CEdgemux_SSL_CTX_set_options(ctx, CEdgemux_default_server_options())
        _ = CEdgemux_SSL_CTX_set_min_proto_version(ctx, CEdgemux_TLS1_2_VERSION())
        ERR_clear_error()
        if let caPath {
            guard SSL_CTX_load_verify_locations(ctx, caPath, nil) == 1 else {
                throw TLSError.fromQueue("cannot load CA file \(caPath)")
            }
        } else {
            _ = SSL_CTX_set_default_verify_paths(ctx)
        }
        SSL_CTX_set_verify(ctx, verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, nil)
        if let pair = clientCertificate {
            guard SSL_CTX_use_certificate_chain_file(ctx, pair.certPath) == 1,
                  SSL_CTX_use_PrivateKey_file(ctx, pair.keyPath, SSL_FILETYPE_PEM) == 1,
                  CEdgemux_SSL_CTX_check_private_key(ctx) == 1
            else {
                throw TLSError.fromQueue("cannot load client certificate \(pair.certPath) / \(pair.keyPath)")
            }
        }
    }

    deinit { SSL_CTX_free(context) }
}

extension TLSServerContext {
    /// Loads a certificate chain and key the way a listener will, and says what is wrong with
    /// them (nil: they load and belong together). For config validation.
    public static func problem(cert: String, key: String, ocspResponse: String? = nil) -> String? {
        // The usual mix-up, said plainly rather than as OpenSSL's decoder error.
        let keyText = ConfigLoader.readFile(key) ?? "", certText = ConfigLoader.readFile(cert) ?? ""
        if !keyText.contains("PRIVATE KEY-----"), keyText.contains("-----BEGIN CERTIFICATE-----") {
            return "the key file \(key) holds a certificate, not a private key" + (certText.contains("PRIVATE KEY-----") ? " (cert and key swapped?)" : "")
        }
        if !certText.contains("-----BEGIN CERTIFICATE-----"), certText.contains("PRIVATE KEY-----") {
            return "the certificate file \(cert) holds a private key, not a certificate"
        }
        guard let ctx = SSL_CTX_new(TLS_server_method()) else { return "SSL_CTX_new failed" }
        defer { SSL_CTX_free(ctx) }
        ERR_clear_error()
        guard SSL_CTX_use_certificate_chain_file(ctx, cert) == 1 else {
            return TLSError.fromQueue("not a PEM certificate chain").message
        }
        guard SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) == 1 else {
            let why = TLSError.fromQueue("not a PEM private key").message
            if why.contains("mismatch") { return "the key \(key) does not belong to the certificate \(cert)" }
            return why
        }
        guard CEdgemux_SSL_CTX_check_private_key(ctx) == 1 else {
            ERR_clear_error()
            return "the key \(key) does not belong to the certificate \(cert)"
        }
        if let ocspResponse {
            do {
                CEdgemux_ocsp_staple_free(try loadStaple(ctx, ocspResponse).staple)
            } catch {
                return "\(error)"
            }
        }
        return nil
    }

    /// Says what is wrong with a CA bundle (nil: it loads).
    public static func caProblem(_ path: String) -> String? {
        guard let ctx = SSL_CTX_new(TLS_client_method()) else { return "SSL_CTX_new failed" }
        defer { SSL_CTX_free(ctx) }
        ERR_clear_error()
        guard SSL_CTX_load_verify_locations(ctx, path, nil) == 1 else {
            return TLSError.fromQueue("not a PEM CA bundle").message
        }
        return nil
    }
}
