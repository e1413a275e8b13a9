import CSwitchyard
import Foundation
import SwitchyardTestSupport
import Testing

@testable import SwitchyardLoader

@Suite("Loader trust checks")
struct LoaderTrustTests {
    @Test("a world-writable plugin file is refused before it is loaded")
    func worldWritableFile() async throws {
        let dir = try TemporaryDirectory()
        let path = try await CCompiler.fixture("open.so", in: dir.path, defines: ["FIXTURE_NAME=\"open\""])
        chmod(path, 0o666)
        let error = #expect(throws: Rejection.self) { try PluginLoader().load(path: path) }
        #expect(error?.kind == .untrusted)
        #expect(error?.reason.contains("world-writable") == true)
    }

    @Test("a plugin in a world-writable directory is refused, and so is the directory in discovery")
    func worldWritableDirectory() async throws {
        let dir = try TemporaryDirectory()
        let path = try await CCompiler.fixture("inside.so", in: dir.path, defines: ["FIXTURE_NAME=\"inside\""])
        chmod(dir.path, 0o777)
        let error = #expect(throws: Rejection.self) { try PluginLoader().load(path: path) }
        #expect(error?.kind == .untrusted)
        #expect(error?.reason.contains("its directory") == true)
        #expect(error?.reason.contains("chmod o-w \(dir.path),") == true, "\(error?.reason ?? "")")
        // A sticky one, as /tmp is: world-writable on purpose, so the plugin is to move.
        chmod(dir.path, 0o1777)
        let shared = #expect(throws: Rejection.self) { try PluginLoader().load(path: path) }
        #expect(shared?.reason.contains("a shared directory such as /tmp: move the plugin") == true)
        #expect(shared?.reason.contains("chmod") == false)
        chmod(dir.path, 0o777)
        let catalog = PluginLoader().discover(in: [SearchDirectory(path: dir.path, source: .commandLine)])
        #expect(catalog.plugins.isEmpty)
        #expect(catalog.rejected.map(\.path) == [dir.path])
        chmod(dir.path, 0o700)
    }

    @Test("a plugin owned by another non-root user is refused", .enabled(if: geteuid() == 0, "needs root to chown"))
    func otherOwner() async throws {
        let dir = try TemporaryDirectory()
        let path = try await CCompiler.fixture("theirs.so", in: dir.path, defines: ["FIXTURE_NAME=\"theirs\""])
        chown(path, 65534, 65534)
        let error = #expect(throws: Rejection.self) { try PluginLoader().load(path: path) }
        #expect(error?.kind == .untrusted)
        #expect(error?.reason.contains("owned by uid 65534") == true)
    }

    @Test("a sha256 pin that matches loads; one that does not is refused")
    func pins() async throws {
        let dir = try TemporaryDirectory()
        let path = try await CCompiler.fixture("pinned.so", in: dir.path, defines: ["FIXTURE_NAME=\"pinned\""])
        let hash = try PluginLoader.sha256(ofFileAt: path)
        #expect(hash.count == 64)
        let good = try PluginLoader(trust: TrustPolicy(pins: ["pinned": hash.uppercased()])).load(path: path)
        #expect(good.sha256 == hash)
        let wrong = String(repeating: "0", count: 64)
        let error = #expect(throws: Rejection.self) { try PluginLoader(trust: TrustPolicy(pins: ["pinned": wrong])).load(path: path) }
        #expect(error?.kind == .pinMismatch)
        #expect(error?.reason.contains("does not match the pin for 'pinned'") == true)
    }

    @Test("with require_pins, an unpinned file is refused before it is loaded")
    func requirePins() async throws {
        let dir = try TemporaryDirectory()
        // This fixture would crash the process if it were loaded: refusing it proves the check
        // comes before dlopen and the entry call.
        let path = try await CCompiler.fixture("crashes.so", in: dir.path, defines: ["FIXTURE_CRASH_IN_ENTRY"])
        let error = #expect(throws: Rejection.self) { try PluginLoader(trust: TrustPolicy(requirePins: true)).load(path: path) }
        #expect(error?.kind == .pinMismatch)
        #expect(error?.reason.contains("is not pinned") == true)
    }
}
