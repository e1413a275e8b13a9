import Foundation
import SwitchyardConfig
import SwitchyardNative
import SwitchyardTestSupport
import Testing

@testable import SwitchyardRuntime

@Suite("Native modules (libffi)")
struct NativeTests {
    /// The fixture module, compiled once per test that needs it.
    static func module() async throws -> (NativeLibrary, TemporaryDirectory) {
        let directory = try TemporaryDirectory()
        let path = directory.file("libnative.so")
        let result = try await CCompiler.compile(Repository.fixtures + "/native_module.c", to: path, flags: ["-std=c99", "-shared", "-fPIC"])
        guard result.status == 0 else { throw NativeCallError("cannot compile the fixture: \(result.stderr)") }
        return (try NativeLibrary(path: path), directory)
    }

    @Test(
        "signatures parse",
        arguments: [
            ("f64(i32, f64)", "f64(i32, f64)"), ("void()", "void()"), (" str ( str ) ", "str(str)"),
            ("u64(bytes,u8,u16,u32,u64,i8,i16,i64,f32,bool)", "u64(bytes, u8, u16, u32, u64, i8, i16, i64, f32, bool)"),
        ])
    func parses(_ text: String, _ canonical: String) throws {
        #expect(try NativeSignature(parsing: text).description == canonical)
    }

    @Test(
        "malformed signatures point at the offending character",
        arguments: [
            ("f64(i32, f64", 12, "expected ',' or ')'"), ("f64 i32", 4, "expected '('"), ("int(i32)", 0, "unknown type 'int'"),
            ("i32(i32, float)", 9, "unknown type 'float'"), ("i32(void)", 4, "void is only a result type"),
            ("bytes(i32)", 0, "bytes is only a parameter type"), ("i32(i32,)", 8, "expected a type"), ("i32(i32) x", 9, "unexpected text"),
            ("", 0, "expected a type"),
        ])
    func malformed(_ text: String, _ offset: Int, _ message: String) {
        let error = #expect(throws: NativeSignatureError.self) { try NativeSignature(parsing: text) }
        #expect(error?.offset == offset, "\(String(describing: error))")
        #expect(error?.message.contains(message) == true, "\(String(describing: error))")
        #expect(error?.description.hasSuffix(String(repeating: " ", count: offset) + "^") == true)
    }

    @Test("command-line values parse by type, at the edges of each range (an i64 overflow found by fuzz-signature)")
    func valueParsing() throws {
        #expect(try NativeValue(parsing: "2", as: .i64) == .int(2))
        #expect(try NativeValue(parsing: "-9223372036854775808", as: .i64) == .int(.min))
        #expect(try NativeValue(parsing: "-128", as: .i8) == .int(-128))
        #expect(throws: NativeCallError.self) { try NativeValue(parsing: "128", as: .i8) }
        #expect(try NativeValue(parsing: "18446744073709551615", as: .u64) == .uint(.max))
        #expect(throws: NativeCallError.self) { try NativeValue(parsing: "256", as: .u8) }
        #expect(try NativeValue(parsing: "0x0aff", as: .bytes) == .bytes([0x0a, 0xff]))
        #expect(throws: NativeCallError.self) { try NativeValue(parsing: "0xabc", as: .bytes) }
    }

    @Test("integer, float, bool, string and byte-buffer functions are called through libffi")
    func calls() async throws {
        let (library, directory) = try await Self.module()
        _ = directory
        func call(_ symbol: String, _ signature: String, _ arguments: [NativeValue], free: String? = nil) throws -> NativeValue {
            try NativeFunction(library: library, symbol: symbol, signature: try NativeSignature(parsing: signature), free: free).call(arguments)
        }
        #expect(try call("add_i32", "i32(i32, i32)", [.int(40), .int(2)]) == .int(42))
        #expect(try call("add_i32", "i32(i32, i32)", [.int(-40), .int(2)]) == .int(-38))
        #expect(try call("negate_i8", "i8(i8)", [.int(5)]) == .int(-5))
        #expect(try call("double_u16", "u16(u16)", [.uint(40_000)]) == .uint(14_464))
        #expect(try call("mul_i64", "i64(i64, i64)", [.int(1 << 40), .int(-3)]) == .int(-3 << 40))
        #expect(try call("max_u64", "u64()", []) == .uint(.max))
        #expect(try call("scale", "f64(i32, f64)", [.int(3), .double(1.5)]) == .double(4.5))
        #expect(try call("half", "f32(f32)", [.double(5)]) == .double(2.5))
        #expect(try call("is_even", "bool(i64)", [.int(10)]) == .bool(true))
        #expect(try call("is_even", "bool(i64)", [.int(7)]) == .bool(false))
        #expect(try call("greet", "str(str)", [.string("wörld")], free: "greet_free") == .string("hello, wörld"))
        #expect(try call("checksum", "u64(bytes)", [.bytes([1, 2, 3])]) == .uint((1 * 31 + 2) * 31 + 3))
        #expect(try call("checksum", "u64(bytes)", [.bytes([])]) == .uint(0))
        #expect(try call("touch", "void()", []) == .void)
        #expect(try call("touched", "i32()", []) == .int(1))
    }

