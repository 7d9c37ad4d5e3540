/// The application protocol a client connection speaks.
public enum ClientProtocol: String, Sendable, Hashable, CaseIterable {
    case http1 = "http/1.1"
    case h2 = "h2"
}

/// What the sniffers learn from the first request of a connection: everything a route can match.
public struct RequestInfo: Sendable, Equatable {
    public var method: String = ""
    public var path: String = ""
    /// `Host` (HTTP/1.1) or `:authority` (HTTP/2), lower-cased, without the port.
    public var host: String = ""
    public var contentType: String = ""
    /// The `Upgrade` header, lower-cased (HTTP/1.1 only), e.g. "websocket".
    public var upgrade: String = ""
    /// HTTP/1.x only: how the request frames itself, which decides whether its exchange can
    /// run over a pooled backend connection (`HTTP1Exchange.eligible`).
    public var framing = HTTP1RequestFraming()

    public init() {}
}

/// What an HTTP/1.x request head says about its connection and body.
public struct HTTP1RequestFraming: Sendable, Equatable {
    /// The request line said HTTP/1.0.
    public var http10 = false
    /// `Connection` lists `close`: the client sends this one request only.
    public var closeRequested = false
    /// A body follows the head (`Transfer-Encoding`, or a `Content-Length` other than 0).
    public var hasBody = false
    /// `Expect` is present (100-continue waits on the backend's interim answer).
    public var expects = false

    public init() {}
}

/// Why a sniffer gave up on a connection (the client's fault: it is closed).
public enum SniffError: Error, Equatable, Sendable, CustomStringConvertible {
    case badPreface
    case frameTooLarge(Int)
    /// A frame whose length its type does not allow (RFC 9113 section 6: FRAME_SIZE_ERROR).
    case frameSizeError(String)
    case protocolError(String)
    /// A window beyond 2^31-1 (RFC 9113 section 6.9.1: FLOW_CONTROL_ERROR).
    case flowControlError(String)
    case badHeaderBlock
    case headTooLarge(Int)
    case malformedHead(String)

    public var description: String {
        switch self {
        case .badPreface: return "not an HTTP/2 client preface"
        case .frameTooLarge(let n): return "HTTP/2 frame of \(n) bytes exceeds SETTINGS_MAX_FRAME_SIZE"
        case .frameSizeError(let s): return "HTTP/2 frame size error: \(s)"
        case .protocolError(let s): return "HTTP/2 protocol error: \(s)"
        case .flowControlError(let s): return "HTTP/2 flow-control error: \(s)"
        case .badHeaderBlock: return "HPACK header block does not decode"
        case .headTooLarge(let cap): return "request head exceeds \(cap) bytes"
        case .malformedHead(let s): return "malformed HTTP/1.1 request head: \(s)"
        }
    }

    /// The metric label for this kind of error.
    public var metricLabel: String {
        switch self {
        case .badPreface: return "h2_preface"
        case .frameTooLarge, .frameSizeError: return "h2_frame_size"
        case .flowControlError: return "h2_flow_control"
        case .protocolError: return "h2_protocol"
        case .badHeaderBlock: return "h2_hpack"
        case .headTooLarge: return "h1_head_too_large"
        case .malformedHead: return "h1_malformed"
        }
    }
}
