import CEdgemux
import Glibc

/// What one non-blocking step of a byte stream (TLS or plain) did.
public enum StreamStep: Equatable {
    /// This many bytes were moved.
    case bytes(Int)
    /// Nothing can move until the socket is readable.
    case wantRead
    /// Nothing can move until the socket is writable.
    case wantWrite
    /// The peer closed its sending side (FIN, or TLS close_notify).
    case eof
    /// The stream is broken; the text says how.
    case failed(String)
}

/// One TLS connection over a non-blocking socket (OpenSSL's socket BIO on the descriptor).
/// It owns its `SSL*`; the socket belongs to the caller.
final class TLSStream {
    let ssl: OpaquePointer
    /// edgemux's socket BIO (see CEdgemux_BIO_new_socket), owned by `ssl`.
    let bio: OpaquePointer

    /// An `SSL*` on `fd` through edgemux's socket BIO. Once this returns, `deinit` frees both,
    /// so the convenience initializers may throw after it without freeing anything themselves.
    private init(context: OpaquePointer, fd: Int32) throws {
        guard let ssl = SSL_new(context) else { throw TLSError.fromQueue("SSL_new") }
        guard let bio = CEdgemux_BIO_new_socket(fd) else {
            SSL_free(ssl)
            throw TLSError.fromQueue("BIO_new")
        }
        self.ssl = ssl
        self.bio = bio
        SSL_set_bio(ssl, bio, bio)
    }

    /// A server-side stream on an accepted socket.
    convenience init(server context: TLSServerContext, fd: Int32) throws {
        try self.init(context: context.defaultContext, fd: fd)
        SSL_set_accept_state(ssl)
        ticketDue = true
    }

    /// Server side: the TLS 1.3 session ticket is still to be issued (with the first write).
    private var ticketDue = false

    /// A client-side stream towards a backend, offering `alpn` (nil: none).
    convenience init(client context: TLSClientContext, fd: Int32, alpn: String?) throws {
        try self.init(context: context.context, fd: fd)
        SSL_set_connect_state(ssl)
        if let name = context.serverName, CEdgemux_SSL_set_peer_name(ssl, name, context.verify ? 1 : 0) != 1 {
            throw TLSError.fromQueue("cannot set the backend server name '\(name)'")
        }
        if let alpn {
            var wire: [UInt8] = [UInt8(alpn.utf8.count)]
            wire.append(contentsOf: alpn.utf8)
            _ = SSL_set_alpn_protos(ssl, wire, UInt32(wire.count))
        }
    }

    deinit { SSL_free(ssl) }

    /// One handshake step: `.bytes(0)` once complete.
    func handshake() -> StreamStep {
        CEdgemux_ERR_clear()
        let r = SSL_do_handshake(ssl)
        if r == 1 { return .bytes(0) }
        return classify(r, during: "handshake")
    }

    func read(into buffer: UnsafeMutableRawBufferPointer) -> StreamStep {
        CEdgemux_ERR_clear()
        var n = 0
        let r = SSL_read_ex(ssl, buffer.baseAddress, buffer.count, &n)
        if r == 1 { return .bytes(n) }
        return classify(r, during: "read")
    }

    /// The socket raised EPOLLIN (or a hangup): the next read must ask the socket again.
    func noteReadEdge() { CEdgemux_BIO_socket_note_edge(bio) }

    /// The socket signalled the peer's FIN (or an error): no later edge will announce it, so
    /// reads must ask the socket until it answers EOF.
    func noteHangup() { CEdgemux_BIO_socket_note_hangup(bio) }

    /// Did the last read leave nothing behind, in the socket or in OpenSSL's buffer? Then, with
    /// edge triggering, the read that would only confirm it can be skipped.
    var drained: Bool {
        CEdgemux_BIO_socket_drained(bio) == 1 && SSL_has_pending(ssl) == 0 && SSL_pending(ssl) == 0
    }

    /// Encrypts as much of `buffer` as the socket takes, gathering the records into as few
    /// send(2) calls as possible (one per 64 KiB instead of one per 16 KiB record). Bytes OpenSSL
    /// has taken count as written even while some still wait in the BIO (`hasBufferedOutput`).
    ///
    /// `shutdownAfter`: once all of `buffer` is taken, close_notify follows in the same send.
    func write(from buffer: UnsafeRawBufferPointer, shutdownAfter: Bool = false) -> StreamStep {
        var issuedTicket = false
        if ticketDue {
            ticketDue = false
            // Queued now, written by the SSL_write below: ticket and data share a send(2).
            if SSL_version(ssl) == CEdgemux_TLS1_3_VERSION() { issuedTicket = SSL_new_session_ticket(ssl) == 1 }
        }
        defer {
            // Writing the ticket goes through the handshake machinery, which keeps its write
            // buffer (SSL_MODE_RELEASE_BUFFERS covers application writes only): 6.7 KiB per idle
            // HTTP/2 connection, whose first write is edgemux's SETTINGS. Freed once it is empty.
            if issuedTicket { _ = SSL_free_buffers(ssl) }
        }
        if CEdgemux_BIO_socket_pending(bio) > 0 {
            switch CEdgemux_BIO_socket_flush(bio) {
            case 1: break
            case 0: return .wantWrite
            default: return .failed("TLS write: \(String(cString: strerror(errno)))")
            }
        }
        CEdgemux_BIO_socket_cork(bio, 1)
        var total = 0
        var last: StreamStep = .wantWrite
        while total < buffer.count {
            CEdgemux_ERR_clear()
            var n = 0
            let r = SSL_write_ex(ssl, buffer.baseAddress! + total, buffer.count - total, &n)
            if r == 1 {
                total += n
                continue
            }
            last = classify(r, during: "write")
            break
        }
        if shutdownAfter && total == buffer.count { shutdown() }
        CEdgemux_BIO_socket_cork(bio, 0)
        switch CEdgemux_BIO_socket_flush(bio) {
        case -1: return .failed("TLS write: \(String(cString: strerror(errno)))")
        default: break
        }
        if total > 0 { return .bytes(total) }
        return last
    }

