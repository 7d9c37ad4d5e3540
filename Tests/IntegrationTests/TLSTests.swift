import Foundation
import Testing

extension Integration {
    @Suite("TLS termination and TLS backends", .serialized)
    struct TLSTests {
        func sClient(_ port: UInt16, _ args: [String], stdin: String = "") -> CommandResult {
            Command.run("/usr/bin/openssl", ["s_client", "-connect", "127.0.0.1:\(port)", "-CAfile", TestCerts.ca] + args, timeout: 15, stdin: stdin)
        }

        func config(port: UInt16, http1Port: UInt16, extraCert: Bool = true, minVersion: String = "\"1.2\"") -> String {
            """
            workers: 2
            listeners:
              - name: public
                listen: 127.0.0.1:\(port)
                tls:
                  certificates:
                    - { cert: \(TestCerts.cert), key: \(TestCerts.key) }
            \(extraCert ? "        - { cert: \(TestCerts.otherCert), key: \(TestCerts.otherKey) }" : "")
                  alpn: [h2, http/1.1]
                  min_version: \(minVersion)
                routes:
                  - name: web
                    match: { alpn: http/1.1 }
                    backend: web
                  - name: h2
                    backend: web2
            backends:
              web:
                endpoints: ["127.0.0.1:\(http1Port)"]
              web2:
                protocol: h2c
                endpoints: ["127.0.0.1:1"]
            """
        }

        @Test("SNI picks the certificate, the first is the default; ALPN without h2 or http/1.1 gets no_application_protocol")
        func sniAndALPN() throws {
            let (h1, h1Port) = try startPeer("http1")
            defer { h1.stop() }
            let port = freePort()
            let e = try Edgemux(config: config(port: port, http1Port: h1Port), port: port)
            let other = sClient(port, ["-servername", "a.other.test", "-alpn", "http/1.1", "-brief"])
            #expect(other.stderr.contains("CN = other") || other.stdout.contains("CN = other"), "\(other.stdout) \(other.stderr) \(e.log)")
            let byDefault = sClient(port, ["-servername", "unknown.example", "-brief"])
            #expect(byDefault.stderr.contains("CN = localhost") || byDefault.stdout.contains("CN = localhost"), "\(byDefault.stderr)")
            let noSNI = sClient(port, ["-noservername", "-brief"])
            #expect(noSNI.stderr.contains("CN = localhost") || noSNI.stdout.contains("CN = localhost"), "\(noSNI.stderr)")
            let alpn = sClient(port, ["-servername", "localhost", "-alpn", "spdy/3,foo"])
            #expect(alpn.stdout.contains("no application protocol") || alpn.stderr.contains("no application protocol"), "\(alpn.stdout) \(alpn.stderr)")
            // Through SNI-selected certificate, a request still routes: curl verifies other.test.
            let viaOther = Command.run("/usr/bin/curl", ["-sS", "--cacert", TestCerts.ca, "--resolve", "x.other.test:\(port):127.0.0.1", "--http1.1", "https://x.other.test:\(port)/sni"], timeout: 15)
            #expect(viaOther.stdout.hasPrefix("http1 GET /sni host=x.other.test"), "\(viaOther.stdout) \(viaOther.stderr)")
        }

