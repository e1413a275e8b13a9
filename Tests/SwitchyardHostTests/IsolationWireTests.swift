import Foundation
import SwitchyardABI
import Synchronization
import Testing

@testable import SwitchyardHost

#if canImport(Glibc)
    import Glibc
#endif

/// The frames `isolation: process` exchanges, read through ``FrameReader``'s buffer: however the
/// bytes arrive (a byte at a time, many frames in one read, a frame larger than the buffer), each
/// frame comes out whole and in order, and a stream that ends part-way is an error.
@Suite("Isolation wire: frames through the reader's buffer")
struct IsolationWireTests {
    /// A connected socket pair; each end closed once (tests run in parallel: closing a number
    /// twice could close another test's socket that reused it).
    final class SocketPair: Sendable {
        let reading: Int32
        private let writing: Guarded<Int32>
        init() throws {
            var pair: [Int32] = [-1, -1]
            #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &pair) == 0)
            reading = pair[0]
            writing = Guarded(pair[1])
        }
        func write(_ bytes: [UInt8]) throws {
            try writing.withLock { fd throws(TransportError) in try FrameIO.writeAll(bytes, to: fd) }
        }
        func closeWriting() {
            writing.withLock { fd in
                if fd >= 0 { close(fd) }
                fd = -1
            }
        }
        deinit {
            close(reading)
            closeWriting()
        }
    }

    static func frame(_ kind: WireKind, _ sequence: UInt64, payloadBytes: Int) -> Frame {
        Frame(kind: kind, sequence: sequence, payload: (0..<payloadBytes).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(sequence)) })
    }

    static func bytes(of frames: [Frame]) -> [UInt8] {
        var bytes: [UInt8] = []
        for frame in frames { FrameIO.append(frame, to: &bytes) }
        return bytes
    }

    static func expectSame(_ read: Frame?, _ sent: Frame) {
        #expect(read?.kind == sent.kind)
        #expect(read?.sequence == sent.sequence)
        #expect(read?.payload == sent.payload)
    }

    @Test("many frames sent in one write come out one by one, in order; end of stream between frames is nil")
    func manyInOneWrite() throws {
        let socket = try SocketPair()
        let frames = (1...50).map { Self.frame($0 % 2 == 0 ? .settle : .publish, UInt64($0), payloadBytes: $0 * 7) }
        try socket.write(Self.bytes(of: frames))
        socket.closeWriting()
        let reader = FrameReader(fd: socket.reading)
        for sent in frames { Self.expectSame(try reader.next(), sent) }
        #expect(try reader.next() == nil)
    }

    @Test("a frame written a byte at a time, from another thread, is read whole")
    func byteAtATime() throws {
        let socket = try SocketPair()
        let sent = [Self.frame(.deliver, 7, payloadBytes: 300), Self.frame(.reply, 8, payloadBytes: 0)]
        let bytes = Self.bytes(of: sent)
        let writer = Thread {
            for byte in bytes {
                try? socket.write([byte])
                usleep(20)
            }
        }
        writer.start()
        let reader = FrameReader(fd: socket.reading, capacity: 16)
        for frame in sent { Self.expectSame(try reader.next(), frame) }
    }

    @Test("a frame larger than the buffer is read whole, and the frames after it too")
    func largerThanTheBuffer() throws {
        let socket = try SocketPair()
        let sent = [
            Self.frame(.publish, 1, payloadBytes: 10), Self.frame(.publish, 2, payloadBytes: 1 << 20),
            Self.frame(.settle, 3, payloadBytes: 5), Self.frame(.publish, 4, payloadBytes: 200_000),
        ]
        let bytes = Self.bytes(of: sent)
        let writer = Thread { try? socket.write(bytes) }  // more than the socket holds: written while read
        writer.start()
        let reader = FrameReader(fd: socket.reading, capacity: 4096)
        for frame in sent { Self.expectSame(try reader.next(), frame) }
    }

    @Test("a stream that ends in the middle of a frame, or with a corrupt length or kind, is an error naming it")
    func truncatedOrCorrupt() throws {
        let whole = Self.bytes(of: [Self.frame(.publish, 1, payloadBytes: 40)])
        let truncated = try SocketPair()
        try truncated.write(Array(whole.prefix(20)))
        truncated.closeWriting()
        let truncation = #expect(throws: TransportError.self) { try FrameReader(fd: truncated.reading).next() }
        #expect(truncation?.message.contains("closed in the middle of a frame") == true)
        let inHeader = try SocketPair()
        try inHeader.write([20, 0])
        inHeader.closeWriting()
        let headerTruncation = #expect(throws: TransportError.self) { try FrameReader(fd: inHeader.reading).next() }
        #expect(headerTruncation?.message.contains("closed in the middle of a frame") == true)

        let shortLength = try SocketPair()
        try shortLength.write([3, 0, 0, 0, 1, 2, 3])
        let lengthError = #expect(throws: TransportError.self) { try FrameReader(fd: shortLength.reading).next() }
        #expect(lengthError?.message.contains("length 3") == true)
        // A length past the largest frame (256 MiB) is refused from its four bytes alone: nothing
        // that size is read or allocated.
        let hugeLength = try SocketPair()
        try hugeLength.write(withUnsafeBytes(of: UInt32(maxFrameBytes + 1).littleEndian, Array.init) + [1, 2, 3])
        let hugeError = #expect(throws: TransportError.self) { try FrameReader(fd: hugeLength.reading).next() }
        #expect(hugeError?.message.contains("length \(maxFrameBytes + 1)") == true, "\(String(describing: hugeError))")

        var unknownKind = whole
        unknownKind[4] = 0xEE
        let badKind = try SocketPair()
        try badKind.write(unknownKind)
        let kindError = #expect(throws: TransportError.self) { try FrameReader(fd: badKind.reading).next() }
        #expect(kindError?.message.contains("unknown kind 238") == true)
    }
}

