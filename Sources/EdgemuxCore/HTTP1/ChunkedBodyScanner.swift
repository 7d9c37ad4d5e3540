/// Follows a chunked body (RFC 9112 section 7.1) as it passes through, to find where it ends;
/// the bytes are forwarded unchanged. No I/O, no copies: each call says how many of the given
/// bytes belong to the body.
struct ChunkedBodyScanner {
    enum State: Equatable {
        case size, sizeExtension, sizeLF, data, dataCR, dataLF
        /// At the start of a trailer line, or of the final empty line.
        case trailerStart, trailerLine, trailerLF, finalLF
        case done
    }

    enum Result: Equatable {
        /// All `count` bytes belonged to the body, which goes on.
        case more
        /// The body ended after `bodyBytes` of the given bytes.
        case done(bodyBytes: Int)
        case error(String)
    }

    private(set) var state: State = .size
    private var size = 0
    private var sizeDigits = 0
    private var remaining = 0
    /// Bytes of the current size line (with extensions) or trailer section: both are bounded.
    private var lineBytes = 0
    static let maxLine = 4096
    static let maxTrailers = 16 * 1024

    var isDone: Bool { state == .done }

    mutating func scan(_ bytes: UnsafeRawBufferPointer) -> Result {
        scan(bytes) { _ in }
    }

    /// Scans as `scan(_:)` does and calls `payload` with each range of chunk data (the decoded
    /// body without its framing), in order.
    mutating func scan(_ bytes: UnsafeRawBufferPointer, payload: (Range<Int>) -> Void) -> Result {
        var i = 0
        let n = bytes.count
        while i < n {
            let b = bytes[i]
            switch state {
            case .size:
                if let v = Self.hexValue(b) {
                    sizeDigits += 1
                    // 15 hex digits: sizes up to 2^60, far beyond any real body, and no overflow.
                    if sizeDigits > 15 { return .error("chunk size too long") }
                    size = size << 4 | v
                } else if sizeDigits == 0 {
                    return .error("chunk size expected")
                } else if b == UInt8(ascii: ";") || b == 32 || b == 9 {
                    state = .sizeExtension
                } else if b == 13 {
                    state = .sizeLF
                } else {
                    return .error("invalid character in a chunk size")
                }
                i += 1
            case .sizeExtension:
                if b == 13 { state = .sizeLF } else if b == 10 || b == 0 { return .error("invalid chunk extension") }
                lineBytes += 1
                if lineBytes > Self.maxLine { return .error("chunk extension too long") }
                i += 1
            case .sizeLF:
                guard b == 10 else { return .error("chunk size line not ended by CRLF") }
                i += 1
                lineBytes = 0
                sizeDigits = 0
                if size == 0 {
                    state = .trailerStart
                } else {
                    remaining = size
                    size = 0
                    state = .data
                }
            case .data:
                let take = min(remaining, n - i)
                payload(i..<(i + take))
                remaining -= take
                i += take
                if remaining == 0 { state = .dataCR }
            case .dataCR:
                guard b == 13 else { return .error("chunk data not followed by CRLF") }
                state = .dataLF
                i += 1
            case .dataLF:
                guard b == 10 else { return .error("chunk data not followed by CRLF") }
                state = .size
                i += 1
            case .trailerStart:
                state = b == 13 ? .finalLF : .trailerLine
                if b == 10 { return .error("bare LF in the trailer section") }
                lineBytes += 1
                i += 1
            case .trailerLine:
                if b == 13 { state = .trailerLF } else if b == 10 { return .error("bare LF in the trailer section") }
                lineBytes += 1
                if lineBytes > Self.maxTrailers { return .error("trailer section too large") }
                i += 1
            case .trailerLF:
                guard b == 10 else { return .error("trailer line not ended by CRLF") }
                state = .trailerStart
                i += 1
            case .finalLF:
                guard b == 10 else { return .error("chunked body not ended by CRLF") }
                state = .done
                return .done(bodyBytes: i + 1)
            case .done:
                return .done(bodyBytes: 0)
            }
        }
        return .more
    }

    private static func hexValue(_ b: UInt8) -> Int? {
        switch b {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return Int(b - UInt8(ascii: "0"))
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return Int(b - UInt8(ascii: "a") + 10)
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return Int(b - UInt8(ascii: "A") + 10)
        default: return nil
        }
    }
}
