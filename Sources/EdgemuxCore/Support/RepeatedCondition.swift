/// Rate-limits the log of a condition that can repeat many times a second (accept failing out of
/// descriptors): the first occurrence is logged, then at most one line per interval, with how
/// many times it happened since the last line.
struct RepeatedCondition {
    let intervalMillis: Int64
    private var count = 0
    private var loggedAt: Int64 = .min

    init(intervalMillis: Int64 = 60_000) { self.intervalMillis = intervalMillis }

    /// Counts one occurrence; the count to log (this one included) when a line is due.
    mutating func occurred(now: Int64) -> Int? {
        count += 1
        guard loggedAt == .min || now - loggedAt >= intervalMillis else { return nil }
        defer { count = 0 }
        loggedAt = now
        return count
    }
}
