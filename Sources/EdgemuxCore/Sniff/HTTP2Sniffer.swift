import CEdgemux

/// HTTP/2 frame types and flags that the sniffer and the ACK filter need (RFC 9113 section 6).
enum H2 {
    static let preface: [UInt8] = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)
    static let frameHeaderLength = 9
    /// SETTINGS_MAX_FRAME_SIZE at its default: edgemux's SETTINGS leave every value there.
    static let maxFrameSize = 16_384

    static let data: UInt8 = 0x0
    static let headers: UInt8 = 0x1
    static let priority: UInt8 = 0x2
    static let rstStream: UInt8 = 0x3
    static let settings: UInt8 = 0x4
    static let pushPromise: UInt8 = 0x5
    static let ping: UInt8 = 0x6
    static let goaway: UInt8 = 0x7
    static let windowUpdate: UInt8 = 0x8
    static let continuation: UInt8 = 0x9

    static let flagAck: UInt8 = 0x1
    static let flagEndStream: UInt8 = 0x1
    static let flagEndHeaders: UInt8 = 0x4
    static let flagPadded: UInt8 = 0x8
    static let flagPriority: UInt8 = 0x20

    /// edgemux's own SETTINGS frame: empty, so every value stays at its protocol default and
    /// contradicts nothing the backend will say in its own SETTINGS.
    static let emptySettings: [UInt8] = [0, 0, 0, settings, 0, 0, 0, 0, 0]
    static let settingsAck: [UInt8] = [0, 0, 0, settings, flagAck, 0, 0, 0, 0]

    struct FrameHeader {
        let length: Int
        let type: UInt8
        let flags: UInt8
        let stream: UInt32

        init(_ b: UnsafeRawBufferPointer, at i: Int) {
            length = Int(b[i]) << 16 | Int(b[i + 1]) << 8 | Int(b[i + 2])
            type = b[i + 3]
            flags = b[i + 4]
            stream = (UInt32(b[i + 5]) << 24 | UInt32(b[i + 6]) << 16 | UInt32(b[i + 7]) << 8 | UInt32(b[i + 8])) & 0x7fff_ffff
        }

        var isSettingsAck: Bool { type == settings && flags & flagAck != 0 && length == 0 }
    }
}

/// Reads an HTTP/2 connection's start (preface, then frames up to the first complete HEADERS
/// with its CONTINUATIONs) and decodes that header block for routing. No I/O: feed it all bytes
/// received so far; it remembers how far it got.
public struct HTTP2Sniffer {
    public enum Result: Equatable {
        case needMore
        /// `replayEnd`: the bytes `[0, replayEnd)` end with the first complete header block;
        /// `droppedAck`: the client's ACK of edgemux's SETTINGS, when it came before that point
        /// (those 9 bytes must not be replayed).
        case done(RequestInfo, replayEnd: Int, droppedAck: Range<Int>?)
        case error(SniffError)
    }

    /// Total bytes the sniffer will look at before giving up.
    /// (Stored narrow, as the other positions: a sniffer sits in every connection awaiting its
    /// first request, thousands of them.)
    private let cap32: Int32
    public var cap: Int { Int(cap32) }
    /// True once the 24-byte client preface has arrived (edgemux must then send its SETTINGS).
    public private(set) var prefaceReceived = false
    private var offset32: Int32 = 0
    private var offset: Int {
        get { Int(offset32) }
        set { offset32 = Int32(newValue) }
    }
    /// The client's first SETTINGS frame has arrived (edgemux then acknowledges it: a client may
    /// wait for that ACK before its first request, RFC 9113 section 3.4).
    public private(set) var sawClientSettings = false
    /// Where the ACK of edgemux's SETTINGS starts, -1 until one is seen.
    private var droppedAckStart: Int32 = -1
    private var droppedAck: Range<Int>? {
        droppedAckStart < 0 ? nil : Int(droppedAckStart)..<(Int(droppedAckStart) + H2.frameHeaderLength)
    }
    private var headerBlock: [UInt8] = []
    /// The stream of the first HEADERS (0 until one arrives).
    public private(set) var headersStream: UInt32 = 0
    /// The connection-level window the client's WINDOW_UPDATEs give edgemux's side (RFC 9113 6.9.1).
    private var connectionWindow: Int64 = 65_535

