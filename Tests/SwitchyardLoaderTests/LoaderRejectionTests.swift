import CSwitchyard
import Foundation
import SwitchyardTestSupport
import Testing

@testable import SwitchyardLoader

/// One fixture per way a plugin file can be bad: each must be refused with its own reason, and a
/// good plugin in the same directory must still load.
@Suite("Loader refuses bad plugin files, each with its reason")
struct LoaderRejectionTests {
    /// A fixture built from fixture_plugin.c with `defines`, expected to be refused as `kind`
    /// with a reason containing `reason`.
    struct CompiledFixture: Sendable, CustomTestStringConvertible {
        let file: String
        let defines: [String]
        let kind: Rejection.Kind
        let reason: String
        var testDescription: String { file }
    }

    static let compiled: [CompiledFixture] = [
        .init(
            file: "no-entry.so", defines: ["FIXTURE_NO_ENTRY"], kind: .missingEntry,
            reason:
                "no switchyard_plugin_entry function: not a Switchyard plugin (in C and C++, define it with SY_PLUGIN_EXPORT and not static: it exports the name under -fvisibility=hidden, and in C++ makes it extern \"C\""
        ),
        .init(
            file: "entry-null.so", defines: ["FIXTURE_ENTRY_NULL"], kind: .entryRefused,
            reason: "the entry returned NULL: the plugin refused a host of ABI major 1 (an entry returns NULL"),
        .init(file: "abi-major-2.so", defines: ["FIXTURE_ABI_MAJOR=2"], kind: .abiMismatch, reason: "; this host speaks ABI 1.x"),
        .init(
            file: "too-small.so", defines: ["FIXTURE_STRUCT_SIZE=40"], kind: .descriptorTooSmall,
            reason: "struct_size is 40 bytes; ABI 1.9 needs at least 160 (set .struct_size = sizeof(sy_plugin_descriptor)"),
        .init(file: "tiny.so", defines: ["FIXTURE_STRUCT_SIZE=4"], kind: .descriptorTooSmall, reason: "too small to hold even its ABI version"),
        .init(file: "null-publish.so", defines: ["FIXTURE_NULL_PUBLISH"], kind: .missingFunction, reason: "leaves required function publish NULL"),
        .init(file: "bad-name.so", defines: ["FIXTURE_NAME=\"Bad_Name\""], kind: .invalidName, reason: "must start with a lowercase letter"),
        .init(file: "bad-chars.so", defines: ["FIXTURE_NAME=\"bad_name\""], kind: .invalidName, reason: "may only contain a-z, 0-9 and '-'"),
        .init(file: "empty-name.so", defines: ["FIXTURE_NAME=\"\""], kind: .invalidName, reason: "the name is empty"),
        .init(file: "long-name.so", defines: ["FIXTURE_NAME=\"a\(String(repeating: "b", count: 70))\""], kind: .invalidName, reason: "longer than 63 bytes"),
        .init(file: "bad-version.so", defines: ["FIXTURE_NAME=\"bad-version\"", "FIXTURE_VERSION=\"one\""], kind: .invalidVersion, reason: "not a semantic version"),
    ]

    @Test("compiled fixture is refused", arguments: compiled)
    func compiledFixtureIsRefused(_ fixture: CompiledFixture) async throws {
        let dir = try TemporaryDirectory()
        let path = try await CCompiler.fixture(fixture.file, in: dir.path, defines: fixture.defines)
        let error = #expect(throws: Rejection.self) { try PluginLoader().load(path: path) }
        #expect(error?.kind == fixture.kind)
        #expect(error?.reason.contains(fixture.reason) == true, "reason was: \(error?.reason ?? "-")")
        #expect(error?.path == path)
    }

    @Test("an empty file is refused")
    func emptyFile() throws {
        let dir = try TemporaryDirectory()
        _ = FileManager.default.createFile(atPath: dir.file("empty.so"), contents: Data())
        let error = #expect(throws: Rejection.self) { try PluginLoader().load(path: dir.file("empty.so")) }
        #expect(error?.kind == .empty)
        #expect(error?.reason == "an empty file")
    }

    @Test("a text file is refused as text")
    func textFile() throws {
        let dir = try TemporaryDirectory()
        try "#!/bin/sh\necho not a plugin\n".write(toFile: dir.file("script.so"), atomically: true, encoding: .utf8)
        let error = #expect(throws: Rejection.self) { try PluginLoader().load(path: dir.file("script.so")) }
        #expect(error?.kind == .notELF)
        #expect(error?.reason == "a text file, not a shared library")
    }

