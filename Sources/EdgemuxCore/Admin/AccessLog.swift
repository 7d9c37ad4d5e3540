import Glibc

/// The access log: one JSON line per client connection, written when it closes, with one
/// write(2) per line (lines from several workers never interleave mid-line with O_APPEND).
///
/// `@unchecked Sendable`: the descriptor is opened in `init` and only written after; write(2)
/// is safe to call from several threads.
public final class AccessLog: @unchecked Sendable {
    let fd: Int32
    let owned: Bool

    /// `target`: "stdout", "stderr" or an absolute path (appended to, created 0640).
    public init(target: String) throws {
        switch target {
        case "stdout": fd = 1; owned = false
        case "stderr": fd = 2; owned = false
        default:
            let f = open(target, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o640)
            if f < 0 { throw IOError(errnoCode: errno, reason: "open access log \(target)") }
            fd = f
            owned = true
        }
    }

    deinit { if owned { Glibc.close(fd) } }

    func write(_ fields: [(String, JSONValue)]) {
        var line = "{"
        for (i, (k, v)) in fields.enumerated() {
            if i > 0 { line += "," }
            line += "\"\(k)\":"
            switch v {
            case .string(let s): line += AccessLog.quote(s)
            case .int(let n): line += String(n)
            case .null: line += "null"
            case .bool(let b): line += b ? "true" : "false"
            }
        }
        line += "}\n"
        var bytes = Array(line.utf8)
        _ = bytes.withUnsafeMutableBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
    }

    enum JSONValue {
        case string(String)
        case int(Int)
        case bool(Bool)
        case null
    }

    static func quote(_ s: String) -> String {
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if u.value < 0x20 {
                    let hex = String(u.value, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                } else {
                    out.unicodeScalars.append(u)
                }
            }
        }
        return out + "\""
    }
}
