/// Header-field helpers shared by the HTTP/1.1 request and response engines. No I/O, and no
/// strings: names, values and list items are byte ranges of the head, compared in place, so
/// following a response allocates only the head it hands on.
enum HTTP1Fields {
    /// One field line of a well-formed head: where its name, its trimmed value and the whole
    /// line (CRLF included) sit in the head.
    struct Line {
        var name: Range<Int>
        var value: Range<Int>
        var range: Range<Int>
    }

    /// The field lines of a well-formed head (`head` ends with CRLFCRLF), after its start line.
    static func lines(_ head: UnsafeRawBufferPointer) -> [Line] {
        var out: [Line] = []
        out.reserveCapacity(16)
        var i = 0
        while i + 1 < head.count, !(head[i] == 13 && head[i + 1] == 10) { i += 1 }
        i += 2
        while i + 1 < head.count, !(head[i] == 13 && head[i + 1] == 10) {
            var end = i
            while end + 1 < head.count, !(head[end] == 13 && head[end + 1] == 10) { end += 1 }
            var colon = i
            while colon < end, head[colon] != UInt8(ascii: ":") { colon += 1 }
            if colon < end {
                out.append(Line(name: i..<colon, value: trimmed(head, (colon + 1)..<end), range: i..<(end + 2)))
            }
            i = end + 2
        }
        return out
    }

    /// `range` of `bytes` without surrounding spaces and tabs.
    static func trimmed(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>) -> Range<Int> {
        var lo = range.lowerBound, hi = range.upperBound
        while lo < hi, bytes[lo] == 32 || bytes[lo] == 9 { lo += 1 }
        while hi > lo, bytes[hi - 1] == 32 || bytes[hi - 1] == 9 { hi -= 1 }
        return lo..<hi
    }

    /// Whether `range` of `bytes` equals `lower` (ASCII, lower-case) ignoring case.
    static func equalsIgnoringCase(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>, _ lower: StaticString) -> Bool {
        guard range.count == lower.utf8CodeUnitCount else { return false }
        let p = lower.utf8Start
        for k in 0..<range.count where (bytes[range.lowerBound + k] | 0x20) != p[k] { return false }
        return true
    }

    /// Two byte ranges equal ignoring ASCII case.
    static func sameIgnoringCase(_ bytes: UnsafeRawBufferPointer, _ a: Range<Int>, _ b: Range<Int>) -> Bool {
        guard a.count == b.count else { return false }
        for k in 0..<a.count where (bytes[a.lowerBound + k] | 0x20) != (bytes[b.lowerBound + k] | 0x20) { return false }
        return true
    }

    /// The trimmed, non-empty items of a comma-separated value (`Connection: keep-alive, Close`).
    static func forEachItem(_ bytes: UnsafeRawBufferPointer, _ value: Range<Int>, _ body: (Range<Int>) -> Void) {
        var start = value.lowerBound
        for i in value.lowerBound...value.upperBound where i == value.upperBound || bytes[i] == UInt8(ascii: ",") {
            let item = trimmed(bytes, start..<i)
            if !item.isEmpty { body(item) }
            start = i + 1
        }
    }

    /// Whether a comma-separated value lists `lower`.
    static func listContains(_ bytes: UnsafeRawBufferPointer, _ value: Range<Int>, _ lower: StaticString) -> Bool {
        var found = false
        forEachItem(bytes, value) { if equalsIgnoringCase(bytes, $0, lower) { found = true } }
        return found
    }

    /// Whether a comma-separated `value` (a String, as the request sniffer keeps it) lists `lower`.
    static func listContains(_ value: String, _ lower: StaticString) -> Bool {
        var copy = value
        return copy.withUTF8 { listContains(UnsafeRawBufferPointer($0), 0..<$0.count, lower) }
    }

    /// The connection-management fields (RFC 9110 section 7.6.1) that edgemux replaces when it
    /// changes a message's connection handling: `Connection`, `Keep-Alive`, `Proxy-Connection`
    /// and every field `Connection` names, except the framing fields, which stay true because the
    /// body passes through unchanged. Returns which of `lines` to drop.
    static func connectionFields(_ head: UnsafeRawBufferPointer, _ lines: [Line]) -> [Bool] {
        var drop = lines.map { l in
            equalsIgnoringCase(head, l.name, "connection") || equalsIgnoringCase(head, l.name, "keep-alive")
                || equalsIgnoringCase(head, l.name, "proxy-connection")
        }
        for c in lines where equalsIgnoringCase(head, c.name, "connection") {
            forEachItem(head, c.value) { item in
                if equalsIgnoringCase(head, item, "content-length") || equalsIgnoringCase(head, item, "transfer-encoding")
                    || equalsIgnoringCase(head, item, "host") { return }
                for (k, l) in lines.enumerated() where sameIgnoringCase(head, l.name, item) { drop[k] = true }
            }
        }
        return drop
    }

    /// `head` without the lines marked in `drop`, with `extra` (complete lines, CRLF included)
    /// inserted before the final empty line.
    static func rewrite(_ head: UnsafeRawBufferPointer, lines: [Line], dropping drop: [Bool], adding extra: StaticString = "") -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(head.count + extra.utf8CodeUnitCount)
        var copied = 0
        for (k, l) in lines.enumerated() where drop[k] {
            out.append(contentsOf: head[copied..<l.range.lowerBound])
            copied = l.range.upperBound
        }
        out.append(contentsOf: head[copied..<(head.count - 2)])
        out.append(contentsOf: UnsafeBufferPointer(start: extra.utf8Start, count: extra.utf8CodeUnitCount))
        out.append(contentsOf: [13, 10])
        return out
    }
}
