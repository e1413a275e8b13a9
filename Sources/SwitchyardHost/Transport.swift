import CSwitchyard
import Foundation
import Logging
import Metrics
import SwitchyardABI
import SwitchyardLoader
import SwitchyardPluginKit
import Synchronization

/// One configured transport: an instance of a loaded plugin, created with the host's services and,
/// for decorators, an inner transport.
///
/// Use ``client`` to publish, subscribe and settle. Call ``close()`` once the instance is no longer
/// needed; it destroys the plugin instance, then its inner transport.
public final class Transport: Sendable {
    /// The transport's name in config.
    public let name: String
    /// The plugin it is an instance of.
    public let plugin: LoadedPlugin
    /// Calls the instance through the plugin's function table.
    public let client: TransportClient
    /// The decorated transport, for decorators.
    public let inner: Transport?

    /// This transport and the transports it wraps, outermost first (`retry → queue`).
    public var chain: [Transport] {
        var links: [Transport] = []
        var current: Transport? = self
        while let link = current {
            links.append(link)
            current = link.inner
        }
        return links
    }

    /// What this instance keeps as configured: its plugin's capabilities, less those its config
    /// turned off (ABI 1.8 `instance_capabilities`: the bundled `queue` without `path` is not
    /// `durable`); all of them for a plugin that does not say.
    public var capabilities: Capabilities { client.instanceCapabilities }

    /// What the chain can do together, as configured: a decorator's capabilities and those of every
    /// transport it wraps (a `retry` over a durable `queue` retries and is durable).
    public var chainCapabilities: Capabilities {
        chain.reduce(into: Capabilities()) { $0.formUnion($1.capabilities) }
    }

    /// The chain's plugin names, for messages: `retry → queue`.
    public var chainDescription: String { chain.map(\.plugin.name).joined(separator: " → ") }
    private let services: HostServices
    private let closed = Atomic<Bool>(false)
    /// The proxy, when the plugin runs in a child process.
    private let isolated: ProcessIsolatedTransport?
    /// The `sy_transport_ref` a decorator was given as its inner transport: the header lets it
    /// keep the pointer until its `destroy` returns, so it lives as long as this transport.
    private let innerReference: InnerReference?

    /// Memory of its own for a decorator's `sy_transport_ref`, freed when the transport goes.
    private final class InnerReference: @unchecked Sendable {
        // @unchecked: written once before `create`, only read after.
        let pointer: UnsafeMutablePointer<sy_transport_ref>
        init(_ value: sy_transport_ref) {
            pointer = .allocate(capacity: 1)
            pointer.initialize(to: value)
        }
        deinit { pointer.deallocate() }
    }

    /// Whether the plugin runs in a child process (`isolation: process`): every call crosses a
    /// socket, and may wait for a child that is restarting.
    public var isProcessIsolated: Bool { isolated != nil }

    /// The pid of the child process running the plugin (`isolation: process`) right now; nil
    /// for an in-process transport or while the child is being restarted.
    public var pluginProcessID: Int32? { isolated?.currentProcessID }

    /// Calls into a plugin that take this long or longer are logged as warnings by default
    /// (`plugins.slow_call_warning` in config): every ABI function but `drain` must return promptly.
    public static let defaultSlowCallWarningNanos: Int64 = 1_000_000_000

    /// The watch that logs slow calls into `plugin` as `name`; nil when `thresholdNanos` is 0.
    static func slowCallWatch(name: String, plugin: String, thresholdNanos: Int64, logger: Logger) -> SlowCallWatch? {
        guard thresholdNanos > 0 else { return nil }
        return SlowCallWatch(thresholdNanos: thresholdNanos) { function, took in
            logger.warning(
                "a call into a plugin took \(took / 1_000_000) ms; the ABI asks it to return promptly (it holds up the caller's thread)",
                metadata: [
                    "transport": "\(name)", "plugin": "\(plugin)", "function": "\(function)",
                    "threshold_ms": "\(thresholdNanos / 1_000_000)",
                ])
        }
    }

