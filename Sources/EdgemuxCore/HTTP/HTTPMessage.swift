import CEdgemux

/// The header fields of one message in request mode, whatever protocol it came in: names in
/// lower case (as HTTP/2 carries them), values as received. All names and values share one
/// byte buffer, so a head costs two allocations however many fields it has, and nghttp2 reads
/// them in place (`withNameValues`). No I/O.
struct HeaderList {
    struct Field {
        var nameStart: Int32
        var nameLength: Int32
        var valueStart: Int32
        var valueLength: Int32
        var name: Range<Int> { Int(nameStart)..<Int(nameStart + nameLength) }
        var value: Range<Int> { Int(valueStart)..<Int(valueStart + valueLength) }
    }

    private(set) var bytes: [UInt8] = []
    private(set) var fields: [Field] = []

    var count: Int { fields.count }
    var isEmpty: Bool { fields.isEmpty }
    /// Bytes of names and values (the measure of RFC 9113's header list size, less 32 per field).
    var byteCount: Int { bytes.count }

    init() {}

    /// An empty list with room for a head of about this size (a head grown one field at a time
    /// would reallocate both arrays several times).
    init(reservingBytes byteCount: Int, fields fieldCount: Int) {
        bytes.reserveCapacity(byteCount)
        fields.reserveCapacity(fieldCount)
    }

    /// Appends a field; the name is lower-cased on the way in.
    mutating func append(name: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer) {
        let ns = bytes.count
        bytes.append(contentsOf: name)
        bytes.withUnsafeMutableBufferPointer { b in
            for i in ns..<(ns + name.count) where b[i] >= 65 && b[i] <= 90 { b[i] |= 0x20 }
        }
        let vs = Int32(bytes.count)
        bytes.append(contentsOf: value)
        fields.append(Field(nameStart: Int32(ns), nameLength: Int32(name.count), valueStart: vs, valueLength: Int32(value.count)))
    }

    /// Drops every field named `lower` (lower case); the bytes stay (the list is short-lived).
    mutating func removeAll(named lower: String) {
        let want = Array(lower.utf8)
        fields.removeAll { f in
            f.nameLength == want.count && bytes[f.name].elementsEqual(want)
        }
    }

    mutating func append(_ name: String, _ value: String) {
        var n = name, v = value
        n.withUTF8 { nb in v.withUTF8 { vb in append(name: UnsafeRawBufferPointer(nb), value: UnsafeRawBufferPointer(vb)) } }
    }

    func name(at i: Int) -> String { String(decoding: bytes[fields[i].name], as: UTF8.self) }
    func value(at i: Int) -> String { String(decoding: bytes[fields[i].value], as: UTF8.self) }

    /// Whether field `i` is named `lower`.
    func isNamed(_ i: Int, _ lower: StaticString) -> Bool {
        let r = fields[i].name
        guard r.count == lower.utf8CodeUnitCount else { return false }
        let p = lower.utf8Start
        for k in 0..<r.count where bytes[r.lowerBound + k] != p[k] { return false }
        return true
    }

    /// The first value of `lower`, if present.
    func first(_ lower: StaticString) -> String? {
        for i in 0..<fields.count where isNamed(i, lower) { return value(at: i) }
        return nil
    }

    /// Whether the first value of `lower` starts with `prefix` (lower-case ASCII), ignoring case:
    /// no string is made.
    func firstValueStarts(_ lower: StaticString, withLowercase prefix: StaticString) -> Bool {
        for i in 0..<fields.count where isNamed(i, lower) {
            let v = fields[i].value
            guard v.count >= prefix.utf8CodeUnitCount else { return false }
            let p = prefix.utf8Start
            for k in 0..<prefix.utf8CodeUnitCount {
                let b = bytes[v.lowerBound + k]
                if (b >= 65 && b <= 90 ? b | 0x20 : b) != p[k] { return false }
            }
            return true
        }
        return false
    }

    /// Every value of `lower`, joined with ", " (a list field sent as several lines), if present.
    func joined(_ lower: StaticString) -> String? {
        var out: String?
        for i in 0..<fields.count where isNamed(i, lower) { out = out.map { "\($0), \(value(at: i))" } ?? value(at: i) }
        return out
    }