        @Test("TLS policy: by default only ECDHE with AEAD over TLS 1.2 (sslscan finds no CBC, RC4, 3DES, NULL or TLS 1.0/1.1), TLS 1.3 offered; ciphers and groups configurable")
        func tlsPolicy() throws {
            let (h1, h1Port) = try startPeer("http1")
            defer { h1.stop() }
            let port = freePort()
            let e = try Edgemux(config: config(port: port, http1Port: h1Port, extraCert: false), port: port)
            let scan = Command.run("/usr/bin/sslscan", ["--no-colour", "--no-fallback", "--no-renegotiation", "--no-heartbleed", "127.0.0.1:\(port)"], timeout: 60)
            #expect(scan.status == 0, "\(scan.stdout) \(scan.stderr)")
            let accepted = scan.stdout.split(separator: "\n").filter { $0.hasPrefix("Accepted") || $0.hasPrefix("Preferred") }
            #expect(accepted.contains { $0.contains("TLSv1.3") }, "\(scan.stdout)")
            #expect(accepted.contains { $0.contains("TLSv1.2") && $0.contains("ECDHE-ECDSA-AES128-GCM-SHA256") }, "\(scan.stdout)")
            for line in accepted {
                #expect(!line.contains("TLSv1.0") && !line.contains("TLSv1.1") && !line.contains("SSLv"), "old protocol: \(line)")
                if line.contains("TLSv1.2") {
                    #expect((line.contains("GCM") || line.contains("CHACHA20")) && line.contains("ECDHE"), "not ECDHE with AEAD: \(line)")
                }
                // "Accepted  TLSv1.2  128 bits  ECDHE-ECDSA-AES128-GCM-SHA256 Curve 25519 DHE 253"
                let cipher = line.split(separator: " ", omittingEmptySubsequences: true).dropFirst(4).first.map(String.init) ?? ""
                for weak in ["RC4", "DES", "NULL", "EXP", "ADH", "AECDH", "CAMELLIA", "ARIA", "SEED", "IDEA", "PSK", "SRP"] {
                    #expect(!cipher.contains(weak), "\(weak) accepted: \(line)")
                }
                #expect(!cipher.hasPrefix("DHE-") && !cipher.hasPrefix("AES") && !cipher.hasPrefix("RSA"), "no ECDHE: \(line)")
            }
            #expect(!scan.stdout.contains("TLSv1.0   enabled") && !scan.stdout.contains("TLSv1.1   enabled"), "\(scan.stdout)")
            // openssl s_client agrees: a CBC suite and a group outside the list are refused.
            let cbc = sClient(port, ["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA", "-servername", "localhost"], stdin: "")
            #expect(cbc.stdout.contains("Cipher is (NONE)") || cbc.stderr.contains("handshake failure") || cbc.stderr.contains("alert"), "\(cbc.stdout) \(cbc.stderr)")
            let p384 = sClient(port, ["-tls1_3", "-groups", "P-384", "-servername", "localhost"], stdin: "")
            #expect(p384.stderr.contains("alert") || p384.stderr.contains("handshake failure"), "\(p384.stdout) \(p384.stderr)")
            let x25519 = sClient(port, ["-tls1_3", "-groups", "X25519", "-servername", "localhost", "-brief"], stdin: "")
            #expect(x25519.stderr.contains("Protocol version: TLSv1.3"), "\(x25519.stderr) \(e.log)")

            // Configured: one TLS 1.2 cipher; P-384 and P-256 (the certificate's curve: TLS 1.2
            // signs with it only if it is in the list), no X25519.
            let port2 = freePort()
            let custom = config(port: port2, http1Port: h1Port, extraCert: false).replacingOccurrences(
                of: "      min_version: \"1.2\"\n", with: "      min_version: \"1.2\"\n      ciphers: ECDHE-ECDSA-AES256-GCM-SHA384\n      groups: P-384:P-256\n")
            let e2 = try Edgemux(config: custom, port: port2)
            let only = sClient(port2, ["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256", "-servername", "localhost"], stdin: "")
            #expect(!only.stdout.contains("Cipher is ECDHE-ECDSA-AES128-GCM-SHA256") && !only.stderr.contains("Ciphersuite: ECDHE-ECDSA-AES128-GCM-SHA256"), "\(only.stdout)")
            let chosen = sClient(port2, ["-tls1_2", "-servername", "localhost", "-brief"], stdin: "")
            #expect(chosen.stderr.contains("ECDHE-ECDSA-AES256-GCM-SHA384"), "\(chosen.stderr) \(e2.log)")
            let noX25519 = sClient(port2, ["-tls1_3", "-groups", "X25519", "-servername", "localhost"], stdin: "")
            #expect(noX25519.stderr.contains("alert") || noX25519.stderr.contains("handshake failure"), "\(noX25519.stderr)")
            // A list OpenSSL does not know is refused by check, at its line.
            let scratch = Scratch("policy")
            let bad = custom.replacingOccurrences(of: "ciphers: ECDHE-ECDSA-AES256-GCM-SHA384", with: "ciphers: NOT-A-CIPHER")
            try bad.write(toFile: scratch.file("bad.yaml"), atomically: true, encoding: .utf8)
            let check = Command.run(Paths.edgemux, ["check", "--config", scratch.file("bad.yaml")], timeout: 15)
            #expect(check.status != 0 && (check.stderr + check.stdout).contains("NOT-A-CIPHER"), "\(check.stdout) \(check.stderr)")
        }