    @Test(
        "wrong arity, kinds and ranges are refused with the reason, never called",
        arguments: [
            ("add_i32", "i32(i32, i32)", [NativeValue.int(1)], "takes 2 argument(s)"),
            ("add_i32", "i32(i32, i32)", [.int(1), .string("2")], "argument 2 of add_i32: expected i32, got a string"),
            ("negate_i8", "i8(i8)", [.int(300)], "300 does not fit i8"),
            ("double_u16", "u16(u16)", [.int(-1)], "-1 does not fit u16"),
            ("greet", "str(str)", [.string("a\u{0}b")], "must not contain NUL"),
            ("checksum", "u64(bytes)", [.string("x")], "expected bytes, got a string"),
        ])
    func refused(_ symbol: String, _ signature: String, _ arguments: [NativeValue], _ message: String) async throws {
        let (library, directory) = try await Self.module()
        _ = directory
        let function = try NativeFunction(library: library, symbol: symbol, signature: try NativeSignature(parsing: signature), free: "greet_free")
        let error = #expect(throws: NativeCallError.self) { try function.call(arguments) }
        #expect(error?.description.contains(message) == true, "\(String(describing: error))")
    }

    @Test("a missing module, a missing symbol, a str result without free: clear errors")
    func setupErrors() async throws {
        #expect(throws: NativeCallError.self) { try NativeLibrary(path: "/nonexistent/libx.so") }
        let (library, directory) = try await Self.module()
        _ = directory
        let missing = #expect(throws: NativeCallError.self) { try NativeFunction(library: library, symbol: "nosuch", signature: NativeSignature(parsing: "void()")) }
        #expect(missing?.description.contains("has no function 'nosuch'") == true)
        let noFree = #expect(throws: NativeCallError.self) { try NativeFunction(library: library, symbol: "greet", signature: NativeSignature(parsing: "str(str)")) }
        #expect(noFree?.description.contains("frees it") == true)
    }

    @Test("switchyard call --native calls a function from the command line; bad input exits 1 with the reason")
    func cli() async throws {
        let (_, directory) = try await Self.module()
        let lib = directory.file("libnative.so")
        let scale = try await run(BuildProducts.switchyard, ["call", "--native", lib, "--symbol", "scale", "--signature", "f64(i32, f64)", "3", "1.5"])
        #expect(scale.status == 0 && scale.stdout == "4.5\n", "\(scale.stdout)\(scale.stderr)")
        let greet = try await run(BuildProducts.switchyard, ["call", "--native", lib, "--symbol", "greet", "--signature", "str(str)", "--free", "greet_free", "you"])
        #expect(greet.stdout == "hello, you\n")
        let negative = try await run(BuildProducts.switchyard, ["call", "--native", lib, "--symbol", "negate_i8", "--signature", "i8(i8)", "-7"])
        #expect(negative.stdout == "7\n", "\(negative.stdout)\(negative.stderr)")
        for (arguments, reason) in [
            (["--symbol", "negate_i8", "--signature", "i8(i8)", "300"], "'300' is not an i8"),
            (["--symbol", "add_i32", "--signature", "i32(i32, i32", "1", "2"], "column 13: expected ',' or ')'"),
            (["--symbol", "add_i32", "--signature", "i32(i32, i32)", "1"], "takes 2 argument(s)"),
            (["--symbol", "nosuch", "--signature", "void()"], "has no function 'nosuch'"),
        ] {
            let result = try await run(BuildProducts.switchyard, ["call", "--native", lib] + arguments)
            #expect(result.status == 1, "\(arguments)")
            #expect(result.stderr.contains(reason), "\(result.stderr)")
        }
    }

