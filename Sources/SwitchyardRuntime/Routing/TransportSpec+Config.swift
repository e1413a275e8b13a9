import SwitchyardConfig
import SwitchyardHost

extension TransportSpec {
    /// The spec for a `transports:` entry of a config file, isolation included.
    public init(_ entry: SwitchyardConfig.TransportEntry) {
        self.init(
            name: entry.name, plugin: entry.plugin, inner: entry.inner, configJSON: entry.configJSON,
            isolation: entry.isolation.map(ProcessIsolation.init))
    }
}

extension ProcessIsolation {
    /// The host's isolation options for a config entry; unset fields keep the defaults.
    public init(_ config: SwitchyardConfig.Isolation) {
        self.init()
        if let value = config.callTimeoutNanos { callTimeoutNanos = value }
        if let value = config.restartBackoffNanos { restartBackoffNanos = value }
        if let value = config.maxRestartBackoffNanos { maxRestartBackoffNanos = value }
        hostExecutable = config.host
    }
}
