import Glibc
import Testing
@testable import EdgemuxCore

@Suite("the demo's admin port")
struct DemoSetupTests {
    @Test("the port after the demo's when it is free, another free one when something holds it")
    func adminPort() throws {
        // A port whose neighbour is free: both found by binding, then released.
        let probe = try ListenerSocket.bind(SocketAddress.parse(ip: "127.0.0.1", port: 0)!, backlog: 1)
        let port = Posix.localPort(probe)
        Posix.close(probe)
        let held = try ListenerSocket.bind(SocketAddress.parse(ip: "127.0.0.1", port: port &+ 1)!, backlog: 1)
        let whileHeld = DemoSetup.adminPort(after: port)
        #expect(whileHeld != port &+ 1 && whileHeld != 0, "a listener holds \(port &+ 1) (with SO_REUSEPORT, as edgemux's own do)")
        Posix.close(held)
        #expect(DemoSetup.adminPort(after: port) == port &+ 1)
    }
}