    @Test("native-modules.md's first CLI example: switchyard call --config calls Math.add through a queue served by switchyard run; with no host it times out, saying so")
    func cliThroughRoute() async throws {
        let (_, directory) = try await Self.module()
        let config = directory.file("math.yaml")
        try """
        transports:
          q: { plugin: queue, config: { path: "\(directory.file("q.db"))" } }
        native:
          Math:
            library: \(directory.file("libnative.so"))
            functions:
              add: { symbol: add_i32, signature: "i32(i32, i32)" }
        routes:
          Math.*: { transport: q, deadline: 2s }
        """.write(toFile: config, atomically: true, encoding: .utf8)
        let call = ["call", "--config", config, "--plugins-dir", BuildProducts.directory, "Math.add", "40", "2"]
        let alone = try await run(BuildProducts.switchyard, call)
        #expect(alone.status == 1 && alone.stderr.contains("no reply within") && alone.stderr.contains("switchyard run --config"), "no host: \(alone.stdout)\(alone.stderr)")
        // The store did not exist: the call made it, which a mistyped path would do too.
        #expect(alone.stderr.contains("transport 'q' keeps its messages in \(directory.file("q.db")), which did not exist before this call"), "\(alone.stderr)")
        let host = Process()
        host.executableURL = URL(fileURLWithPath: BuildProducts.switchyard)
        host.arguments = ["run", "--config", config, "--plugins-dir", BuildProducts.directory]
        host.standardOutput = FileHandle.nullDevice
        host.standardError = FileHandle.nullDevice
        try host.run()
        killWhenTestProcessEnds(host.processIdentifier)
        defer {
            kill(host.processIdentifier, SIGTERM)
            host.waitUntilExit()
        }
        // The host takes a moment to start: a call made before it serves times out after 2 s.
        var answered: ProcessResult?
        for _ in 0..<10 where answered?.status != 0 { answered = try await run(BuildProducts.switchyard, call) }
        #expect(answered?.status == 0 && answered?.stdout == "42\n", "\(answered.map { "\($0.stdout)\($0.stderr)" } ?? "")")
        // --header gives the call a header (CallOptions(headers:)); a malformed one is refused.
        let withHeader = try await run(BuildProducts.switchyard, call.dropLast(3) + ["--header", "tenant=acme", "Math.add", "40", "2"])
        #expect(withHeader.status == 0 && withHeader.stdout == "42\n", "\(withHeader.stdout)\(withHeader.stderr)")
        // A function the module does not declare is refused before anything is sent.
        let misspelt = try await run(BuildProducts.switchyard, call.dropLast(3) + ["Math.ad", "40", "2"])
        #expect(misspelt.status == 1 && misspelt.stderr.contains("has no function 'ad'") && misspelt.stderr.contains("(it has add)"), "\(misspelt.stderr)")
        let lowercase = try await run(BuildProducts.switchyard, call.dropLast(3) + ["math.ADD", "40", "2"])
        #expect(lowercase.status == 1 && lowercase.stderr.contains("did you mean 'Math.add'? (names are case-sensitive)"), "\(lowercase.stderr)")
        // `--` after the route ends the options: no argument.
        let separated = try await run(BuildProducts.switchyard, call.dropLast(3) + ["Math.add", "--", "40", "-2"])
        #expect(separated.status == 0 && separated.stdout == "38\n", "\(separated.stdout)\(separated.stderr)")
        let noValue = try await run(BuildProducts.switchyard, call.dropLast(3) + ["--header", "tenant", "Math.add", "40", "2"])
        #expect(noValue.status == 1 && noValue.stderr.contains("give NAME=VALUE"), "\(noValue.stderr)")
        let badName = try await run(BuildProducts.switchyard, call.dropLast(3) + ["--header", "Tenant=acme", "Math.add", "40", "2"])
        #expect(badName.status == 1 && badName.stderr.contains("not a CloudEvents extension name"), "\(badName.stderr)")
        // Once the store exists, a call that times out says nothing of it.
        kill(host.processIdentifier, SIGTERM)
        host.waitUntilExit()
        let again = try await run(BuildProducts.switchyard, call)
        #expect(again.status == 1 && !again.stderr.contains("did not exist before this call"), "\(again.stderr)")
        #expect(!again.stderr.contains("memory"), "a durable store says nothing of memory: \(again.stderr)")

        // Through an in-memory queue no other process can be reached: refused, and why.
        let inMemory = directory.file("memory.yaml")
        try String(contentsOfFile: config, encoding: .utf8).replacingOccurrences(of: "config: { path: \"\(directory.file("q.db"))\" } ", with: "")
            .write(toFile: inMemory, atomically: true, encoding: .utf8)
        let memory = try await run(
            BuildProducts.switchyard, ["call", "--config", inMemory, "--plugins-dir", BuildProducts.directory, "Math.add", "40", "2"])
        // Refused before anything is sent, not after waiting out the route's deadline.
        #expect(memory.status == 1 && memory.stderr.contains("would wait for a reply that no host can send, and nothing was sent"), "\(memory.stderr)")
        #expect(memory.stderr.contains("transport 'q' keeps its messages in the memory of the process that creates it"), "\(memory.stderr)")
        #expect(memory.stderr.contains("POST /api/call"), "\(memory.stderr)")

        // Fire-and-forget through it: nothing would wait to say the call went nowhere, so it is
        // refused before anything is sent.
        let fireAndForget = directory.file("memory-ff.yaml")
        try String(contentsOfFile: inMemory, encoding: .utf8)
            .replacingOccurrences(of: "Math.*: { transport: q, deadline: 2s }", with: "Math.*: { transport: q, mode: fire-and-forget }")
            .replacingOccurrences(of: "add: { symbol: add_i32, signature: \"i32(i32, i32)\" }", with: "touch: { signature: \"void()\" }")
            .write(toFile: fireAndForget, atomically: true, encoding: .utf8)
        let lost = try await run(BuildProducts.switchyard, ["call", "--config", fireAndForget, "--plugins-dir", BuildProducts.directory, "Math.touch"])
        #expect(lost.status == 1 && lost.stderr.contains("is fire-and-forget, and nothing was sent"), "\(lost.stdout)\(lost.stderr)")
        #expect(lost.stderr.contains("keeps its messages in the memory of the process that creates it"), "\(lost.stderr)")
    }

