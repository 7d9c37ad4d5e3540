/// Reads an HTTP/1.1 request head (request line and header fields up to the empty line) for
/// routing. It never consumes: the caller replays every byte to the backend. No I/O.
public struct HTTP1HeadParser {
    /// The largest head accepted (request line + headers + CRLFs).
    public let cap: Int

    public enum Result: Equatable {
        case needMore
        /// The head ends at `headLength` bytes.
        case done(RequestInfo, headLength: Int)
        case error(SniffError)
    }

    public init(cap: Int) { self.cap = cap }

    static let tokenChars: [Bool] = {
        var t = [Bool](repeating: false, count: 256)
        for c in UInt8(ascii: "a")...UInt8(ascii: "z") { t[Int(c)] = true }
        for c in UInt8(ascii: "A")...UInt8(ascii: "Z") { t[Int(c)] = true }
        for c in UInt8(ascii: "0")...UInt8(ascii: "9") { t[Int(c)] = true }
        for c in "!#$%&'*+-.^_`|~".utf8 { t[Int(c)] = true }
        return t
    }()

    /// Parses `bytes` (everything received so far).
    public func parse(_ bytes: UnsafeRawBufferPointer) -> Result {
        // RFC 9112 section 2.2: a server SHOULD ignore at least one empty line before the request line.
        var start = 0
        while start + 1 < bytes.count, bytes[start] == 13, bytes[start + 1] == 10, start < 4 { start += 2 }
        // A bare LF (or CR) ends a line for some parsers and not for others: refused before
        // anything else reads the head (RFC 9112 section 2.2, request smuggling).
        let headEnd = findHeadEnd(bytes, from: start)
        let scanned = headEnd ?? min(bytes.count, cap + 4)
        var k = start
        while k < scanned {
            let b = bytes[k]
            if b == 10, k == 0 || bytes[k - 1] != 13 { return .error(.malformedHead("bare LF in the request head")) }
            if b == 13, k + 1 < bytes.count, bytes[k + 1] != 10 { return .error(.malformedHead("bare CR in the request head")) }
            k += 1
        }
        guard let end = headEnd else {
            if bytes.count > cap { return .error(.headTooLarge(cap)) }
            // Fail fast on garbage: what has come of the request line must be able to become one.
            if let problem = Self.partialRequestLineProblem(bytes, from: start) { return .error(.malformedHead(problem)) }
            return .needMore
        }
        if end > cap { return .error(.headTooLarge(cap)) }
        var info = RequestInfo()
        var lineStart = start
        var first = true
        var sawHost = false
        var absoluteForm = false
        while lineStart < end - 2 {
            var lineEnd = lineStart
            while lineEnd < end, !(bytes[lineEnd] == 13 && bytes[lineEnd + 1] == 10) { lineEnd += 1 }
            let line = UnsafeRawBufferPointer(rebasing: bytes[lineStart..<lineEnd])
            if first {
                if let e = parseRequestLine(line, into: &info) { return .error(e) }
                absoluteForm = !info.host.isEmpty
                first = false
            } else {
                if line.first == 32 || line.first == 9 {
                    return .error(.malformedHead("obsolete line folding"))
                }
                guard let colon = line.firstIndex(of: UInt8(ascii: ":")), colon > 0 else {
                    return .error(.malformedHead("header line without a field name"))
                }
                for i in 0..<colon where !Self.tokenChars[Int(line[i])] {
                    return .error(.malformedHead("invalid character in a field name"))
                }
                let name = String(decoding: line[0..<colon], as: UTF8.self).lowercased()
                var v0 = colon + 1, v1 = line.count
                while v0 < v1, line[v0] == 32 || line[v0] == 9 { v0 += 1 }
                while v1 > v0, line[v1 - 1] == 32 || line[v1 - 1] == 9 { v1 -= 1 }
                for i in v0..<v1 where line[i] == 0 || line[i] == 13 || line[i] == 10 {
                    return .error(.malformedHead("invalid character in a field value"))
                }
                let value = String(decoding: line[v0..<v1], as: UTF8.self)
                switch name {
                case "host":
                    if sawHost { return .error(.malformedHead("more than one Host header")) }
                    sawHost = true
                    // RFC 9112 3.2.2: an absolute-form target's authority wins over Host.
                    if !absoluteForm { info.host = Self.hostWithoutPort(value) }
                case "content-type": info.contentType = value
                case "upgrade": info.upgrade = value.lowercased()
                case "connection":
                    if HTTP1Fields.listContains(value, "close") { info.framing.closeRequested = true }
                case "content-length":
                    if value != "0" { info.framing.hasBody = true }
                case "transfer-encoding": info.framing.hasBody = true
                case "expect": info.framing.expects = true
                default: break
                }
            }
            lineStart = lineEnd + 2
        }
        if first { return .error(.malformedHead("empty request")) }
        return .done(info, headLength: end)
    }