    @Test("a static library (an ar archive) is refused as one, saying to build a dynamic library")
    func staticLibrary() async throws {
        let dir = try TemporaryDirectory()
        let object = dir.file("fixture.o")
        try await CCompiler.compile(Repository.fixtures + "/fixture_plugin.c", to: object, flags: ["-std=c99", "-fPIC", "-w", "-c"])
        let archive = try await run("/usr/bin/ar", ["rcs", dir.file("libswitchyard-static.a"), object])
        #expect(archive.status == 0, "\(archive.stderr)")
        let error = #expect(throws: Rejection.self) { try PluginLoader().load(path: dir.file("libswitchyard-static.a")) }
        #expect(error?.kind == .notELF)
        #expect(error?.reason.hasPrefix("a static library (an ar archive), not a shared library") == true, "\(error?.reason ?? "")")
        #expect(error?.reason.contains("type: .dynamic") == true)
    }

    @Test("binary junk is refused as not ELF")
    func binaryJunk() throws {
        let dir = try TemporaryDirectory()
        _ = FileManager.default.createFile(atPath: dir.file("junk.so"), contents: Data([0x00, 0xFF, 0x13, 0x37, 0x42] + Array(repeating: 0, count: 100)))
        let error = #expect(throws: Rejection.self) { try PluginLoader().load(path: dir.file("junk.so")) }
        #expect(error?.kind == .notELF)
        #expect(error?.reason.contains("not an ELF file") == true)
    }

    @Test("an ELF library for another architecture is refused before dlopen")
    func foreignArchitecture() throws {
        let dir = try TemporaryDirectory()
        // A 64-bit little-endian ET_DYN header for aarch64 (e_machine 183) on x86-64, or for
        // RISC-V (243) on aarch64: enough for the check, never handed to dlopen.
        var header = [UInt8](repeating: 0, count: 64)
        header[0...3] = [0x7F, 0x45, 0x4C, 0x46]
        header[4] = 2; header[5] = 1; header[6] = 1
        header[16] = 3  // ET_DYN
        let foreign: UInt16 = ELFCheck.hostMachine.value == 183 ? 243 : 183
        header[18] = UInt8(foreign & 0xFF); header[19] = UInt8(foreign >> 8)
        _ = FileManager.default.createFile(atPath: dir.file("arm.so"), contents: Data(header))
        let error = #expect(throws: Rejection.self) { try PluginLoader().load(path: dir.file("arm.so")) }
        #expect(error?.kind == .foreignArchitecture)
        #expect(error?.reason.contains("built for \(ELFCheck.machineName(foreign))") == true, "\(error?.reason ?? "")")
    }

    @Test("an executable is refused as not a shared library")
    func executable() async throws {
        let dir = try TemporaryDirectory()
        try "int main(void) { return 0; }\n".write(toFile: dir.file("main.c"), atomically: true, encoding: .utf8)
        try await CCompiler.compile(dir.file("main.c"), to: dir.file("program.so"), flags: [])
        let error = #expect(throws: Rejection.self) { try PluginLoader().load(path: dir.file("program.so")) }
        #expect(error?.kind == .notASharedLibrary)
        #expect(error?.reason.contains("executable, not a shared library") == true)
    }

    @Test("an object file is refused as not a shared library")
    func objectFile() async throws {
        let dir = try TemporaryDirectory()
        try await CCompiler.compile(Repository.fixtures + "/fixture_plugin.c", to: dir.file("object.so"), flags: ["-c", "-fPIC"])
        let error = #expect(throws: Rejection.self) { try PluginLoader().load(path: dir.file("object.so")) }
        #expect(error?.kind == .notASharedLibrary)
        #expect(error?.reason.contains("object file") == true)
    }

