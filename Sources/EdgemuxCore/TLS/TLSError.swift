import CEdgemux

/// A TLS failure, with OpenSSL's own words.
public struct TLSError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }

    /// Takes the first queued OpenSSL error (and clears the queue).
    static func fromQueue(_ what: String) -> TLSError {
        var buf = [CChar](repeating: 0, count: 256)
        CEdgemux_ERR_text(&buf, buf.count)
        let detail = String(cChars: buf)
        return TLSError(detail.isEmpty ? what : "\(what): \(detail)")
    }
}