    public init(cap: Int) { self.cap32 = Int32(clamping: cap) }

    /// True if `bytes` so far could still be the start of an HTTP/2 preface.
    public static func couldBePreface(_ bytes: UnsafeRawBufferPointer) -> Bool {
        let n = min(bytes.count, H2.preface.count)
        for i in 0..<n where bytes[i] != H2.preface[i] { return false }
        return true
    }

    public mutating func parse(_ bytes: UnsafeRawBufferPointer) -> Result {
        if !prefaceReceived {
            guard Self.couldBePreface(bytes) else { return .error(.badPreface) }
            guard bytes.count >= H2.preface.count else { return .needMore }
            prefaceReceived = true
            offset = H2.preface.count
        }
        while bytes.count - offset >= H2.frameHeaderLength {
            let h = H2.FrameHeader(bytes, at: offset)
            if h.length > H2.maxFrameSize { return .error(.frameTooLarge(h.length)) }
            if !sawClientSettings {
                // RFC 9113 3.4: the preface is followed by a SETTINGS frame (not an ACK).
                guard h.type == H2.settings, h.flags & H2.flagAck == 0 else {
                    return .error(.protocolError("client preface not followed by SETTINGS"))
                }
            }
            if !headerBlock.isEmpty || headersStream != 0, h.type != H2.continuation {
                return .error(.protocolError("header block interrupted by a frame of type \(h.type)"))
            }
            // The rules a frame header alone breaks are refused as soon as its 9 bytes are here,
            // not when its payload (which may never come) has arrived.
            if let broken = Self.headerRuleBroken(h) { return .error(broken) }
            let end = offset + H2.frameHeaderLength + h.length
            guard bytes.count >= end else {
                if end > cap { return .error(.headTooLarge(cap)) }
                return .needMore
            }
            let payload = UnsafeRawBufferPointer(rebasing: bytes[(offset + H2.frameHeaderLength)..<end])
            switch h.type {
            case H2.settings:
                if h.flags & H2.flagAck != 0 {
                    guard h.length == 0 else { return .error(.protocolError("SETTINGS ACK with a payload")) }
                    if droppedAckStart < 0 { droppedAckStart = offset32 }
                } else {
                    if let broken = Self.settingsRuleBroken(payload) { return .error(broken) }
                    sawClientSettings = true
                }
            case H2.headers:
                guard let fragment = Self.headerFragment(payload, flags: h.flags) else {
                    return .error(.protocolError("HEADERS padding or priority exceeds the frame"))
                }
                if h.flags & H2.flagPriority != 0, Self.dependency(payload, flags: h.flags) == h.stream {
                    return .error(.protocolError("HEADERS on stream \(h.stream) depends on itself"))
                }
                headerBlock.append(contentsOf: fragment)
                headersStream = h.stream
                if h.flags & H2.flagEndHeaders != 0 { return finish(end) }
            case H2.continuation:
                guard headersStream != 0, h.stream == headersStream else {
                    return .error(.protocolError("CONTINUATION without HEADERS"))
                }
                headerBlock.append(contentsOf: payload)
                if h.flags & H2.flagEndHeaders != 0 { return finish(end) }
            case H2.data, H2.rstStream, H2.pushPromise:
                return .error(.protocolError("frame type \(h.type) before any HEADERS"))
            case H2.goaway:
                return .error(.protocolError("GOAWAY before any request"))
            case H2.priority:
                if Self.dependency(payload, flags: H2.flagPriority) == h.stream {
                    return .error(.protocolError("PRIORITY on stream \(h.stream) depends on itself"))
                }
            case H2.windowUpdate:
                let increment = Self.uint32(payload, at: 0) & 0x7fff_ffff
                guard increment != 0 else { return .error(.protocolError("WINDOW_UPDATE with an increment of 0")) }
                connectionWindow += Int64(increment)
                guard connectionWindow <= Int64(Int32.max) else {
                    return .error(.flowControlError("connection window grows beyond 2^31-1"))
                }
            default:
                break  // PING, unknown extension frames: replayed as they are
            }
            offset = end
            if offset > cap { return .error(.headTooLarge(cap)) }
        }
        if bytes.count >= cap { return .error(.headTooLarge(cap)) }
        return .needMore
    }

