import ArgumentParser
import EdgemuxCore
import Foundation
import Logging

struct EdgemuxCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "edgemux",
        abstract: "TLS-terminating reverse proxy and connection multiplexer: web/API and gRPC on one port.",
        version: EdgemuxBuild.version,
        subcommands: [Run.self, Check.self, Demo.self, Version.self],
        defaultSubcommand: nil
    )
}


struct LogOptions: ParsableArguments {
    @Option(name: .long, help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = "info"

    @Option(name: .long, help: "Process log lines on stderr: text, or json (one object per line).")
    var logFormat: String = "text"

    func validate() throws {
        guard Logger.Level(rawValue: logLevel) != nil else {
            throw ValidationError("--log-level \(logLevel): expected one of \(Logger.Level.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        guard ProcessLogHandler.Format(rawValue: logFormat) != nil else {
            throw ValidationError("--log-format \(logFormat): expected text or json")
        }
    }

    func bootstrap() {
        let level = Logger.Level(rawValue: logLevel) ?? .info
        let format = ProcessLogHandler.Format(rawValue: logFormat) ?? .text
        LoggingSystem.bootstrap { label in ProcessLogHandler(label: label, format: format, level: level) }
    }
}

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run edgemux with a config file.")

    @Option(name: .shortAndLong, help: "The YAML config file.")
    var config: String

    @Flag(help: "Reload when the config file or a certificate, key or CA it names changes (Kubernetes volume swaps included).")
    var watch = false

    @OptionGroup var log: LogOptions

    func run() throws {
        Server.prepareSignals()
        log.bootstrap()
        let logger = Logger(label: "edgemux")
        let keys = TLSServerContext.randomTicketKeys()
        let path = config
        let first: Snapshot
        do {
            first = try Snapshot(config: ConfigLoader.load(path: path), generation: 1, ticketKeys: keys)
        } catch {
            FileHandle.standardError.write(Data("edgemux: \(path): config rejected:\n\(error)\n".utf8))
            throw ExitCode(2)
        }
        let server = Server(snapshot: first, logger: logger)
        let generation = GenerationCounter()
        server.reloader = {
            try Snapshot(config: ConfigLoader.load(path: path), generation: generation.next(), ticketKeys: keys)
        }
        do {
            try server.start()
        } catch {
            FileHandle.standardError.write(Data("edgemux: cannot start: \(error)\n".utf8))
            throw ExitCode(1)
        }
        server.runUntilStopped(watch: watch ? path : nil)
    }
}

/// Reload generations, counted on the signal thread only.
final class GenerationCounter: @unchecked Sendable {
    private var value = 1
    func next() -> Int {
        value += 1
        return value
    }
}

struct Check: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Validate a config file (and load its certificates) without running.")

    @Option(name: .shortAndLong, help: "The YAML config file.")
    var config: String

    @Flag(name: .customLong("no-files"), help: "Check syntax, values and references only: do not read the certificates, keys, CAs, OCSP responses, ticket keys or credential files the config names, nor resolve its backends' host names (for a config repository's CI, where they are not).")
    var noFiles = false

    func run() throws {
        do {
            let cfg = try ConfigLoader.load(path: config, readingFiles: !noFiles)
            if !noFiles { _ = try Snapshot(config: cfg, generation: 1, ticketKeys: TLSServerContext.randomTicketKeys()) }
            let routes = cfg.listeners.reduce(0) { $0 + $1.routes.count }
            print("\(config): ok: \(cfg.listeners.count) listeners (\(cfg.listeners.map { "\($0.name) \($0.address)" }.joined(separator: ", "))), \(routes) routes, \(cfg.backends.count) backends, \(cfg.workers) workers\(noFiles ? " (--no-files: certificates, keys and other files not read, host names not resolved)" : "")")
            for l in cfg.listeners where l.tunnel == nil {
                for r in l.routes {
                    print("  \(l.name): route '\(r.name)' -> backend '\(r.backend)': \(RouteDescription.mode(r))")
                }
            }
        } catch let e as ConfigError {
            FileHandle.standardError.write(Data("\(e.issues.map { $0.file.isEmpty ? "\(config): \($0)" : "\($0)" }.joined(separator: "\n"))\n\(e.issues.count) error(s)\n".utf8))
            throw ExitCode(1)
        }
    }
}

struct Version: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print the version.")
    func run() {
        print("edgemux \(EdgemuxBuild.version) (OpenSSL \(EdgemuxBuild.openSSL), nghttp2 \(EdgemuxBuild.nghttp2))")
    }
}
