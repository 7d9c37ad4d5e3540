/// Body bytes waiting between the two sides of a request, in the loop's pooled chunks: a stream
/// holds memory only while bytes wait, and what may wait is bounded by the side that fills it
/// (an HTTP/2 stream window, or a high-water mark at which an HTTP/1.1 socket stops being read).
struct ByteQueue {
    /// The first chunk, apart: most queues never hold more than one, and an array would cost an
    /// allocation per request.
    private var head: Chunk?
    private var rest: [Chunk] = []
    private(set) var count = 0

    var isEmpty: Bool { count == 0 }

    private var last: Chunk? { rest.last ?? head }

    mutating func append(_ bytes: UnsafeRawBufferPointer, pool: BufferPool) {
        var remaining = bytes
        while !remaining.isEmpty {
            let tail: Chunk
            if let l = last, l.writeIndex < l.storage.count {
                tail = l
            } else {
                tail = pool.take()
                if head == nil { head = tail } else { rest.append(tail) }
            }
            let n = min(remaining.count, tail.storage.count - tail.writeIndex)
            tail.append(UnsafeRawBufferPointer(rebasing: remaining[0..<n]))
            count += n
            remaining = UnsafeRawBufferPointer(rebasing: remaining[n...])
        }
    }

    /// The first contiguous run of waiting bytes (empty when none).
    var first: UnsafeRawBufferPointer {
        head?.readable ?? UnsafeRawBufferPointer(start: nil, count: 0)
    }

    /// Drops `n` bytes from the front.
    mutating func consume(_ n: Int, pool: BufferPool) {
        var left = n
        while left > 0, let c = head {
            let k = min(left, c.readableBytes)
            c.consume(k)
            left -= k
            count -= k
            if c.isEmpty {
                pool.give(c)
                head = rest.isEmpty ? nil : rest.removeFirst()
            }
        }
    }

    /// Copies up to `buffer.count` bytes out and drops them; returns how many.
    mutating func read(into buffer: UnsafeMutableRawBufferPointer, pool: BufferPool) -> Int {
        var done = 0
        while done < buffer.count, !isEmpty {
            let run = first
            let n = min(run.count, buffer.count - done)
            UnsafeMutableRawBufferPointer(rebasing: buffer[done..<(done + n)]).copyMemory(from: UnsafeRawBufferPointer(rebasing: run[0..<n]))
            consume(n, pool: pool)
            done += n
        }
        return done
    }

    /// Gives every chunk back.
    mutating func release(pool: BufferPool) {
        if let h = head { pool.give(h) }
        for c in rest { pool.give(c) }
        head = nil
        rest = []
        count = 0
    }
}

extension ByteQueue {
    /// Moves bytes from the front of `source` to the end of this queue until this one holds
    /// `limit` or `source` is empty, each run framed as an HTTP/1.1 chunk when `chunked` (the
    /// size line written in place, no string made). Returns the body bytes moved.
    mutating func moveBody(from source: inout ByteQueue, chunked: Bool, limit: Int, pool: BufferPool) -> Int {
        var moved = 0
        while count < limit, !source.isEmpty {
            let run = source.first
            let n = min(run.count, limit)
            if chunked {
                withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 18) { line in
                    var digits = 0
                    var v = n
                    repeat { digits += 1; v >>= 4 } while v > 0
                    v = n
                    for i in stride(from: digits - 1, through: 0, by: -1) {
                        line[i] = hexDigits.utf8Start[v & 15]
                        v >>= 4
                    }
                    line[digits] = 13
                    line[digits + 1] = 10
                    append(UnsafeRawBufferPointer(rebasing: UnsafeMutableRawBufferPointer(line)[0..<(digits + 2)]), pool: pool)
                }
            }
            append(UnsafeRawBufferPointer(rebasing: run[0..<n]), pool: pool)
            if chunked { withUnsafeBytes(of: UInt16(0x0A0D).littleEndian) { append($0, pool: pool) } }
            source.consume(n, pool: pool)
            moved += n
        }
        return moved
    }
}

private let hexDigits: StaticString = "0123456789abcdef"