    /// A system serving the fixture as native module `Math` with `routes`.
    static func routedSystem(_ routes: String, _ directory: TemporaryDirectory, extraTransport: String = "") async throws -> SwitchyardActorSystem {
        try await makeSystem(
            """
            transports:
            \(extraTransport)  q: { plugin: queue }
              t: { plugin: topic }
              later: { plugin: delay, inner: q }
            native:
              Math:
                library: \(directory.file("libnative.so"))
                functions:
                  add: { symbol: add_i32, signature: "i32(i32, i32)" }
                  scale: "f64(i32, f64)"
                  greet: { signature: "str(str)", free: greet_free }
                  sum: { symbol: checksum, signature: "u64(bytes)" }
                  touch: "void()"
                  touched: "i32()"
            routes:
            \(routes)
            """, directory: directory)
    }

    @Test(
        "native functions over every route mode: direct, queue request-reply, topic fire-and-forget, delay",
        arguments: [
            ("  Math.*: { transport: direct }", false),
            ("  Math.*: { transport: q, deadline: 10s }", false),
            ("  Math.touch: { transport: t, mode: fire-and-forget }\n  Math.*: { transport: q }", true),
            ("  Math.touch: { transport: later, mode: fire-and-forget, delay: 100ms }\n  Math.*: { transport: q, encoding: json }", true),
        ])
    func routed(_ routes: String, _ touchIsAsync: Bool) async throws {
        let (_, directory) = try await Self.module()
        let system = try await Self.routedSystem(routes, directory)
        try system.hostNative()
        #expect(try await system.callNative("Math.add", [.int(40), .int(2)]) == .int(42))
        #expect(try await system.callNative("Math.scale", [.int(3), .double(1.5)]) == .double(4.5))
        // What JSON has no number for travels all the same (as "Infinity", "-Infinity", "NaN").
        #expect(try await system.callNative("Math.scale", [.int(1), .double(.infinity)]) == .double(.infinity))
        #expect(try await system.callNative("Math.scale", [.int(-1), .double(.infinity)]) == .double(-.infinity))
        let nan = try await system.callNative("Math.scale", [.int(0), .double(.infinity)])
        #expect({ if case .double(let value) = nan { value.isNaN } else { false } }(), "0 × inf came back as \(nan)")
        #expect(try await system.callNative("Math.greet", [.string("routes")]) == .string("hello, routes"))
        #expect(try await system.callNative("Math.sum", [.bytes([1, 2, 3])]) == .uint(1026))
        #expect(try await system.callNative("Math.touch", []) == .void)
        var touched: NativeValue = .void
        for _ in 0..<100 {
            touched = try await system.callNative("Math.touched", [])
            if touched == .int(1) || !touchIsAsync { break }
            try await Task.sleep(for: .milliseconds(20))
        }
        #expect(touched == .int(1))
        await system.shutdown()
    }

