import Glibc

/// A value shared by the workers, behind a pthread mutex. Used instead of the standard
/// library's `Mutex` because ThreadSanitizer cannot see that one: on Linux it takes a
/// priority-inheritance futex in the (uninstrumented) standard library, so every access it
/// guards reads as a data race, and real races would drown among them. pthread mutexes are what
/// TSan intercepts; uncontended they cost the same (one atomic each way).
public final class Lock<Value>: @unchecked Sendable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private var value: Value

    public init(_ value: Value) {
        self.value = value
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    public func withLock<R>(_ body: (inout Value) throws -> R) rethrows -> R {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }
}
