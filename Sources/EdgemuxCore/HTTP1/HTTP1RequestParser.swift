/// How an HTTP/1.1 request's body is framed (RFC 9112 section 6).
enum RequestBodyFraming: Equatable {
    /// No body: the request ends with its head.
    case none
    case length(Int)
    case chunked
}

/// A complete request head in request mode, with what it means for its connection.
struct HTTP1Request {
    var head: RequestHead
    /// Bytes of the head as received (leading empty lines included).
    var headLength: Int
    var body: RequestBodyFraming
    /// The request line said HTTP/1.0.
    var http10: Bool
    /// The client keeps the connection for another request (HTTP/1.1 without `close`, HTTP/1.0
    /// with `keep-alive`).
    var keepAlive: Bool
    /// `Upgrade` with `Connection: upgrade` (WebSocket): the connection becomes a relay.
    var upgrade: Bool
    /// `Expect: 100-continue`: edgemux answers 100 itself once the request is routed (as nginx
    /// does) and does not pass the expectation on, so no hop waits for a 100 nobody sends.
    var expectsContinue = false
}

/// Why a request head was refused: the status edgemux answers with before it closes.
struct HTTP1RequestError: Error, Equatable, CustomStringConvertible {
    var status: Int
    var reason: String
    /// The metric label.
    var label: String

    static func bad(_ reason: String) -> Self { Self(status: 400, reason: reason, label: "h1_malformed") }
    static func smuggling(_ reason: String) -> Self { Self(status: 400, reason: reason, label: "h1_framing") }

    var description: String { "malformed HTTP/1.1 request head: \(reason)" }
}

/// Reads HTTP/1.1 request heads in request mode, strictly: what another hop might read
/// differently is refused, as RFC 9112 asks of a server (section 11.2, request smuggling):
/// Content-Length with Transfer-Encoding, a Content-Length that is repeated or not a number,
/// transfer codings other than a final `chunked`, obsolete line folding, a bare CR or LF,
/// whitespace before a field's colon, a missing or repeated Host. No I/O: answers need-more,
/// done or error, and consumes nothing (the caller drops `headLength` bytes).
struct HTTP1RequestParser {
    /// The largest head accepted (request line, fields, CRLFs).
    let cap: Int
    /// `:scheme` for the requests of this connection ("https" behind TLS).
    let scheme: String

    enum Result {
        case needMore
        case done(HTTP1Request)
        case error(HTTP1RequestError)
    }

    func parse(_ bytes: UnsafeRawBufferPointer) -> Result {
        // RFC 9112 section 2.2: empty lines before a request line are ignored (a few of them).
        var start = 0
        while start + 1 < bytes.count, bytes[start] == 13, bytes[start + 1] == 10, start < 8 { start += 2 }
        if bytes.count > start, !HTTP1HeadParser.tokenChars[Int(bytes[start])], bytes[start] != 13 {
            return .error(.bad("request line does not start with a method"))
        }
        // Find the end of the head; every LF must follow a CR, every CR precede an LF.
        let limit = min(bytes.count, cap)
        var i = start
        var end = -1
        var lineStart = start
        while i < limit {
            let b = bytes[i]
            if b == 10 {
                guard i > start, bytes[i - 1] == 13 else { return .error(.smuggling("bare LF in the request head")) }
                if i - 1 == lineStart {
                    end = i + 1
                    break
                }
                lineStart = i + 1
            } else if b == 13, i + 1 < bytes.count, bytes[i + 1] != 10 {
                return .error(.smuggling("bare CR in the request head"))
            }
            i += 1
        }
        guard end > 0 else {
            if bytes.count >= cap { return .error(HTTP1RequestError(status: 431, reason: "request head exceeds \(cap) bytes", label: "h1_head_too_large")) }
            // Junk is refused as it arrives, not when the request timeout runs out.
            if let problem = HTTP1HeadParser.partialRequestLineProblem(bytes, from: start) { return .error(.bad(problem)) }
            return .needMore
        }
        return parseHead(UnsafeRawBufferPointer(rebasing: bytes[start..<end]), headLength: end)
    }