    /// Calls `body` with nghttp2 name/value pairs: `leading` first (pseudo-header fields), then
    /// every field for which `keep` holds. The pointers are valid only inside `body` (nghttp2
    /// copies what it submits, and only reads through them: the fields are not copied here).
    func withNameValues<R>(leading: [(String, String)], keep: (Int) -> Bool = { _ in true }, _ body: (UnsafeMutablePointer<nghttp2_nv>, Int) -> R) -> R {
        var lead: [UInt8] = []
        var leadBytes = 1
        for (n, v) in leading { leadBytes += n.utf8.count + v.utf8.count }
        lead.reserveCapacity(leadBytes)
        for (n, v) in leading {
            lead.append(contentsOf: n.utf8)
            lead.append(contentsOf: v.utf8)
        }
        lead.append(0)  // never empty: a base address exists
        // The pairs live on the stack for the call (nghttp2 copies what it submits).
        return withUnsafeTemporaryAllocation(of: nghttp2_nv.self, capacity: max(1, leading.count + fields.count)) { nva in
            lead.withUnsafeMutableBufferPointer { leadBuf in
                bytes.withUnsafeBufferPointer { fieldBuf in
                    let l = leadBuf.baseAddress!
                    let f = UnsafeMutablePointer(mutating: fieldBuf.baseAddress ?? UnsafePointer(l))
                    let none = UInt8(NGHTTP2_NV_FLAG_NONE.rawValue)
                    var n = 0
                    var at = 0
                    for (name, value) in leading {
                        let nl = name.utf8.count, vl = value.utf8.count
                        nva[n] = nghttp2_nv(name: l + at, value: l + at + nl, namelen: nl, valuelen: vl, flags: none)
                        at += nl + vl
                        n += 1
                    }
                    for i in 0..<fields.count where keep(i) {
                        let e = fields[i]
                        nva[n] = nghttp2_nv(name: f + Int(e.nameStart), value: f + Int(e.valueStart), namelen: Int(e.nameLength), valuelen: Int(e.valueLength), flags: none)
                        n += 1
                    }
                    return body(nva.baseAddress!, n)
                }
            }
        }
    }
}

/// What RFC 9110 and RFC 9113 say about fields when a message changes hop.
enum FieldRules {
    /// Connection-specific fields (RFC 9113 section 8.2.2, RFC 9110 section 7.6.1): never
    /// forwarded to the next hop, whatever its protocol. `te` is handled apart.
    static func isHopByHop(_ h: HeaderList, _ i: Int) -> Bool {
        h.isNamed(i, "connection") || h.isNamed(i, "keep-alive") || h.isNamed(i, "proxy-connection")
            || h.isNamed(i, "transfer-encoding") || h.isNamed(i, "upgrade") || h.isNamed(i, "http2-settings")
    }

    /// `te: trailers` is the one TE value HTTP/2 allows, and gRPC servers insist on it.
    static func isTrailersTE(_ h: HeaderList, _ i: Int) -> Bool {
        h.isNamed(i, "te") && h.value(at: i).lowercased().trimmedSpaces() == "trailers"
    }

    /// Names listed in `Connection` (HTTP/1.1 messages): they are hop-by-hop too.
    static func connectionListed(_ h: HeaderList) -> Set<String> {
        var out: Set<String> = []
        for i in 0..<h.count where h.isNamed(i, "connection") {
            for item in h.value(at: i).split(separator: ",") {
                let n = String(item).trimmedSpaces().lowercased()
                if !n.isEmpty { out.insert(n) }
            }
        }
        return out
    }
}

/// A request head in request mode, from either protocol.
struct RequestHead {
    var method = ""
    var scheme = ""
    /// `:authority`, or `Host` when the request had no authority.
    var authority = ""
    var path = ""
    /// Regular fields (no pseudo-header fields), lower-case names.
    var fields = HeaderList()
    /// The declared body length, if any.
    var contentLength: Int?
    /// The request ended with its head (no body at all).
    var endStream = false

    var isGRPC: Bool { fields.firstValueStarts("content-type", withLowercase: "application/grpc") }

    /// What the router matches on.
    func routingInfo() -> RequestInfo {
        var info = RequestInfo()
        info.method = method
        info.path = path
        info.host = HTTP1HeadParser.hostWithoutPort(authority)
        info.contentType = fields.first("content-type") ?? ""
        info.upgrade = (fields.first("upgrade") ?? "").lowercased()
        return info
    }

    /// Whether a request may be sent again after a backend failed without answering (RFC 9110
    /// section 9.2.2: idempotent methods).
    var idempotent: Bool {
        switch method {
        case "GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE": return true
        default: return false
        }
    }
}

/// A response head in request mode (final or interim).
struct ResponseHead {
    var status: Int
    var fields = HeaderList()
}

