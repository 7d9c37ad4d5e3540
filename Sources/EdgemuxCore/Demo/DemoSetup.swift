import CEdgemux
import Foundation
import Logging

/// The embedded default: a self-signed certificate, demo web (HTTP/1.1 and h2c) and gRPC
/// backends on their own loop thread, and a config that routes gRPC over h2 to the gRPC backend
/// and everything else to the web backend.
public final class DemoSetup: Sendable {
    public let snapshot: Snapshot
    public let instructions: String
    let directory: String

    /// The embedded default config; `@...@` placeholders are filled in at start.
    public static let configTemplate = """
        workers: 1
        admin:
          listen: 127.0.0.1:@ADMIN@
        listeners:
          - name: public
            listen: 127.0.0.1:@PORT@
            tls:
              certificates:
                - { cert: @DIR@/demo.crt, key: @DIR@/demo.key }
              alpn: [h2, http/1.1]
            routes:
              - name: agents
                match: { alpn: h2, content_type: application/grpc }
                backend: grpc
              - name: web
                backend: web
        backends:
          web:
            endpoints: { http1: ["127.0.0.1:@WEB1@"], h2c: ["127.0.0.1:@WEB2@"] }
          grpc:
            protocol: h2c
            endpoints: ["127.0.0.1:@GRPC@"]
        """

    /// The admin listener's port: the one after the demo's, unless something already holds it
    /// (a client's ephemeral port, another server), then a free one: a busy neighbour must not
    /// stop the demo. Probed without SO_REUSEPORT, so another process's listener counts as busy.
    static func adminPort(after port: UInt16) -> UInt16 {
        func probe(_ candidate: UInt16) -> UInt16? {
            guard let fd = try? Posix.socket(domain: AF_INET, type: Int32(SOCK_STREAM.rawValue)) else { return nil }
            defer { Posix.close(fd) }
            try? Posix.setOption(fd, level: SOL_SOCKET, name: SO_REUSEADDR, value: 1)
            guard (try? Posix.bind(fd, address: SocketAddress.parse(ip: "127.0.0.1", port: candidate)!)) != nil,
                  (try? Posix.listen(fd, backlog: 1)) != nil else { return nil }
            return Posix.localPort(fd)
        }
        if port < UInt16.max, let next = probe(port + 1) { return next }
        return probe(0) ?? port &+ 1
    }

    public init(port: UInt16, logger: Logger) throws {
        let dir = NSTemporaryDirectory() + "edgemux-demo-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        directory = dir
        // Whatever fails below, the folder with the private key does not stay behind.
        var ready = false
        defer { if !ready { try? FileManager.default.removeItem(atPath: dir) } }
        guard CEdgemux_make_self_signed("localhost", 30, "\(dir)/demo.crt", "\(dir)/demo.key") == 1 else {
            throw TLSError.fromQueue("cannot make the demo certificate")
        }
        let loop = try EventLoop(index: 99)
        let web1 = try DemoHTTP1Server(loop: loop, name: "web")
        let web2 = try DemoH2Server(loop: loop, role: .web)
        let grpc = try DemoH2Server(loop: loop, role: .grpc)
        let ports = (web1.port, web2.port, grpc.port)
        let box = DemoLoopBox(loop: loop, servers: [web1, web2, grpc])
        let t = Thread { box.loop.run(); _ = box.servers }
        t.name = "edgemux-demo-backends"
        t.start()

        let admin = Self.adminPort(after: port)
        let yaml = Self.configTemplate
            .replacingOccurrences(of: "@PORT@", with: "\(port)")
            .replacingOccurrences(of: "@ADMIN@", with: "\(admin)")
            .replacingOccurrences(of: "@DIR@", with: dir)
            .replacingOccurrences(of: "@WEB1@", with: "\(ports.0)")
            .replacingOccurrences(of: "@WEB2@", with: "\(ports.1)")
            .replacingOccurrences(of: "@GRPC@", with: "\(ports.2)")
        try yaml.write(toFile: "\(dir)/edgemux-demo.yaml", atomically: true, encoding: .utf8)
        let config = try ConfigLoader.load(yaml: yaml, file: "\(dir)/edgemux-demo.yaml")
        snapshot = try Snapshot(config: config, generation: 1, ticketKeys: TLSServerContext.randomTicketKeys())
        ready = true
        let url = "https://localhost:\(port)"
        instructions = """

            edgemux demo: listening on \(url) (self-signed certificate \(dir)/demo.crt)
            demo backends: web HTTP/1.1 on 127.0.0.1:\(ports.0), web h2c on 127.0.0.1:\(ports.1), gRPC h2c on 127.0.0.1:\(ports.2)
            config in use: \(dir)/edgemux-demo.yaml     metrics: http://127.0.0.1:\(admin)/metrics

            Try, from another terminal:
              curl --cacert \(dir)/demo.crt --http1.1 \(url)/hello          # web backend, HTTP/1.1
              curl --cacert \(dir)/demo.crt --http2 \(url)/hello            # web backend, HTTP/2 (h2c upstream)
              curl --cacert \(dir)/demo.crt --http2 -H 'content-type: application/grpc' -H 'te: trailers' \\
                   --data-binary @/dev/null -o - \(url)/demo.Greeter/SayHello | strings   # gRPC backend
              /usr/bin/python3 -c 'import grpc; ch = grpc.secure_channel("localhost:\(port)", grpc.ssl_channel_credentials(open("\(dir)/demo.crt","rb").read())); print(ch.unary_unary("/demo.Greeter/SayHello")(b"\\x0a\\x05agent"))'
            Each answer names the backend that served it. Ctrl-C stops the demo.

            """
    }

    public func cleanUp() {
        try? FileManager.default.removeItem(atPath: directory)
    }
}

/// `@unchecked Sendable`: hands the demo loop and its servers to the demo thread, their only user.
struct DemoLoopBox: @unchecked Sendable {
    let loop: EventLoop
    let servers: [AnyObject]
}
