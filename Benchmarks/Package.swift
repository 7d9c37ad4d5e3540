// swift-tools-version:6.1
// The benchmark target lives in its own package so that `swift test` of edgemux never builds
// ordo-one/benchmark. Run: cd Benchmarks && swift package benchmark
import Foundation
import PackageDescription

// A path dependency's identity is its folder's name: edgemux is whatever the clone's folder is
// called (main, edgemux, ...), so it is read here rather than written down.
let edgemuxPackage = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().lastPathComponent.lowercased()

let package = Package(
    name: "EdgemuxBenchmarks",
    platforms: [.macOS(.v14)],
    dependencies: [
        .package(path: ".."),
        .package(url: "https://github.com/ordo-one/benchmark.git", from: "1.38.0", traits: ["MallocInterposer"]),
    ],
    targets: [
        .executableTarget(
            name: "EdgemuxBenchmarks",
            dependencies: [
                .product(name: "EdgemuxCore", package: edgemuxPackage),
                .product(name: "Benchmark", package: "benchmark"),
            ],
            path: "Benchmarks/EdgemuxBenchmarks",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        )
    ]
)
