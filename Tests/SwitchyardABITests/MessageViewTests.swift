import CSwitchyard
import Foundation
import SwitchyardABI
import SwitchyardHost
import SwitchyardTestSupport
import Synchronization
import Testing

@testable import SwitchyardLoader

@Suite("MessageView: borrowed messages")
struct MessageViewTests {
    @Test("reads fields without copying and looks headers up by key")
    func view() throws {
        let message = Message(
            id: "id-1", channel: "c", orderingKey: "k", headers: [Header("a", "1"), Header("", "empty-key"), Header("a", "2")],
            body: [9, 8, 7], attempt: 2)
        try message.withCMessage { pointer in
            let view = try MessageView(validating: pointer)
            #expect(view.id == "id-1")
            #expect(view.orderingKey == "k")
            #expect(Array(view.body) == [9, 8, 7])
            #expect(view.header("a") == "1")
            #expect(view.header("") == "empty-key")
            #expect(view.header("missing") == nil)
            #expect(view.copy() == message)
        }
    }

    @Test("refuses a message whose pointers contradict its lengths")
    func invalid() {
        var message = sy_message()
        message.struct_size = UInt32(MemoryLayout<sy_message>.size)
        "id".withSyStr { id in
            "ch".withSyStr { channel in
                message.id = id
                message.channel = channel
                message.body = sy_bytes(data: nil, len: 10)
                let error = #expect(throws: TransportError.self) { _ = try MessageView(validating: &message) }
                #expect(error?.message.contains("NULL pointer") == true)
                message.body = sy_bytes(data: nil, len: 0)
                message.header_count = 2
                #expect(throws: TransportError.self) { _ = try MessageView(validating: &message) }
                message.header_count = 0
                message.struct_size = 8
                #expect(throws: TransportError.self) { _ = try MessageView(validating: &message) }
            }
        }
    }
}