    /// Rules of RFC 9113 section 6 that a frame header breaks by itself, before the first
    /// request: the stream a frame type must (not) name, and the fixed lengths. Before any
    /// HEADERS every stream is idle, where only HEADERS and PRIORITY may be sent (section 5.1).
    static func headerRuleBroken(_ h: H2.FrameHeader) -> SniffError? {
        switch h.type {
        case H2.settings:
            if h.stream != 0 { return .protocolError("SETTINGS on stream \(h.stream)") }
            if h.flags & H2.flagAck != 0, h.length != 0 { return .frameSizeError("SETTINGS ACK with a payload") }
            if h.length % 6 != 0 { return .frameSizeError("SETTINGS of \(h.length) bytes, not a multiple of 6") }
        case H2.headers:
            if h.stream == 0 || h.stream & 1 == 0 { return .protocolError("HEADERS on stream \(h.stream)") }
        case H2.priority:
            if h.stream == 0 { return .protocolError("PRIORITY on stream 0") }
            if h.length != 5 { return .frameSizeError("PRIORITY of \(h.length) bytes") }
        case H2.ping:
            if h.stream != 0 { return .protocolError("PING on stream \(h.stream)") }
            if h.length != 8 { return .frameSizeError("PING of \(h.length) bytes") }
        case H2.windowUpdate:
            if h.length != 4 { return .frameSizeError("WINDOW_UPDATE of \(h.length) bytes") }
            if h.stream != 0 { return .protocolError("WINDOW_UPDATE on idle stream \(h.stream)") }
        default:
            break
        }
        return nil
    }

    /// The SETTINGS values RFC 9113 section 6.5.2 (and RFC 8441 section 3) bound.
    static func settingsRuleBroken(_ payload: UnsafeRawBufferPointer) -> SniffError? {
        var i = 0
        while i + 6 <= payload.count {
            let id = UInt16(payload[i]) << 8 | UInt16(payload[i + 1])
            let value = uint32(payload, at: i + 2)
            switch id {
            case 0x2 where value > 1: return .protocolError("SETTINGS_ENABLE_PUSH of \(value)")
            case 0x4 where value > UInt32(Int32.max): return .flowControlError("SETTINGS_INITIAL_WINDOW_SIZE of \(value)")
            case 0x5 where value < 16_384 || value > 16_777_215: return .protocolError("SETTINGS_MAX_FRAME_SIZE of \(value)")
            case 0x8 where value > 1: return .protocolError("SETTINGS_ENABLE_CONNECT_PROTOCOL of \(value)")
            default: break
            }
            i += 6
        }
        return nil
    }

    /// The stream a HEADERS (with its PRIORITY flag) or PRIORITY payload depends on.
    static func dependency(_ p: UnsafeRawBufferPointer, flags: UInt8) -> UInt32? {
        let start = flags & H2.flagPadded != 0 ? 1 : 0
        guard p.count >= start + 4 else { return nil }
        return uint32(p, at: start) & 0x7fff_ffff
    }

    static func uint32(_ p: UnsafeRawBufferPointer, at i: Int) -> UInt32 {
        UInt32(p[i]) << 24 | UInt32(p[i + 1]) << 16 | UInt32(p[i + 2]) << 8 | UInt32(p[i + 3])
    }

    private mutating func finish(_ end: Int) -> Result {
        guard let info = Self.decode(headerBlock) else { return .error(.badHeaderBlock) }
        return .done(info, replayEnd: end, droppedAck: droppedAck)
    }

    /// The header block fragment of a HEADERS payload, without padding and priority fields.
    static func headerFragment(_ p: UnsafeRawBufferPointer, flags: UInt8) -> UnsafeRawBufferPointer? {
        var start = 0
        var end = p.count
        if flags & H2.flagPadded != 0 {
            guard p.count >= 1 else { return nil }
            let pad = Int(p[0])
            start = 1
            end -= pad
        }
        if flags & H2.flagPriority != 0 { start += 5 }
        guard start <= end else { return nil }
        return UnsafeRawBufferPointer(rebasing: p[start..<end])
    }

