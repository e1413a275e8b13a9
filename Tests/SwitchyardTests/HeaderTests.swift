import Foundation
import Testing

/// The ABI header must compile cleanly for every C and C++ plugin author, and the C template must
/// build with the one line the docs show.
@Suite("The C header and the C template")
struct HeaderTests {
    @Test("switchyard_plugin.h compiles as C99 with -Wall -Wextra -Werror -pedantic")
    func strictC99() async throws {
        let dir = try TemporaryDirectory()
        let result = try await CCompiler.compile(Repository.fixtures + "/header_check.c", to: dir.file("check.o"),
                                           flags: ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-c"])
        #expect(result.status == 0, "\(result.stderr)")
    }

    @Test("switchyard_plugin.h compiles as C++17 with -Wall -Wextra -Werror -pedantic")
    func strictCXX17() async throws {
        let dir = try TemporaryDirectory()
        let result = try await CCompiler.compile(Repository.fixtures + "/header_check.c", to: dir.file("check.o"),
                                           flags: ["-x", "c++", "-std=c++17", "-Wall", "-Wextra", "-Werror", "-pedantic", "-c"],
                                           compiler: CCompiler.cxx)
        #expect(result.status == 0, "\(result.stderr)")
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
