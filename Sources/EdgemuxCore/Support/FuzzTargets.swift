/// Entry points for the fuzzing driver (`Sources/edgemux-fuzz`, run by `Tests/Fuzz/fuzz.sh`) and
/// for the unit tests that replay the seed corpora (`Tests/Fuzz/corpus/<target>/`). Each target
/// feeds one parser arbitrary bytes and checks what must hold for any input, beyond not
/// crashing: a parser fed the same bytes in pieces answers as it does fed them at once, and a
/// head that parses is never refused while only a part of it has arrived (the early refusals of
/// junk must not refuse a slow client). A broken property stops the process (`preconditionFailure`),
/// which libFuzzer reports with the input.
public enum FuzzTargets {
    public static let names = ["h2-sniffer", "h1-head", "h1-request", "h1-response", "chunked",
                               "proxy-protocol", "client-hello", "connect-request", "path", "config"]

    /// Runs target `name` on `data`; false if there is no such target.
    @discardableResult
    public static func run(_ name: String, _ data: UnsafeRawBufferPointer) -> Bool {
        switch name {
        case "h2-sniffer": http2Sniffer(data)
        case "h1-head": http1Head(data)
        case "h1-request": http1Request(data)
        case "h1-response": http1Response(data)
        case "chunked": chunked(data)
        case "proxy-protocol": proxyProtocol(data)
        case "client-hello": clientHello(data)
        case "connect-request": connectRequest(data)
        case "path": path(data)
        case "config": config(data)
        default: return false
        }
        return true
    }

    /// Where an input is cut to feed it in pieces: a few points spread over it, and its ends
    /// (every cut of every input would make each run quadratic).
    static func cuts(_ count: Int) -> [Int] {
        guard count > 1 else { return [] }
        var points = Set([1, 2, count - 1])
        let step = max(1, count / 16)
        for p in stride(from: step, to: count, by: step) { points.insert(p) }
        return points.filter { $0 > 0 && $0 < count }.sorted()
    }