    @Test("a native call with the wrong arity or types is refused with the reason: an error reply and a dead letter")
    func wrongArguments() async throws {
        let (_, directory) = try await Self.module()
        let system = try await Self.routedSystem("  Math.*: { transport: q, deadline: 10s }", directory)
        try system.hostNative()
        let dlq = try TypedCallTests.Tap(system, transport: "q", channel: "Math.dlq")
        for (arguments, reason) in [
            ([NativeValue.int(1)], "takes 2 argument(s)"), ([.int(1), .string("x")], "expected i32, got a string"),
            ([.int(1), .int(1 << 40)], "does not fit i32"),
        ] {
            do {
                _ = try await system.callNative("Math.add", arguments)
                Issue.record("expected a refusal for \(arguments)")
            } catch let error as SwitchyardError where error.code == .rejected {
                let message = error.reason
                #expect(message.contains(reason), "\(message)")
            }
        }
        // A function the config's module does not declare: refused before anything is sent.
        let undeclared = await #expect(throws: NativeCallError.self) { _ = try await system.callNative("Math.nosuch", []) }
        #expect(undeclared?.description.contains("native module 'Math' has no function 'nosuch' (it has") == true, "\(String(describing: undeclared))")
        #expect(undeclared?.description.contains("nothing was sent") == true)
        #expect(await eventually { dlq.all.count == 3 })
        #expect(try await system.callNative("Math.add", [.int(1), .int(2)]) == .int(3))
        // By now a dead letter of a sent "nosuch" call would have come (it went before the add).
        #expect(dlq.all.count == 3, "nothing was sent for the undeclared function")
        await system.shutdown()
    }

    @Test("on a direct route too, a function the module does not declare is refused as such, not as a module nobody serves")
    func undeclaredOnDirectRoute() async throws {
        let (_, directory) = try await Self.module()
        let system = try await Self.routedSystem("  Math.*: { transport: direct }", directory)
        let refused = await #expect(throws: NativeCallError.self) { _ = try await system.callNative("Math.nosuch", []) }
        #expect(refused?.description.contains("native module 'Math' has no function 'nosuch'") == true, "\(String(describing: refused))")
        #expect(try await system.callNative("Math.add", [.int(40), .int(2)]) == .int(42))
        await system.shutdown()
    }

    @Test("a caller whose config declares a function the host's does not: the host refuses the call with the reason and dead-letters it")
    func hostRefusesUndeclaredFunction() async throws {
        let (_, directory) = try await Self.module()
        let store = directory.file("calls.db")
        let host = try await Self.routedSystem(
            "  Math.*: { transport: durable, deadline: 30s }", directory, extraTransport: "  durable: { plugin: queue, config: { path: \"\(store)\" } }\n")
        try host.hostNative()
        let dlq = try TypedCallTests.Tap(host, transport: "durable", channel: "Math.dlq")
        // The caller's config is newer than the host's: it declares a function the host lacks.
        let caller = try await makeSystem(
            """
            transports:
              durable: { plugin: queue, config: { path: "\(store)" } }
            native:
              Math:
                library: \(directory.file("libnative.so"))
                functions:
                  add: { symbol: add_i32, signature: "i32(i32, i32)" }
                  added_later: "i32()"
            routes:
              Math.*: { transport: durable, deadline: 30s }
            """, directory: directory)
        let refused = await #expect(throws: SwitchyardError.self) { _ = try await caller.callNative("Math.added_later", []) }
        #expect(refused?.code == .rejected, "\(String(describing: refused))")
        #expect(await eventually { dlq.all.contains { $0.header("sy-dlq-reason")?.contains("is not a function of native module Math") == true } })
        await caller.shutdown()
        await host.shutdown()
    }

