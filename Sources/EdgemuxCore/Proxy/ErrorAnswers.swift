/// The bytes edgemux itself answers with when it cannot or will not relay a connection.
enum ErrorAnswers {
    /// A complete HTTP/1.1 response that closes the connection.
    static func http1(status: Int, message: String) -> [UInt8] {
        let body = "edgemux: \(message)\n"
        let head = "HTTP/1.1 \(status) \(HTTP1ResponseWriter.reasons[status] ?? "Error")\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n"
        return Array((head + body).utf8)
    }

    /// HTTP/2 error codes (RFC 9113 section 7).
    enum H2Error: UInt32 {
        case noError = 0x0
        case protocolError = 0x1
        case internalError = 0x2
        case flowControlError = 0x3
        case frameSizeError = 0x6
        case compressionError = 0x9
    }

    static func frameHeader(length: Int, type: UInt8, flags: UInt8, stream: UInt32) -> [UInt8] {
        [UInt8(length >> 16 & 0xff), UInt8(length >> 8 & 0xff), UInt8(length & 0xff), type, flags,
         UInt8(stream >> 24 & 0x7f), UInt8(stream >> 16 & 0xff), UInt8(stream >> 8 & 0xff), UInt8(stream & 0xff)]
    }

    /// GOAWAY with `lastStream` and `error`, and a short debug text.
    static func goaway(lastStream: UInt32, error: H2Error, debug: String) -> [UInt8] {
        let text = Array(debug.utf8.prefix(200))
        var f = frameHeader(length: 8 + text.count, type: H2.goaway, flags: 0, stream: 0)
        f += [UInt8(lastStream >> 24 & 0x7f), UInt8(lastStream >> 16 & 0xff), UInt8(lastStream >> 8 & 0xff), UInt8(lastStream & 0xff)]
        let e = error.rawValue
        f += [UInt8(e >> 24 & 0xff), UInt8(e >> 16 & 0xff), UInt8(e >> 8 & 0xff), UInt8(e & 0xff)]
        return f + text
    }

    /// Answers stream `stream` with `status` and ends the connection: a HEADERS frame, DATA with
    /// END_STREAM, then GOAWAY naming that stream as the last one processed. (The client's
    /// SETTINGS were acknowledged while sniffing.)
    static func h2(stream: UInt32, status: Int, message: String) -> [UInt8] {
        // HPACK: ":status" as a literal without indexing, name from static table index 8
        // (RFC 7541 6.2.2), then "content-type: text/plain" by static name index 31.
        let statusText = Array(String(status).utf8)
        var block: [UInt8] = [0x08, UInt8(statusText.count)] + statusText
        let ct = Array("text/plain; charset=utf-8".utf8)
        block += [0x0f, 31 - 15, UInt8(ct.count)] + ct
        let body = Array("edgemux: \(message)\n".utf8)
        var out = frameHeader(length: block.count, type: H2.headers, flags: H2.flagEndHeaders, stream: stream) + block
        out += frameHeader(length: body.count, type: H2.data, flags: H2.flagEndStream, stream: stream) + body
        out += goaway(lastStream: stream, error: .noError, debug: message)
        return out
    }

    /// The gRPC form of the same answer, for a request whose content-type is application/grpc:
    /// a trailers-only response (`:status 200`, `content-type: application/grpc`, `grpc-status`,
    /// `grpc-message`), which gRPC clients turn into a status code, as Envoy answers "no healthy
    /// upstream". 502/503/504 map to UNAVAILABLE (14, a client may retry), 404 to UNIMPLEMENTED
    /// (12), anything else to INTERNAL (13).
    static func grpc(stream: UInt32, status: Int, message: String) -> [UInt8] {
        let code: Int
        switch status {
        case 502, 503, 504: code = 14
        case 404: code = 12
        default: code = 13
        }
        func literal(_ name: String, _ value: [UInt8]) -> [UInt8] {
            // Literal without indexing, new name (RFC 7541 6.2.2); both lengths stay below 127.
            [0x00, UInt8(name.utf8.count)] + Array(name.utf8) + [UInt8(value.count)] + value
        }
        var block: [UInt8] = [0x88]  // :status 200, static index 8
        let ct = Array("application/grpc".utf8)
        block += [0x0f, 31 - 15, UInt8(ct.count)] + ct
        block += literal("grpc-status", Array(String(code).utf8))
        block += literal("grpc-message", percentEncoded("edgemux: \(message)", limit: 120))
        var out = frameHeader(length: block.count, type: H2.headers, flags: H2.flagEndHeaders | H2.flagEndStream, stream: stream) + block
        out += goaway(lastStream: stream, error: .noError, debug: message)
        return out
    }

    /// grpc-message's percent-encoding (gRPC over HTTP/2 spec): printable ASCII but '%' as is.
    static func percentEncoded(_ text: String, limit: Int) -> [UInt8] {
        var out: [UInt8] = []
        for b in text.utf8 {
            if out.count >= limit { break }
            if b >= 0x20 && b <= 0x7e && b != UInt8(ascii: "%") {
                out.append(b)
            } else {
                out += Array(String(format2hex: b).utf8)
            }
        }
        return out
    }
}

extension String {
    /// "%XX" for a byte.
    init(format2hex b: UInt8) {
        let digits = Array("0123456789ABCDEF".utf8)
        self = String(decoding: [UInt8(ascii: "%"), digits[Int(b >> 4)], digits[Int(b & 0xf)]], as: UTF8.self)
    }
}
