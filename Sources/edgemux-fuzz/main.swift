// The fuzzing driver: `edgemux-fuzz TARGET [libFuzzer options and corpus folders]`
// (`edgemux-fuzz --list` names the targets).
//
// Built by `Tests/Fuzz/fuzz.sh` with `-sanitize=fuzzer,address` and EDGEMUX_FUZZING defined, it
// hands the arguments to libFuzzer's LLVMFuzzerRunDriver (SwiftPM renames an executable's `main`,
// so libFuzzer's own `main` cannot be the entry point). Built plainly (as `swift build` does), it
// replays files instead: `edgemux-fuzz TARGET FILE|FOLDER...` runs the target on each input, to
// reproduce a crash libFuzzer found without a fuzzing build.
import CEdgemux
import EdgemuxCore
import Foundation

let arguments = CommandLine.arguments
if arguments.count == 2, arguments[1] == "--list" {
    print(FuzzTargets.names.joined(separator: "\n"))
    exit(0)
}
guard arguments.count >= 2, FuzzTargets.names.contains(arguments[1]) else {
    FileHandle.standardError.write(Data("usage: edgemux-fuzz TARGET [inputs...]; targets: \(FuzzTargets.names.joined(separator: " "))\n".utf8))
    exit(2)
}

#if EDGEMUX_FUZZING
nonisolated(unsafe) var fuzzTarget = arguments[1]

func testOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    FuzzTargets.run(fuzzTarget, UnsafeRawBufferPointer(start: data, count: size))
    return 0
}

// libFuzzer sees the program name and the arguments after the target.
var argv: [UnsafeMutablePointer<CChar>?] = ([arguments[0]] + arguments.dropFirst(2)).map { strdup($0) } + [nil]
var argc = Int32(argv.count - 1)
let status = argv.withUnsafeMutableBufferPointer { buffer -> Int32 in
    var base = buffer.baseAddress
    return LLVMFuzzerRunDriver(&argc, &base, testOneInput)
}
exit(status)
#else
var inputs: [String] = []
for path in arguments.dropFirst(2) {
    var isFolder: ObjCBool = false
    guard FileManager.default.fileExists(atPath: path, isDirectory: &isFolder) else {
        FileHandle.standardError.write(Data("edgemux-fuzz: no such file: \(path)\n".utf8))
        exit(2)
    }
    if isFolder.boolValue {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
        inputs += names.sorted().map { "\(path)/\($0)" }
    } else {
        inputs.append(path)
    }
}
for input in inputs {
    guard let data = FileManager.default.contents(atPath: input) else { continue }
    data.withUnsafeBytes { _ = FuzzTargets.run(arguments[1], $0) }
}
print("edgemux-fuzz: \(arguments[1]): \(inputs.count) inputs, no property broken")
#endif