        @Test("client certificates: required admits a certificate from client_ca and tells the backend its subject (a forged field is dropped); none is refused; optional serves both")
        func clientCertificates() throws {
            let (h1, h1Port) = try startPeer("http1")
            defer { h1.stop() }
            func listener(_ port: UInt16, auth: String) -> String {
                config(port: port, http1Port: h1Port, extraCert: false).replacingOccurrences(
                    of: "      min_version: \"1.2\"\n", with: "      min_version: \"1.2\"\n      client_ca: \(TestCerts.ca)\n      client_auth: \(auth)\n")
                    .replacingOccurrences(of: "match: { alpn: http/1.1 }\n        backend: web", with: "match: { alpn: http/1.1 }\n        backend: web\n        mode: request")
            }
            let withCert = ["--cert", "\(TestCerts.dir)/client.pem", "--key", "\(TestCerts.dir)/client.key"]
            let forged = ["-H", "X-Client-Cert-Subject: CN=admin"]
            let port = freePort()
            let e = try Edgemux(config: listener(port, auth: "required"), port: port)
            let admitted = curl(["--http1.1"] + withCert + forged + ["https://localhost:\(port)/headers"], port: port)
            #expect(admitted.stdout.contains("x-client-cert-subject: CN=client\n") && !admitted.stdout.contains("CN=admin"), "\(admitted.stdout) \(admitted.stderr) \(e.log)")
            let refused = curl(["--http1.1", "https://localhost:\(port)/headers"], port: port)
            #expect(refused.status != 0 && !refused.stdout.contains("x-client-cert-subject"), "\(refused.stdout) \(refused.stderr)")

            let port2 = freePort()
            let e2 = try Edgemux(config: listener(port2, auth: "optional"), port: port2)
            let anonymous = curl(["--http1.1"] + forged + ["https://localhost:\(port2)/headers"], port: port2)
            #expect(anonymous.stdout.contains("host: localhost") && !anonymous.stdout.contains("x-client-cert-subject"), "\(anonymous.stdout) \(anonymous.stderr) \(e2.log)")
            let named = curl(["--http1.1"] + withCert + ["https://localhost:\(port2)/headers"], port: port2)
            #expect(named.stdout.contains("x-client-cert-subject: CN=client\n"), "\(named.stdout) \(named.stderr)")
            // A CA file that is not one is refused by check.
            let scratch = Scratch("clientca")
            try listener(port2, auth: "required").replacingOccurrences(of: "client_ca: \(TestCerts.ca)", with: "client_ca: /etc/hostname")
                .write(toFile: scratch.file("bad.yaml"), atomically: true, encoding: .utf8)
            let check = Command.run(Paths.edgemux, ["check", "--config", scratch.file("bad.yaml")], timeout: 15)
            #expect(check.status != 0 && (check.stdout + check.stderr).contains("client_ca"), "\(check.stdout) \(check.stderr)")
        }

        /// A signed OCSP response for one of the test certificates, as the CA's responder would
        /// give it (`openssl ocsp` with an index of issued certificates), valid for a day.
        func ocspResponse(for name: String, in scratch: Scratch) throws -> String {
            let d = TestCerts.dir
            let serial = Command.run("/usr/bin/openssl", ["x509", "-in", "\(d)/\(name).pem", "-noout", "-serial"]).stdout
                .trimmingCharacters(in: .whitespacesAndNewlines).replacingOccurrences(of: "serial=", with: "")
            try "V\t301231235959Z\t\t\(serial)\tunknown\t/CN=\(name)\n".write(toFile: scratch.file("index.txt"), atomically: true, encoding: .utf8)
            let request = Command.run("/usr/bin/openssl", ["ocsp", "-issuer", "\(d)/ca.pem", "-cert", "\(d)/\(name).pem", "-no_nonce", "-reqout", scratch.file("\(name).req")])
            #expect(request.status == 0, "\(request.stderr)")
            let response = Command.run("/usr/bin/openssl", ["ocsp", "-index", scratch.file("index.txt"), "-rsigner", "\(d)/ca.pem", "-rkey", "\(d)/ca.key",
                                                             "-CA", "\(d)/ca.pem", "-reqin", scratch.file("\(name).req"), "-respout", scratch.file("\(name).ocsp"), "-ndays", "1"])
            #expect(response.status == 0, "\(response.stderr)")
            return scratch.file("\(name).ocsp")
        }

