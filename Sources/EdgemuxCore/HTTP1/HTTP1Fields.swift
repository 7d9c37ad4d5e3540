/// Header-field helpers shared by the HTTP/1.1 request and response engines. No I/O.
enum HTTP1Fields {
    /// Whether a comma-separated field value (`Connection: keep-alive, Close`) lists `token`,
    /// compared case-insensitively (`token` is lower-case).
    static func listContains(_ value: String, _ token: String) -> Bool {
        for part in value.utf8.split(separator: UInt8(ascii: ",")) {
            var lo = part.startIndex, hi = part.endIndex
            while lo < hi, part[lo] == 32 || part[lo] == 9 { lo = part.index(after: lo) }
            while hi > lo, part[part.index(before: hi)] == 32 || part[part.index(before: hi)] == 9 { hi = part.index(before: hi) }
            let item = part[lo..<hi]
            if item.count == token.utf8.count, zip(item, token.utf8).allSatisfy({ ($0 | 0x20) == $1 }) { return true }
        }
        return false
    }

    /// The lower-cased items of a comma-separated field value.
    static func listItems(_ value: String) -> [String] {
        value.split(separator: ",").map { $0.trimmingSpaces().lowercased() }.filter { !$0.isEmpty }
    }

    /// One field line of a head: the name lower-cased, the value trimmed, and where the whole
    /// line (CRLF included) sits in the head.
    struct Line {
        var name: String
        var value: String
        var range: Range<Int>
    }

    /// The field lines of a well-formed head (`head` ends with CRLFCRLF), after its start line.
    static func lines(_ head: UnsafeRawBufferPointer) -> [Line] {
        var out: [Line] = []
        var i = 0
        while i + 1 < head.count, !(head[i] == 13 && head[i + 1] == 10) { i += 1 }
        i += 2
        while i + 1 < head.count, !(head[i] == 13 && head[i + 1] == 10) {
            var end = i
            while end + 1 < head.count, !(head[end] == 13 && head[end + 1] == 10) { end += 1 }
            let line = UnsafeRawBufferPointer(rebasing: head[i..<end])
            if let colon = line.firstIndex(of: UInt8(ascii: ":")) {
                var v0 = colon + 1, v1 = line.count
                while v0 < v1, line[v0] == 32 || line[v0] == 9 { v0 += 1 }
                while v1 > v0, line[v1 - 1] == 32 || line[v1 - 1] == 9 { v1 -= 1 }
                out.append(Line(name: String(decoding: line[0..<colon], as: UTF8.self).lowercased(),
                                value: String(decoding: line[v0..<v1], as: UTF8.self),
                                range: i..<(end + 2)))
            }
            i = end + 2
        }
        return out
    }

    /// The connection-management fields (RFC 9110 section 7.6.1) that edgemux replaces when it
    /// changes a message's connection handling: `Connection`, `Keep-Alive`, `Proxy-Connection`
    /// and every field `Connection` names, except the framing fields, which stay true because the
    /// body passes through unchanged.
    static func connectionFields(_ lines: [Line]) -> Set<String> {
        var names: Set<String> = ["connection", "keep-alive", "proxy-connection"]
        for l in lines where l.name == "connection" { names.formUnion(listItems(l.value)) }
        names.subtract(["content-length", "transfer-encoding", "host"])
        return names
    }

    /// `head` without the lines whose names are in `drop`, with `extra` (complete lines, CRLF
    /// included) inserted before the final empty line.
    static func rewrite(_ head: UnsafeRawBufferPointer, dropping drop: Set<String>, lines: [Line], adding extra: String = "") -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(head.count + extra.utf8.count)
        var copied = 0
        for l in lines where drop.contains(l.name) {
            out.append(contentsOf: head[copied..<l.range.lowerBound])
            copied = l.range.upperBound
        }
        out.append(contentsOf: head[copied..<(head.count - 2)])
        out.append(contentsOf: extra.utf8)
        out.append(contentsOf: [13, 10])
        return out
    }
}

extension Substring {
    func trimmingSpaces() -> Substring {
        var s = self
        while let f = s.first, f == " " || f == "\t" { s.removeFirst() }
        while let l = s.last, l == " " || l == "\t" { s.removeLast() }
        return s
    }
}
