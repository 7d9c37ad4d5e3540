import CEdgemux
import Glibc

/// Watches the config file and every file it references (certificates, keys, CAs) for changes,
/// including the symlink swap Kubernetes does for ConfigMap and Secret volumes (a new `..data`
/// link renamed over the old one). inotify watches the folders, not the files, because a swap
/// replaces the files; a change is confirmed by comparing what each path resolves to and its
/// inode, size and modification time.
final class ConfigWatcher {
    let fd: Int32
    private var watchedDirectories: Set<String> = []
    private var fingerprint: [String: String] = [:]

    init(files: [String]) throws {
        let f = inotify_init1(Int32(IN_NONBLOCK | IN_CLOEXEC))
        if f < 0 { throw IOError(errnoCode: errno, reason: "inotify_init1") }
        fd = f
        watch(files)
        fingerprint = Self.fingerprint(files)
    }

    deinit { Posix.close(fd) }

    /// Adds watches for the folders of `files` (and of what they resolve to).
    func watch(_ files: [String]) {
        let mask = UInt32(IN_CREATE | IN_DELETE | IN_MOVED_TO | IN_MOVED_FROM | IN_CLOSE_WRITE | IN_ATTRIB | IN_DELETE_SELF)
        for file in files {
            var dirs = [Self.directory(of: file)]
            if let real = Self.realPath(file) { dirs.append(Self.directory(of: real)) }
            for d in dirs where !watchedDirectories.contains(d) {
                if inotify_add_watch(fd, d, mask) >= 0 { watchedDirectories.insert(d) }
            }
        }
    }

    /// Reads and discards pending inotify events; true if there were any.
    func drainEvents() -> Bool {
        var buf = [UInt8](repeating: 0, count: 8192)
        var any = false
        while true {
            let n = buf.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { return any }
            any = true
        }
    }

    /// The files whose content differs from the last look (and remembers the new state).
    func changedFiles(_ files: [String]) -> [String] {
        let now = Self.fingerprint(files)
        let changed = files.filter { now[$0] != fingerprint[$0] }
        fingerprint = now
        return changed
    }

    static func fingerprint(_ files: [String]) -> [String: String] {
        var out: [String: String] = [:]
        for f in files {
            let real = realPath(f) ?? f
            var st = stat()
            if stat(real, &st) == 0 {
                out[f] = "\(real) \(st.st_dev) \(st.st_ino) \(st.st_size) \(st.st_mtim.tv_sec).\(st.st_mtim.tv_nsec)"
            } else {
                out[f] = "missing"
            }
        }
        return out
    }

    static func realPath(_ path: String) -> String? {
        guard let p = realpath(path, nil) else { return nil }
        defer { free(p) }
        return String(cString: p)
    }

    static func directory(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        let d = String(path[..<slash])
        return d.isEmpty ? "/" : d
    }
}

extension EdgemuxConfig {
    /// Every file the config names: what a reload re-reads.
    public var referencedFiles: [String] {
        var files: [String] = []
        for l in listeners {
            for c in l.tls?.certificates ?? [] { files += [c.certPath, c.keyPath] + (c.ocspResponsePath.map { [$0] } ?? []) }
            files += l.tls?.ticketKeyPaths ?? []
        }
        for b in backends.values {
            if let ca = b.tls?.caPath { files.append(ca) }
            if let c = b.tls?.clientCertificate { files += [c.certPath, c.keyPath] }
        }
        return files
    }
}