        @Test("OCSP stapling: a client that asks gets ocsp_response (curl --cert-status verifies it, TLS 1.2 and 1.3); a certificate without one staples nothing; check refuses a response for another certificate, not one at all, or without the issuer to match it")
        func ocspStapling() throws {
            let (h1, h1Port) = try startPeer("http1")
            defer { h1.stop() }
            let scratch = Scratch("ocsp")
            let good = try ocspResponse(for: "localhost", in: scratch)
            // The response names the certificate by its issuer: the chain file holds both, as a
            // CA's "fullchain" does.
            let fullchain = scratch.file("fullchain.pem")
            try (String(contentsOfFile: TestCerts.cert, encoding: .utf8) + String(contentsOfFile: TestCerts.ca, encoding: .utf8))
                .write(toFile: fullchain, atomically: true, encoding: .utf8)
            let port = freePort()
            let yaml = config(port: port, http1Port: h1Port).replacingOccurrences(
                of: "- { cert: \(TestCerts.cert), key: \(TestCerts.key) }", with: "- { cert: \(fullchain), key: \(TestCerts.key), ocsp_response: \(good) }")
            let e = try Edgemux(config: yaml, port: port)
            for version in ["--tlsv1.3", "--tls-max"] {
                let args = version == "--tls-max" ? ["--tls-max", "1.2"] : [version]
                let stapled = curl(["--http1.1", "--cert-status", "-w", " %{http_code}"] + args + ["https://localhost:\(port)/ocsp"], port: port)
                #expect(stapled.status == 0 && stapled.stdout.hasSuffix(" 200"), "\(version): \(stapled.stdout) \(stapled.stderr) \(e.log)")
            }
            let status = sClient(port, ["-servername", "localhost", "-status"])
            #expect(status.stdout.contains("OCSP Response Status: successful") && status.stdout.contains("Cert Status: good"), "\(status.stdout)")
            // The SNI-selected certificate has no response: nothing stapled, and a client that
            // insists fails.
            let none = sClient(port, ["-servername", "a.other.test", "-status"])
            #expect(none.stdout.contains("OCSP response: no response sent"), "\(none.stdout)")
            let insists = Command.run("/usr/bin/curl", ["-sS", "--cacert", TestCerts.ca, "--cert-status", "--resolve", "x.other.test:\(port):127.0.0.1", "https://x.other.test:\(port)/"], timeout: 15)
            #expect(insists.status != 0, "\(insists.stdout) \(insists.stderr)")

            // check: the response for another certificate, and a file that is not one.
            let other = try ocspResponse(for: "other", in: scratch)
            // and a chain without the issuer.
            let bad = [(yaml.replacingOccurrences(of: good, with: other), "is not about this certificate"),
                       (yaml.replacingOccurrences(of: good, with: "/etc/hostname"), "is not a DER OCSP response"),
                       (yaml.replacingOccurrences(of: fullchain, with: TestCerts.cert), "lacks the issuer")]
            for (text, words) in bad {
                try text.write(toFile: scratch.file("bad.yaml"), atomically: true, encoding: .utf8)
                let check = Command.run(Paths.edgemux, ["check", "--config", scratch.file("bad.yaml")], timeout: 15)
                let said = check.stdout + check.stderr
                #expect(check.status != 0 && said.contains("ocsp_response") && said.contains(words), "\(said)")
            }
        }

