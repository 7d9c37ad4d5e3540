import Glibc
import Testing
@testable import EdgemuxCore

@Suite("the demo's admin port")
struct DemoSetupTests {
    @Test("the port after the demo's when it is free, another free one when something holds it")
    func adminPort() throws {
        // A port whose neighbour is free: both found by binding, then released (a neighbour some
        // other process holds, an outgoing connection's ephemeral port say, means another try).
        var found: (port: UInt16, held: Int32)?
        for _ in 0..<50 where found == nil {
            let probe = try ListenerSocket.bind(SocketAddress.parse(ip: "127.0.0.1", port: 0)!, backlog: 1)
            let p = Posix.localPort(probe)
            Posix.close(probe)
            if let h = try? ListenerSocket.bind(SocketAddress.parse(ip: "127.0.0.1", port: p &+ 1)!, backlog: 1) { found = (p, h) }
        }
        let (port, held) = try #require(found)
        let whileHeld = DemoSetup.adminPort(after: port)
        #expect(whileHeld != port &+ 1 && whileHeld != 0, "a listener holds \(port &+ 1) (with SO_REUSEPORT, as edgemux's own do)")
        Posix.close(held)
        #expect(DemoSetup.adminPort(after: port) == port &+ 1)
    }
}
