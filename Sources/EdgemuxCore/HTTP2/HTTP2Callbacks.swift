import CEdgemux

// nghttp2's callbacks for every edgemux session. Each is a file-private `@convention(c)`
// function that recovers the `HTTP2Endpoint` from `user_data` with `Unmanaged` (the endpoint
// outlives its session: it deletes it in `deinit`) and calls one method.

private func endpoint(_ user: UnsafeMutableRawPointer?) -> HTTP2Endpoint {
    Unmanaged<HTTP2Endpoint>.fromOpaque(user!).takeUnretainedValue()
}

private let sendCallback: nghttp2_send_callback = { _, data, length, _, user in
    endpoint(user).sessionWants(toSend: UnsafeRawBufferPointer(start: data, count: length))
}

private let sendDataCallback: nghttp2_send_data_callback = { _, frame, header, length, _, user in
    endpoint(user).sessionWants(toSendData: UnsafeRawBufferPointer(start: header, count: H2.frameHeaderLength), length: length, stream: frame!.pointee.hd.stream_id)
}

private let beginHeadersCallback: nghttp2_on_begin_headers_callback = { _, frame, user in
    endpoint(user).beginHeaders(frame!)
}

private let headerCallback: nghttp2_on_header_callback = { _, frame, name, namelen, value, valuelen, _, user in
    endpoint(user).header(frame!, name: UnsafeRawBufferPointer(start: name, count: namelen), value: UnsafeRawBufferPointer(start: value, count: valuelen))
}

private let frameRecvCallback: nghttp2_on_frame_recv_callback = { _, frame, user in
    endpoint(user).frameReceived(frame!)
}

private let dataChunkCallback: nghttp2_on_data_chunk_recv_callback = { _, _, stream, data, len, user in
    endpoint(user).dataChunk(stream: stream, UnsafeRawBufferPointer(start: data, count: len))
}

private let streamCloseCallback: nghttp2_on_stream_close_callback = { _, stream, code, user in
    endpoint(user).streamClosed(stream, code: code)
}

private let frameNotSendCallback: nghttp2_on_frame_not_send_callback = { _, frame, error, user in
    endpoint(user).frameNotSent(frame!, error: error)
    return 0
}

private let frameSendCallback: nghttp2_on_frame_send_callback = { _, frame, user in
    endpoint(user).frameSent(frame!)
    return 0
}

/// The read callback of every body edgemux sends: the bytes stay in the stream's queue and are
/// copied once, by the send-data callback (NGHTTP2_DATA_FLAG_NO_COPY).
let http2ReadBody: nghttp2_data_source_read_callback = { _, stream, _, length, flags, _, user in
    let e = endpoint(user)
    guard let (count, eof, trailers) = e.dataAvailable(stream: stream, max: length) else {
        return Int(NGHTTP2_ERR_DEFERRED.rawValue)
    }
    var f = count > 0 ? NGHTTP2_DATA_FLAG_NO_COPY.rawValue : 0
    if eof {
        f |= NGHTTP2_DATA_FLAG_EOF.rawValue
        if trailers {
            f |= NGHTTP2_DATA_FLAG_NO_END_STREAM.rawValue
            e.submitTrailers(stream: stream)
        }
    }
    flags!.pointee |= f
    return count
}

enum HTTP2Callbacks {
    /// A callbacks object for a new session (nghttp2 copies it; delete it after).
    static func make() -> OpaquePointer? {
        var cbs: OpaquePointer?
        guard nghttp2_session_callbacks_new(&cbs) == 0, let cbs else { return nil }
        nghttp2_session_callbacks_set_send_callback(cbs, sendCallback)
        nghttp2_session_callbacks_set_send_data_callback(cbs, sendDataCallback)
        nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, beginHeadersCallback)
        nghttp2_session_callbacks_set_on_header_callback(cbs, headerCallback)
        nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, frameRecvCallback)
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, dataChunkCallback)
        nghttp2_session_callbacks_set_on_stream_close_callback(cbs, streamCloseCallback)
        nghttp2_session_callbacks_set_on_frame_not_send_callback(cbs, frameNotSendCallback)
        nghttp2_session_callbacks_set_on_frame_send_callback(cbs, frameSendCallback)
        return cbs
    }

    /// A data provider reading `stream`'s body through `http2ReadBody`.
    static func bodyProvider() -> nghttp2_data_provider {
        nghttp2_data_provider(source: nghttp2_data_source(ptr: nil), read_callback: http2ReadBody)
    }
}