/// Who the client is, for the forwarding fields.
struct ClientIdentity {
    /// The client address (from the socket, or the PROXY header), as forwarding fields name it.
    let address: String
    /// Address and port, as logs name the client (relayed connections' lines do too).
    let addressAndPort: String
    /// "https" or "http", as the client spoke to edgemux.
    let scheme: String
    /// `for=…;proto=…` of RFC 7239, the same for every request of the connection.
    let forwardedElement: String
    /// The verified client certificate's subject (RFC 2253), if the listener asked for one.
    let certificateSubject: String?
    /// Whom a PROXY header to a backend names (nil when no backend of the config takes one).
    let proxied: ProxiedClient?

    init(address: String, logged: String? = nil, scheme: String, certificateSubject: String? = nil, proxied: ProxiedClient? = nil) {
        self.address = address
        addressAndPort = logged ?? address
        self.proxied = proxied
        self.scheme = scheme
        self.certificateSubject = certificateSubject
        forwardedElement = "for=\(HTTP1Serializer.forwardedNode(address));proto=\(scheme)"
    }
}

// MARK: - HTTP/1.1 serialisation

enum HTTP1Serializer {
    /// The request head for an HTTP/1.1 backend: request line, `Host` from the authority, the
    /// fields less hop-by-hop ones (and `te`), cookies joined again (RFC 9113 section 8.2.3),
    /// forwarding fields per `forwarded`, and the body framing: `Content-Length` when known,
    /// chunked when a body of unknown length follows.
    /// `via`: the protocol version the client spoke ("2", "1.1") for a `Via` field; nil: none.
    static func requestHead(_ r: RequestHead, forwarded: ForwardedMode, via: String?, client: ClientIdentity) -> (bytes: [UInt8], chunked: Bool) {
        var out: [UInt8] = []
        out.reserveCapacity(256 + r.fields.byteCount + 4 * r.fields.count)
        func add(_ s: String) { out.append(contentsOf: s.utf8) }
        add(r.method)
        add(" ")
        add(r.path.isEmpty ? "/" : r.path)
        add(" HTTP/1.1\r\nHost: ")
        add(r.authority)
        add("\r\n")
        let listed = FieldRules.connectionListed(r.fields)
        var cookies: [String] = []
        r.fields.bytes.withUnsafeBytes { b in
            for i in 0..<r.fields.count {
                let h = r.fields
                if FieldRules.isHopByHop(h, i) || h.isNamed(i, "host") || h.isNamed(i, "te") || h.isNamed(i, "content-length") { continue }
                // The forwarding fields are written below (with the prior values when appending).
                if forwarded != .off, isForwardingField(h, i) { continue }
                if !listed.isEmpty, listed.contains(h.name(at: i)) { continue }
                if h.isNamed(i, "cookie") {
                    cookies.append(h.value(at: i))
                    continue
                }
                appendCanonical(&out, UnsafeRawBufferPointer(rebasing: b[h.fields[i].name]))
                add(": ")
                out.append(contentsOf: UnsafeRawBufferPointer(rebasing: b[h.fields[i].value]))
                add("\r\n")
            }
        }
        if !cookies.isEmpty {
            add("Cookie: ")
            add(cookies.joined(separator: "; "))
            add("\r\n")
        }
        if forwarded != .off { addForwarding(&out, r, forwarded: forwarded, client: client) }
        if let via { add("Via: \(via) edgemux\r\n") }
        var chunked = false
        if let n = r.contentLength {
            add("Content-Length: \(n)\r\n")
        } else if !r.endStream {
            add("Transfer-Encoding: chunked\r\n")
            chunked = true
        } else if ["POST", "PUT", "PATCH"].contains(r.method) {
            // RFC 9110 section 8.6: a request whose method defines a body says when it is empty.
            add("Content-Length: 0\r\n")
        }
        add("\r\n")
        return (out, chunked)
    }

    /// `X-Forwarded-*` and `Forwarded`: what the backend needs to know about the client.
    static func isForwardingField(_ h: HeaderList, _ i: Int) -> Bool {
        h.isNamed(i, "x-forwarded-for") || h.isNamed(i, "x-forwarded-proto") || h.isNamed(i, "x-forwarded-host") || h.isNamed(i, "forwarded")
    }

