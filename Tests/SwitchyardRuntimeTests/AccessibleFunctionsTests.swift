import Foundation
import SwitchyardTestSupport
import Testing

@testable import SwitchyardRuntime

@Suite("Finding the accessible functions of loaded images")
struct AccessibleFunctionsTests {
    /// The scan opens and closes each image it reads, and on Linux closing any descriptor of a
    /// file drops every fcntl lock the process holds on it. It once read every file mapped at
    /// offset 0, a SQLite store's `-shm` (mapped shared) among them, so a readable-targets host
    /// dropped SQLite's locks on its own stores.
    @Test("only executable, private mappings are images: a file mapped shared (a SQLite -shm) is never opened")
    func sharedMappingsAreNotImages() throws {
        let dir = try TemporaryDirectory()
        let path = dir.file("store.db-shm")
        try Data(repeating: 0, count: 32_768).write(to: URL(fileURLWithPath: path))
        let fd = open(path, O_RDWR)
        try #require(fd >= 0)
        defer { close(fd) }
        let mapped = mmap(nil, 32_768, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        try #require(mapped != MAP_FAILED)
        defer { munmap(mapped, 32_768) }
        let images = AccessibleFunctions.loadedImages().map(\.path)
        #expect(!images.contains(path), "a shared mapping was taken for an image")
        #expect(images.contains { $0.hasSuffix("switchyardPackageTests.xctest") }, "the test binary itself is an image: \(images)")
    }
}