        @Test("TLS 1.2 and 1.3, min_version enforced, sessions resume")
        func versionsAndResumption() throws {
            let (h1, h1Port) = try startPeer("http1")
            defer { h1.stop() }
            let port = freePort()
            let e = try Edgemux(config: config(port: port, http1Port: h1Port), port: port)
            let v12 = curl(["--http1.1", "--tls-max", "1.2", "-w", " %{http_code}", "https://localhost:\(port)/v12"], port: port)
            #expect(v12.stdout.hasSuffix(" 200"), "\(v12.stdout) \(v12.stderr) \(e.log)")
            let v13 = curl(["--http1.1", "--tlsv1.3", "-w", " %{http_code}", "https://localhost:\(port)/v13"], port: port)
            #expect(v13.stdout.hasSuffix(" 200"), "\(v13.stdout) \(v13.stderr)")
            let scratch = Scratch("sess")
            for version in ["-tls1_3", "-tls1_2"] {
                // A request that the server answers and then closes: the TLS 1.3 ticket arrives
                // after the handshake, so s_client must stay until the answer (-ign_eof).
                let request = "GET /resume HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
                let first = sClient(port, ["-servername", "localhost", "-alpn", "http/1.1", "-ign_eof", version, "-sess_out", scratch.file("s\(version)")], stdin: request)
                #expect(first.stdout.contains("New,"), "\(first.stdout)")
                // Two workers, each with its own SSL_CTX and the same ticket keys: several
                // resumptions land on both, and every one resumes.
                for _ in 0..<4 {
                    let again = sClient(port, ["-servername", "localhost", "-alpn", "http/1.1", "-ign_eof", version, "-sess_in", scratch.file("s\(version)")], stdin: request)
                    #expect(again.stdout.contains("Reused,"), "\(version) resumption: \(again.stdout)")
                }
            }
            e.stop()
            let port13 = freePort()
            let strict = try Edgemux(config: config(port: port13, http1Port: h1Port, minVersion: "\"1.3\""), port: port13)
            let refused = curl(["--http1.1", "--tls-max", "1.2", "https://localhost:\(port13)/"], port: port13)
            #expect(refused.status != 0, "TLS 1.2 refused when min_version is 1.3: \(refused.stdout) \(strict.log)")
        }

        @Test("ticket_keys: a session from one instance resumes on another that reads the same key file")
        func sharedTicketKeys() throws {
            let (h1, h1Port) = try startPeer("http1")
            defer { h1.stop() }
            let scratch = Scratch("tickets")
            let keyFile = scratch.file("ticket.key")
            #expect(Command.run("/bin/sh", ["-c", "openssl rand 80 | base64 -w0 > \(keyFile)"]).status == 0)
            func instance(_ port: UInt16, keys: Bool) throws -> Edgemux {
                let yaml = config(port: port, http1Port: h1Port).replacingOccurrences(of: "min_version:", with: (keys ? "ticket_keys: \(keyFile)\n      " : "") + "min_version:")
                return try Edgemux(config: yaml, port: port)
            }
            let request = "GET /t HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
            let (pa, pb, pc) = (freePort(), freePort(), freePort())
            let a = try instance(pa, keys: true), b = try instance(pb, keys: true), c = try instance(pc, keys: false)
            let first = sClient(pa, ["-servername", "localhost", "-alpn", "http/1.1", "-ign_eof", "-tls1_3", "-sess_out", scratch.file("s")], stdin: request)
            #expect(first.stdout.contains("New,"), "\(first.stdout) \(a.log)")
            let onB = sClient(pb, ["-servername", "localhost", "-alpn", "http/1.1", "-ign_eof", "-tls1_3", "-sess_in", scratch.file("s")], stdin: request)
            #expect(onB.stdout.contains("Reused,"), "same key file: \(onB.stdout) \(b.log)")
            let onC = sClient(pc, ["-servername", "localhost", "-alpn", "http/1.1", "-ign_eof", "-tls1_3", "-sess_in", scratch.file("s")], stdin: request)
            #expect(onC.stdout.contains("New,"), "own random keys: \(onC.stdout) \(c.log)")
        }