@Suite("Isolation: the child's settlement order")
struct SettlementOrderTests {
    @Test("an unsubscribe waits for the settlements read before it, not for later ones, nor for publish_and_settle")
    func unsubscribeWaitsForEarlierSettlements() async throws {
        // Patience far beyond the test: a task starved on a loaded machine (once more than 10 s
        // in a full run) must not see the patience run out and read it as going ahead.
        let order = SettlementOrder(patience: 600)
        guard case .settlement(let first) = order.read(.settle) else { Issue.record("a settle is a settlement"); return }
        guard case .other = order.read(.publishAndSettle) else { Issue.record("publish_and_settle may wait for room: not ordered"); return }
        guard case .unsubscribe(let mark) = order.read(.unsubscribe) else { Issue.record("an unsubscribe is placed"); return }
        guard case .settlement(let later) = order.read(.settleBatch) else { Issue.record("a settle_batch is a settlement"); return }
        let waited = Atomic<Bool>(false)
        let unsubscribed = Thread {
            order.awaitServed(before: mark)
            waited.store(true, ordering: .releasing)
        }
        unsubscribed.start()
        try await Task.sleep(for: .milliseconds(100))
        let early = waited.load(ordering: .acquiring)
        #expect(!early, "went ahead of the settlement read before it")
        order.served(first)
        var done = false
        for _ in 0..<500 where !done {
            try await Task.sleep(for: .milliseconds(10))
            done = waited.load(ordering: .acquiring)
        }
        #expect(done, "still waiting once the earlier settlement was served")
        order.served(later)
    }

    @Test("past its patience an unsubscribe goes ahead, and says so")
    func patienceRunsOut() {
        let order = SettlementOrder(patience: 0.05)
        _ = order.read(.settle)
        guard case .unsubscribe(let mark) = order.read(.unsubscribe) else { Issue.record("an unsubscribe is placed"); return }
        #expect(!order.awaitServed(before: mark))
    }
}
