// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "edgemux",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "edgemux", targets: ["edgemux"]),
        .library(name: "EdgemuxCore", targets: ["EdgemuxCore"]),
    ],
    dependencies: [
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.0.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.0"),  // LogHandler.log(event:)
    ],
    targets: [
        // Every C macro, inline function and _GNU_SOURCE call that Swift cannot import directly.
        .target(
            name: "CEdgemux",
            linkerSettings: [
                .linkedLibrary("ssl"),
                .linkedLibrary("crypto"),
                .linkedLibrary("nghttp2"),
            ]
        ),
        .target(
            name: "EdgemuxCore",
            dependencies: [
                "CEdgemux",
                .product(name: "Yams", package: "Yams"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "edgemux",
            dependencies: [
                "EdgemuxCore",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // libFuzzer driver and corpus replayer for the parsers (Tests/Fuzz/fuzz.sh builds it
        // with -sanitize=fuzzer,address).
        .executableTarget(
            name: "edgemux-fuzz",
            dependencies: ["EdgemuxCore", "CEdgemux"]
        ),
        .testTarget(
            name: "EdgemuxCoreTests",
            dependencies: ["EdgemuxCore", "CEdgemux"]
        ),
        .testTarget(
            name: "IntegrationTests",
            dependencies: ["EdgemuxCore", "edgemux"],
            // The Python peers run from the source tree (Debian's /usr/bin/python3), not as resources.
            exclude: ["Peers"]
        ),
    ],
    swiftLanguageModes: [.v6]
)