    private func parseHead(_ head: UnsafeRawBufferPointer, headLength: Int) -> Result {
        var lines: [Range<Int>] = []
        var s = 0
        for i in 1..<head.count where head[i] == 10 {
            if i - 1 > s { lines.append(s..<(i - 1)) }
            s = i + 1
        }
        guard let requestLine = lines.first else { return .error(.bad("empty request")) }
        var r = HTTP1Request(head: RequestHead(), headLength: headLength, body: .none, http10: false, keepAlive: true, upgrade: false)
        r.head.fields = HeaderList(reservingBytes: head.count, fields: lines.count)
        var hostFromTarget = false
        if let e = parseRequestLine(UnsafeRawBufferPointer(rebasing: head[requestLine]), into: &r, hostFromTarget: &hostFromTarget) { return .error(e) }

        var host: String?
        var contentLength: Int?
        var sawContentLength = false
        var codings: [String] = []
        var connectionClose = false, connectionKeepAlive = false, connectionUpgrade = false
        var upgradeValue = false
        for line in lines.dropFirst() {
            let l = UnsafeRawBufferPointer(rebasing: head[line])
            if l[0] == 32 || l[0] == 9 { return .error(.smuggling("obsolete line folding")) }
            guard let colon = l.firstIndex(of: UInt8(ascii: ":")), colon > 0 else { return .error(.bad("header line without a field name")) }
            for k in 0..<colon where !HTTP1HeadParser.tokenChars[Int(l[k])] {
                return .error(l[k] == 32 || l[k] == 9 ? .smuggling("whitespace before the colon of a field") : .bad("invalid character in a field name"))
            }
            let value = HTTP1Fields.trimmed(l, (colon + 1)..<l.count)
            for k in value where l[k] == 0 || l[k] == 127 || (l[k] < 32 && l[k] != 9) {
                return .error(.bad("invalid character in a field value"))
            }
            let name = UnsafeRawBufferPointer(rebasing: l[0..<colon])
            let nameRange = 0..<colon
            if HTTP1Fields.equalsIgnoringCase(l, nameRange, "host") {
                if host != nil { return .error(.bad("more than one Host field")) }
                host = String(decoding: l[value], as: UTF8.self)
                continue  // carried as the authority
            }
            if HTTP1Fields.equalsIgnoringCase(l, nameRange, "content-length") {
                if sawContentLength { return .error(.smuggling("more than one Content-Length")) }
                sawContentLength = true
                guard !value.isEmpty, value.count <= 15, value.allSatisfy({ l[$0] >= 48 && l[$0] <= 57 }) else {
                    return .error(.smuggling("invalid Content-Length"))
                }
                contentLength = value.reduce(0) { $0 * 10 + Int(l[$1] - 48) }
            } else if HTTP1Fields.equalsIgnoringCase(l, nameRange, "transfer-encoding") {
                let before = codings.count
                HTTP1Fields.forEachItem(l, value) { codings.append(String(decoding: l[$0], as: UTF8.self).lowercased()) }
                if codings.count == before { return .error(.smuggling("empty Transfer-Encoding")) }
            } else if HTTP1Fields.equalsIgnoringCase(l, nameRange, "connection") {
                if HTTP1Fields.listContains(l, value, "close") { connectionClose = true }
                if HTTP1Fields.listContains(l, value, "keep-alive") { connectionKeepAlive = true }
                if HTTP1Fields.listContains(l, value, "upgrade") { connectionUpgrade = true }
            } else if HTTP1Fields.equalsIgnoringCase(l, nameRange, "upgrade") {
                upgradeValue = !value.isEmpty
            } else if HTTP1Fields.equalsIgnoringCase(l, nameRange, "expect") {
                guard HTTP1Fields.equalsIgnoringCase(l, value, "100-continue") else {
                    return .error(HTTP1RequestError(status: 417, reason: "only Expect: 100-continue is understood", label: "h1_expect"))
                }
                r.expectsContinue = true
                continue
            }
            r.head.fields.append(name: name, value: UnsafeRawBufferPointer(rebasing: l[value]))
        }
        if let host {
            if !hostFromTarget { r.head.authority = host }
        } else if !r.http10 {
            return .error(.bad("HTTP/1.1 request without a Host field"))
        }
        if r.head.authority.utf8.contains(where: { $0 <= 32 || $0 == UInt8(ascii: "/") || $0 == UInt8(ascii: "@") || $0 == UInt8(ascii: ",") || $0 == 127 }) {
            return .error(.bad("invalid Host"))
        }
        if !codings.isEmpty {
            if sawContentLength { return .error(.smuggling("both Content-Length and Transfer-Encoding")) }
            if r.http10 { return .error(.smuggling("Transfer-Encoding in an HTTP/1.0 request")) }
            guard codings.last == "chunked" else { return .error(.smuggling("Transfer-Encoding does not end with chunked")) }
            guard codings.count == 1 else {
                return .error(HTTP1RequestError(status: 501, reason: "transfer coding '\(codings[0])' is not supported", label: "h1_transfer_coding"))
            }
            r.body = .chunked
        } else if let n = contentLength, n > 0 {
            r.body = .length(n)
        }
        r.head.contentLength = codings.isEmpty ? contentLength : nil
        r.head.endStream = r.body == .none
        r.keepAlive = r.http10 ? (connectionKeepAlive && !connectionClose) : !connectionClose
        r.upgrade = upgradeValue && connectionUpgrade
        return .done(r)
    }