        @Test("ticket_keys as a list: replicas in the middle of a key rotation resume each other's sessions; a key dropped by reload no longer resumes")
        func ticketKeyRotation() throws {
            let (h1, h1Port) = try startPeer("http1")
            defer { h1.stop() }
            let scratch = Scratch("ticket-rotation")
            let (old, new) = (scratch.file("old.key"), scratch.file("new.key"))
            #expect(Command.run("/bin/sh", ["-c", "openssl rand 80 > \(old) && openssl rand 80 | base64 -w0 > \(new)"]).status == 0)
            func yaml(_ port: UInt16, _ keys: [String]) -> String {
                config(port: port, http1Port: h1Port).replacingOccurrences(of: "min_version:", with: "ticket_keys: [\(keys.joined(separator: ", "))]\n      min_version:")
            }
            let request = "GET /t HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
            func session(_ port: UInt16, _ version: String, out: String? = nil, in input: String? = nil) -> String {
                var args = ["-servername", "localhost", "-alpn", "http/1.1", "-ign_eof", version]
                if let out { args += ["-sess_out", scratch.file(out)] }
                if let input { args += ["-sess_in", scratch.file(input)] }
                let r = sClient(port, args, stdin: request)
                return r.stdout.contains("Reused,") ? "reused" : r.stdout.contains("New,") ? "new" : "failed: \(r.stdout) \(r.stderr)"
            }
            // Step 1 of a rotation on replica A (the new key added second), step 2 on B (first).
            let (pa, pb) = (freePort(), freePort())
            let a = try Edgemux(config: yaml(pa, [old, new]), port: pa)
            let b = try Edgemux(config: yaml(pb, [new, old]), port: pb)
            for version in ["-tls1_3", "-tls1_2"] {
                #expect(session(pa, version, out: "a\(version)") == "new")
                #expect(session(pb, version, out: "b\(version)") == "new")
                #expect(session(pb, version, in: "a\(version)") == "reused", "B decrypts A's ticket (old key, second on B) \(version): \(b.log)")
                #expect(session(pa, version, in: "b\(version)") == "reused", "A decrypts B's ticket (new key, second on A) \(version): \(a.log)")
            }
            // Step 3 on A, by reload: only the new key. B's tickets resume, A's old ones do not.
            try reload(a, to: yaml(pa, [new]))
            #expect(waitForLog(a, "reloaded config"), "\(a.log)")
            for version in ["-tls1_3", "-tls1_2"] {
                #expect(session(pa, version, in: "b\(version)") == "reused", "\(version): \(a.log)")
                #expect(session(pa, version, in: "a\(version)") == "new", "the old key is gone \(version)")
            }
            // check: a file that is neither one raw key nor base64 keys, and too many keys.
            try "not a key\n".write(toFile: scratch.file("bad.key"), atomically: true, encoding: .utf8)
            try String(repeating: Command.run("/bin/sh", ["-c", "openssl rand 80 | base64 -w0"]).stdout + "\n", count: 17).write(toFile: scratch.file("many.key"), atomically: true, encoding: .utf8)
            for (keys, words) in [([scratch.file("bad.key")], "must hold 80 bytes raw, or base64 lines"), ([scratch.file("many.key")], "at most 16")] {
                try yaml(1, keys).write(toFile: scratch.file("c.yaml"), atomically: true, encoding: .utf8)
                let check = Command.run(Paths.edgemux, ["check", "--config", scratch.file("c.yaml")], timeout: 15)
                #expect(check.status != 0 && (check.stdout + check.stderr).contains(words), "\(check.stdout) \(check.stderr)")
            }
        }

