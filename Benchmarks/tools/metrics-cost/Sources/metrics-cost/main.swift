import Prometheus
import Glibc
import EdgemuxCore

// What one request-mode request records: requests_total{listener,route,code_class} += 1 and a
// duration histogram observation {listener,route}. Two workers (threads) do it at once, as
// edgemux's two workers on 2 cores.
let perThread = 2_000_000
let threads = 2

struct Key: Hashable { let listener: String; let route: String; let statusClass: Int }
struct Hist { var counts = [Int](repeating: 0, count: 14); var total = 0; var sum: Int64 = 0
    static let bounds: [Int64] = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000, 60_000, 300_000]
    mutating func observe(_ m: Int64) { total += 1; sum += m; if let i = Self.bounds.firstIndex(where: { m <= $0 }) { counts[i] += 1 } } }
struct Values { var requests: [Key: Int] = [:]; var durations: [String: Hist] = [:] }
final class WorkerStore: @unchecked Sendable { let values = Lock(Values()) }

func now() -> Double { var t = timespec(); clock_gettime(CLOCK_MONOTONIC, &t); return Double(t.tv_sec) + Double(t.tv_nsec) / 1e9 }

func run(_ name: String, _ body: @escaping @Sendable (Int) -> Void) {
    let start = now()
    var tids: [pthread_t] = []
    final class Box: @unchecked Sendable { let f: (Int) -> Void; let i: Int; init(_ f: @escaping (Int) -> Void, _ i: Int) { self.f = f; self.i = i } }
    for i in 0..<threads {
        var t = pthread_t()
        let box = Unmanaged.passRetained(Box(body, i)).toOpaque()
        pthread_create(&t, nil, { p in let b = Unmanaged<Box>.fromOpaque(p!).takeRetainedValue(); b.f(b.i); return nil }, box)
        tids.append(t)
    }
    for t in tids { pthread_join(t, nil) }
    let ns = (now() - start) * 1e9 / Double(perThread)
    print("\(name): \(String(format: "%.1f", ns)) ns per request (wall, \(threads) threads at once)")
}

let listener = "public", routes = ["web", "api", "agents"]
let stores = (0..<threads).map { _ in WorkerStore() }
run("per-worker lock + dictionaries (edgemux today)") { w in
    let s = stores[w]
    for i in 0..<perThread {
        let route = routes[i % 3]
        s.values.withLock { v in
            v.requests[Key(listener: listener, route: route, statusClass: 2), default: 0] += 1
            v.durations[route, default: Hist()].observe(Int64(i & 63))
        }
    }
}
let registry = PrometheusCollectorRegistry()
let buckets: [Duration] = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000, 60_000, 300_000].map { .milliseconds($0) }
// Handles made once (at config load) and kept on the route: no registry lookup per request.
let counters = routes.map { registry.makeCounter(name: "edgemux_requests_total", labels: [("listener", listener), ("route", $0), ("code_class", "2xx")]) }
let histograms = routes.map { registry.makeDurationHistogram(name: "edgemux_request_duration_seconds", labels: [("listener", listener), ("route", $0)], buckets: buckets) }
run("swift-prometheus, handles kept (shared atomics and histogram lock)") { _ in
    for i in 0..<perThread {
        counters[i % 3].increment()
        histograms[i % 3].record(.milliseconds(i & 63))
    }
}
run("swift-prometheus, registry lookup per request") { _ in
    for i in 0..<perThread {
        let route = routes[i % 3]
        registry.makeCounter(name: "edgemux_requests_total", labels: [("listener", listener), ("route", route), ("code_class", "2xx")]).increment()
        registry.makeDurationHistogram(name: "edgemux_request_duration_seconds", labels: [("listener", listener), ("route", route)], buckets: buckets).record(.milliseconds(i & 63))
    }
}
print(registry.emitToString().split(separator: "\n").filter { $0.hasPrefix("edgemux_requests_total") }.joined(separator: "\n"))
