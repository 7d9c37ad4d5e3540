/// Body bytes waiting between the two sides of a request, in the loop's pooled chunks: a stream
/// holds memory only while bytes wait, and what may wait is bounded by the side that fills it
/// (an HTTP/2 stream window, or a high-water mark at which an HTTP/1.1 socket stops being read).
struct ByteQueue {
    private var chunks: [Chunk] = []
    private(set) var count = 0

    var isEmpty: Bool { count == 0 }

    mutating func append(_ bytes: UnsafeRawBufferPointer, pool: BufferPool) {
        var rest = bytes
        while !rest.isEmpty {
            if chunks.isEmpty || chunks[chunks.count - 1].writeIndex == chunks[chunks.count - 1].storage.count {
                chunks.append(pool.take())
            }
            let last = chunks[chunks.count - 1]
            let n = min(rest.count, last.storage.count - last.writeIndex)
            last.append(UnsafeRawBufferPointer(rebasing: rest[0..<n]))
            count += n
            rest = UnsafeRawBufferPointer(rebasing: rest[n...])
        }
    }

    /// The first contiguous run of waiting bytes (empty when none).
    var first: UnsafeRawBufferPointer {
        chunks.first?.readable ?? UnsafeRawBufferPointer(start: nil, count: 0)
    }

    /// Drops `n` bytes from the front.
    mutating func consume(_ n: Int, pool: BufferPool) {
        var left = n
        while left > 0, let c = chunks.first {
            let k = min(left, c.readableBytes)
            c.consume(k)
            left -= k
            count -= k
            if c.isEmpty {
                pool.give(chunks.removeFirst())
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
        for c in chunks { pool.give(c) }
        chunks = []
        count = 0
    }
}
