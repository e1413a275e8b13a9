import CSwitchyard
import Foundation
import SwitchyardTestSupport
import Testing

@testable import SwitchyardLoader

@Suite("Loader discovery order and duplicate names")
struct LoaderDiscoveryTests {
    @Test("the first plugin of a name wins; the later one is refused naming both paths")
    func duplicateNames() async throws {
        let first = try TemporaryDirectory()
        let second = try TemporaryDirectory()
        let a = try await CCompiler.fixture("dup-a.so", in: first.path, defines: ["FIXTURE_NAME=\"dup\""])
        let b = try await CCompiler.fixture("dup-b.so", in: second.path, defines: ["FIXTURE_NAME=\"dup\"", "FIXTURE_VERSION=\"2.0.0\""])
        let catalog = PluginLoader().discover(in: [
            SearchDirectory(path: first.path, source: .commandLine), SearchDirectory(path: second.path, source: .environment),
        ])
        #expect(catalog.plugins.map(\.path) == [a])
        let rejection = try #require(catalog.rejected.first)
        #expect(rejection.kind == .duplicateName)
        #expect(rejection.path == b)
        #expect(rejection.reason.contains(a))
    }

    @Test("two files with the same name in one directory: the first by file name wins")
    func duplicateInOneDirectory() async throws {
        let dir = try TemporaryDirectory()
        _ = try await CCompiler.fixture("a.so", in: dir.path, defines: ["FIXTURE_NAME=\"same\""])
        _ = try await CCompiler.fixture("b.so", in: dir.path, defines: ["FIXTURE_NAME=\"same\""])
        let catalog = PluginLoader().discover(in: [SearchDirectory(path: dir.path, source: .commandLine)])
        #expect(catalog.plugins.map(\.path) == [dir.file("a.so")])
        #expect(catalog.rejected.map(\.path) == [dir.file("b.so")])
    }

    @Test("search path order: command line, environment, config, ./plugins, executable directory and its install prefix, system-wide")
    func searchPathOrder() throws {
        let dirs = try (0..<6).map { _ in try TemporaryDirectory() }
        let work = dirs[3].path
        try FileManager.default.createDirectory(atPath: work + "/plugins", withIntermediateDirectories: true)
        let path = SearchDirectory.searchPath(
            commandLine: [dirs[0].path], environment: ["SWITCHYARD_PLUGINS_PATH": "\(dirs[1].path):\(dirs[0].path)"],
            configDirectory: dirs[2].path, workingDirectory: work, executableDirectory: dirs[4].path + "/bin", systemDirectories: [dirs[5].path])
        #expect(path.map(\.source) == [.commandLine, .environment, .config, .workingDirectory, .executableDirectory, .executableDirectory, .system])
        #expect(
            path.map(\.path) == [
                dirs[0].path, dirs[1].path, dirs[2].path, work + "/plugins", dirs[4].path + "/bin", dirs[4].path + "/lib/switchyard/plugins", dirs[5].path,
            ])
        // By default the system-wide directories come last.
        #expect(SearchDirectory.searchPath().suffix(2).map(\.path) == ["/usr/local/lib/switchyard/plugins", "/usr/lib/switchyard/plugins"])
    }

    @Test("a directory named by hand that is missing or a file is warned of and marked; a default one that is missing is not")
    func unsearchableNamedDirectories() throws {
        let dir = try TemporaryDirectory()
        let file = dir.file("notes.txt")
        try "not a directory".write(toFile: file, atomically: true, encoding: .utf8)
        let catalog = PluginLoader().discover(in: [
            SearchDirectory(path: dir.file("plugns"), source: .commandLine),
            SearchDirectory(path: file, source: .config),
            SearchDirectory(path: dir.path, source: .environment),
            SearchDirectory(path: dir.file("plugins"), source: .workingDirectory),
        ])
        #expect(catalog.unsearchableNamedDirectories.map(\.path) == [dir.file("plugns"), file])
        #expect(
            catalog.unsearchableDirectoryWarnings == [
                "plugin directory \(dir.file("plugns")), named by --plugins-dir, is skipped: no such directory; check the path",
                "plugin directory \(file), named by config, is skipped: not a directory; check the path",
            ])
        #expect(
            catalog.searched.map(\.description) == [
                "\(dir.file("plugns")) (--plugins-dir: no such directory)", "\(file) (config: not a directory)", "\(dir.path) (SWITCHYARD_PLUGINS_PATH)",
                "\(dir.file("plugins")) (./plugins)",
            ])
    }

    @Test("a signal handler a plugin installs as it loads stays installed; the others are as they were")
    func pluginSignalHandlerKept() async throws {
        let dir = try TemporaryDirectory()
        let path = try await CCompiler.fixture("handler.so", in: dir.path, defines: ["FIXTURE_INSTALLS_SIGNAL_HANDLER", "FIXTURE_NAME=\"handler\""])
        func current(_ signal: Int32) -> UnsafeRawPointer? {
            var action = sigaction()
            sigaction(signal, nil, &action)
            return unsafeBitCast(action.__sigaction_handler.sa_handler, to: UnsafeRawPointer?.self)
        }
        // Read between loads: other tests load plugins at the same time, and during a load the
        // loader's own handler is in place.
        let busBefore = LoadCrashHint.betweenLoads { current(SIGBUS) }
        // The loader watches the load for crashes with handlers of its own, and gives back only
        // those it still holds afterwards: the plugin's SIGSEGV handler must survive that.
        _ = try PluginLoader().load(path: path)
        let handle = try #require(dlopen(path, RTLD_NOW | RTLD_NOLOAD))
        let installed = try #require(dlsym(handle, "fixture_segv_handler"))
        let (segvAfter, busAfter) = LoadCrashHint.betweenLoads { (current(SIGSEGV), current(SIGBUS)) }
        #expect(segvAfter == UnsafeRawPointer(installed), "the plugin's SIGSEGV handler was replaced")
        #expect(busAfter == busBefore, "SIGBUS's handler is not what it was before the load")
    }

    @Test("a plugin earlier on the search path shadows a bundled one of the same name")
    func earlierDirectoryWins() async throws {
        let dir = try TemporaryDirectory()
        _ = try await CCompiler.fixture("my-example.so", in: dir.path, defines: ["FIXTURE_NAME=\"example-c\"", "FIXTURE_VERSION=\"9.0.0\""])
        let catalog = PluginLoader().discover(in: [
            SearchDirectory(path: dir.path, source: .commandLine),
            SearchDirectory(path: BuildProducts.directory, source: .executableDirectory),
        ])
        #expect(catalog.plugin(named: "example-c")?.version.major == 9)
        #expect(catalog.plugin(named: "example-swift") != nil)
        #expect(catalog.rejected.contains { $0.kind == .duplicateName && $0.path.hasSuffix("libswitchyard-example-c.so") })
    }

    @Test("the bundled plugins are found next to the executable")
    func bundledPlugins() {
        let catalog = PluginLoader().discover(in: [SearchDirectory(path: BuildProducts.directory, source: .executableDirectory)])
        #expect(Set(catalog.plugins.map(\.name)).isSuperset(of: ["example-c", "example-swift"]))
        #expect(catalog.rejected.isEmpty, "\(catalog.rejected)")
    }
}
