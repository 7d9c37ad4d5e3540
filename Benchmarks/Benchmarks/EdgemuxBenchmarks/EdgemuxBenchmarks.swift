import Benchmark
import EdgemuxCore

/// Microbenchmarks of what every connection pays: sniffing the first request, peeking a
/// ClientHello, the relay loop, loading a config. Malloc counts are part of each result: the relay
/// must allocate nothing per chunk in steady state.
let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .cpuTotal, .mallocCountTotal, .throughput],
        maxDuration: .seconds(2)
    )

    let head = Array("GET /api/v1/clusters?limit=50 HTTP/1.1\r\nHost: platform.example.com\r\nUser-Agent: curl/8\r\nAccept: */*\r\nContent-Type: application/json\r\n\r\n".utf8)
    Benchmark("HTTP/1.1 head parse") { benchmark in
        let parser = HTTP1HeadParser(cap: 32768)
        for _ in benchmark.scaledIterations {
            blackHole(head.withUnsafeBytes { parser.parse($0) })
        }
    }

    // Preface, a client SETTINGS, a WINDOW_UPDATE and a gRPC HEADERS (HPACK: static :method POST
    // and :scheme https, literal :path, :authority, content-type, te).
    func literal(_ index: UInt8, _ value: String) -> [UInt8] { [0x40 | index, UInt8(value.utf8.count)] + Array(value.utf8) }
    var block: [UInt8] = [0x83, 0x87]
    block += literal(4, "/agent.Stream/Connect") + literal(1, "platform.example:443") + literal(31, "application/grpc")
    block += [0x40, 2] + Array("te".utf8) + [8] + Array("trailers".utf8)
    var h2Start = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)
    h2Start += [0, 0, 12, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100, 0, 4, 0, 0x60, 0, 0]
    h2Start += [0, 0, 4, 8, 0, 0, 0, 0, 0, 0, 0x0f, 0, 1]
    h2Start += [0, 0, UInt8(block.count), 1, 4, 0, 0, 0, 1] + block
    let h2 = h2Start
    Benchmark("HTTP/2 sniff of a first HEADERS (HPACK decode)") { benchmark in
        for _ in benchmark.scaledIterations {
            var sniffer = HTTP2Sniffer(cap: 32768)
            blackHole(h2.withUnsafeBytes { sniffer.parse($0) })
        }
    }

    let hello = BenchmarkSupport.sampleClientHello(serverName: "api.c1.clusters.example.internal")
    // A backend's chunked response (nginx-like head, 8 chunks of 1 KiB, a trailer), as a pooled
    // one-request exchange follows it to its end.
    var chunkedResponse = Array("HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Sun, 29 Nov 2026 00:00:00 GMT\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n".utf8)
    for _ in 0..<8 { chunkedResponse += Array("400\r\n".utf8) + [UInt8](repeating: 0x61, count: 1024) + Array("\r\n".utf8) }
    chunkedResponse += Array("0\r\nX-Checksum: 1\r\n\r\n".utf8)
    let response = chunkedResponse
    Benchmark("HTTP/1.1 response head + chunked body scan (pooled exchange)") { benchmark in
        for _ in benchmark.scaledIterations {
            blackHole(BenchmarkSupport.followResponse(response))
        }
    }

    Benchmark("ClientHello SNI peek") { benchmark in
        for _ in benchmark.scaledIterations {
            blackHole(hello.withUnsafeBytes { ClientHelloParser.parse($0) })
        }
    }

    Benchmark("relay loop through socket pairs, 64 MiB in 64 KiB chunks", configuration: .init(metrics: [.wallClock, .cpuTotal, .mallocCountTotal, .syscalls, .throughput], maxDuration: .seconds(5), maxIterations: 20)) { benchmark in
        for _ in benchmark.scaledIterations {
            blackHole(try BenchmarkSupport.relayThroughSocketPairs(bytes: 64 << 20))
        }
    }

    let yaml = """
        listeners:
          - name: public
            listen: 127.0.0.1:8443
            routes:
              - { name: agents, match: { alpn: h2, content_type: application/grpc }, backend: grpc }
              - { name: web, backend: web }
        backends:
          web: { endpoints: { http1: [127.0.0.1:8080], h2c: [127.0.0.1:8081] } }
          grpc: { protocol: h2c, endpoints: [127.0.0.1:9090] }
        """
    Benchmark("config load and validation") { benchmark in
        for _ in benchmark.scaledIterations {
            blackHole(try? ConfigLoader.load(yaml: yaml, file: "bench.yaml"))
        }
    }
}
