import Foundation
import SwitchyardABI
import SwitchyardHost
import SwitchyardTestSupport

/// A config file in `directory` naming one durable `queue` transport, `work`, whose SQLite file
/// already holds `messages`; returns the config's path. For commands that open a config's
/// transports from a process of their own.
func durableQueueConfig(in directory: TemporaryDirectory, holding messages: [Message]) async throws -> String {
    let database = directory.file("work.db")
    let config = directory.file("switchyard.yaml")
    try "transports:\n  work: { plugin: queue, config: { path: \(database) } }\nroutes: {}\n".write(toFile: config, atomically: true, encoding: .utf8)
    try await offPool {
        let transport = try Transport(name: "work", plugin: try BuildProducts.plugin("queue"), configJSON: #"{"path": "\#(database)"}"#)
        defer { transport.close() }
        for message in messages { try transport.client.publish(message) }
    }
    return config
}
