import Foundation
import Testing

@testable import EdgemuxCore

/// The fuzz targets' seeds (captured from real clients and servers by
/// Tests/Fuzz/capture-seeds.sh) and every input fuzzing once found to break a parser
/// (Tests/Fuzz/corpus/TARGET/regression-*) replayed on each test run, without a fuzzing build:
/// a parser change that crashes on one, or breaks a property FuzzTargets checks, fails here.
@Suite("fuzz corpora replayed")
struct FuzzCorpusTests {
    static let corpus = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Fuzz/corpus").path

    @Test("every target has seeds, and each seed keeps its target's properties", arguments: FuzzTargets.names)
    func replay(_ target: String) throws {
        let folder = "\(Self.corpus)/\(target)"
        let files = try FileManager.default.contentsOfDirectory(atPath: folder).sorted()
        #expect(!files.isEmpty, "no seeds for \(target) in \(folder)")
        for name in files {
            let data = try #require(FileManager.default.contents(atPath: "\(folder)/\(name)"))
            data.withUnsafeBytes { #expect(FuzzTargets.run(target, $0)) }
        }
    }

    /// The seeds are what they claim to be: the parsers read the real captures to the end.
    @Test func seedsParse() throws {
        func seed(_ target: String, _ name: String) throws -> [UInt8] {
            [UInt8](try #require(FileManager.default.contents(atPath: "\(Self.corpus)/\(target)/\(name)")))
        }
        let grpc = try seed("h2-sniffer", "grpc")
        var sniffer = HTTP2Sniffer(cap: 65536)
        guard case .done(let info, _, _) = grpc.withUnsafeBytes({ sniffer.parse($0) }) else {
            Issue.record("the gRPC client's start does not sniff")
            return
        }
        #expect(info.contentType.hasPrefix("application/grpc"))
        let hello = try seed("client-hello", "chromium")
        #expect(hello.withUnsafeBytes { ClientHelloParser.parse($0) } == .done(serverName: "ui.example.test"))
        let proxy = try seed("proxy-protocol", "haproxy-send-proxy-v2")
        guard case .done(let source, _, _) = proxy.withUnsafeBytes({ ProxyProtocolParser.parse($0) }) else {
            Issue.record("HAProxy's PROXY v2 header does not parse")
            return
        }
        #expect(source != nil)
        let connect = try seed("connect-request", "curl-proxy")
        guard case .done(let request) = connect.withUnsafeBytes({ ConnectRequestParser.parse($0, cap: 4096) }) else {
            Issue.record("curl's CONNECT does not parse")
            return
        }
        #expect(request.host == "cluster-1.example.test" && request.port == 6443)
    }
}