    static func prefix(_ data: UnsafeRawBufferPointer, _ n: Int) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(rebasing: data[0..<n])
    }

    static func check(_ ok: Bool, _ what: @autoclosure () -> String) {
        if !ok { preconditionFailure("fuzz property broken: \(what())") }
    }

    // MARK: targets

    /// The sniffer keeps its position between calls: fed the input as it grows, it must stop
    /// where a fresh sniffer fed that much at once stops, with the same answer.
    static func http2Sniffer(_ data: UnsafeRawBufferPointer) {
        let cap = 4096
        var whole = HTTP2Sniffer(cap: cap)
        let all = whole.parse(data)
        if case .done(_, let end, let dropped) = all {
            check(end <= data.count, "replay end \(end) beyond \(data.count) bytes")
            if let dropped { check(dropped.upperBound <= end, "dropped ACK \(dropped) after the replay end \(end)") }
        }
        var growing = HTTP2Sniffer(cap: cap)
        for n in cuts(data.count) + [data.count] {
            let r = growing.parse(prefix(data, n))
            if r == .needMore { continue }
            var fresh = HTTP2Sniffer(cap: cap)
            let once = fresh.parse(prefix(data, n))
            check(r == once, "fed in pieces: \(r); at once: \(once) (\(n) bytes)")
            return
        }
    }

    static func http1Head(_ data: UnsafeRawBufferPointer) {
        let parser = HTTP1HeadParser(cap: 4096)
        let all = parser.parse(data)
        guard case .done(_, let length) = all else { return }
        check(length <= data.count, "head length \(length) beyond \(data.count) bytes")
        for n in cuts(data.count) {
            let r = parser.parse(prefix(data, n))
            if n < length {
                check(r == .needMore, "a head that parses was refused after \(n) of its \(length) bytes: \(r)")
            } else {
                check(r == all, "\(n) bytes: \(r), all: \(all)")
            }
        }
    }

    static func http1Request(_ data: UnsafeRawBufferPointer) {
        let parser = HTTP1RequestParser(cap: 4096, scheme: "https")
        guard case .done(let request) = parser.parse(data) else { return }
        check(request.headLength <= data.count, "head length \(request.headLength) beyond \(data.count) bytes")
        for n in cuts(data.count) where n < request.headLength {
            if case .needMore = parser.parse(prefix(data, n)) { continue }
            check(false, "a head that parses was refused after \(n) of its \(request.headLength) bytes")
        }
    }

    static func http1Response(_ data: UnsafeRawBufferPointer) {
        guard data.count > 0 else { return }
        let headRequest = data[0] & 1 == 1
        let body = UnsafeRawBufferPointer(rebasing: data[1...])
        let parser = HTTP1ResponseParser(cap: 4096)
        let length: Int
        switch parser.parse(body, headRequest: headRequest) {
        case .done(let head): length = head.headLength
        case .interim(let n): length = n
        default: return
        }
        check(length <= body.count, "head length \(length) beyond \(body.count) bytes")
        for n in cuts(body.count) where n < length {
            let r = parser.parse(prefix(body, n), headRequest: headRequest)
            check(r == .needMore, "a head that parses was refused after \(n) of its \(length) bytes: \(r)")
        }
    }

    /// The scanner follows a body through any split of reads: cut in two at a point the input
    /// chooses, it ends at the same byte and passes the same payload as in one read.
    static func chunked(_ data: UnsafeRawBufferPointer) {
        guard data.count > 1 else { return }
        let cut = min(data.count - 1, 1 + Int(data[0]) * data.count / 256)
        let body = UnsafeRawBufferPointer(rebasing: data[1...])
        var once = ChunkedBodyScanner()
        var payloadOnce = 0
        let all = once.scan(body) { payloadOnce += $0.count }
        var twice = ChunkedBodyScanner()
        var payloadTwice = 0
        let first = twice.scan(prefix(body, cut - 1)) { payloadTwice += $0.count }
        var split: ChunkedBodyScanner.Result
        switch first {
        case .more:
            let rest = UnsafeRawBufferPointer(rebasing: body[(cut - 1)...])
            split = twice.scan(rest) { payloadTwice += $0.count }
            if case .done(let n) = split { split = .done(bodyBytes: n + cut - 1) }
        default:
            split = first
        }
        switch (all, split) {
        case (.done(let a), .done(let b)):
            check(a == b && payloadOnce == payloadTwice, "ends at \(a) in one read and \(b) in two; payload \(payloadOnce) / \(payloadTwice)")
        case (.more, .more):
            check(payloadOnce == payloadTwice, "payload \(payloadOnce) in one read, \(payloadTwice) in two")
        case (.error, .error):
            break
        default:
            check(false, "one read: \(all); two reads cut at \(cut - 1): \(split)")
        }
    }

    static func proxyProtocol(_ data: UnsafeRawBufferPointer) {
        guard case .done(_, _, let length) = ProxyProtocolParser.parse(data) else { return }
        check(length <= data.count, "header length \(length) beyond \(data.count) bytes")
        for n in cuts(data.count) where n < length {
            let r = ProxyProtocolParser.parse(prefix(data, n))
            check(r == .needMore, "a header that parses was refused after \(n) of its \(length) bytes: \(r)")
        }
    }

    static func clientHello(_ data: UnsafeRawBufferPointer) {
        guard case .done = ClientHelloParser.parse(data) else { return }
        for n in cuts(data.count) {
            if case .error(let why) = ClientHelloParser.parse(prefix(data, n)) {
                check(false, "a ClientHello that parses was refused after \(n) of \(data.count) bytes: \(why)")
            }
        }
    }

    static func connectRequest(_ data: UnsafeRawBufferPointer) {
        guard case .done(let request) = ConnectRequestParser.parse(data, cap: 4096) else { return }
        check(request.headLength <= data.count, "head length \(request.headLength) beyond \(data.count) bytes")
        for n in cuts(data.count) where n < request.headLength {
            let r = ConnectRequestParser.parse(prefix(data, n), cap: 4096)
            check(r == .needMore, "a head that parses was refused after \(n) of its \(request.headLength) bytes: \(r)")
        }
    }

    /// Normalising twice changes nothing (request mode routes on the path it forwards, and
    /// both are normalised), and what routes starts with "/" when the target did (no dot segment
    /// climbs above the root).
    static func path(_ data: UnsafeRawBufferPointer) {
        let text = String(decoding: data, as: UTF8.self)
        guard PathNormalizer.hasValidEscapes(text) else { return }  // refused with 400 before routing
        let once = PathNormalizer.normalize(text)
        check(PathNormalizer.normalize(once) == once, "'\(text)' normalises to '\(once)', then to '\(PathNormalizer.normalize(once))'")
        if text.utf8.first == UInt8(ascii: "/") { check(once.utf8.first == UInt8(ascii: "/"), "'\(text)' normalises to '\(once)'") }
    }

    /// A config either loads or is refused with issues that each name a line; never a trap.
    static func config(_ data: UnsafeRawBufferPointer) {
        guard data.count <= 64 * 1024 else { return }
        do {
            _ = try ConfigLoader.load(yaml: String(decoding: data, as: UTF8.self), file: "/nonexistent/fuzz.yaml")
        } catch let e as ConfigError {
            check(!e.issues.isEmpty, "a refused config with no issue")
        } catch {
            check(false, "config load threw \(error)")
        }
    }
}
