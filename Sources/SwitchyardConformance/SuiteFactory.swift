import Foundation
import SwitchyardABI
import SwitchyardHost
import SwitchyardLoader
import Synchronization

extension ConformanceSuite {
    /// The usual way to test a plugin: instances made from `configJSON`; in durable mode each
    /// check gets its own database file under `durableDirectory` (config key `path`), reopened by
    /// the survives-restart check; decorators get a fresh instance of `inner` each time.
    ///
    /// Plugins whose state lives in a server (a broker) rather than a file name an
    /// `isolationKey` instead: each check's instance gets that key set to a name of its own
    /// (`cf<run>-<n>`, kept on reopen), and the durable checks run.
    ///
    /// With `processIsolation` every instance runs in a child process (`isolation: process`),
    /// which checks that the isolation keeps the ABI's semantics for this plugin; for decorators
    /// (which cannot be isolated) the inner transport runs in the child instead.
    public static func forPlugin(
        _ plugin: LoadedPlugin, inner: LoadedPlugin? = nil, configJSON: String = "{}",
        durableDirectory: String? = nil, isolationKey: String? = nil,
        processIsolation: ProcessIsolation? = nil
    ) -> ConformanceSuite {
        let counter = Atomic<Int>(0)
        let run = String(UInt32.random(in: 0...UInt32.max), radix: 36)
        var capabilities = plugin.capabilities
        if let inner { capabilities = capabilities.union(inner.capabilities).subtracting(.wrapsInner) }
        let durable = (durableDirectory != nil || isolationKey != nil) && capabilities.contains(.durable)
        var keysSetByKit: [String: String] = [:]
        if let isolationKey { keysSetByKit[isolationKey] = "for --isolation-key \(isolationKey): a plugin tested that way takes it — a name of its own for each instance's store" }
        if durableDirectory != nil && plugin.capabilities.contains(.durable) {
            keysSetByKit["path"] =
                "for --durable: a plugin tested that way takes it — a file path for its store; a plugin whose state lives in a server (nats, postgres, rabbitmq) is tested durable with --isolation-key KEY instead (stream, schema, prefix)"
        }
        return ConformanceSuite(plugin: plugin, capabilities: capabilities, durable: durable, keysSetByKit: keysSetByKit) { reopen in
            let number = reopen ? counter.load(ordering: .relaxed) : counter.add(1, ordering: .relaxed).newValue
            var config = configJSON
            if let isolationKey { config = withKey(config, isolationKey, "cf\(run)-\(number)") }
            if let durableDirectory, plugin.capabilities.contains(.durable) {
                config = withKey(config, "path", "\(durableDirectory)/\(plugin.name)-\(number).db")
            }
            var innerTransport: Transport?
            if let inner {
                var innerConfig = "{}"
                if let durableDirectory, inner.capabilities.contains(.durable) {
                    innerConfig = withKey(innerConfig, "path", "\(durableDirectory)/\(inner.name)-inner-\(number).db")
                }
                innerTransport =
                    if let processIsolation {
                        try Transport(name: "conformance-inner", plugin: inner, configJSON: innerConfig, isolation: processIsolation)
                    } else {
                        try Transport(name: "conformance-inner", plugin: inner, configJSON: innerConfig)
                    }
            }
            if let processIsolation, inner == nil {
                return try Transport(name: "conformance", plugin: plugin, configJSON: config, isolation: processIsolation)
            }
            return try Transport(name: "conformance", plugin: plugin, configJSON: config, inner: innerTransport)
        }
    }

    /// `json` (an object) with `key` set to the string `value`.
    static func withKey(_ json: String, _ key: String, _ value: String) -> String {
        var object = (try? JSONSerialization.jsonObject(with: Data(json.utf8))) as? [String: Any] ?? [:]
        object[key] = value
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data("{}".utf8)
        return String(decoding: data, as: UTF8.self)
    }
}
