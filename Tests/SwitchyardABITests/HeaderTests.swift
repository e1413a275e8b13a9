import Foundation
import SwitchyardTestSupport
import Testing

/// The ABI header must compile cleanly for every C and C++ plugin author, and the C template must
/// build with the one line the docs show.
@Suite("The C header and the C template")
struct HeaderTests {
    @Test("switchyard_plugin.h compiles as C99 with -Wall -Wextra -Werror -pedantic")
    func strictC99() async throws {
        let dir = try TemporaryDirectory()
        let result = try await CCompiler.compile(
            Repository.fixtures + "/header_check.c", to: dir.file("check.o"),
            flags: ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-c"])
        #expect(result.status == 0, "\(result.stderr)")
    }

    @Test("switchyard_plugin.h compiles as C++17 with -Wall -Wextra -Werror -pedantic")
    func strictCXX17() async throws {
        let dir = try TemporaryDirectory()
        let result = try await CCompiler.compile(
            Repository.fixtures + "/header_check.c", to: dir.file("check.o"),
            flags: ["-x", "c++", "-std=c++17", "-Wall", "-Wextra", "-Werror", "-pedantic", "-c"],
            compiler: CCompiler.cxx)
        #expect(result.status == 0, "\(result.stderr)")
        // SY_PLUGIN_EXPORT gives the entry point C linkage: the symbol is not mangled.
        let symbols = try await run("/usr/bin/env", ["nm", dir.file("check.o")])
        #expect(symbols.stdout.contains(" T switchyard_plugin_entry"), "\(symbols.stdout)")
    }

    @Test(
        "switchyard_config.h reads a flat config and names the key of every problem",
        arguments: [
            (#"{}"#, "capacity=1000 timeout=30000000000 durable=0 prefix=jobs"),
            ("", "capacity=1000 timeout=30000000000 durable=0 prefix=jobs"),
            (#"{"capacity": 5, "timeout": "1.5s", "durable": true, "prefix": "a\"b"}"#, #"capacity=5 timeout=1500000000 durable=1 prefix=a"b"#),
            (#"{"capacity": "7", "timeout": "250ms", "prefix": null, "nested": 1}"#, "unknown config key 'nested' (known keys: capacity, timeout, durable, prefix)"),
            (#"{"capacity": 1.5}"#, "config key 'capacity': expected an integer"),
            (#"{"timeout": 5}"#, "config key 'timeout': expected a duration"),
            (#"{"timeout": "-1s"}"#, "config key 'timeout': expected a duration"),
            (#"{"durable": "yes"}"#, "config key 'durable': expected true or false"),
            (#"{"prefix": "a string much longer than thirty-one bytes"}"#, "config key 'prefix': is too long"),
            (#"{"capacity": 1, "capacity": 2}"#, "config key 'capacity': appears twice"),
            // A malformed value names its key, as the host needs to point at the config line.
            (#"{"capacity": 1, "durable": True}"#, "config key 'durable': not valid JSON (the value is malformed)"),
            (#"{"capacity": 0}"#, "config key 'capacity': must be between 1 and 1000000, got 0"),
            (#"{"capacity": "-3"}"#, "config key 'capacity': must be between 1 and 1000000, got -3"),
            (#"{"durable": true, "prefix": ""}"#, "config key 'prefix': must not be empty when durable is true"),
            (#"{"capacity": 1"#, "config key 'capacity': not valid JSON"),
            (#"{"capacity" 1}"#, "config key 'capacity': not valid JSON (expected ':' after the key)"),
            (#"[1, 2]"#, "config: must be a JSON object"),
            (#"{"capacity": 1, "extra": {"a": [1, "}"]}}"#, "unknown config key 'extra'"),
            // Keys and strings are decoded as JSON defines: this key is "capacity".
            (#"{"cap\u0061city": 5}"#, "capacity=5 timeout=30000000000 durable=0 prefix=jobs"),
            (#"{"prefix": "\u00e9"}"#, "capacity=1000 timeout=30000000000 durable=0 prefix=é"),
            // Durations read as ConfigDuration.parse reads them (2^52 + 1 ns was read 1 ns over).
            (#"{"timeout": "4503599627370497ns"}"#, "capacity=1000 timeout=4503599627370497 durable=0 prefix=jobs"),
            (#"{"capacity": -9223372036854775808}"#, "config key 'capacity': must be between 1 and 1000000, got -9223372036854775808"),
            // Malformed JSON is refused, in nested values as well, not read as 1 or as an unknown key.
            (#"{"capacity": 01}"#, "config key 'capacity': not valid JSON (the value is malformed)"),
            (#"{"capacity": 1, "extra": [1 2]}"#, "config key 'extra': not valid JSON (the value is malformed)"),
        ])
    func configHelper(_ json: String, _ expected: String) async throws {
        let dir = try TemporaryDirectory()
        let binary = dir.file("config_check")
        let built = try await CCompiler.compile(
            Repository.fixtures + "/config_check.c", to: binary,
            flags: ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic"])
        try #require(built.status == 0)
        let result = try await run(binary, [json])
        #expect(result.stdout.contains(expected), "for \(json): \(result.stdout)")
    }

    @Test("the C template builds with one cc line, exports one symbol, and loads")
    func cTemplateOneLine() async throws {
        let dir = try TemporaryDirectory()
        let output = dir.file("libswitchyard-example-c.so")
        let result = try await CCompiler.compile(
            Repository.root + "/SDK/Templates/c-plugin/plugin.c", to: output,
            flags: ["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-pedantic", "-shared", "-fPIC", "-lpthread"])
        #expect(result.status == 0, "\(result.stderr)")
        let verify = try await run(BuildProducts.switchyard, ["plugins", "verify", output])
        #expect(verify.status == 0, "\(verify.stderr)")
        #expect(verify.stdout.contains("ok: example-c 1.0.0"))
    }
}