    /// Offset just past the first CRLFCRLF at or after `from`.
    private func findHeadEnd(_ b: UnsafeRawBufferPointer, from: Int) -> Int? {
        let limit = min(b.count, cap + 4)
        guard limit >= from + 4 else { return nil }
        var i = from
        while i + 3 < limit {
            if b[i + 3] == 10 {
                if b[i] == 13, b[i + 1] == 10, b[i + 2] == 13 { return i + 4 }
                i += 1
            } else if b[i + 3] == 13 {
                i += 1
            } else {
                i += 4
            }
        }
        return nil
    }

    /// The longest method accepted (the registered ones are at most 17 bytes).
    static let maxMethodLength = 32

    /// What is already wrong with a request line that has not ended (RFC 9112 section 3: a
    /// method of token characters, one space, a target without controls or spaces, one space,
    /// `HTTP/1.x` and CRLF), or nil while it can still become one. Junk is refused at the byte
    /// that makes it junk, not when the request timeout runs out.
    static func partialRequestLineProblem(_ b: UnsafeRawBufferPointer, from start: Int) -> String? {
        var i = start
        if i < b.count, b[i] == 13, i + 1 == b.count { return nil }  // an empty line's CR, its LF to come
        while i < b.count, b[i] != 32 {
            if !tokenChars[Int(b[i])] { return i == start ? "request line does not start with a method" : "invalid method" }
            i += 1
            if i - start > maxMethodLength { return "method longer than \(maxMethodLength) bytes" }
        }
        guard i < b.count else { return nil }
        if i == start { return "request line has no method" }
        i += 1
        let targetStart = i
        while i < b.count, b[i] != 32 {
            if b[i] < 32 || b[i] == 127 { return b[i] == 13 || b[i] == 10 ? "request line has no version" : "invalid request target" }
            i += 1
        }
        guard i < b.count else { return nil }
        if i == targetStart { return "request line has no target" }
        i += 1
        let version: [UInt8] = Array("HTTP/1.".utf8)
        for k in 0..<9 where i + k < b.count {
            let c = b[i + k]
            let ok: Bool
            switch k {
            case 0..<7: ok = c == version[k]
            case 7: ok = c == UInt8(ascii: "0") || c == UInt8(ascii: "1")
            default: ok = c == 13
            }
            if !ok { return "unsupported version" }
        }
        return nil
    }

    private func parseRequestLine(_ line: UnsafeRawBufferPointer, into info: inout RequestInfo) -> SniffError? {
        guard let sp1 = line.firstIndex(of: 32), sp1 > 0 else { return .malformedHead("request line has no method") }
        for i in 0..<sp1 where !Self.tokenChars[Int(line[i])] { return .malformedHead("invalid method") }
        // The same bound as while the line arrives (partialRequestLineProblem): a head is not
        // judged by how fast it came.
        if sp1 > Self.maxMethodLength { return .malformedHead("method longer than \(Self.maxMethodLength) bytes") }
        let rest = UnsafeRawBufferPointer(rebasing: line[(sp1 + 1)...])
        guard let sp2rel = rest.firstIndex(of: 32), sp2rel > 0 else { return .malformedHead("request line has no target") }
        let sp2 = sp1 + 1 + sp2rel
        let version = String(decoding: line[(sp2 + 1)...], as: UTF8.self)
        guard version == "HTTP/1.1" || version == "HTTP/1.0" else { return .malformedHead("unsupported version '\(version.prefix(16))'") }
        info.framing.http10 = version == "HTTP/1.0"
        for i in (sp1 + 1)..<sp2 where line[i] <= 32 || line[i] == 127 { return .malformedHead("invalid request target") }
        info.method = String(decoding: line[0..<sp1], as: UTF8.self)
        var target = String(decoding: line[(sp1 + 1)..<sp2], as: UTF8.self)
        // absolute-form (RFC 9112 3.2.2): the authority in the target overrides Host.
        if (target.utf8.first ?? 0) | 0x20 == UInt8(ascii: "h"), let r = Self.authorityStart(target) {
            let afterScheme = target[r...]
            let slash = afterScheme.firstIndex(of: "/") ?? afterScheme.endIndex
            info.host = Self.hostWithoutPort(String(afterScheme[..<slash]))
            target = slash == afterScheme.endIndex ? "/" : String(afterScheme[slash...])
        }
        info.path = target
        return nil
    }

    /// Where the authority of an absolute-form target ("http://..." / "https://...") starts.
    /// The scheme is case-insensitive (RFC 3986 section 3.1): `HTTP://other.example/` routes by
    /// other.example, as nginx does.
    static func authorityStart(_ target: String) -> String.Index? {
        let u = target.utf8
        for scheme in ["http://", "https://"] where u.count >= scheme.utf8.count && zip(u, scheme.utf8).allSatisfy({ $0 | 0x20 == $1 | 0x20 }) {
            return u.index(u.startIndex, offsetBy: scheme.utf8.count)
        }
        return nil
    }

    /// "Example.com:443" → "example.com"; "[::1]:8443" → "[::1]".
    static func hostWithoutPort(_ value: String) -> String {
        let lower = value.lowercased()
        if lower.hasPrefix("[") {
            if let close = lower.firstIndex(of: "]") { return String(lower[...close]) }
            return lower
        }
        if let colon = lower.lastIndex(of: ":") { return String(lower[..<colon]) }
        return lower
    }
}
