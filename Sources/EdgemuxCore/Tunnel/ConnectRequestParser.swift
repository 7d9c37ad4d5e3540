/// Reads an HTTP/1.1 proxy request head (`CONNECT host:port HTTP/1.1` and its header fields).
/// No I/O; the caller feeds every byte received so far.
public enum ConnectRequestParser {
    public struct Request: Equatable {
        public var method: String
        public var host: String
        public var port: UInt16
        /// The `Proxy-Authorization` value, if any.
        public var proxyAuthorization: String?
        /// Bytes of the head, CRLFCRLF included (what follows is tunnel data).
        public var headLength: Int
    }

    public enum Result: Equatable {
        case needMore
        case done(Request)
        /// The HTTP status to answer with, and why.
        case error(status: Int, reason: String)
    }

    public static func parse(_ b: UnsafeRawBufferPointer, cap: Int) -> Result {
        let head = HTTP1HeadParser(cap: cap)
        switch head.parse(b) {
        case .needMore:
            return .needMore
        case .error(let e):
            if case .headTooLarge = e { return .error(status: 431, reason: "\(e)") }
            return .error(status: 400, reason: "\(e)")
        case .done(let info, let length):
            var auth: String?
            let text = String(decoding: b[0..<length], as: UTF8.self)
            for line in text.split(separator: "\r\n").dropFirst() {
                guard let colon = line.firstIndex(of: ":") else { continue }
                if line[..<colon].lowercased() == "proxy-authorization" {
                    auth = String(line[line.index(after: colon)...]).trimmedSpaces()
                }
            }
            guard info.method == "CONNECT" else {
                return .error(status: 405, reason: "method \(info.method) is not CONNECT")
            }
            // RFC 9110 9.3.6: the target is authority-form, host:port, nothing else.
            guard let (host, port) = SocketAddress.splitHostPort(info.path), !host.isEmpty else {
                return .error(status: 400, reason: "CONNECT target '\(info.path.prefix(100))' is not host:port")
            }
            let validHost = host.utf8.allSatisfy { c in
                (c >= 48 && c <= 57) || (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || c == 45 || c == 46 || c == 58 || c == 95
            }
            guard validHost, host.utf8.count <= 253 else { return .error(status: 400, reason: "CONNECT host '\(host.prefix(100))' is not a valid name or address") }
            return .done(Request(method: info.method, host: host.lowercased(), port: port, proxyAuthorization: auth, headLength: length))
        }
    }
}