    /// Decodes a complete header block with a fresh HPACK inflater (safe because the whole
    /// connection goes to one backend, which decodes the same bytes with its own state).
    static func decode(_ block: [UInt8]) -> RequestInfo? {
        var inflater: OpaquePointer?
        guard nghttp2_hd_inflate_new(&inflater) == 0, let inflater else { return nil }
        defer { nghttp2_hd_inflate_del(inflater) }
        var info = RequestInfo()
        let ok = block.withUnsafeBufferPointer { buf -> Bool in
            var p = buf.baseAddress!
            var remaining = buf.count
            while true {
                var nv = nghttp2_nv()
                var flags: Int32 = 0
                let n = nghttp2_hd_inflate_hd2(inflater, &nv, &flags, p, remaining, 1)
                if n < 0 { return false }
                p += n
                remaining -= n
                if flags & Int32(NGHTTP2_HD_INFLATE_EMIT.rawValue) != 0 {
                    let name = String(decoding: UnsafeBufferPointer(start: nv.name, count: nv.namelen), as: UTF8.self)
                    let value = String(decoding: UnsafeBufferPointer(start: nv.value, count: nv.valuelen), as: UTF8.self)
                    switch name {
                    case ":method": info.method = value
                    case ":path": info.path = value
                    case ":authority": info.host = HTTP1HeadParser.hostWithoutPort(value)
                    case "host": if info.host.isEmpty { info.host = HTTP1HeadParser.hostWithoutPort(value) }
                    case "content-type": info.contentType = value
                    default: break
                    }
                }
                if flags & Int32(NGHTTP2_HD_INFLATE_FINAL.rawValue) != 0 {
                    nghttp2_hd_inflate_end_headers(inflater)
                    return true
                }
                if n == 0 && remaining == 0 { return false }
            }
        }
        return ok ? info : nil
    }
}

/// Drops exactly one frame from the client-to-backend byte stream: the client's SETTINGS ACK of
/// edgemux's own SETTINGS. The backend never sent those SETTINGS, and strict servers (Go's
/// net/http, nghttp2) treat an ACK they did not ask for as a connection error. Once the ACK is
/// gone the direction is a plain byte relay again. No I/O.
struct SettingsAckFilter {
    /// Bytes left in the frame being passed through.
    private var remainingInFrame = 0
    /// An incomplete frame header held back until its other bytes arrive (at most 8 bytes).
    private(set) var held: [UInt8] = []
    private(set) var done = false

    /// Filters `buffer[0..<count]` in place (the caller has put `held` at its start, see
    /// `takeHeld`). Returns how many bytes at the start are ready to forward; bytes after that
    /// are kept in `held`.
    mutating func filter(_ buffer: UnsafeMutableRawBufferPointer, count: Int) -> Int {
        var count = count
        var i = 0
        while i < count && !done {
            if remainingInFrame > 0 {
                let step = min(remainingInFrame, count - i)
                remainingInFrame -= step
                i += step
                continue
            }
            if count - i < H2.frameHeaderLength {
                held = Array(buffer[i..<count])
                return i
            }
            let h = H2.FrameHeader(UnsafeRawBufferPointer(buffer), at: i)
            if h.isSettingsAck {
                let tail = count - (i + H2.frameHeaderLength)
                if tail > 0 {
                    buffer.baseAddress!.advanced(by: i).copyMemory(
                        from: buffer.baseAddress!.advanced(by: i + H2.frameHeaderLength), byteCount: tail)
                }
                count -= H2.frameHeaderLength
                done = true
                break
            }
            i += H2.frameHeaderLength
            remainingInFrame = h.length
        }
        held = []
        return count
    }

    /// Moves the held bytes to the start of `buffer`; returns how many.
    mutating func takeHeld(into buffer: UnsafeMutableRawBufferPointer) -> Int {
        let n = held.count
        if n > 0 {
            buffer.copyBytes(from: held)
            held = []
        }
        return n
    }
}