    @Test("a library whose dependency is missing is refused with the dynamic loader's reason")
    func missingDependency() async throws {
        let dir = try TemporaryDirectory()
        try "int helper(void) { return 1; }\n".write(toFile: dir.file("helper.c"), atomically: true, encoding: .utf8)
        _ = try await CCompiler.compile(dir.file("helper.c"), to: dir.file("libgone.so.lib"), flags: ["-shared", "-fPIC", "-Wl,-soname,libgone.so.lib"])
        try await CCompiler.fixture("needs-gone.so", in: dir.path, defines: [])
        // Relink the fixture against the helper library, then take the library away.
        _ = try await CCompiler.compile(
            Repository.fixtures + "/fixture_plugin.c", to: dir.file("needs-gone.so"),
            flags: ["-shared", "-fPIC", dir.file("libgone.so.lib")])
        try FileManager.default.removeItem(atPath: dir.file("libgone.so.lib"))
        let error = #expect(throws: Rejection.self) { try PluginLoader().load(path: dir.file("needs-gone.so")) }
        #expect(error?.kind == .loadFailed)
        #expect(error?.reason.contains("libgone.so.lib") == true, "\(error?.reason ?? "")")
        // And what to do: which library, how to get it.
        #expect(
            error?.reason.contains("the plugin needs libgone.so.lib") == true && error?.reason.contains("LD_LIBRARY_PATH") == true,
            "\(error?.reason ?? "")")
        // The bundled plugins' libraries are named with their Debian packages.
        #expect(PluginLoader.missingLibraryHint("libnats.so.3.4: cannot open shared object file: No such file or directory").contains("apt-get install libnats3.4"))
        #expect(PluginLoader.missingLibraryHint("undefined symbol: foo").isEmpty)
    }

    @Test("a directory or a missing path is refused, not crashed on")
    func notAFile() throws {
        let dir = try TemporaryDirectory()
        #expect(throws: Rejection.self) { try PluginLoader().load(path: dir.path) }
        let missing = #expect(throws: Rejection.self) { try PluginLoader().load(path: dir.file("nope.so")) }
        #expect(missing?.kind == .unreadable)
    }

    @Test("a descriptor from a newer minor with extra fields loads, unknown bits kept")
    func newerMinorLoads() async throws {
        let dir = try TemporaryDirectory()
        let path = try await CCompiler.fixture("future.so", in: dir.path, defines: ["FIXTURE_NAME=\"future\"", "FIXTURE_NEWER_MINOR"])
        let plugin = try PluginLoader().load(path: path)
        #expect(plugin.name == "future")
        #expect(plugin.abiVersion == "1.\(SY_ABI_MINOR + 1)")
        #expect(plugin.capabilities.contains(.queue))
        #expect(plugin.capabilities.names.contains("bit-40"))
        // The host's copy ends where the host's struct ends; the plugin's extra fields were not copied.
        #expect(plugin.descriptor.pointee.struct_size == UInt32(MemoryLayout<sy_plugin_descriptor>.size))
        #expect(plugin.descriptor.pointee.drain == nil)
    }

    @Test("a plugin built against ABI 1.0 still loads; its missing 1.1 function reads as absent")
    func olderMinorLoads() async throws {
        let dir = try TemporaryDirectory()
        let path = try await CCompiler.fixture("old.so", in: dir.path, defines: ["FIXTURE_NAME=\"old\"", "FIXTURE_V1_0"])
        let plugin = try PluginLoader().load(path: path)
        #expect(plugin.abiVersion == "1.0")
        #expect(plugin.descriptor.pointee.publish_batch == nil)
        #expect(plugin.descriptor.pointee.publish != nil)
    }

    @Test("every bad file in one directory is refused and the good plugin beside them still loads")
    func badNeighboursDoNotStopGoodPlugin() async throws {
        let dir = try TemporaryDirectory()
        for fixture in Self.compiled { _ = try await CCompiler.fixture(fixture.file, in: dir.path, defines: fixture.defines) }
        _ = FileManager.default.createFile(atPath: dir.file("empty.so"), contents: Data())
        try "text".write(toFile: dir.file("text.so"), atomically: true, encoding: .utf8)
        try FileManager.default.copyItem(atPath: BuildProducts.exampleC, toPath: dir.file("libswitchyard-example-c.so"))
        let catalog = PluginLoader().discover(in: [SearchDirectory(path: dir.path, source: .commandLine)])
        #expect(catalog.plugins.map(\.name) == ["example-c"])
        // A library without the entry is not a plugin at all: skipped, listed apart, not refused.
        let notPlugins = Self.compiled.filter { $0.kind == .missingEntry }
        #expect(catalog.notPlugins.count == notPlugins.count)
        #expect(catalog.rejected.count == Self.compiled.count - notPlugins.count + 2)
        for fixture in Self.compiled where fixture.kind != .missingEntry {
            #expect(catalog.rejected.first { $0.path.hasSuffix("/" + fixture.file) }?.kind == fixture.kind, "\(fixture.file)")
        }
    }

    @Test("a shared library without the entry symbol is refused from its symbol table: none of its code runs")
    func noEntryIsNeverLoaded() async throws {
        let dir = try TemporaryDirectory()
        let marker = dir.file("constructor-ran")
        let source = dir.file("helper.c")
        try "#include <stdio.h>\n__attribute__((constructor)) static void ran(void) { FILE *f = fopen(\"\(marker)\", \"w\"); if (f) fclose(f); }\nint helper(void) { return 1; }\n"
            .write(toFile: source, atomically: true, encoding: .utf8)
        let compiled = try await CCompiler.compile(source, to: dir.file("libhelper.so"), flags: ["-shared", "-fPIC"])
        #expect(compiled.status == 0)
        let error = #expect(throws: Rejection.self) { try PluginLoader().load(path: dir.file("libhelper.so")) }
        #expect(error?.kind == .missingEntry)
        let catalog = PluginLoader().discover(in: [SearchDirectory(path: dir.path, source: .commandLine)])
        #expect(catalog.notPlugins == [dir.file("libhelper.so")])
        #expect(catalog.rejected.isEmpty)
        #expect(!FileManager.default.fileExists(atPath: marker), "the library's constructor ran: it was loaded")
    }
}
