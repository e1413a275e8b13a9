import ArgumentParser
import Foundation
import SwitchyardNative

/// `switchyard call --native LIB.so --symbol NAME --signature SIG ARG...`: calls one exported C
/// function through libffi, for trying a native module out.
struct CallCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "call",
        abstract: "Call a native function: switchyard call --native LIB.so --symbol NAME --signature 'SIG' ARG...",
        discussion: """
            Arguments are parsed by the signature (docs/native-modules.md): integers in range, \
            f32/f64 numbers, true/false, str as text, bytes as hex. The result is printed. A bad \
            signature, module, symbol or argument exits 1 with the reason.
            """)

    @Option(help: ArgumentHelp("The native module (a shared library).", valueName: "lib.so"))
    var native: String

    @Option(help: ArgumentHelp("The exported function.", valueName: "name"))
    var symbol: String

    @Option(help: ArgumentHelp("Its signature, e.g. 'f64(i32, f64)'.", valueName: "sig"))
    var signature: String

    @Option(help: ArgumentHelp("For a str result: the module's function that frees it.", valueName: "name"))
    var free: String?

    @Argument(parsing: .allUnrecognized, help: "The arguments.")
    var arguments: [String] = []

    func run() throws {
        do {
            let parsed: NativeSignature
            do {
                parsed = try NativeSignature(parsing: signature)
            } catch {
                throw NativeCallError("bad signature, \(error)")
            }
            let arguments = self.arguments.first == "--" ? Array(self.arguments.dropFirst()) : self.arguments
            guard arguments.count == parsed.parameters.count else {
                throw NativeCallError("\(symbol) takes \(parsed.parameters.count) argument(s) (\(parsed)), got \(arguments.count)")
            }
            let values = try zip(arguments, parsed.parameters).enumerated().map { (index, pair) throws(NativeCallError) -> NativeValue in
                do {
                    return try NativeValue(parsing: pair.0, as: pair.1)
                } catch {
                    throw NativeCallError("argument \(index + 1): \(error)")
                }
            }
            let function = try NativeFunction(library: try NativeLibrary(path: native), symbol: symbol, signature: parsed, free: free)
            let result = try function.call(values)
            if result != .void { print(result) }
        } catch let error as NativeCallError {
            printError("error: \(error)")
            throw ExitCode(1)
        }
    }
}
