import CEdgemux
import Foundation
import Glibc
import Testing

@testable import EdgemuxCore

/// close_notify on a full socket: a real TLS server and client (edgemux's TLSStream on both
/// ends) over a socket pair with small buffers.
@Suite("TLS close_notify when the socket is full")
struct TLSShutdownTests {
    @Test("a close_notify that meets a full socket waits and goes out once the peer reads")
    func closeNotifyIsRetried() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("edgemux-shutdown-\(getpid())").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(CEdgemux_make_self_signed("localhost", 1, "\(dir)/c.pem", "\(dir)/k.pem") == 1)
        let serverContext = try TLSServerContext(certificates: [CertificatePair(cert: "\(dir)/c.pem", key: "\(dir)/k.pem")], alpn: ["http/1.1"],
                                                 minVersion: "1.2", ticketKeys: TLSServerContext.randomTicketKeys())
        let clientContext = try TLSClientContext(caPath: nil, serverName: "localhost", clientCertificate: nil, verify: false)
        var fds: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0, &fds) == 0)
        defer { close(fds[0]); close(fds[1]) }
        for fd in fds {
            var small: Int32 = 4096
            setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &small, socklen_t(MemoryLayout<Int32>.size))
            setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, socklen_t(MemoryLayout<Int32>.size))
        }
        let server = try TLSStream(server: serverContext, fd: fds[0])
        let client = try TLSStream(client: clientContext, fd: fds[1], alpn: nil)
        var serverDone = false, clientDone = false
        for _ in 0..<100 where !(serverDone && clientDone) {
            // The socket BIO reads only after an edge (as the loop reports them): note one each time.
            server.noteReadEdge()
            client.noteReadEdge()
            if !serverDone { serverDone = server.handshake() == .bytes(0) }
            if !clientDone { clientDone = client.handshake() == .bytes(0) }
        }
        #expect(serverDone && clientDone)

        // The server writes until the socket takes no more.
        let block = [UInt8](repeating: 0x61, count: 4096)
        var written = 0
        for _ in 0..<1000 {
            let step = block.withUnsafeBytes { server.write(from: $0) }
            guard case .bytes(let n) = step, n > 0 else { break }
            written += n  // taken by OpenSSL (some may wait in the BIO)
            if server.hasBufferedOutput { break }
        }
        while server.hasBufferedOutput, (try? server.flushBuffered()) == true {}
        #expect(written > 0)
        // Full: the close_notify cannot go now, and is kept.
        #expect(server.shutdown() == false)
        #expect(server.closeNotifyPending)

        // The client reads what came; then the server tries again, and the client sees the end.
        var buffer = [UInt8](repeating: 0, count: 65536)
        var received = 0
        var sawEnd = false
        for _ in 0..<10_000 where !sawEnd {
            let step = buffer.withUnsafeMutableBytes { client.read(into: $0) }
            switch step {
            case .bytes(let n): received += n
            case .eof: sawEnd = true
            case .wantRead, .wantWrite:
                client.noteReadEdge()
                if server.closeNotifyPending { _ = server.shutdown() }
            case .failed(let why):
                Issue.record("the client's read failed: \(why)")
                sawEnd = true
            }
        }
        #expect(!server.closeNotifyPending)
        #expect(sawEnd, "the client never saw close_notify")
        #expect(received == written)
    }
}