        @Test("a tls backend speaking HTTP/2: ALPN passes the client's h2 on, verified against the CA")
        func tlsBackendALPN() throws {
            let www = Scratch("tls-www")
            try "h2-over-tls\n".write(toFile: www.file("hello"), atomically: true, encoding: .utf8)
            let backendPort = freePort()
            // nghttpd over TLS offers only h2 in ALPN.
            let nghttpd = try Background("nghttpd-tls", "/usr/sbin/nghttpd", ["-d", www.path, "\(backendPort)", TestCerts.key, TestCerts.cert])
            defer { nghttpd.stop() }
            #expect(waitForPort(backendPort))
            let port = freePort()
            let yaml = """
                workers: 1
                listeners:
                  - name: public
                    listen: 127.0.0.1:\(port)
                    tls:
                      certificates:
                        - { cert: \(TestCerts.cert), key: \(TestCerts.key) }
                      alpn: [h2, http/1.1]
                    routes:
                      - { name: web, backend: secure, mode: relay }
                backends:
                  secure:
                    protocol: tls
                    endpoints: ["127.0.0.1:\(backendPort)"]
                    tls: { ca: \(TestCerts.ca), server_name: localhost, alpn: [h2] }
                """
            // Declared h2-only, the backend cannot take a relay route's HTTP/1.1 clients: check says so.
            let scratch = Scratch("alpn")
            try yaml.write(toFile: scratch.file("e.yaml"), atomically: true, encoding: .utf8)
            let check = Command.run(Paths.edgemux, ["check", "--config", scratch.file("e.yaml")])
            #expect(check.status == 1 && check.stderr.contains("route 'web' can receive http/1.1 connections but backend 'secure' cannot speak http/1.1"), "\(check.stderr)")
            // The fix check suggests: HTTP/2 to this backend, HTTP/1.1 elsewhere.
            let fixed = yaml.replacingOccurrences(of: "      - { name: web, backend: secure, mode: relay }", with: "      - { name: web, match: { alpn: h2 }, backend: secure }\n      - { name: rest, backend: fallback }")
                + "\n  fallback:\n    endpoints: [\"127.0.0.1:1\"]\n"
            let e = try Edgemux(config: fixed, port: port)
            let h2 = curl(["--http2", "-w", " %{http_version}", "https://localhost:\(port)/hello"], port: port)
            #expect(h2.stdout == "h2-over-tls\n 2", "\(h2.stdout) \(h2.stderr) \(e.log)")
            let load = Command.run("/usr/bin/h2load", ["-n", "500", "-c", "2", "-m", "5", "https://127.0.0.1:\(port)/hello"], timeout: 60)
            #expect(load.stdout.contains("500 succeeded, 0 failed"), "\(load.stdout)")
            e.stop()
            // A request route translates: HTTP/1.1 clients reach the h2-only backend too.
            let requestMode = try Edgemux(config: yaml.replacingOccurrences(of: ", mode: relay }", with: " }"), port: port)
            let h1 = curl(["--http1.1", "-w", " %{http_version}", "https://localhost:\(port)/hello", "https://localhost:\(port)/hello"], port: port)
            #expect(h1.stdout == "h2-over-tls\n 1.1h2-over-tls\n 1.1", "\(h1.stdout) \(h1.stderr) \(requestMode.log)")
            requestMode.stop()
            // The same backend reached under a name its certificate does not carry: refused (502).
            let port2 = freePort()
            let wrong = try Edgemux(config: """
                workers: 1
                listeners:
                  - name: public
                    listen: 127.0.0.1:\(port2)
                    tls:
                      certificates:
                        - { cert: \(TestCerts.cert), key: \(TestCerts.key) }
                    routes:
                      - { name: web, backend: secure }
                backends:
                  secure:
                    protocol: tls
                    endpoints: ["127.0.0.1:\(backendPort)"]
                    tls: { ca: \(TestCerts.ca), server_name: other.test }
                """, port: port2)
            let refused = curl(["--http2", "-w", " %{http_code}", "https://localhost:\(port2)/hello"], port: port2)
            #expect(refused.stdout.hasSuffix(" 502"), "\(refused.stdout) \(refused.stderr) \(wrong.log)")
        }

        @Test("a tls backend: CA verification, SNI, ALPN, and a client certificate")
        func tlsBackend() throws {
            let (h1, h1Port) = try startPeer("http1", ["--cert", TestCerts.cert, "--key", TestCerts.key, "--client-ca", TestCerts.ca, "--name", "tls-backend"])
            defer { h1.stop() }
            let port = freePort()
            let yaml = """
                workers: 1
                listeners:
                  - name: public
                    listen: 127.0.0.1:\(port)
                    tls:
                      certificates:
                        - { cert: \(TestCerts.cert), key: \(TestCerts.key) }
                      alpn: [http/1.1]
                    routes:
                      - name: web
                        backend: secure
                backends:
                  secure:
                    protocol: tls
                    endpoints: ["127.0.0.1:\(h1Port)"]
                    tls: { ca: \(TestCerts.ca), server_name: localhost, cert: \(TestCerts.dir)/client.pem, key: \(TestCerts.dir)/client.key }
                """
            let e = try Edgemux(config: yaml, port: port)
            let r = curl(["--http1.1", "https://localhost:\(port)/mtls"], port: port)
            #expect(r.stdout == "tls-backend GET /mtls host=localhost:\(port) client-cert=client\n", "\(r.stdout) \(r.stderr) \(e.log)")
            e.stop()

            // A backend certificate that does not match server_name is refused: 502, and the log says why.
            let port2 = freePort()
            let wrong = try Edgemux(config: yaml.replacingOccurrences(of: "127.0.0.1:\(port)", with: "127.0.0.1:\(port2)").replacingOccurrences(of: "server_name: localhost", with: "server_name: wrong.example"), port: port2)
            let refused = curl(["--http1.1", "-w", " %{http_code}", "https://localhost:\(port2)/mtls"], port: port2)
            #expect(refused.stdout.hasSuffix(" 502"), "\(refused.stdout)")
            #expect(wrong.log.contains("certificate verify failed"), "\(wrong.log)")
        }
    }
}

