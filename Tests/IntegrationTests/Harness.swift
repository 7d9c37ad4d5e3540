import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Where things are: the built binary, the peers script, the certificate script.
enum Paths {
    static let packageRoot: URL = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static let peers = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Peers/peers.py").path
    static let certScript = packageRoot.appendingPathComponent("Certs/gen-test-certs.sh").path
    static let python = "/usr/bin/python3"

    /// The edgemux executable built next to this test bundle.
    static let edgemux: String = {
        if let env = ProcessInfo.processInfo.environment["EDGEMUX_BIN"] { return env }
        let beside = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("edgemux").path
        if FileManager.default.isExecutableFile(atPath: beside) { return beside }
        for candidate in [".build/debug/edgemux", ".build/release/edgemux"] {
            let p = packageRoot.appendingPathComponent(candidate).path
            if FileManager.default.isExecutableFile(atPath: p) { return p }
        }
        return beside
    }()
}

/// A scratch folder for one test, removed at the end.
final class Scratch {
    let path: String
    init(_ name: String) {
        path = NSTemporaryDirectory() + "edgemux-test-\(name)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }
    deinit { try? FileManager.default.removeItem(atPath: path) }
    func file(_ name: String) -> String { "\(path)/\(name)" }
}

/// Test certificates, made once per test run by Certs/gen-test-certs.sh.
enum TestCerts {
    static let dir: String = {
        let d = NSTemporaryDirectory() + "edgemux-test-certs-\(getpid())"
        let r = Command.run("/bin/bash", [Paths.certScript, d], timeout: 60)
        precondition(r.status == 0, "cannot make test certificates: \(r.stderr)")
        // The folder holds the test CA's key: gone when the test process ends.
        atexit { try? FileManager.default.removeItem(atPath: NSTemporaryDirectory() + "edgemux-test-certs-\(getpid())") }
        return d
    }()
    static var ca: String { "\(dir)/ca.pem" }
    static var cert: String { "\(dir)/localhost.pem" }
    static var key: String { "\(dir)/localhost.key" }
    static var otherCert: String { "\(dir)/other.pem" }
    static var otherKey: String { "\(dir)/other.key" }
}

/// A finished command.
struct CommandResult {
    let status: Int32
    let stdout: String
    let stderr: String
    let timedOut: Bool
}

enum Command {
    /// Runs a command to completion (killed after `timeout` seconds), capturing its output.
    static func run(_ exe: String, _ args: [String], timeout: Double = 60, stdin: String? = nil) -> CommandResult {
        let scratch = Scratch("cmd")
        let p = Process()
        p.executableURL = URL(fileURLWithPath: exe)
        p.arguments = args
        FileManager.default.createFile(atPath: scratch.file("out"), contents: nil)
        FileManager.default.createFile(atPath: scratch.file("err"), contents: nil)
        p.standardOutput = FileHandle(forWritingAtPath: scratch.file("out"))
        p.standardError = FileHandle(forWritingAtPath: scratch.file("err"))
        if let stdin {
            let pipe = Pipe()
            p.standardInput = pipe
            try? p.run()
            pipe.fileHandleForWriting.write(Data(stdin.utf8))
            try? pipe.fileHandleForWriting.close()
        } else {
            p.standardInput = FileHandle.nullDevice
            do { try p.run() } catch {
                return CommandResult(status: -1, stdout: "", stderr: "cannot run \(exe): \(error)", timedOut: false)
            }
        }
        let deadline = Date().addingTimeInterval(timeout)
        var timedOut = false
        while p.isRunning {
            if Date() > deadline {
                timedOut = true
                kill(p.processIdentifier, SIGKILL)
                break
            }
            usleep(20_000)
        }
        p.waitUntilExit()
        let out = (try? String(contentsOfFile: scratch.file("out"), encoding: .utf8)) ?? ""
        let err = (try? String(contentsOfFile: scratch.file("err"), encoding: .utf8)) ?? ""
        return CommandResult(status: p.terminationStatus, stdout: out, stderr: err, timedOut: timedOut)
    }
}

/// A process that runs in the background for a test: a peer server or edgemux itself. Stopped
/// (by its PID) when released.
final class Background {
    let process = Process()
    let logPath: String
    let name: String
    private let scratch: Scratch

    init(_ name: String, _ exe: String, _ args: [String]) throws {
        self.name = name
        scratch = Scratch("bg-\(name)")
        logPath = scratch.file("log")
        FileManager.default.createFile(atPath: logPath, contents: nil)
        process.executableURL = URL(fileURLWithPath: exe)
        process.arguments = args
        let handle = FileHandle(forWritingAtPath: logPath)
        process.standardOutput = handle
        process.standardError = handle
        process.standardInput = FileHandle.nullDevice
        try process.run()
    }

    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    /// Waits for a line "ready PORT" (the peers script) and returns PORT.
    func readyPort(timeout: Double = 20) throws -> UInt16 {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            for line in log.split(separator: "\n") where line.hasPrefix("ready ") {
                if let p = UInt16(line.dropFirst(6)) { return p }
            }
            if !process.isRunning { break }
            usleep(50_000)
        }
        throw HarnessError("\(name) did not become ready: \(log)")
    }

    /// Sends `signal` to the process.
    func signal(_ sig: Int32) { kill(process.processIdentifier, sig) }

