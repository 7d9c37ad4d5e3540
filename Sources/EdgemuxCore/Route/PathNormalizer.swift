/// The path a request acts on, as RFC 3986 section 6.2.2 normalises it: percent-encoded
/// unreserved characters decoded (`%61` is `a`), other escapes kept with uppercase hex, and dot
/// segments removed (section 5.2.4: `/x/../api` is `/api`). Routes match on this form, and
/// request mode sends it to the backend, so the route chosen is the one for what the backend will
/// serve (`/x/../api` or `/%61pi` cannot slip past a `path_prefix` route). The query is kept as
/// it came. Pure.
enum PathNormalizer {
    /// `path` normalised; the same string when there is nothing to do (the usual case).
    static func normalize(_ path: String) -> String {
        let u = path.utf8
        guard u.first == UInt8(ascii: "/") else { return path }  // "*", or not a path at all
        let queryStart = u.firstIndex(of: UInt8(ascii: "?")) ?? u.endIndex
        let pathPart = u[u.startIndex..<queryStart]
        if !needsWork(pathPart) { return path }
        let decoded = decodeUnreserved(Array(pathPart))
        let clean = removeDotSegments(decoded)
        var out = String(decoding: clean, as: UTF8.self)
        if queryStart < u.endIndex { out += String(path[queryStart...]) }
        return out
    }

    /// Every "%" starts an escape of two hex digits (RFC 3986 section 2.1). A path with a stray
    /// one is refused with 400, as nginx does: decoding it is ambiguous (`%%361` is `%61` to
    /// one decoder and garbage to another), and normalising would not be idempotent.
    static func hasValidEscapes(_ path: String) -> Bool {
        // Every request passes here: walk the bytes in place, no copy.
        var digitsDue = 0
        for c in path.utf8 {
            if digitsDue > 0 {
                guard hexValue(c) != nil else { return false }
                digitsDue -= 1
            } else if c == UInt8(ascii: "?") {
                return true
            } else if c == UInt8(ascii: "%") {
                digitsDue = 2
            }
        }
        return digitsDue == 0
    }

    private static func needsWork(_ p: Substring.UTF8View) -> Bool {
        var previous: UInt8 = 0
        for c in p {
            if c == UInt8(ascii: "%") { return true }
            if c == UInt8(ascii: ".") && previous == UInt8(ascii: "/") { return true }
            previous = c
        }
        return false
    }

    private static func isUnreserved(_ c: UInt8) -> Bool {
        (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || (c >= 0x30 && c <= 0x39)
            || c == UInt8(ascii: "-") || c == UInt8(ascii: ".") || c == UInt8(ascii: "_") || c == UInt8(ascii: "~")
    }

    private static func hexValue(_ c: UInt8) -> UInt8? {
        switch c {
        case 0x30...0x39: return c - 0x30
        case 0x41...0x46: return c - 0x41 + 10
        case 0x61...0x66: return c - 0x61 + 10
        default: return nil
        }
    }

    private static func decodeUnreserved(_ p: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(p.count)
        var i = 0
        while i < p.count {
            if p[i] == UInt8(ascii: "%"), i + 2 < p.count, let hi = hexValue(p[i + 1]), let lo = hexValue(p[i + 2]) {
                let byte = hi << 4 | lo
                if isUnreserved(byte) {
                    out.append(byte)
                } else {
                    out.append(UInt8(ascii: "%"))
                    out.append(uppercased(p[i + 1]))
                    out.append(uppercased(p[i + 2]))
                }
                i += 3
            } else {
                out.append(p[i])
                i += 1
            }
        }
        return out
    }

    private static func uppercased(_ c: UInt8) -> UInt8 { c >= 0x61 && c <= 0x66 ? c - 0x20 : c }

    /// RFC 3986 section 5.2.4 on an absolute path.
    static func removeDotSegments(_ input: [UInt8]) -> [UInt8] {
        var segments: [ArraySlice<UInt8>] = []
        // Split on "/" after the leading one: "/a/b/" is ["a", "b", ""].
        let parts = input.dropFirst().split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false)
        for (k, part) in parts.enumerated() {
            let last = k == parts.count - 1
            if part.elementsEqual(".".utf8) {
                if last { segments.append([]) }  // "/a/." is "/a/"
            } else if part.elementsEqual("..".utf8) {
                if !segments.isEmpty { segments.removeLast() }
                if last { segments.append([]) }  // "/a/b/.." is "/a/"
            } else {
                segments.append(part)
            }
        }
        var out: [UInt8] = []
        out.reserveCapacity(input.count)
        for s in segments {
            out.append(UInt8(ascii: "/"))
            out.append(contentsOf: s)
        }
        return out.isEmpty ? [UInt8(ascii: "/")] : out
    }
}
