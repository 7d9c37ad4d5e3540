/// edgemux's own last words on a connection (an error status, a GOAWAY): written in full, then a
/// half-close, then the client's remaining input is read and dropped until it closes. Closing a
/// socket that still has unread input resets the connection, and the reset can destroy the answer
/// in flight: this is the lingering close of nginx and HAProxy.
struct FinalAnswer {
    enum Progress {
        /// Waiting for room to write the rest.
        case writing
        /// Written and half-closed; waiting for the client to close.
        case lingering
        /// The client closed (or failed): close now.
        case finished
    }

    private let bytes: [UInt8]
    private var offset = 0
    private var halfClosed = false

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    /// Makes what progress the socket allows.
    mutating func advance(client: Transport, scratch: UnsafeMutableRawBufferPointer) -> Progress {
        if !halfClosed {
            let start = offset
            let (written, broken) = bytes.withUnsafeBytes { client.writeAvailable(from: UnsafeRawBufferPointer(rebasing: $0[start...])) }
            offset += written
            if broken != nil { return .finished }
            guard offset >= bytes.count else { return .writing }
            if client.hasBufferedOutput, case .wantWrite = client.flushBuffered() { return .writing }
            client.shutdownWrite()
            halfClosed = true
        }
        // A close_notify that met a full socket goes when there is room (EPOLLOUT brings us back).
        if client.closeNotifyPending, !client.retryCloseNotify() { return .writing }
        while client.readable {
            switch client.read(into: scratch) {
            case .bytes: continue
            case .wantRead, .wantWrite: return .lingering
            case .eof, .failed: return .finished
            }
        }
        return .lingering
    }
}