    /// Waits up to `timeout` for the process to exit; its status, or nil if still running.
    func waitExit(timeout: Double) -> Int32? {
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(20_000) }
        return process.isRunning ? nil : process.terminationStatus
    }

    /// Stops the process: `signal` first (the test runner starts children with SIGTERM ignored,
    /// so peers get SIGKILL by default; edgemux handles SIGTERM itself), SIGKILL after 5 s.
    func stop(signal sig: Int32 = SIGKILL) {
        guard process.isRunning else { return }
        kill(process.processIdentifier, sig)
        if waitExit(timeout: 5) == nil {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }

    deinit { stop() }
}

struct HarnessError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

/// A free TCP port on 127.0.0.1 (bound and released: the kernel does not hand it out again at once).
func freePort() -> UInt16 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    addr.sin_port = 0
    _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
    return UInt16(bigEndian: addr.sin_port)
}

/// Waits until something accepts TCP connections on 127.0.0.1:port.
func waitForPort(_ port: UInt16, timeout: Double = 20, while owner: Background? = nil) -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if let owner, !owner.process.isRunning { return false }
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = port.bigEndian
        let r = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        close(fd)
        if r == 0 { return true }
        usleep(50_000)
    }
    return false
}

/// Polls `probe` until it gives a value or `timeout` passes: for what edgemux writes just after a
/// client is done (access log lines, gauges).
func eventually<T>(timeout: Double = 5, _ probe: () -> T?) -> T? {
    let deadline = Date().addingTimeInterval(timeout)
    repeat {
        if let value = probe() { return value }
        usleep(20_000)
    } while Date() < deadline
    return nil
}

/// edgemux started from a YAML config for one test.
final class Edgemux {
    let background: Background
    let configPath: String
    let port: UInt16
    private let scratch: Scratch

    init(config: String, port: UInt16, extraArgs: [String] = []) throws {
        scratch = Scratch("edgemux")
        configPath = scratch.file("edgemux.yaml")
        try config.write(toFile: configPath, atomically: true, encoding: .utf8)
        self.port = port
        background = try Background("edgemux", Paths.edgemux, ["run", "--config", configPath] + extraArgs)
        guard waitForPort(port, while: background) else {
            throw HarnessError("edgemux did not listen on \(port): \(background.log)")
        }
    }

    var log: String { background.log }

    /// Stops edgemux; a crash before that (it died of a signal: a trap, an abort) fails the test
    /// that started it, whatever the test itself checked.
    func stop() {
        if !background.process.isRunning, background.process.terminationReason == .uncaughtSignal {
            Issue.record("edgemux crashed (signal \(background.process.terminationStatus)): \(log.suffix(4000))")
        }
        background.stop(signal: SIGTERM)
    }

    deinit { stop() }
}

/// The sum of a metric's series in Prometheus text whose labels include `labels` (every
/// listener's, when `listener` is not given); 0 when there is none.
func metricSum(_ text: String, _ name: String, _ labels: [String: String] = [:]) -> Int {
    var sum = 0
    for line in text.split(separator: "\n") where line.hasPrefix(name) && !line.hasPrefix("#") {
        let rest = line.dropFirst(name.count)
        guard rest.first == "{" || rest.first == " " else { continue }
        var have: [String: String] = [:]
        if rest.first == "{", let close = rest.firstIndex(of: "}") {
            for pair in rest[rest.index(after: rest.startIndex)..<close].split(separator: ",") {
                let kv = pair.split(separator: "=", maxSplits: 1)
                if kv.count == 2 { have[String(kv[0])] = String(kv[1].dropFirst().dropLast()) }
            }
        }
        guard labels.allSatisfy({ have[$0.key] == $0.value }) else { continue }
        sum += Int(Double(line.split(separator: " ").last ?? "") ?? 0)
    }
    return sum
}

/// Writes `yaml` as edgemux's config and sends SIGHUP.
func reload(_ e: Edgemux, to yaml: String) throws {
    try yaml.write(toFile: e.configPath, atomically: true, encoding: .utf8)
    e.background.signal(SIGHUP)
}

/// Waits until edgemux's log has `count` lines containing `text`.
func waitForLog(_ e: Edgemux, _ text: String, count: Int = 1, timeout: Double = 10) -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if e.log.components(separatedBy: text).count - 1 >= count { return true }
        usleep(50_000)
    }
    return false
}

/// A peer from Peers/peers.py, started and waited for.
func startPeer(_ kind: String, _ args: [String] = []) throws -> (Background, UInt16) {
    let bg = try Background(kind, Paths.python, [Paths.peers, kind, "--max-seconds", "600"] + args)
    let port = try bg.readyPort()
    return (bg, port)
}

/// curl with the test CA, resolving localhost to 127.0.0.1.
func curl(_ args: [String], port: UInt16, timeout: Double = 30) -> CommandResult {
    Command.run("/usr/bin/curl", ["-sS", "--max-time", "\(Int(timeout))", "--cacert", TestCerts.ca,
                                  "--resolve", "localhost:\(port):127.0.0.1"] + args, timeout: timeout + 5)
}

/// The usual listener block for tests: TLS with the test certificate.
func tlsBlock(alpn: String = "[h2, http/1.1]") -> String {
    """
        tls:
          certificates:
            - { cert: \(TestCerts.cert), key: \(TestCerts.key) }
          alpn: \(alpn)
    """
}

/// Every end-to-end suite nests in this one, so that they run one at a time: they start real
/// servers and move tens of megabytes, and the timeouts they check must not compete for 2 cores.
@Suite("integration", .serialized)
enum Integration {}
