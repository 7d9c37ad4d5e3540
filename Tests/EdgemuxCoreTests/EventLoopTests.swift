import Testing

@testable import EdgemuxCore

@Suite("event loop timers")
struct EventLoopTimerTests {
    @Test func cancelledTimersDoNotPileUpAndLiveOnesStillFire() throws {
        let loop = try EventLoop(index: 0)
        var fired: [Int] = []
        // Connection churn: each arms a long timer and cancels it.
        for _ in 0..<10_000 {
            let t = loop.schedule(afterMillis: 300_000) { fired.append(-1) }
            loop.cancel(t)
        }
        #expect(loop.pendingTimerEntries < 3_000, "the heap holds \(loop.pendingTimerEntries) entries for 0 live timers")
        loop.schedule(afterMillis: 0) { fired.append(1) }
        loop.schedule(afterMillis: 20) { fired.append(2); loop.stop() }
        loop.run()
        #expect(fired == [1, 2])
    }
}
