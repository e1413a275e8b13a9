import Foundation
import SwitchyardBench

// `switchyard-hot-path PATH COUNT PLUGIN_DIRECTORY`: runs one hot path COUNT times and exits.
// The `instructions` bench suite runs it under callgrind. It is a program of its own, with a
// synchronous main, because valgrind cannot run `switchyard`: an async main ends the main thread
// (libdispatch's main-queue drain), and valgrind 3.19 crashes on that.
let arguments = CommandLine.arguments
guard arguments.count == 4, let path = HotPath(rawValue: arguments[1]), let count = Int(arguments[2]), count > 0 else {
    FileHandle.standardError.write(
        Data("usage: switchyard-hot-path PATH COUNT PLUGIN_DIRECTORY (paths: \(HotPath.allCases.map(\.rawValue).joined(separator: ", ")))\n".utf8))
    exit(64)
}
do {
    try path.run(count: count, pluginDirectories: [arguments[3]])
} catch {
    FileHandle.standardError.write(Data("switchyard-hot-path: \(error)\n".utf8))
    exit(1)
}