    @Test("a native module that does not load, or a bad signature in config, fails the start with the key and line (a library: where it is served or on a direct route)")
    func configErrors() async throws {
        let (_, directory) = try await Self.module()
        let missing = "native:\n  Math:\n    library: /nonexistent.so\n    functions: { f: \"void()\" }\n"
        let noSymbol = "native:\n  Math:\n    library: \(directory.file("libnative.so"))\n    functions:\n      nosuch: \"void()\"\n"
        func check(_ error: ConfigError?, _ key: String, _ message: String) {
            #expect(error?.key == key, "\(String(describing: error))")
            #expect(error?.line != nil)
            // The library's own line, not the module's name two lines up.
            if key == "native.Math.library" && message == "cannot load native module" { #expect(error?.line == 3, "\(String(describing: error))") }
            #expect(error?.message.contains(message) == true, "\(String(describing: error))")
        }
        // Checked at start, library or not.
        for (yaml, key, message) in [
            ("native:\n  Math:\n    library: \(directory.file("libnative.so"))\n    functions:\n      add: \"i32(i32, i32\"\n", "native.Math.functions.add", "column 13"),
            ("native:\n  Math:\n    functions: { f: \"void()\" }\n", "native.Math.library", "is required"),
            // A str result without free: refused in every process, the caller's too (it used to
            // send calls only the host refused).
            ("native:\n  Math:\n    library: /nonexistent.so\n    functions:\n      greet: \"str(str)\"\n", "native.Math.functions.greet", "free: NAME"),
        ] {
            check(await #expect(throws: ConfigError.self) { _ = try await makeSystem(yaml, directory: directory) }, key, message)
        }
        // The library where it is loaded: when the module is served, and at start for a direct
        // route (its calls run in this process).
        for (yaml, key, message) in [(missing, "native.Math.library", "cannot load native module"), (noSymbol, "native.Math.functions.nosuch", "has no function 'nosuch'")] {
            let system = try await makeSystem(yaml, directory: directory)
            check(#expect(throws: ConfigError.self) { try system.hostNative() }, key, message)
            await system.shutdown()
            check(await #expect(throws: ConfigError.self) { _ = try await makeSystem(yaml + "routes:\n  Math.*: { transport: direct }\n", directory: directory) }, key, message)
        }
    }

    @Test("switchyard run refuses a native library that does not load before it starts a transport: no store is created")
    func runChecksLibrariesFirst() async throws {
        let directory = try TemporaryDirectory()
        let config = directory.file("switchyard.yaml")
        try """
        transports:
          q: { plugin: queue, config: { path: "\(directory.file("q.db"))" } }
        routes:
          Math.*: { transport: q }
        native:
          Math:
            library: /nonexistent/libnative.so
            functions: { add: "i32(i32, i32)" }
        """.write(toFile: config, atomically: true, encoding: .utf8)
        let result = try await run(BuildProducts.switchyard, ["run", "--config", config, "--plugins-dir", BuildProducts.directory])
        #expect(result.status == 1, "\(result.stdout)\(result.stderr)")
        #expect(result.stderr.contains("error: \(config):") && result.stderr.contains("'native.Math.library'"), "\(result.stderr)")
        #expect(result.stderr.contains("cannot load native module"), "\(result.stderr)")
        #expect(!FileManager.default.fileExists(atPath: directory.file("q.db")), "the queue's store was not created")
    }

    @Test("a caller through a transport never loads the library: its config's signature is enough, on a machine without the library")
    func callerNeedsNoLibrary() async throws {
        let (_, directory) = try await Self.module()
        let shared = """
            transports:
              q: { plugin: queue, config: { path: "\(directory.file("q.db"))" } }
            routes:
              Math.*: { transport: q, deadline: 10s }
            """
        let host = try await makeSystem(
            shared + "\nnative:\n  Math:\n    library: \(directory.file("libnative.so"))\n    functions:\n      add: { symbol: add_i32, signature: \"i32(i32, i32)\" }\n",
            directory: directory)
        try host.hostNative()
        let caller = try await makeSystem(
            shared + "\nnative:\n  Math:\n    library: /nonexistent/libnative.so\n    functions:\n      add: { symbol: add_i32, signature: \"i32(i32, i32)\" }\n",
            directory: directory)
        #expect(try await caller.callNative("Math.add", texts: ["40", "2"]) == .int(42))
        await caller.shutdown()
        await host.shutdown()
    }

    @Test("the C client library exports its C API alone: no Swift symbol a plugin it loads could bind to instead of its own")
    func clientExportsOnlyItsAPI() throws {
        let library = BuildProducts.directory + "/libswitchyard-native-client.so"
        let listed = try run("/usr/bin/nm", ["-D", "--defined-only", library])
        #expect(listed.status == 0, "\(listed.stderr)")
        // "ADDRESS TYPE NAME": an upper-case type is a global (exported) symbol.
        let exported = listed.stdout.split(separator: "\n").compactMap { line -> String? in
            let fields = line.split(separator: " ")
            guard fields.count == 3, fields[1].first?.isUppercase == true else { return nil }
            return String(fields[2])
        }
        #expect(Set(exported) == ["sy_native_open", "sy_native_bind", "sy_native_last_error", "sy_native_free_string", "sy_native_close"], "\(exported.prefix(10))")
    }

    @Test(
        "a C program calls routed native functions through bound function pointers (libffi closures), across processes",
        .disabled(
            if: ProcessInfo.processInfo.environment["SWITCHYARD_SANITIZER"] == "thread",
            "a plain C program cannot link the TSan runtime (its libdispatch interceptors need Blocks)"))
    func cClosures() async throws {
        let (_, directory) = try await Self.module()
        let program = directory.file("native_caller")
        let compiled = try await CCompiler.compile(
            Repository.fixtures + "/native_caller.c", to: program,
            flags: [
                "-std=c99", "-I", Repository.root + "/SDK/Native", "-L", BuildProducts.directory,
                "-lswitchyard-native-client", "-Wl,-rpath," + BuildProducts.directory,
            ]
                // Under scripts/sanitize the client library needs the sanitizer's runtime.
                + (ProcessInfo.processInfo.environment["SWITCHYARD_SANITIZER"].map { ["-fsanitize=\($0)"] } ?? []))
        #expect(compiled.status == 0, "\(compiled.stderr)")
        let config = directory.file("switchyard.yaml")
        try """
        transports:
          q: { plugin: queue, config: { path: \(directory.file("calls.db")) } }
        native:
          Math:
            library: \(directory.file("libnative.so"))
            functions:
              add: { symbol: add_i32, signature: "i32(i32, i32)" }
              scale: "f64(i32, f64)"
              greet: { signature: "str(str)", free: greet_free }
              sum: { symbol: checksum, signature: "u64(bytes)" }
        routes:
          Math.*: { transport: q, deadline: 20s, encoding: json }  # JSON: the path that needs the most reading back (u64, inf)
        """.write(toFile: config, atomically: true, encoding: .utf8)
        // This process serves the module; the C program calls it through the durable queue.
        let host = try await offPool { try SwitchyardActorSystem(configPath: config, pluginDirectories: [BuildProducts.directory]) }
        try host.hostNative()
        var environment = ProcessInfo.processInfo.environment
        environment["SWITCHYARD_PLUGINS_PATH"] = BuildProducts.directory
        let result = try await run(program, [config], environment: environment)
        #expect(result.status == 0, "\(result.stdout)\(result.stderr)")
        #expect(result.stdout.contains("bad signature: bad signature, column 13: expected ',' or ')'"), "\(result.stdout)")
        #expect(result.stdout.contains("add=42\n"))
        #expect(result.stdout.contains("scale=4.5\n"))
        #expect(result.stdout.contains("greet=hello, from C\n"))
        #expect(result.stdout.contains("sum=1026\n"))
        #expect(result.stdout.contains("error after success=[]"))
        #expect(result.stdout.contains("refused=0 error=[Math.add: rejected by the receiver: cannot run Math.add: add_i32 takes 2 argument(s)"), "\(result.stdout)")
        let mismatch = "mismatched=0 error=[Math.scale: the result is a floating-point number (inf), which the bound signature's i64 result cannot hold"
        #expect(result.stdout.contains(mismatch), "\(result.stdout)")
        #expect(result.stdout.contains("infinite=inf\n"), "\(result.stdout)")
        #expect(result.stdout.contains("narrowed=0 error=[Math.add: the result 300 does not fit the bound signature's i8 result (8 bits)"), "\(result.stdout)")
        await host.shutdown()
    }
}
