import Glibc
import Logging

/// edgemux's own log lines (not the access log) on stderr: RFC 3339 UTC timestamps with
/// milliseconds, the level, the metadata (worker=N) and the message; or one JSON object per
/// line (`--log-format json`) for log shippers. One write(2) per line, so lines of several
/// workers never interleave.
public struct ProcessLogHandler: LogHandler {
    public enum Format: String, CaseIterable, Sendable {
        case text
        case json
    }

    let label: String
    let format: Format
    public var logLevel: Logger.Level
    public var metadata: Logger.Metadata = [:]

    public init(label: String, format: Format, level: Logger.Level) {
        self.label = label
        self.format = format
        self.logLevel = level
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var all = metadata
        if let explicit = event.metadata { all.merge(explicit) { $1 } }
        let line = Self.render(format: format, time: AccessLogClock.timestamp(), level: event.level, label: label, metadata: all, message: "\(event.message)")
        var bytes = Array(line.utf8)
        _ = bytes.withUnsafeMutableBytes { Glibc.write(2, $0.baseAddress, $0.count) }
    }

    static func render(format: Format, time: String, level: Logger.Level, label: String, metadata: Logger.Metadata, message: String) -> String {
        let keys = metadata.keys.sorted()
        switch format {
        case .text:
            let meta = keys.map { "\($0)=\(metadata[$0]!)" }.joined(separator: " ")
            return "\(time) \(level) \(label): \(meta.isEmpty ? "" : meta + " ")\(message)\n"
        case .json:
            var out = "{\"time\":\"\(time)\",\"level\":\"\(level)\",\"logger\":\(AccessLog.quote(label))"
            for k in keys { out += ",\(AccessLog.quote(k)):\(AccessLog.quote("\(metadata[k]!)"))" }
            return out + ",\"message\":\(AccessLog.quote(message))}\n"
        }
    }
}
