import CEdgemux
import Glibc
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

@Suite("event loop dispatch")
struct EventLoopDispatchTests {
    /// Records the events it gets; on its first, drops the other descriptor of the batch from the
    /// loop and registers it again for a new owner: what a close and an accept that reuses the
    /// number do, without depending on which number the kernel hands out (tests run in parallel).
    final class Swapper: EventHandler {
        let loop: EventLoop
        var other: Int32 = -1
        var peer: Swapper?
        var got = 0
        var newcomer: Recorder?

        init(loop: EventLoop) { self.loop = loop }

        override func handleEvent(fd: Int32, events: UInt32) {
            got += 1
            guard let peer, peer.got == 0, newcomer == nil, peer.newcomer == nil else { return }
            loop.deregister(fd: other)
            let r = Recorder()
            // Still readable: the new registration gets an event of its own on the next wait.
            try? loop.register(fd: other, events: EventLoop.relayEvents, handler: r)
            newcomer = r
            loop.runSoon { r.batchOver = true }
        }
    }

    final class Recorder: EventHandler {
        var batchOver = false
        var eventsInOldBatch = 0
        var eventsLater = 0
        override func handleEvent(fd: Int32, events: UInt32) {
            if batchOver { eventsLater += 1 } else { eventsInOldBatch += 1 }
        }
    }

    @Test("an event returned for a descriptor closed and reused in the same batch does not reach the new owner")
    func staleEventsAreDropped() throws {
        let loop = try EventLoop(index: 0)
        let a = eventfd(1, Int32(EFD_NONBLOCK)), b = eventfd(1, Int32(EFD_NONBLOCK))  // both readable
        let ha = Swapper(loop: loop), hb = Swapper(loop: loop)
        ha.other = b; hb.other = a
        ha.peer = hb; hb.peer = ha
        try loop.register(fd: a, events: EventLoop.relayEvents, handler: ha)
        try loop.register(fd: b, events: EventLoop.relayEvents, handler: hb)
        loop.schedule(afterMillis: 50) { loop.stop() }
        loop.run()
        let swapper = ha.newcomer != nil ? ha : hb
        let newcomer = try #require(swapper.newcomer)
        #expect(ha.got + hb.got == 1, "the closed descriptor's handler was called too")
        #expect(newcomer.eventsInOldBatch == 0, "the stale event of the closed descriptor reached the new one")
        #expect(newcomer.eventsLater == 1, "the new descriptor's own event did not come")
        loop.closeDescriptor(a)
        loop.closeDescriptor(b)
    }
}