    /// Creates an instance of `plugin` named `name` with its JSON `config`.
    ///
    /// Throws `.config` when the plugin wraps an inner transport and none is given, or the other
    /// way round, and whatever the plugin's `create` reports (a config error names the key).
    /// Calls into the instance taking `slowCallWarningNanos` or longer are logged (0: never).
    /// The plugin's metrics (`switchyard_transport_*`, labelled `transport`) go to `metrics`, or
    /// to the bootstrapped swift-metrics backend when nil.
    public convenience init(
        name: String, plugin: LoadedPlugin, configJSON: String = "{}", inner: Transport? = nil,
        slowCallWarningNanos: Int64 = Transport.defaultSlowCallWarningNanos,
        logger: Logger = Logger(label: "switchyard.transport"), metrics: (any MetricsFactory)? = nil
    ) throws(TransportError) {
        try self.init(
            name: name, plugin: plugin, configJSON: configJSON, inner: inner, slowCallWarningNanos: slowCallWarningNanos,
            logger: logger, metrics: metrics, forwardingMetrics: nil)
    }

    /// The same, with the plugin's metrics sent to `forwardingMetrics` from its creation on (a
    /// plugin host child hands them to its parent; a plugin may report during `create`).
    init(
        name: String, plugin: LoadedPlugin, configJSON: String, inner: Transport?, slowCallWarningNanos: Int64,
        logger: Logger, metrics: (any MetricsFactory)?, forwardingMetrics: (@Sendable (Int32, String, Double) -> Void)?
    ) throws(TransportError) {
        let wraps = plugin.capabilities.contains(.wrapsInner)
        if wraps && inner == nil {
            // `inner` one level too deep, inside the plugin's config, was read as missing.
            let misplaced = ((try? JSONSerialization.jsonObject(with: Data(configJSON.utf8))) as? [String: Any])?["inner"] != nil
            throw TransportError(
                .config,
                misplaced
                    ? "transport '\(name)': 'inner' goes beside 'plugin:', not inside 'config:' (e.g. \(name): { plugin: \(plugin.name), inner: work })"
                    : "transport '\(name)': plugin '\(plugin.name)' decorates another transport; set 'inner' (beside 'plugin:') to the transport it wraps",
                transport: name)
        }
        if !wraps && inner != nil {
            throw TransportError(.config, "transport '\(name)': plugin '\(plugin.name)' does not wrap an inner transport; remove 'inner'", transport: name)
        }
        let services = HostServices(transportName: name, logger: logger, metrics: metrics)
        if let forwardingMetrics { services.forwardMetrics(forwardingMetrics) }
        var instance: UnsafeMutableRawPointer?
        let create = plugin.descriptor.pointee.create!
        let innerReference = inner.map { InnerReference(sy_transport_ref(plugin: $0.client.descriptor, instance: $0.client.instance)) }
        try name.withSyStr { (nameSlice) throws(TransportError) in
            try configJSON.withSyStr { (configSlice) throws(TransportError) in
                // `inner` holds the inner's *client* descriptor: for an isolated inner that is the
                // proxy's table, which goes with the proxy's instance pointer. The real plugin's
                // table must never be paired with it (it would run the isolated plugin's code
                // here, on a pointer it never created).
                var args = sy_create_args(
                    struct_size: UInt32(MemoryLayout<sy_create_args>.size), reserved: 0,
                    instance_name: nameSlice, config_json: configSlice, host: services.table,
                    inner: innerReference.map { UnsafePointer($0.pointer) })
                try TransportError.check { create(&args, &instance, $0) }
            }
        }
        guard let instance else {
            throw TransportError(.internalError, "transport '\(name)': plugin '\(plugin.name)' returned SY_OK from create without an instance", transport: name)
        }
        self.name = name
        self.plugin = plugin
        self.inner = inner
        self.services = services
        self.isolated = nil
        self.innerReference = innerReference
        self.client = TransportClient(
            descriptor: plugin.descriptor, instance: instance,
            watch: Self.slowCallWatch(name: name, plugin: plugin.name, thresholdNanos: slowCallWarningNanos, logger: logger),
            inner: inner?.client)
    }

