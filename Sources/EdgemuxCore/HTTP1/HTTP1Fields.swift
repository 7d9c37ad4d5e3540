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

    /// Calls `body` with each field line of a well-formed head (`head` ends with CRLFCRLF), after
    /// its start line, in order. Nothing is collected: a head is walked again rather than copied.
    static func forEachLine(_ head: UnsafeRawBufferPointer, _ body: (Line) -> Void) {
        var i = 0
        while i + 1 < head.count, !(head[i] == 13 && head[i + 1] == 10) { i += 1 }
        i += 2
        while i + 1 < head.count, !(head[i] == 13 && head[i + 1] == 10) {
            var end = i
            while end + 1 < head.count, !(head[end] == 13 && head[end + 1] == 10) { end += 1 }
            var colon = i
            while colon < end, head[colon] != UInt8(ascii: ":") { colon += 1 }
            if colon < end {
                body(Line(name: i..<colon, value: trimmed(head, (colon + 1)..<end), range: i..<(end + 2)))
            }
            i = end + 2
        }
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

    /// Whether `line` is a connection-management field (RFC 9110 section 7.6.1) that edgemux
    /// replaces when it changes a message's connection handling: `Connection`, `Keep-Alive`,
    /// `Proxy-Connection`, and every field `Connection` names except the framing fields (and
    /// Host), which stay true because the body passes through unchanged.
    static func isConnectionField(_ head: UnsafeRawBufferPointer, _ line: Line) -> Bool {
        if equalsIgnoringCase(head, line.name, "connection") || equalsIgnoringCase(head, line.name, "keep-alive")
            || equalsIgnoringCase(head, line.name, "proxy-connection") { return true }
        if equalsIgnoringCase(head, line.name, "content-length") || equalsIgnoringCase(head, line.name, "transfer-encoding")
            || equalsIgnoringCase(head, line.name, "host") { return false }
        var named = false
        forEachLine(head) { c in
            guard !named, equalsIgnoringCase(head, c.name, "connection") else { return }
            forEachItem(head, c.value) { item in if sameIgnoringCase(head, item, line.name) { named = true } }
        }
        return named
    }

    /// `head` without its connection-management fields, with `extra` (complete lines, CRLF
    /// included) inserted before the final empty line.
    static func withoutConnectionFields(_ head: UnsafeRawBufferPointer, adding extra: StaticString = "") -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(head.count + extra.utf8CodeUnitCount)
        var copied = 0
        forEachLine(head) { l in
            guard isConnectionField(head, l) else { return }
            out.append(contentsOf: head[copied..<l.range.lowerBound])
            copied = l.range.upperBound
        }
        out.append(contentsOf: head[copied..<(head.count - 2)])
        out.append(contentsOf: UnsafeBufferPointer(start: extra.utf8Start, count: extra.utf8CodeUnitCount))
        out.append(contentsOf: [13, 10])
        return out
    }
}
