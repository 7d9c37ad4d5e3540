import Glibc
import Testing
@testable import EdgemuxCore

@Suite("choosing a backend endpoint, and the addresses it is keyed by")
struct UpstreamTests {
    func endpoint(_ port: UInt16) -> Endpoint {
        Endpoint(text: "127.0.0.1:\(port)", address: SocketAddress.parse(ip: "127.0.0.1", port: port)!)
    }

    @Test("round robin per client protocol; a failed endpoint goes last while it cools down, and comes back")
    func plan() {
        let b = BackendBalancer()
        let one = [endpoint(1)]
        #expect(b.plan(one, protocol: .http1, now: 0) == one)
        #expect(b.plan(one, protocol: .http1, now: 0) == one)
        let three = [endpoint(1), endpoint(2), endpoint(3)]
        let c = BackendBalancer()
        #expect(c.plan(three, protocol: .http1, now: 0).map(\.address.port) == [1, 2, 3])
        #expect(c.plan(three, protocol: .http1, now: 0).map(\.address.port) == [2, 3, 1])
        #expect(c.plan(three, protocol: .h2, now: 0).map(\.address.port) == [1, 2, 3], "h2 has its own position")
        c.markFailed(endpoint(3), now: 100)
        #expect(c.plan(three, protocol: .http1, now: 200).map(\.address.port) == [1, 2, 3], "the turn was [3, 1, 2]: 3 moved last")
        #expect(c.plan(three, protocol: .http1, now: 300).map(\.address.port) == [1, 2, 3], "the turn was [1, 2, 3]: 3 is last anyway")
        #expect(c.plan(three, protocol: .http1, now: 400).map(\.address.port) == [2, 1, 3])
        let later = 100 + BackendBalancer.cooldownMillis + 1
        #expect(c.plan(three, protocol: .http1, now: later).map(\.address.port) == [3, 1, 2], "cooled down: back in turn")
        #expect(!c.isCoolingDown(endpoint(3), now: later))
        c.markFailed(endpoint(1), now: later)
        #expect(c.isCoolingDown(endpoint(1), now: later + 1) && !c.isCoolingDown(endpoint(2), now: later + 1))
        c.markHealthy(endpoint(1))
        c.markHealthy(endpoint(3))
        #expect(c.plan(three, protocol: .http1, now: later).map(\.address.port) == [1, 2, 3], "healthy again at once")
        #expect(c.plan([], protocol: .http1, now: 0).isEmpty)
    }

    @Test("addresses from the kernel's sockaddr_storage, IPv4 and IPv6")
    func addresses() {
        var v4 = sockaddr_in()
        v4.sin_family = sa_family_t(AF_INET)
        v4.sin_port = UInt16(8443).bigEndian
        inet_pton(AF_INET, "192.0.2.7", &v4.sin_addr)
        var storage = sockaddr_storage()
        withUnsafeMutableBytes(of: &storage) { $0.storeBytes(of: v4, as: sockaddr_in.self) }
        let a = SocketAddress(storage: storage)
        #expect(a == SocketAddress.parse(ip: "192.0.2.7", port: 8443))
        #expect(a.description == "192.0.2.7:8443")
        var v6 = sockaddr_in6()
        v6.sin6_family = sa_family_t(AF_INET6)
        v6.sin6_port = UInt16(443).bigEndian
        inet_pton(AF_INET6, "2001:db8::1:2", &v6.sin6_addr)
        storage = sockaddr_storage()
        withUnsafeMutableBytes(of: &storage) { $0.storeBytes(of: v6, as: sockaddr_in6.self) }
        let b = SocketAddress(storage: storage)
        #expect(b == SocketAddress.parse(ip: "2001:db8::1:2", port: 443))
        #expect(b.ip == [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0, 0x02])
    }
}