    /// Bytes encrypted and gathered but not yet sent.
    var hasBufferedOutput: Bool { CEdgemux_BIO_socket_pending(bio) > 0 }

    /// Sends gathered bytes: true when none are left, false when the socket is full; throws
    /// on a socket error.
    func flushBuffered() throws -> Bool {
        switch CEdgemux_BIO_socket_flush(bio) {
        case 1: return true
        case 0: return false
        default: throw IOError(errnoCode: errno, reason: "send")
        }
    }

    /// The handshake failed because the client spoke plain HTTP (OpenSSL saw a request line).
    private(set) var sawPlainHTTP = false

    /// close_notify met a full socket: it waits in OpenSSL's write buffer (or the gathered
    /// bytes ahead of it do), and `shutdown()` must be called again when the socket has room.
    private(set) var closeNotifyPending = false

    /// Sends close_notify (once; again while `closeNotifyPending`); does not wait for the peer's.
    /// True when it is out of OpenSSL and edgemux (in the kernel's hands).
    @discardableResult
    func shutdown() -> Bool {
        CEdgemux_ERR_clear()
        defer { CEdgemux_ERR_clear() }
        if SSL_get_shutdown(ssl) & SSL_SENT_SHUTDOWN == 0 || closeNotifyPending {
            let r = SSL_shutdown(ssl)
            // 0: sent, the peer's has not come; 1: both. Below 0 on a full socket: WANT_WRITE,
            // and the alert is kept for the next call. Any other error: nothing more to send.
            closeNotifyPending = r < 0 && SSL_get_error(ssl, r) == SSL_ERROR_WANT_WRITE
        }
        if !closeNotifyPending, hasBufferedOutput {
            closeNotifyPending = !((try? flushBuffered()) ?? true)
        }
        return !closeNotifyPending
    }

    /// The negotiated ALPN protocol ("" when none).
    var negotiatedALPN: String {
        var data: UnsafePointer<UInt8>?
        var length: UInt32 = 0
        SSL_get0_alpn_selected(ssl, &data, &length)
        // "h2" and "http/1.1" fit in a small string: no allocation.
        return String(decoding: UnsafeBufferPointer(start: data, count: data == nil ? 0 : Int(length)), as: UTF8.self)
    }

    /// The subject (RFC 2253) of the client certificate, when one was sent and verified.
    var verifiedPeerSubject: String? {
        var buf = [CChar](repeating: 0, count: 1024)
        let n = CEdgemux_SSL_verified_peer_subject(ssl, &buf, buf.count)
        return n > 0 ? String(cChars: buf) : nil
    }

    /// The SNI the client sent, if any.
    var serverName: String? {
        guard let p = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name) else { return nil }
        return String(cString: p)
    }

    /// Whether the certificate this server connection presented covers `host` (RFC 6125 name
    /// matching, wildcards included; an IP literal against the IP SANs).
    func certificateCovers(_ host: String) -> Bool {
        guard let cert = SSL_get_certificate(ssl) else { return false }
        let bare = host.hasPrefix("[") && host.hasSuffix("]") ? String(host.dropFirst().dropLast()) : host
        if bare.contains(":") || bare.allSatisfy({ $0.isNumber || $0 == "." }) {
            return X509_check_ip_asc(cert, bare, 0) == 1
        }
        return X509_check_host(cert, bare, bare.utf8.count, 0, nil) == 1
    }

    private func classify(_ r: Int32, during what: String) -> StreamStep {
        let code = SSL_get_error(ssl, r)
        switch code {
        case SSL_ERROR_WANT_READ: return .wantRead
        case SSL_ERROR_WANT_WRITE: return .wantWrite
        case SSL_ERROR_ZERO_RETURN: return .eof
        case SSL_ERROR_SYSCALL:
            let e = errno
            CEdgemux_ERR_clear()
            // With SSL_OP_IGNORE_UNEXPECTED_EOF a bare FIN reads as ZERO_RETURN; errno 0 here is
            // still an EOF in some OpenSSL paths.
            if e == 0 { return .eof }
            return .failed("TLS \(what): \(String(cString: strerror(e)))")
        default:
            sawPlainHTTP = CEdgemux_ERR_peek_plain_http() == 1
            return .failed(TLSError.fromQueue("TLS \(what)").message)
        }
    }
}