    private func parseRequestLine(_ line: UnsafeRawBufferPointer, into r: inout HTTP1Request, hostFromTarget: inout Bool) -> HTTP1RequestError? {
        guard let sp1 = line.firstIndex(of: 32), sp1 > 0 else { return .bad("request line has no method") }
        for i in 0..<sp1 where !HTTP1HeadParser.tokenChars[Int(line[i])] { return .bad("invalid method") }
        if sp1 > HTTP1HeadParser.maxMethodLength { return .bad("method longer than \(HTTP1HeadParser.maxMethodLength) bytes") }
        let afterMethod = sp1 + 1
        guard let sp2rel = UnsafeRawBufferPointer(rebasing: line[afterMethod...]).firstIndex(of: 32), sp2rel > 0 else {
            return .bad("request line has no target")
        }
        let sp2 = afterMethod + sp2rel
        for i in afterMethod..<sp2 where line[i] <= 32 || line[i] >= 127 { return .bad("invalid character in the request target") }
        let version = UnsafeRawBufferPointer(rebasing: line[(sp2 + 1)...])
        if version.elementsEqual("HTTP/1.1".utf8) {
            r.http10 = false
        } else if version.elementsEqual("HTTP/1.0".utf8) {
            r.http10 = true
        } else if version.count == 8, version.starts(with: "HTTP/".utf8), version[6] == UInt8(ascii: ".") {
            return HTTP1RequestError(status: 505, reason: "HTTP version '\(String(decoding: version, as: UTF8.self))' is not supported", label: "h1_version")
        } else {
            return .bad("invalid HTTP version")
        }
        let method = String(decoding: line[0..<sp1], as: UTF8.self)
        if method == "CONNECT" {
            return HTTP1RequestError(status: 405, reason: "CONNECT is not served on this listener", label: "h1_connect")
        }
        var target = String(decoding: line[afterMethod..<sp2], as: UTF8.self)
        r.head.method = method
        r.head.scheme = scheme
        if target.utf8.first == UInt8(ascii: "/") {
            r.head.path = target
        } else if target == "*" {
            guard method == "OPTIONS" else { return .bad("'*' target outside OPTIONS") }
            r.head.path = "*"
        } else if let schemeEnd = target.range(of: "://"), ["http", "https"].contains(target[..<schemeEnd.lowerBound].lowercased()) {
            // absolute-form (RFC 9112 section 3.2.2): its authority replaces Host.
            r.head.scheme = target[..<schemeEnd.lowerBound].lowercased()
            target = String(target[schemeEnd.upperBound...])
            let slash = target.firstIndex(where: { $0 == "/" || $0 == "?" }) ?? target.endIndex
            let authority = String(target[..<slash])
            guard !authority.isEmpty, !authority.contains("@") else { return .bad("invalid authority in the request target") }
            r.head.authority = authority
            hostFromTarget = true
            let rest = String(target[slash...])
            r.head.path = rest.isEmpty ? "/" : (rest.hasPrefix("?") ? "/" + rest : rest)
        } else {
            return .bad("invalid request target")
        }
        return nil
    }
}

