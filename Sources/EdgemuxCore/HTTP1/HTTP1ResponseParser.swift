/// How an HTTP/1.1 response body ends (RFC 9112 section 6.3).
enum BodyFraming: Equatable {
    /// No body (HEAD, 1xx, 204, 304, or Content-Length: 0).
    case none
    case length(Int)
    case chunked
    /// The body ends when the backend closes: its connection cannot be reused.
    case untilClose
}

/// A complete final response head, and what it means for the connection it came on.
struct HTTP1ResponseHead: Equatable {
    let status: Int
    /// Bytes of the head as received (up to and including the empty line).
    let headLength: Int
    let framing: BodyFraming
    /// The backend keeps the connection open after this response (HTTP/1.1, no `close`, a
    /// body whose end is known, unambiguous framing).
    let reusable: Bool
    /// The head for the client: connection fields replaced by `Connection: close`.
    let forClient: [UInt8]
}

/// Reads a backend's HTTP/1.x response head. No I/O; answers need-more / interim / done / error.
struct HTTP1ResponseParser {
    /// The largest head accepted.
    let cap: Int

    enum Result: Equatable {
        case needMore
        /// A 1xx interim response of `length` bytes: pass it on as it is and parse what follows.
        case interim(length: Int)
        case done(HTTP1ResponseHead)
        case error(String)
    }

    /// Parses the head at the start of `bytes`; `headRequest` says the request was HEAD (its
    /// response has no body whatever its fields say). `forClient: false` leaves
    /// `HTTP1ResponseHead.forClient` empty (request mode builds its own head for the client).
    func parse(_ bytes: UnsafeRawBufferPointer, headRequest: Bool, forClient: Bool = true) -> Result {
        guard let end = Self.headEnd(bytes, limit: cap) else {
            return bytes.count > cap ? .error("response head exceeds \(cap) bytes") : .needMore
        }
        let head = UnsafeRawBufferPointer(rebasing: bytes[0..<end])
        // Status line: HTTP/1.x SP 3DIGIT [SP reason] CRLF
        guard head.count >= 12, head.starts(with: "HTTP/1.".utf8), head[7] == UInt8(ascii: "0") || head[7] == UInt8(ascii: "1"),
              head[8] == 32 else {
            return .error("malformed status line")
        }
        var status = 0
        for i in 9..<12 {
            guard head[i] >= UInt8(ascii: "0"), head[i] <= UInt8(ascii: "9") else { return .error("malformed status code") }
            status = status * 10 + Int(head[i] - UInt8(ascii: "0"))
        }
        guard status >= 100, head[12] == 32 || head[12] == 13 else { return .error("malformed status code") }
        let http11 = head[7] == UInt8(ascii: "1")
        if status == 101 { return .error("101 Switching Protocols to a request that asked for no upgrade") }
        if status < 200 { return .interim(length: end) }

        var contentLength: Int?
        var chunked = false
        var transferEncoding = false
        var close = !http11
        var failure: String?
        HTTP1Fields.forEachLine(head) { l in
            guard failure == nil else { return }
            if HTTP1Fields.equalsIgnoringCase(head, l.name, "content-length") {
                // A list of equal values is allowed (RFC 9110 section 8.6); anything else is not.
                var invalid = l.value.isEmpty, conflict = false
                HTTP1Fields.forEachItem(head, l.value) { item in
                    var v = 0
                    guard item.count <= 18 else { invalid = true; return }
                    for i in item {
                        guard head[i] >= 48, head[i] <= 57 else { invalid = true; return }
                        v = v * 10 + Int(head[i] - 48)
                    }
                    if let c = contentLength, c != v { conflict = true }
                    contentLength = v
                }
                if invalid { failure = "invalid Content-Length '\(String(decoding: head[l.value].prefix(32), as: UTF8.self))'" }
                if conflict { failure = "conflicting Content-Length values" }
            } else if HTTP1Fields.equalsIgnoringCase(head, l.name, "transfer-encoding") {
                transferEncoding = true
                var last: Range<Int>?
                HTTP1Fields.forEachItem(head, l.value) { last = $0 }
                chunked = last.map { HTTP1Fields.equalsIgnoringCase(head, $0, "chunked") } ?? false
            } else if HTTP1Fields.equalsIgnoringCase(head, l.name, "connection") {
                if HTTP1Fields.listContains(head, l.value, "close") { close = true }
            }
        }
        if let failure { return .error(failure) }
        let framing: BodyFraming
        if headRequest || status == 204 || status == 304 {
            framing = .none
        } else if transferEncoding {
            framing = chunked ? .chunked : .untilClose
        } else if let c = contentLength {
            framing = c == 0 ? .none : .length(c)
        } else {
            framing = .untilClose
        }
        // Transfer-Encoding with Content-Length smells of request smuggling (RFC 9112 section
        // 6.3): the body is read by Transfer-Encoding, and the connection is not used again.
        let reusable = !close && framing != .untilClose && !(transferEncoding && contentLength != nil)
        let clientHead = forClient ? HTTP1Fields.withoutConnectionFields(head, adding: "Connection: close\r\n") : []
        return .done(HTTP1ResponseHead(status: status, headLength: end, framing: framing, reusable: reusable, forClient: clientHead))
    }

    /// Offset just past the first CRLFCRLF, looking no further than `limit` bytes.
    static func headEnd(_ b: UnsafeRawBufferPointer, limit: Int) -> Int? {
        let n = min(b.count, limit)
        var i = 0
        while i + 3 < n {
            if b[i] == 13, b[i + 1] == 10, b[i + 2] == 13, b[i + 3] == 10 { return i + 4 }
            i += 1
        }
        return nil
    }
}
