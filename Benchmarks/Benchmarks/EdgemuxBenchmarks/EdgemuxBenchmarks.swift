import Benchmark
import EdgemuxCore

/// Microbenchmarks of the per-connection parsing work. Malloc counts are part of the result.
let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(metrics: [.wallClock, .cpuTotal, .mallocCountTotal, .throughput], maxDuration: .seconds(2))

    let head = Array("GET /api/v1/clusters?limit=50 HTTP/1.1\r\nHost: platform.example.com\r\nUser-Agent: curl/8\r\nAccept: */*\r\nContent-Type: application/json\r\n\r\n".utf8)
    Benchmark("HTTP/1.1 head parse") { benchmark in
        let parser = HTTP1HeadParser(cap: 32768)
        for _ in benchmark.scaledIterations {
            blackHole(head.withUnsafeBytes { parser.parse($0) })
        }
    }

    Benchmark("config load (design example)") { benchmark in
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
        for _ in benchmark.scaledIterations {
            blackHole(try? ConfigLoader.load(yaml: yaml, file: "bench.yaml"))
        }
    }
}