    /// The forwarding values for `r`: the client appended to (or replacing) the prior hops.
    static func forwarding(_ r: RequestHead, forwarded: ForwardedMode, client: ClientIdentity) -> (xff: String, forwarded: String) {
        var xff = client.address
        var fwd = client.forwardedElement
        if !r.authority.isEmpty {
            fwd.reserveCapacity(fwd.utf8.count + r.authority.utf8.count + 8)
            fwd += ";host=\""
            fwd += r.authority
            fwd += "\""
        }
        if forwarded == .append {
            if let prior = r.fields.joined("x-forwarded-for"), !prior.isEmpty { xff = prior + ", " + xff }
            if let prior = r.fields.joined("forwarded"), !prior.isEmpty { fwd = prior + ", " + fwd }
        }
        return (xff, fwd)
    }

    /// The forwarding fields as HTTP/2 name/value pairs.
    static func forwardingValues(_ r: RequestHead, forwarded: ForwardedMode, client: ClientIdentity) -> [(String, String)] {
        let (xff, fwd) = forwarding(r, forwarded: forwarded, client: client)
        var out = [("x-forwarded-for", xff), ("x-forwarded-proto", client.scheme)]
        if !r.authority.isEmpty { out.append(("x-forwarded-host", r.authority)) }
        out.append(("forwarded", fwd))
        return out
    }

    /// RFC 7239 section 6: IPv6 addresses are quoted and bracketed.
    static func forwardedNode(_ address: String) -> String {
        address.contains(":") ? "\"[\(address)]\"" : address
    }

    private static func addForwarding(_ out: inout [UInt8], _ r: RequestHead, forwarded: ForwardedMode, client: ClientIdentity) {
        let (xff, fwd) = forwarding(r, forwarded: forwarded, client: client)
        func line(_ name: StaticString, _ value: String) {
            out.append(contentsOf: UnsafeBufferPointer(start: name.utf8Start, count: name.utf8CodeUnitCount))
            out.append(contentsOf: value.utf8)
            out.append(contentsOf: [13, 10])
        }
        line("X-Forwarded-For: ", xff)
        line("X-Forwarded-Proto: ", client.scheme)
        if !r.authority.isEmpty { line("X-Forwarded-Host: ", r.authority) }
        line("Forwarded: ", fwd)
    }

    /// `content-type` → `Content-Type`: HTTP/1.1 names are case-insensitive, but some old
    /// servers and many humans reading a capture expect the usual spelling.
    static func appendCanonical(_ out: inout [UInt8], _ name: UnsafeRawBufferPointer) {
        var upper = true
        for b in name {
            out.append(upper && b >= 97 && b <= 122 ? b - 32 : b)
            upper = b == UInt8(ascii: "-")
        }
    }

    /// The fields of an HTTP/1.1 response head for another hop: hop-by-hop fields and the ones
    /// `Connection` names are dropped (the framing is the next hop's own).
    /// `dropContentLength`: the body is framed otherwise (chunked, or until close), so its
    /// `Content-Length` (which RFC 9112 section 6.3 says to ignore then) must not reach a hop
    /// that would frame by it.
    static func responseFields(_ head: UnsafeRawBufferPointer, dropContentLength: Bool = false) -> HeaderList {
        var list = HeaderList(reservingBytes: head.count, fields: 16)
        // Most heads have no Connection field, or one without names of other fields in it: the
        // per-line check (which walks the head again) is needed only for one that lists others.
        var listsOthers = false
        HTTP1Fields.forEachLine(head) { l in
            guard HTTP1Fields.equalsIgnoringCase(head, l.name, "connection") else { return }
            HTTP1Fields.forEachItem(head, l.value) { item in
                if !HTTP1Fields.equalsIgnoringCase(head, item, "close") && !HTTP1Fields.equalsIgnoringCase(head, item, "keep-alive") { listsOthers = true }
            }
        }
        HTTP1Fields.forEachLine(head) { l in
            if HTTP1Fields.equalsIgnoringCase(head, l.name, "connection") || HTTP1Fields.equalsIgnoringCase(head, l.name, "keep-alive")
                || HTTP1Fields.equalsIgnoringCase(head, l.name, "proxy-connection") { return }
            if listsOthers, HTTP1Fields.isConnectionField(head, l) { return }
            if dropContentLength, HTTP1Fields.equalsIgnoringCase(head, l.name, "content-length") { return }
            if HTTP1Fields.equalsIgnoringCase(head, l.name, "transfer-encoding") || HTTP1Fields.equalsIgnoringCase(head, l.name, "upgrade") { return }
            list.append(name: UnsafeRawBufferPointer(rebasing: head[l.name]), value: UnsafeRawBufferPointer(rebasing: head[l.value]))
        }
        return list
    }
}