/// HTTP/1.1 response heads for request mode's clients.
enum HTTP1ResponseWriter {
    static let reasons: [Int: String] = [
        100: "Continue", 101: "Switching Protocols", 102: "Processing", 103: "Early Hints",
        200: "OK", 201: "Created", 202: "Accepted", 203: "Non-Authoritative Information", 204: "No Content",
        205: "Reset Content", 206: "Partial Content", 207: "Multi-Status",
        300: "Multiple Choices", 301: "Moved Permanently", 302: "Found", 303: "See Other", 304: "Not Modified",
        307: "Temporary Redirect", 308: "Permanent Redirect",
        400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
        406: "Not Acceptable", 408: "Request Timeout", 409: "Conflict", 410: "Gone", 411: "Length Required",
        412: "Precondition Failed", 413: "Content Too Large", 414: "URI Too Long", 415: "Unsupported Media Type",
        416: "Range Not Satisfiable", 417: "Expectation Failed", 421: "Misdirected Request", 422: "Unprocessable Content",
        425: "Too Early", 426: "Upgrade Required", 428: "Precondition Required", 429: "Too Many Requests",
        431: "Request Header Fields Too Large", 451: "Unavailable For Legal Reasons",
        500: "Internal Server Error", 501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable",
        504: "Gateway Timeout", 505: "HTTP Version Not Supported",
    ]

    /// How the body of a response goes to the client.
    enum Framing: Equatable {
        /// No body bytes (HEAD, 204, 304, 1xx): fields as the backend sent them.
        case none
        /// The response's own Content-Length.
        case length
        case chunked
        /// Until edgemux closes the connection (an HTTP/1.0 client and an unknown length).
        case untilClose
    }

    /// The head: status line, the fields less hop-by-hop ones (and `Content-Length` when the
    /// framing is edgemux's), `contentLength` when edgemux knows it, the framing and the
    /// connection fields. `keepAlive` nil: no Connection field.
    static func head(_ h: ResponseHead, framing: Framing, contentLength: Int?, connection: String?, via: String?) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(128 + h.fields.byteCount + 4 * h.fields.count)
        func add(_ s: String) { out.append(contentsOf: s.utf8) }
        add("HTTP/1.1 \(h.status) \(reasons[h.status] ?? "Status \(h.status)")\r\n")
        let f = h.fields
        f.bytes.withUnsafeBytes { b in
            for i in 0..<f.count {
                if FieldRules.isHopByHop(f, i) { continue }
                if contentLength != nil || framing == .chunked || framing == .untilClose, f.isNamed(i, "content-length") { continue }
                HTTP1Serializer.appendCanonical(&out, UnsafeRawBufferPointer(rebasing: b[f.fields[i].name]))
                add(": ")
                out.append(contentsOf: UnsafeRawBufferPointer(rebasing: b[f.fields[i].value]))
                add("\r\n")
            }
        }
        if let via { add("Via: \(via) edgemux\r\n") }
        if let n = contentLength { add("Content-Length: \(n)\r\n") }
        if framing == .chunked { add("Transfer-Encoding: chunked\r\n") }
        if let connection { add("Connection: \(connection)\r\n") }
        add("\r\n")
        return out
    }

    /// The end of a chunked body, with trailers (hop-by-hop fields and framing fields dropped).
    static func lastChunk(trailers: HeaderList?) -> [UInt8] {
        var out: [UInt8] = Array("0\r\n".utf8)
        if let t = trailers {
            t.bytes.withUnsafeBytes { b in
                for i in 0..<t.count where !FieldRules.isHopByHop(t, i) && !t.isNamed(i, "content-length") {
                    HTTP1Serializer.appendCanonical(&out, UnsafeRawBufferPointer(rebasing: b[t.fields[i].name]))
                    out.append(contentsOf: ": ".utf8)
                    out.append(contentsOf: UnsafeRawBufferPointer(rebasing: b[t.fields[i].value]))
                    out.append(contentsOf: [13, 10])
                }
            }
        }
        out.append(contentsOf: [13, 10])
        return out
    }
}
