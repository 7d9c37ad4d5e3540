import CEdgemux
import Glibc

/// The demo's HTTP/1.1 web backend: answers every request with a line that names itself, keeps
/// connections alive, reads Content-Length bodies. Runs on the demo's own loop.
final class DemoHTTP1Server: EventHandler {
    let fd: Int32
    let loop: EventLoop
    let name: String
    private var conns: [Int32: [UInt8]] = [:]
    private var out: [Int32: [UInt8]] = [:]

    init(loop: EventLoop, name: String) throws {
        self.loop = loop
        self.name = name
        fd = try ListenerSocket.bind(SocketAddress.parse(ip: "127.0.0.1", port: 0)!, backlog: 512)
        super.init()
        try loop.register(fd: fd, events: EventLoop.readEvents, handler: self)
    }

    var port: UInt16 { Posix.localPort(fd) }

    override func handleEvent(fd: Int32, events: UInt32) {
        if fd == self.fd {
            while case .processed(let (c, _))? = try? Posix.accept(fd) {
                conns[c] = []
                try? loop.register(fd: c, events: EventLoop.relayEvents, handler: self)
            }
            return
        }
        guard var buf = conns[fd] else { return }
        var chunk = [UInt8](repeating: 0, count: 16384)
        var closed = false
        while true {
            let r = chunk.withUnsafeMutableBytes { try? Posix.read(fd, into: $0) }
            if case .processed(let n)? = r, n > 0 { buf += chunk[0..<n]; continue }
            if case .wouldBlock? = r { break }
            closed = true
            break
        }
        var reply: [UInt8] = out[fd] ?? []
        let parser = HTTP1HeadParser(cap: 65536)
        parse: while true {
            let result = buf.withUnsafeBytes { parser.parse($0) }
            switch result {
            case .needMore: break parse
            case .error:
                reply += ErrorAnswers.http1(status: 400, message: "bad request")
                closed = true
                buf = []
                break parse
            case .done(let info, let headLength):
                let head = String(decoding: buf[0..<headLength], as: UTF8.self).lowercased()
                var bodyLength = 0
                if let r = head.range(of: "\r\ncontent-length:") {
                    let rest = head[r.upperBound...].prefix { $0 != "\r" }
                    bodyLength = Int(String(rest).trimmedSpaces()) ?? 0
                }
                guard buf.count >= headLength + bodyLength else { break parse }
                buf.removeFirst(headLength + bodyLength)
                let body = "Hello from the demo \(name) backend over HTTP/1.1: \(info.method) \(info.path) (host \(info.host))\n"
                reply += Array("HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: \(body.utf8.count)\r\nX-Served-By: demo-\(name)-http1\r\n\r\n\(body)".utf8)
                if head.contains("\r\nconnection: close") { closed = true; break parse }
            }
        }
        conns[fd] = buf
        var offset = 0
        while offset < reply.count {
            let r = reply.withUnsafeBytes { try? Posix.write(fd, from: UnsafeRawBufferPointer(rebasing: $0[offset...])) }
            guard case .processed(let n)? = r else { break }
            offset += n
        }
        out[fd] = offset < reply.count ? Array(reply[offset...]) : nil
        if closed && out[fd] == nil {
            conns[fd] = nil
            Posix.shutdownWrite(fd)
            loop.closeDescriptor(fd)
        }
    }
}
