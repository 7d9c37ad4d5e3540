import ArgumentParser
import EdgemuxCore
import Foundation
import Logging

struct Demo: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run the embedded demo: a self-signed certificate, demo web and gRPC backends, edgemux on 127.0.0.1:8443.")

    @Option(help: "The port edgemux listens on (127.0.0.1).")
    var port: Int = 8443

    @OptionGroup var log: LogOptions

    func run() throws {
        Server.prepareSignals()
        log.bootstrap()
        let logger = Logger(label: "edgemux")
        let demo = try DemoSetup(port: UInt16(port), logger: logger)
        let server = Server(snapshot: demo.snapshot, logger: logger)
        do {
            try server.start()
        } catch {
            demo.cleanUp()  // the folder holds the demo's private key
            throw error
        }
        FileHandle.standardOutput.write(Data(demo.instructions.utf8))
        server.runUntilStopped()
        demo.cleanUp()
    }
}
