// swift-tools-version:6.2
// What recording one request-mode request costs in metrics: edgemux's per-worker counters
// against swift-prometheus's shared objects. Run: cd Benchmarks/tools/metrics-cost && swift run -c release
import Foundation
import PackageDescription

// A path dependency's identity is its folder's name (see ../../Package.swift).
let edgemuxPackage = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().lastPathComponent.lowercased()

let package = Package(
    name: "metrics-cost",
    dependencies: [
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(path: "../../.."),
    ],
    targets: [.executableTarget(name: "metrics-cost", dependencies: [
        .product(name: "Prometheus", package: "swift-prometheus"),
        .product(name: "EdgemuxCore", package: edgemuxPackage),
    ])]
)