extension Integration {
    @Suite("the demo command", .serialized)
    struct DemoTests {
        @Test("a demo that cannot bind its port says so and leaves no folder with its private key behind")
        func demoBindFailure() throws {
            // A listener without SO_REUSEPORT on the port: the demo's bind fails.
            let holder = try Background("holder", Paths.python, ["-c", """
                import socket, sys, time
                s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(1)
                print(s.getsockname()[1], flush=True); time.sleep(30)
                """])
            defer { holder.stop() }
            let port = try #require(eventually(timeout: 10) { UInt16(holder.log.trimmingCharacters(in: .whitespacesAndNewlines)) })
            func demoFolders() -> Set<String> {
                Set(((try? FileManager.default.contentsOfDirectory(atPath: NSTemporaryDirectory())) ?? []).filter { $0.hasPrefix("edgemux-demo-") })
            }
            let before = demoFolders()
            let r = Command.run(Paths.edgemux, ["demo", "--port", "\(port)"], timeout: 20)
            #expect(r.status != 0 && (r.stdout + r.stderr).contains("\(port)"), "\(r.status) \(r.stdout) \(r.stderr)")
            #expect(demoFolders().subtracting(before).isEmpty, "left behind: \(demoFolders().subtracting(before))")
        }

        @Test("--log-format json: every process log line is a JSON object with a millisecond timestamp; --log-level debug says where each request went")
        func jsonDebugLogs() throws {
            let port = freePort()
            let bg = try Background("demo-json", Paths.edgemux, ["demo", "--port", "\(port)", "--log-format", "json", "--log-level", "debug"])
            defer { bg.stop(signal: SIGTERM) }
            #expect(waitForPort(port, while: bg), "\(bg.log)")
            _ = Command.run("/usr/bin/curl", ["-sk", "--http1.1", "https://localhost:\(port)/json-log"], timeout: 10)
            let lines = try #require(eventually(timeout: 5) { () -> [Substring]? in
                let l = bg.log.split(separator: "\n").filter { $0.hasPrefix("{") }
                return l.contains { $0.contains("/json-log") } ? l : nil
            }, "\(bg.log)")
            for line in lines {
                let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
                let time = object?["time"] as? String ?? ""
                #expect(object?["message"] is String && time.count == 24 && time.hasSuffix("Z") && time.contains("."), "\(line)")
            }
            #expect(lines.contains { $0.contains("\"level\":\"debug\"") && $0.contains("GET /json-log") && $0.contains("-> route 'web'") }, "\(lines)")
            let bad = Command.run(Paths.edgemux, ["demo", "--log-level", "loud"], timeout: 10)
            #expect(bad.status != 0 && bad.stderr.contains("expected one of trace, debug"), "\(bad.stderr)")
        }

        @Test("edgemux demo serves HTTP/1.1, HTTP/2 and gRPC, each answer naming its backend")
        func demo() throws {
            let port = freePort()
            let bg = try Background("demo", Paths.edgemux, ["demo", "--port", "\(port)"])
            defer { bg.stop(signal: SIGTERM) }
            #expect(waitForPort(port, while: bg), "the demo did not listen on \(port): \(bg.log)")
            var cert = ""
            for _ in 0..<100 {
                if let r = bg.log.range(of: "--cacert ") {
                    cert = String(bg.log[r.upperBound...].prefix { $0 != " " })
                    break
                }
                usleep(50_000)
            }
            #expect(!cert.isEmpty, "the demo prints its commands: \(bg.log)")
            let base = ["/usr/bin/curl", "-sS", "--cacert", cert, "--resolve", "localhost:\(port):127.0.0.1"]
            let h1 = Command.run(base[0], Array(base.dropFirst()) + ["--http1.1", "https://localhost:\(port)/hello"])
            #expect(h1.stdout.contains("demo web backend over HTTP/1.1"), "\(h1.stdout) \(h1.stderr)")
            let h2 = Command.run(base[0], Array(base.dropFirst()) + ["--http2", "https://localhost:\(port)/hello"])
            #expect(h2.stdout.contains("demo web backend over HTTP/2"), "\(h2.stdout) \(h2.stderr)")
            let grpc = Command.run(Paths.python, ["-c", """
                import grpc
                ch = grpc.secure_channel("localhost:\(port)", grpc.ssl_channel_credentials(open("\(cert)","rb").read()))
                print(ch.unary_unary("/demo.Greeter/SayHello")(b"\\x0a\\x05agent", timeout=10))
                """], timeout: 30)
            #expect(grpc.stdout.contains("Hello agent, from the demo gRPC backend"), "\(grpc.stdout) \(grpc.stderr)")
        }
    }
}
