import CSwitchyard
import Foundation
import SwitchyardABI
import SwitchyardTestSupport
import Testing

/// The `switchyard plugins` commands, run as a real child process.
@Suite("switchyard plugins")
struct CLITests {
    @Test("verify accepts a good plugin with exit 0")
    func verifyGood() async throws {
        let result = try await run(BuildProducts.switchyard, ["plugins", "verify", BuildProducts.exampleSwift])
        #expect(result.status == 0)
        #expect(result.stdout.contains("ok: example-swift 1.0.0, ABI 1.\(SY_ABI_MINOR), capabilities: queue"))
    }

    @Test("verify takes a plugin in the working directory by its bare file name (dlopen alone would search the library path for it)")
    func verifyBareFileName() async throws {
        let directory = try TemporaryDirectory()
        try FileManager.default.copyItem(atPath: BuildProducts.exampleSwift, toPath: directory.file("q.so"))
        let result = try await run("/bin/sh", ["-c", "cd \"$0\" && exec \"$1\" plugins verify q.so", directory.path, BuildProducts.switchyard])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stdout.contains("ok: example-swift 1.0.0"), "\(result.stdout)\(result.stderr)")
    }

    @Test(
        "verify rejects bad files with exit 1 and a one-line reason on stderr",
        arguments: [
            (["FIXTURE_NO_ENTRY"], "no switchyard_plugin_entry function"),
            (["FIXTURE_ABI_MAJOR=3"], "built for ABI 3."),
            (["FIXTURE_NULL_PUBLISH"], "publish NULL"),
        ])
    func verifyBad(_ defines: [String], _ reason: String) async throws {
        let dir = try TemporaryDirectory()
        let path = try await CCompiler.fixture("bad.so", in: dir.path, defines: defines)
        let result = try await run(BuildProducts.switchyard, ["plugins", "verify", path])
        #expect(result.status == 1)
        #expect(!result.signaled)
        #expect(result.stderr.contains(reason), "\(result.stderr)")
        #expect(result.stderr.split(separator: "\n").count == 1)
    }

    @Test("plugins test says when a plugin refuses a config key the kit set itself, and what an instance kept")
    func kitKeysAndKeptCapabilities() async throws {
        let refused = try await run(BuildProducts.switchyard, ["plugins", "test", "example-c", "--isolation-key", "stream", "--check", "publish-deliver-ack"])
        #expect(refused.status != 0)
        #expect(refused.stdout.contains("the conformance kit sets config key 'stream' itself for --isolation-key stream"), "\(refused.stdout)")
        let kept = try await run(BuildProducts.switchyard, ["plugins", "test", "queue", "--check", "instance-capabilities"])
        #expect(kept.status == 0, "\(kept.stdout)\(kept.stderr)")
        #expect(kept.stdout.contains("this instance keeps [queue, retry, dead-letter, ordered, expiry, private-wire] of ["), "\(kept.stdout)")
    }

    @Test("a mistyped option is named, with the nearest one, not read as the required option it misses")
    func mistypedOption() async throws {
        for (arguments, expected) in [
            (["run", "--confg", "x.yaml"], "unknown option '--confg' for 'switchyard run' (did you mean '--config'?)"),
            (["dlq", "list", "--confg", "x.yaml", "--transport", "work"], "unknown option '--confg' for 'switchyard dlq list' (did you mean '--config'?)"),
            (["stats", "--url", "http://127.0.0.1:1", "--wtch"], "unknown option '--wtch' for 'switchyard stats' (did you mean '--watch'?)"),
        ] {
            let result = try await run(BuildProducts.switchyard, arguments)
            #expect(result.status == 64, "\(arguments): \(result.status) \(result.stderr)")
            #expect(result.stderr.contains(expected), "\(arguments): \(result.stderr)")
        }
        // Before call's route, where ArgumentParser hands every unknown word to the call; after
        // the route, the words are the call's own.
        let header = try await run(BuildProducts.switchyard, ["call", "--config", "x.yaml", "--hedaer", "a=b", "Math.add", "1"])
        #expect(header.status == 64)
        #expect(header.stderr.contains("unknown option '--hedaer' for 'switchyard call' (did you mean '--header'?)"), "\(header.stderr)")
        let afterRoute = try await run(BuildProducts.switchyard, ["call", "--config", "x.yaml", "--symbol", "f", "Math.echo", "--hello"])
        #expect(afterRoute.stderr.contains("--symbol is for --native"), "\(afterRoute.stderr)")
        // A known option still gets ArgumentParser's own message, and so does a mistyped
        // subcommand; help and completion scripts are not usage errors.
        let missing = try await run(BuildProducts.switchyard, ["run"])
        #expect(missing.status == 64)
        #expect(missing.stderr.contains("Missing expected argument '--config <file>'"), "\(missing.stderr)")
        let subcommand = try await run(BuildProducts.switchyard, ["dlq", "lst", "--transport", "w"])
        #expect(subcommand.status == 64)
        #expect(!subcommand.stderr.contains("unknown option"), "\(subcommand.stderr)")
        let completion = try await run(BuildProducts.switchyard, ["--generate-completion-script", "bash"])
        #expect(completion.status == 0 && completion.stdout.contains("switchyard"), "\(completion.stderr)")
    }

    @Test("demo refuses a config that routes none of the example's calls; stats names a missing store once")
    func foreignConfigs() async throws {
        let dir = try TemporaryDirectory()
        let other = dir.file("other.yaml")
        try "transports:\n  jobs: { plugin: queue }\n".write(toFile: other, atomically: true, encoding: .utf8)
        let demo = try await run(BuildProducts.switchyard, ["demo", "--config", other])
        #expect(demo.status == 1)
        #expect(demo.stderr.contains("routes no call of the orders example (Orders.place has no route)"), "\(demo.stderr)")
        let config = dir.file("missing.yaml")
        try "transports:\n  jobs:\n    plugin: queue\n    config:\n      path: \(dir.file("missing/jobs.db"))\n".write(toFile: config, atomically: true, encoding: .utf8)
        let stats = try await run(BuildProducts.switchyard, ["stats", "--config", config])
        #expect(stats.status == 1)
        #expect(stats.stderr.contains("no store at \(dir.file("missing/jobs.db"))"), "\(stats.stderr)")
        #expect(!stats.stderr.contains("not opened"), "said once, as the error: \(stats.stderr)")
    }

    @Test("verify survives a plugin that crashes while loading")
    func verifyCrashingPlugin() async throws {
        let dir = try TemporaryDirectory()
        let path = try await CCompiler.fixture("crash.so", in: dir.path, defines: ["FIXTURE_CRASH_IN_ENTRY"])
        let result = try await run(BuildProducts.switchyard, ["plugins", "verify", path])
        #expect(result.status == 1)
        #expect(!result.signaled)
        #expect(result.stderr.contains("crashed the loader with signal 11"), "\(result.stderr)")
        #expect(result.stderr.contains("its entry function or a static initialiser crashed") && result.stderr.contains("gdb"), "\(result.stderr)")
        // Asked for by name, the file the probe refused is named first, with why.
        let named = try await CCompiler.fixture("libswitchyard-crashy.so", in: dir.path, defines: ["FIXTURE_CRASH_IN_ENTRY"])
        let inspect = try await run(BuildProducts.switchyard, ["plugins", "inspect", "crashy", "--plugins-dir", dir.path])
        #expect(inspect.status == 1)
        #expect(inspect.stderr.hasPrefix("plugin 'crashy' was not loaded: its file \(named) was refused:"), "\(inspect.stderr)")
    }

    @Test("test with a --plugin-config the plugin refuses says the config is at fault, not the plugin")
    func refusedPluginConfig() async throws {
        let result = try await run(BuildProducts.switchyard, ["plugins", "test", "queue", "--plugin-config", #"{"capacty": 5}"#])
        #expect(result.status == 1)
        #expect(result.stdout.contains("unknown config key 'capacty'"), "\(result.stdout)")
        #expect(result.stderr.contains(#"no instance could be created with --plugin-config {"capacty": 5}"#) && result.stderr.contains("which key was refused"), "\(result.stderr)")
    }

    @Test("inspect and test warn of a --plugins-dir that does not exist, as list does: a mistyped one must show")
    func missingDirectoryWarned() async throws {
        let missing = "/nonexistent/switchyard-plugins-\(getpid())"
        for arguments in [["plugins", "inspect", "queue", "--plugins-dir", missing], ["plugins", "test", "queue", "--check", "publish-deliver-ack", "--plugins-dir", missing]] {
            let result = try await run(BuildProducts.switchyard, arguments)
            #expect(result.status == 0, "\(arguments): \(result.stderr)")
            #expect(result.stderr.contains("warning: ") && result.stderr.contains(missing), "\(arguments): \(result.stderr)")
        }
    }

    @Test("a host that loads a crashing plugin in process dies naming the file and plugins.probe (it printed only a backtrace through the dynamic loader)")
    func crashWhileLoadingNamesTheFile() async throws {
        let dir = try TemporaryDirectory()
        let path = try await CCompiler.fixture("libswitchyard-crashy.so", in: dir.path, defines: ["FIXTURE_CRASH_IN_ENTRY"])
        let config = dir.file("host.yaml")
        try "transports:\n  q: { plugin: queue }\n".write(toFile: config, atomically: true, encoding: .utf8)
        var environment = ProcessInfo.processInfo.environment
        environment["SWIFT_BACKTRACE"] = "enable=no"  // the signal, not the backtracer's report, is what this test reads
        let result = try await run(BuildProducts.switchyard, ["run", "--config", config, "--plugins-dir", dir.path, "--allow-empty"], environment: environment)
        #expect(result.signaled, "\(result.stderr)")
        #expect(
            result.stderr.contains("the plugin file \(path) stopped this process with a fatal signal while loading") && result.stderr.contains("plugins.probe: true"),
            "\(result.stderr)")
    }

    @Test("usage errors exit 64 naming the option: seconds given as inf, nan or out of range (Double parses them; they used to trap), options that do not go together")
    func nonFiniteSeconds() async throws {
        for (arguments, option) in [
            (["run", "--config", "x.yaml", "--drain", "inf"], "--drain must be"), (["run", "--config", "x.yaml", "--drain=-1"], "--drain must be"),
            // A negative number after the option is its value, not an option ("Missing value" before).
            (["run", "--config", "x.yaml", "--drain", "-1"], "--drain must be"),
            (["stats", "--url", "http://127.0.0.1:1", "--watch", "--interval", "-1"], "--interval must be"),
            (["stats", "--url", "http://127.0.0.1:1", "--watch", "--interval", "--json"], "the value is missing ('--json' is the next option)"),
            (["soak", "--settle-timeout", "-5"], "--settle-timeout must be more than 0"),
            (["stats", "--url", "http://127.0.0.1:1", "--watch", "--interval", "nan"], "--interval must be"),
            // Options that were ignored, or refused only once the command ran (exit 1).
            (["stats", "--url", "http://127.0.0.1:1", "--interval", "5"], "add --watch, or drop --interval"),
            (["call", "--native", "x.so", "--config", "x.yaml", "--symbol", "f", "--signature", "void()"], "drop --config"),
            (["call", "--native", "x.so"], "--native needs --symbol and --signature"),
            (["call", "--config", "x.yaml", "--symbol", "f", "Math.add"], "--symbol is for --native LIB.so"),
            (["call"], "give --config FILE and a route"),
            (["call", "--config", "x.yaml", "--"], "which route?"),
            (["plugins", "verify", "--timeout", "inf", "x.so"], "--timeout must be"),
            (["run", "--config", "x.yaml", "--log-level", "loud"], "one of: trace"),
            // Zero blamed the plugin: every check failed as "timed out".
            (["plugins", "test", "queue", "--check-timeout", "0"], "--check-timeout must be more than 0"),
            (["dlq", "list", "--config", "x.yaml", "--transport", "work", "--channel", ""], "--channel must not be empty"),
        ] {
            let result = try await run(BuildProducts.switchyard, arguments)
            #expect(result.status == 64, "\(arguments): \(result.status) \(result.stderr)")
            #expect(result.stderr.contains(option), "\(arguments): \(result.stderr)")
        }
    }

    @Test("verify gives up on a plugin whose entry never returns: exit 1, 'hung while loading'")
    func verifyHangingPlugin() async throws {
        let dir = try TemporaryDirectory()
        let path = try await CCompiler.fixture("hang.so", in: dir.path, defines: ["FIXTURE_HANG_IN_ENTRY"])
        let started = Date()
        let result = try await run(BuildProducts.switchyard, ["plugins", "verify", "--timeout", "1", path])
        #expect(result.status == 1)
        #expect(result.stderr.contains("hung while loading"), "\(result.stderr)")
        #expect(result.stderr.contains("within 1000 ms"), "\(result.stderr)")
        #expect(Date().timeIntervalSince(started) < 15)
    }

    @Test(
        "plugins test: a check stuck in a plugin call fails as timed out, the suite goes on, and each line reaches a pipe as its check ends",
        .disabled(
            if: ProcessInfo.processInfo.environment["SWITCHYARD_SANITIZER"] == "thread",
            "under ThreadSanitizer checks run inline, without a time limit (a TSan runtime bug; ConformanceSuite.run)"))
    func conformanceCheckTimeout() async throws {
        let dir = try TemporaryDirectory()
        let path = try await CCompiler.fixture("stuck.so", in: dir.path, defines: ["FIXTURE_HANG_IN_PUBLISH", "FIXTURE_NAME=\"stuck\""])
        let process = Process()
        process.executableURL = URL(fileURLWithPath: BuildProducts.switchyard)
        process.arguments = ["plugins", "test", path, "--check-timeout", "1", "--check", "publish-deliver-ack", "--check", "publish-batch"]
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle.nullDevice
        let lines = LineBuffer()
        let firstFailure = Guarded<Date?>(nil)
        let follower = out.follow { text in
            if text.contains("FAIL") { firstFailure.withLock { $0 = $0 ?? Date() } }
            lines.append([text])
        }
        try process.run()
        #expect(await eventually(30) { !process.isRunning })
        let exited = Date()
        follower.finish()  // the summary, printed last, may still be in the pipe
        let output = lines.all.joined()
        #expect(process.terminationStatus == 1, "\(output)")
        #expect(output.contains("FAIL  publish-deliver-ack: timed out after 1 s"), "\(output)")
        #expect(output.contains("FAIL  publish-batch: timed out after 1 s"), "\(output)")
        #expect(output.contains("0 passed, 2 failed"), "\(output)")
        // The first line came out a check's length (1 s) before the end, not with it.
        let first = try #require(firstFailure.withLock { $0 })
        #expect(exited.timeIntervalSince(first) > 0.5, "the first line arrived only \(exited.timeIntervalSince(first)) s before the exit")
    }

    @Test("plugins test: a plugin whose create fails without a message fails the first check with that said, and skips the rest")
    func conformanceCreateFailsSilently() async throws {
        let dir = try TemporaryDirectory()
        let path = try await CCompiler.fixture("silent.so", in: dir.path, defines: ["FIXTURE_CREATE_FAILS_SILENT", "FIXTURE_NAME=\"silent\""])
        let result = try await run(BuildProducts.switchyard, ["plugins", "test", path])
        #expect(result.status == 1)
        #expect(result.stdout.contains("gave no reason"), "\(result.stdout)")
        #expect(result.stdout.contains("1 failed"), "\(result.stdout)")
        #expect(result.stdout.contains("not run: no instance could be created"), "\(result.stdout)")
    }

    @Test("plugins test says when --inner or --durable does not apply to the plugin, instead of reading as tested that way")
    func conformanceIgnoredOptions() async throws {
        let result = try await run(
            BuildProducts.switchyard, ["plugins", "test", "example-c", "--durable", "--inner", "delay", "--check", "publish-deliver-ack"])
        #expect(result.status == 0, "\(result.stdout)\(result.stderr)")
        #expect(result.stdout.contains("(--inner delay ignored: example-c does not declare wraps-inner"), "\(result.stdout)")
        #expect(result.stdout.contains("(--durable ignored: example-c does not declare the durable capability"), "\(result.stdout)")
    }

    @Test("verify never crashes on junk: empty, text, random bytes, a directory, a missing path")
    func verifyJunk() async throws {
        let dir = try TemporaryDirectory()
        _ = FileManager.default.createFile(atPath: dir.file("empty.so"), contents: Data())
        try "hello".write(toFile: dir.file("text.so"), atomically: true, encoding: .utf8)
        var generator = SystemRandomNumberGenerator()
        _ = FileManager.default.createFile(atPath: dir.file("random.so"), contents: Data((0..<4096).map { _ in UInt8.random(in: 0...255, using: &generator) }))
        for path in [dir.file("empty.so"), dir.file("text.so"), dir.file("random.so"), dir.path, dir.file("missing.so")] {
            let result = try await run(BuildProducts.switchyard, ["plugins", "verify", path])
            #expect(result.status == 1, "\(path)")
            #expect(!result.signaled, "\(path)")
            #expect(!result.stderr.isEmpty, "\(path)")
        }
    }

    @Test("list --json lists bundled plugins and refused files, and exits 0")
    func listJSON() async throws {
        let dir = try TemporaryDirectory()
        try await CCompiler.fixture("null.so", in: dir.path, defines: ["FIXTURE_ENTRY_NULL"])
        let result = try await run(BuildProducts.switchyard, ["plugins", "list", "--json", "--dir", dir.path])
        #expect(result.status == 0, "\(result.stderr)")
        struct Output: Decodable {
            struct Plugin: Decodable { let name, version, abi, path: String; let capabilities: [String] }
            struct Rejected: Decodable { let path, reason: String }
            let plugins: [Plugin]
            let rejected: [Rejected]
            let not_plugins: [String]
            let searched: [String]
        }
        let output = try JSONDecoder().decode(Output.self, from: Data(result.stdout.utf8))
        #expect(output.searched.contains(dir.path), "\(output.searched)")
        let names = output.plugins.map(\.name)
        #expect(names.contains("example-c") && names.contains("example-swift"))
        let exampleC = try #require(output.plugins.first { $0.name == "example-c" })
        #expect(exampleC.abi == "1.\(SY_ABI_MINOR)")
        #expect(exampleC.capabilities == ["queue"])
        #expect(exampleC.path.hasSuffix("libswitchyard-example-c.so"))
        #expect(output.rejected.map(\.path) == [dir.file("null.so")])
        #expect(output.rejected.first?.reason.contains("returned NULL") == true)
    }

    @Test("inspect by name shows the full descriptor with its sha256")
    func inspect() async throws {
        let result = try await run(BuildProducts.switchyard, ["plugins", "inspect", "example-c", "--json"])
        #expect(result.status == 0, "\(result.stderr)")
        struct Output: Decodable { let name: String; let functions: [String]; let sha256: String; let capability_bits: UInt64; let load_microseconds: Double }
        let output = try JSONDecoder().decode(Output.self, from: Data(result.stdout.utf8))
        #expect(output.name == "example-c")
        // No publish_batch: example-c is one-at-a-time; channel_stats shows C authors how (ABI 1.9).
        #expect(output.functions == ["create", "destroy", "publish", "subscribe", "unsubscribe", "settle", "drain", "stats", "channel_stats"])
        #expect(output.sha256.count == 64)
        let queue = try await run(BuildProducts.switchyard, ["plugins", "inspect", "queue", "--json"])
        let queueFunctions = try JSONDecoder().decode(Output.self, from: Data(queue.stdout.utf8)).functions
        #expect(
            queueFunctions.contains("publish_async") && queueFunctions.contains("extend") && queueFunctions.contains("instance_capabilities")
                && queueFunctions.contains("channel_stats"), "\(queueFunctions)")
        let missing = try await run(BuildProducts.switchyard, ["plugins", "inspect", "no-such-plugin"])
        #expect(missing.status == 1)
        #expect(missing.stderr.contains("no plugin named 'no-such-plugin'"))
        // A file in the search path that exports no entry may be the plugin meant: said so.
        let dir = try TemporaryDirectory()
        try await CCompiler.fixture("libswitchyard-mine.so", in: dir.path, defines: ["FIXTURE_NO_ENTRY"])
        let unexported = try await run(BuildProducts.switchyard, ["plugins", "inspect", "mine", "--plugins-dir", dir.path])
        #expect(unexported.status == 1, "\(unexported.stderr)")
        #expect(
            unexported.stderr.contains("If your plugin's file is there among the files that are not plugins")
                && unexported.stderr.contains("libswitchyard-mine.so") && unexported.stderr.contains("the @c entry must be public"),
            "\(unexported.stderr)")
        let typo = try await run(BuildProducts.switchyard, ["plugins", "inspect", "queu"])
        #expect(typo.status == 1 && typo.stderr.contains("Did you mean 'queue'?"), "\(typo.stderr)")
        // verify takes a file: given a plugin's name, it says so.
        let byName = try await run(BuildProducts.switchyard, ["plugins", "verify", "queue"])
        #expect(byName.status == 1 && byName.stderr.contains("plugins verify takes the path of a .so file"), "\(byName.stderr)")
        // A name typed with its suffix: the advice names the plugin, not "nope.so.so".
        let withSuffix = try await run(BuildProducts.switchyard, ["plugins", "verify", "nope.so"])
        #expect(withSuffix.stderr.contains("e.g. ./libswitchyard-nope.so;") && withSuffix.stderr.contains("'switchyard plugins inspect nope'"), "\(withSuffix.stderr)")
    }

    @Test("test with a --check that does not exist fails, naming the checks there are (it used to run nothing and pass)")
    func unknownCheck() async throws {
        let result = try await run(BuildProducts.switchyard, ["plugins", "test", "queue", "--check", "publish-delivr-ack"])
        #expect(result.status == 1)
        #expect(result.stderr.contains("no conformance check named 'publish-delivr-ack': did you mean 'publish-deliver-ack'?"), "\(result.stderr)")
        #expect(!result.stderr.contains("Usage:"), "\(result.stderr)")
    }

    @Test("a config file's plugins directory and pins are honoured")
    func configPins() async throws {
        let dir = try TemporaryDirectory()
        try FileManager.default.createDirectory(atPath: dir.file("plugins-here"), withIntermediateDirectories: true)
        try await CCompiler.fixture("libswitchyard-pinned.so", in: dir.file("plugins-here"), defines: ["FIXTURE_NAME=\"pinned\""])
        try """
        plugins:
          directory: plugins-here
          pins:
            pinned: \(String(repeating: "ab", count: 32))
        """.write(toFile: dir.file("switchyard.yaml"), atomically: true, encoding: .utf8)
        let result = try await run(BuildProducts.switchyard, ["plugins", "list", "--json", "--config", dir.file("switchyard.yaml")])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stdout.contains("does not match the pin for 'pinned'"))
    }

    @Test(
        "require_pins from a config refuses unpinned files before loading them, in the listing, in a process opening its transports, and behind the probe of isolation: process"
    )
    func configRequirePins() async throws {
        let dir = try TemporaryDirectory()
        let plugins = dir.file("plugins")
        try FileManager.default.createDirectory(atPath: plugins, withIntermediateDirectories: true)
        // Loading this one would crash the process: a clean refusal proves it never ran.
        try await CCompiler.fixture("libcrashes.so", in: plugins, defines: ["FIXTURE_CRASH_IN_ENTRY", "FIXTURE_NAME=\"crashes\""])
        try FileManager.default.copyItem(atPath: BuildProducts.exampleC, toPath: dir.file("plugins/libswitchyard-example-c.so"))
        for isolation in ["", ", isolation: process"] {
            let config = dir.file("pins\(isolation.isEmpty ? "" : "-isolated").yaml")
            try """
            plugins:
              directory: plugins
              require_pins: true
            transports:
              jobs: { plugin: example-c\(isolation) }
            """.write(toFile: config, atomically: true, encoding: .utf8)
            let listed = try await run(BuildProducts.switchyard, ["plugins", "list", "--json", "--config", config])
            #expect(!listed.signaled && listed.status == 0, "\(listed.stderr)")
            // Every file on the search path is unpinned: these two among them, refused, none loaded.
            let json = try #require(try JSONSerialization.jsonObject(with: Data(listed.stdout.utf8)) as? [String: Any])
            #expect((json["plugins"] as? [Any])?.isEmpty == true, "\(listed.stdout)")
            let refused = (json["rejected"] as? [[String: Any]] ?? []).filter { ($0["reason"] as? String)?.contains("is not pinned") == true }
            for file in [dir.file("plugins/libcrashes.so"), dir.file("plugins/libswitchyard-example-c.so")] {
                #expect(refused.contains { $0["path"] as? String == file }, "\(file): \(listed.stdout)")
            }
            let opened = try await run(BuildProducts.switchyard, ["stats", "--config", config])
            #expect(!opened.signaled && opened.status != 0, "\(opened.stdout)\(opened.stderr)")
            #expect(opened.stderr.contains("example-c") && opened.stderr.contains("is not pinned"), "\(opened.stderr)")
            // The fix is a pin, not a build: the plugin was found, and refused unread.
            #expect(opened.stderr.contains("add plugins.pins.example-c: <that sha256>"), "\(opened.stderr)")
            #expect(!opened.stderr.contains("swift build --product"), "\(opened.stderr)")
        }
    }

    @Test("a malformed config names the key and line, exit code non-zero")
    func badConfig() async throws {
        let dir = try TemporaryDirectory()
        try "plugins:\n  directory: x\n  pinz: {}\n".write(toFile: dir.file("bad.yaml"), atomically: true, encoding: .utf8)
        let result = try await run(BuildProducts.switchyard, ["plugins", "list", "--config", dir.file("bad.yaml")])
        #expect(result.status != 0)
        #expect(result.stderr.contains("line 3"), "\(result.stderr)")
        #expect(result.stderr.contains("'plugins.pinz': unknown key"), "\(result.stderr)")
    }
}
