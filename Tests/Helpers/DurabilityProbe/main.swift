// switchyard-durability-probe: a child process for the durability tests. It loads the real queue
// plugin from its own directory, opens a durable instance on the given file, publishes `count`
// messages one at a time and prints "acked <id>" (flushed) after each publish returns. The tests
// kill it with SIGKILL at a random moment and check that every acknowledged message survived.
import Foundation
import SwitchyardABI
import SwitchyardHost
import SwitchyardLoader

let arguments = CommandLine.arguments
guard arguments.count >= 4, let count = Int(arguments[3]) else {
    FileHandle.standardError.write(Data("usage: switchyard-durability-probe PLUGIN_DIR DB_PATH COUNT [PREFIX]\n".utf8))
    exit(2)
}
let prefix = arguments.count > 4 ? arguments[4] : "msg"
do {
    let catalog = PluginLoader().discover(in: [SearchDirectory(path: arguments[1], source: .commandLine)])
    guard let plugin = catalog.plugin(named: "queue") else { throw TransportError(.notFound, "no queue plugin in \(arguments[1])") }
    let transport = try Transport(name: "probe", plugin: plugin, configJSON: "{\"path\": \"\(arguments[2])\"}")
    for index in 0..<count {
        try transport.client.publish(Message(id: "\(prefix)-\(index)", channel: "durable", body: Array("payload \(index)".utf8)))
        print("acked \(prefix)-\(index)")
        fflush(nil)  // every acknowledgement reaches the test before the next publish
    }
    transport.close()
} catch {
    FileHandle.standardError.write(Data("probe failed: \(error)\n".utf8))
    exit(1)
}
