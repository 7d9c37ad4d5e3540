import CEdgemux
import Glibc

/// Entry points for the `Benchmarks/` package, which sees only the public API: a real
/// ClientHello, and the relay driven over socket pairs without a network.
public enum BenchmarkSupport {
    /// A ClientHello made by OpenSSL (memory BIOs, nothing sent) for `serverName`.
    public static func sampleClientHello(serverName: String) -> [UInt8] {
        guard let ctx = SSL_CTX_new(TLS_client_method()) else { return [] }
        defer { SSL_CTX_free(ctx) }
        guard let ssl = SSL_new(ctx) else { return [] }
        defer { SSL_free(ssl) }
        let rbio = BIO_new(BIO_s_mem()), wbio = BIO_new(BIO_s_mem())
        SSL_set_bio(ssl, rbio, wbio)
        _ = CEdgemux_SSL_set_tlsext_host_name(ssl, serverName)
        SSL_set_connect_state(ssl)
        _ = SSL_do_handshake(ssl)
        var out = [UInt8](repeating: 0, count: 16384)
        let n = BIO_read(wbio, &out, Int32(out.count))
        return Array(out[0..<Int(max(0, n))])
    }

    /// Relays `bytes` from one socket pair to another through edgemux's `Relay` (the same code
    /// path as a plaintext-to-TLS-less relay, without splice: one side is marked as needing the
    /// copy path) on a private loop; returns the bytes that arrived.
    public static func relayThroughSocketPairs(bytes: Int) throws -> Int {
        var a: [Int32] = [0, 0], b: [Int32] = [0, 0]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0, &a) == 0,
              socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0, &b) == 0
        else { throw IOError(errnoCode: errno, reason: "socketpair") }
        defer { for fd in a + b { Posix.close(fd) } }
        let loop = try EventLoop(index: 0)
        let pool = BufferPool(maxFree: 4)
        let client = Transport(fd: a[1]), backend = Transport(fd: b[0])
        client.readable = true
        var ended = false
        let relay = Relay(client: client, backend: backend, loop: loop, pool: pool, replay: [], filter: nil, pendingToClient: nil) { _ in ended = true }
        // Force the copying path (the one TLS relays use): the relay splices only plain pairs.
        relay.forceCopyPath = true
        let chunk = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 * 1024, alignment: 16)
        defer { chunk.deallocate() }
        var sent = 0, received = 0
        while received < bytes && !ended {
            if sent < bytes {
                let n = Glibc.write(a[0], chunk.baseAddress, min(chunk.count, bytes - sent))
                if n > 0 { sent += n }
            }
            client.readable = true
            backend.writable = true
            relay.pumpAll()
            while true {
                let n = Glibc.read(b[1], chunk.baseAddress, chunk.count)
                if n <= 0 { break }
                received += n
            }
        }
        relay.release()
        return received
    }

    /// Follows one backend response as a pooled exchange does: parses the head (and builds the
    /// client's head), then scans a chunked body; returns the offset where the response ends
    /// (0: not found).
    public static func followResponse(_ bytes: [UInt8]) -> Int {
        bytes.withUnsafeBytes { buf -> Int in
            guard case .done(let head) = HTTP1ResponseParser(cap: 65536).parse(buf, headRequest: false) else { return 0 }
            guard head.framing == .chunked else { return head.headLength }
            var scanner = ChunkedBodyScanner()
            if case .done(let n) = scanner.scan(UnsafeRawBufferPointer(rebasing: buf[head.headLength...])) { return head.headLength + n }
            return 0
        }
    }
}