    /// Creates an instance of `plugin` in a child process (`switchyard plugin-host`) and a proxy
    /// for it here: the plugin's code never runs in this process beyond its entry function, so a
    /// crash or hang in it costs a restart of the child, not the host. Decorators cannot be
    /// isolated (their inner transport lives in this process).
    public init(
        name: String, plugin: LoadedPlugin, configJSON: String = "{}", isolation: ProcessIsolation,
        slowCallWarningNanos: Int64 = Transport.defaultSlowCallWarningNanos,
        logger: Logger = Logger(label: "switchyard.transport"), metrics: (any MetricsFactory)? = nil
    ) throws(TransportError) {
        if plugin.capabilities.contains(.wrapsInner) {
            throw TransportError(
                .config,
                "transport '\(name)': plugin '\(plugin.name)' decorates another transport, and decorators cannot run with isolation: process (isolate the transport it wraps instead)"
            )
        }
        let services = HostServices(transportName: name, logger: logger, metrics: metrics)
        let proxy = try ProcessIsolatedTransport(
            name: name, plugin: plugin, configJSON: configJSON, options: isolation, slowCallWarningNanos: slowCallWarningNanos, logger: logger,
            onDeadLetter: { [weak services] message, reason in services?.reportDeadLetter(message, reason: reason) },
            onMetric: { [weak services] kind, name, value in services?.record(kind: kind, name: name, value: value) })
        let adapter = PluginExport.inProcess(
            proxy,
            info: PluginInfo(
                name: plugin.name, version: plugin.version.description, description: plugin.summary, capabilities: plugin.capabilities,
                // Offered when the child's plugin has it: the proxy hands it on as one request.
                atomicPublishAndSettle: plugin.descriptor.pointee.publish_and_settle != nil,
                extendsLeases: plugin.descriptor.pointee.extend != nil))
        self.name = name
        self.plugin = plugin
        self.inner = nil
        self.services = services
        self.isolated = proxy
        self.innerReference = nil
        self.client = TransportClient(
            descriptor: adapter.descriptor, instance: adapter.instance,
            watch: Self.slowCallWatch(name: name, plugin: plugin.name, thresholdNanos: slowCallWarningNanos, logger: logger))
    }

    /// A transport over an object of this process, presented through the ABI as an instance of
    /// `plugin` (which names it; its code is not called): for tests that need a transport whose
    /// every answer they choose.
    package init(name: String, plugin: LoadedPlugin, presenting object: any TransportInstance, info: PluginInfo) {
        let adapter = PluginExport.inProcess(object, info: info)
        self.name = name
        self.plugin = plugin
        self.inner = nil
        self.services = HostServices(transportName: name, logger: Logger(label: "switchyard.transport"), metrics: nil)
        self.isolated = nil
        self.innerReference = nil
        self.client = TransportClient(descriptor: adapter.descriptor, instance: adapter.instance)
    }

    /// Calls `observer` for every message this instance reports it moved to a dead-letter
    /// channel (ABI 1.2's `dead_lettered`; a plugin in a child process reports through its
    /// socket). Plugins built for an older ABI report nothing. Observers run on the plugin's
    /// thread and must return promptly; they may publish.
    public func observeDeadLetters(_ observer: @escaping DeadLetterObserver) {
        services.observeDeadLetters(observer)
    }

    /// Destroys the plugin instance once the calls into it that are running have returned (calls
    /// made after `close` began fail with `.closed`); one still running after 10 s leaves the
    /// instance undestroyed, logged as an error. Calling it again does nothing. An inner transport is not closed here (several decorators may share it): its
    /// owner closes it after its decorators (``TransportSet`` does), or it closes itself when the
    /// last reference to it goes away.
    public func close() {
        guard !closed.exchange(true, ordering: .acquiringAndReleasing) else { return }
        // A child process's proxy stops restarting and waiting for its child now: calls waiting
        // for a restart fail at once instead of outliving the wait below.
        isolated?.beginClosing()
        let wait: Int64 = 10_000_000_000
        guard client.destroy(waitNanos: wait) else {
            // A call into the plugin still running: destroying the instance would free memory
            // under it. It stays, with what it may still call (the host's services, a
            // decorator's inner transport and reference), for the rest of the process.
            // (Not `self`: close runs from deinit too.)
            _ = Unmanaged.passRetained(services)
            if let innerReference { _ = Unmanaged.passRetained(innerReference) }
            inner?.abandon()
            services.logger.error(
                "transport not destroyed: a call into its plugin was still running \(wait / 1_000_000_000) s after close began; the instance and what it holds (files, locks, connections) stay until this process exits",
                metadata: ["plugin": "\(plugin.name)"])
            return
        }
        withExtendedLifetime((services, innerReference)) {}
    }

    /// Leaves this transport, and those it wraps, undestroyed for the rest of the process: a
    /// decorator over it could not be destroyed, and may still be calling into it. (Called on
    /// an inner transport, which the decorator holds: never on one being deinitialised.)
    private func abandon() {
        guard !closed.exchange(true, ordering: .acquiringAndReleasing) else { return }
        _ = Unmanaged.passRetained(self)
        inner?.abandon()
    }

    deinit { close() }
}
