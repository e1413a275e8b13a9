// swift-tools-version: 6.1
// Switchyard: typed method calls routed through transport plugins loaded behind a stable C ABI.
//
// Layout (docs/architecture.md):
//   SDK/       the plugin contract: the C header (CSwitchyard), the Swift layer over it shared by
//              host and plugins (SwitchyardABI), the Swift plugin kit, and the plugin templates
//   Sources/   the host: plugin loading, host services, the CLI
//   Plugins/   the transport plugins, each its own dynamic library product
//   Tests/     Swift Testing suites and the C fixtures they compile
import PackageDescription

/// This package's directory, for linker flags that name a file in it.
let packageRoot = Context.packageDirectory

let package = Package(
    name: "switchyard",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "switchyard", targets: ["SwitchyardCLI"]),

        // The plugin SDK: what a third-party plugin package depends on.
        .library(name: "SwitchyardPluginKit", targets: ["SwitchyardPluginKit"]),
        .library(name: "CSwitchyard", targets: ["CSwitchyard"]),
        .library(name: "SwitchyardTransportKit", targets: ["SwitchyardTransportKit"]),

        // Host modules, for embedding Switchyard in your own executable.
        .library(name: "SwitchyardRuntime", targets: ["SwitchyardRuntime"]),
        .library(name: "SwitchyardNative", targets: ["SwitchyardNative"]),
        .library(name: "SwitchyardConfig", targets: ["SwitchyardConfig"]),
        /// The operator's HTTP endpoint (metrics, health, JSON API, overview page): opt in.
        .library(name: "SwitchyardAdmin", targets: ["SwitchyardAdmin"]),
        /// The wire form of a call (envelope, CloudEvents headers, compact codec), for interop tools.
        .library(name: "SwitchyardWire", targets: ["SwitchyardWire"]),
        /// A PostgreSQL connection (libpq), the type a PostgreSQL inbox or outbox transaction hands you.
        .library(name: "SwitchyardPostgres", targets: ["SwitchyardPostgres"]),
        /// Routed function pointers for C programs (SDK/Native/switchyard_native.h).
        .library(name: "switchyard-native-client", type: .dynamic, targets: ["SwitchyardNativeClient"]),
        .library(name: "SwitchyardLoader", targets: ["SwitchyardLoader"]),
        .library(name: "SwitchyardHost", targets: ["SwitchyardHost"]),
        .library(name: "SwitchyardConformance", targets: ["SwitchyardConformance"]),

        // Bundled plugins. Each is its own shared object, found next to the `switchyard` binary.
        .library(name: "switchyard-queue", type: .dynamic, targets: ["QueuePlugin"]),
        .library(name: "switchyard-topic", type: .dynamic, targets: ["TopicPlugin"]),
        .library(name: "switchyard-delay", type: .dynamic, targets: ["DelayPlugin"]),
        .library(name: "switchyard-retry", type: .dynamic, targets: ["RetryPlugin"]),
        .library(name: "switchyard-nats", type: .dynamic, targets: ["NATSQueuePlugin"]),
        .library(name: "switchyard-nats-topic", type: .dynamic, targets: ["NATSTopicPlugin"]),
        .library(name: "switchyard-postgres", type: .dynamic, targets: ["PostgresQueuePlugin"]),
        .library(name: "switchyard-postgres-topic", type: .dynamic, targets: ["PostgresTopicPlugin"]),
        .library(name: "switchyard-rabbitmq", type: .dynamic, targets: ["RabbitMQQueuePlugin"]),
        .library(name: "switchyard-rabbitmq-topic", type: .dynamic, targets: ["RabbitMQTopicPlugin"]),
        .library(name: "switchyard-example-c", type: .dynamic, targets: ["ExampleCPlugin"]),
        .library(name: "switchyard-example-swift", type: .dynamic, targets: ["ExampleSwiftPlugin"]),
        // Discard-everything plugins that `switchyard bench abi` measures the ABI crossing with.
        .library(name: "switchyard-bench-null-c", type: .dynamic, targets: ["BenchNullCPlugin"]),
        .library(name: "switchyard-bench-null-swift", type: .dynamic, targets: ["BenchNullSwiftPlugin"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.5.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.0.0"),
        .package(url: "https://github.com/apple/swift-collections", from: "1.1.0"),
        .package(url: "https://github.com/apple/swift-distributed-tracing", from: "1.1.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.6.0"),
        // The admin endpoint only: a dependency-free HTTP server (28 s to build here, against 160 s
        // for Hummingbird and SwiftNIO) and the Prometheus exposition format.
        .package(url: "https://github.com/swhitty/FlyingFox", from: "0.27.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.1.0"),
    ],
    targets: [
        // MARK: SDK — the plugin contract

        /// The C ABI header: the whole contract between host and plugins.
        .target(name: "CSwitchyard", path: "SDK/CSwitchyard"),
        /// Swift form of the ABI types and a client for calling any transport through its C table;
        /// linked into the host and (a separate copy) into every Swift plugin.
        .target(name: "SwitchyardABI", dependencies: ["CSwitchyard"], path: "SDK/SwitchyardABI"),
        /// What a Swift plugin author implements and exports.
        .target(name: "SwitchyardPluginKit", dependencies: ["SwitchyardABI"], path: "SDK/SwitchyardPluginKit"),
        /// The system SQLite (Debian's libsqlite3-dev), for durable stores.
        .systemLibrary(name: "CSQLite", path: "SDK/CSQLite", pkgConfig: "sqlite3", providers: [.apt(["libsqlite3-dev"])]),
        /// The engine queue-like plugins share: broker, memory and SQLite stores, message codec.
        .target(
            name: "SwitchyardTransportKit",
            dependencies: [
                "SwitchyardPluginKit", "CSQLite",
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "HeapModule", package: "swift-collections"),
            ],
            path: "SDK/SwitchyardTransportKit"),
        /// The templates, built here as the bundled example plugins.
        .target(
            name: "ExampleCPlugin", dependencies: ["CSwitchyard"], path: "SDK/Templates/c-plugin",
            exclude: ["Makefile", "README.md"], sources: ["plugin.c"], publicHeadersPath: "."),
        .target(
            name: "ExampleSwiftPlugin", dependencies: ["SwitchyardPluginKit"],
            path: "SDK/Templates/swift-plugin/Sources/ExamplePlugin"),

        // MARK: Transport plugins

        .target(name: "QueuePlugin", dependencies: ["SwitchyardTransportKit"], path: "Plugins/Queue"),
        .target(name: "TopicPlugin", dependencies: ["SwitchyardTransportKit"], path: "Plugins/Topic"),
        .target(name: "DelayPlugin", dependencies: ["SwitchyardTransportKit"], path: "Plugins/Delay"),
        .target(name: "RetryPlugin", dependencies: ["SwitchyardTransportKit"], path: "Plugins/Retry"),
        /// nats.c (Debian's libnats-dev), for the NATS JetStream plugins.
        .systemLibrary(name: "CNats", path: "Plugins/NATS/CNats", pkgConfig: "libnats", providers: [.apt(["libnats-dev"])]),
        /// What `nats` and `nats-topic` share: the JetStream mapping, over nats.c.
        .target(name: "NATSTransport", dependencies: ["CNats", "SwitchyardTransportKit"], path: "Plugins/NATS/Transport"),
        .target(name: "NATSQueuePlugin", dependencies: ["NATSTransport"], path: "Plugins/NATS/Queue"),
        .target(name: "NATSTopicPlugin", dependencies: ["NATSTransport"], path: "Plugins/NATS/Topic"),
        /// What `postgres` and `postgres-topic` share: a broker over a PostgreSQL store.
        .target(name: "PostgresTransport", dependencies: ["SwitchyardPostgres", "SwitchyardTransportKit"], path: "Plugins/Postgres/Transport"),
        .target(name: "PostgresQueuePlugin", dependencies: ["PostgresTransport"], path: "Plugins/Postgres/Queue"),
        .target(name: "PostgresTopicPlugin", dependencies: ["PostgresTransport"], path: "Plugins/Postgres/Topic"),
        /// rabbitmq-c (Debian's librabbitmq-dev), the AMQP 0-9-1 client, for the RabbitMQ plugins.
        .systemLibrary(
            name: "CRabbitMQ", path: "Plugins/RabbitMQ/CRabbitMQ", pkgConfig: "librabbitmq", providers: [.apt(["librabbitmq-dev"])]),
        /// What `rabbitmq` and `rabbitmq-topic` share: the AMQP mapping, over rabbitmq-c.
        .target(name: "RabbitMQTransport", dependencies: ["CRabbitMQ", "SwitchyardTransportKit"], path: "Plugins/RabbitMQ/Transport"),
        .target(name: "RabbitMQQueuePlugin", dependencies: ["RabbitMQTransport"], path: "Plugins/RabbitMQ/Queue"),
        .target(name: "RabbitMQTopicPlugin", dependencies: ["RabbitMQTransport"], path: "Plugins/RabbitMQ/Topic"),

        // MARK: Host

        /// OpenSSL's libcrypto (Debian's libssl-dev), for the sha256 of pinned plugin files.
        .systemLibrary(name: "CLibCrypto", path: "Sources/CLibCrypto", pkgConfig: "libcrypto", providers: [.apt(["libssl-dev"])]),
        /// Finds, vets and loads plugin files; validates descriptors.
        .target(name: "SwitchyardLoader", dependencies: ["SwitchyardABI", "CLibCrypto"]),
        /// Host services (log, clock, metrics), creating transport instances from loaded plugins,
        /// and running a plugin in a child process (`isolation: process`).
        .target(
            name: "SwitchyardHost",
            dependencies: [
                "SwitchyardLoader", "SwitchyardABI", "SwitchyardPluginKit", "SwitchyardTransportKit",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
            ]),
        /// The transport conformance kit: drives any plugin through the C ABI.
        .target(name: "SwitchyardConformance", dependencies: ["SwitchyardHost", "SwitchyardLoader", "SwitchyardABI"]),
        /// Host configuration file (YAML), validated with key paths in every error.
        .target(name: "SwitchyardConfig", dependencies: ["SwitchyardABI", .product(name: "Yams", package: "Yams")]),
        /// libpq (Debian's libpq-dev), PostgreSQL's C client.
        .systemLibrary(name: "CLibPQ", path: "Sources/CLibPQ", pkgConfig: "libpq", providers: [.apt(["libpq-dev"])]),
        /// One PostgreSQL connection over libpq: the postgres plugins' store, and the database a
        /// PostgreSQL inbox or outbox commits a handler's or an application's work in.
        .target(name: "SwitchyardPostgres", dependencies: ["CLibPQ", "SwitchyardABI"]),
        /// libffi (Debian's libffi-dev), with accessors for its type globals.
        .systemLibrary(name: "CFFI", path: "Sources/CFFI", pkgConfig: "libffi", providers: [.apt(["libffi-dev"])]),
        /// Native modules: signatures, and calling exported C-ABI functions through libffi.
        .target(name: "SwitchyardNative", dependencies: ["CFFI"]),
        /// libswitchyard-native-client: C programs bind routes to function pointers (libffi closures).
        /// Exports its C API alone (SDK/Native/switchyard-native-client.map says why).
        .target(
            name: "SwitchyardNativeClient",
            dependencies: ["SwitchyardRuntime", "SwitchyardNative", "CFFI", .product(name: "Logging", package: "swift-log")],
            linkerSettings: [.unsafeFlags(["-Xlinker", "--version-script=\(packageRoot)/SDK/Native/switchyard-native-client.map"])]),
        /// The wire form of a call: the envelope and its CloudEvents headers, the compact argument
        /// codec, ids and timestamps. The runtime writes and reads it; interop tools (the CLI's
        /// dead-letter commands, the fuzzers) import it. Same stability rule as the application
        /// API, different audience: applications never need it.
        .target(name: "SwitchyardWire", dependencies: ["SwitchyardABI"]),
        /// The typed-call runtime: the Distributed actor system, routes, request-reply, hosting
        /// and draining. What an application imports.
        .target(
            name: "SwitchyardRuntime",
            dependencies: [
                "SwitchyardHost", "SwitchyardConfig", "SwitchyardLoader", "SwitchyardABI", "SwitchyardTransportKit", "SwitchyardNative", "SwitchyardWire",
                "SwitchyardPostgres",
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]),
        /// The operator's HTTP endpoint for an actor system: Prometheus metrics, health probes, the
        /// JSON API and the overview page. Only applications that serve it compile an HTTP server.
        .target(
            name: "SwitchyardAdmin",
            dependencies: [
                "SwitchyardRuntime", "SwitchyardConfig", "SwitchyardNative",
                .product(name: "FlyingFox", package: "FlyingFox"),
                .product(name: "FlyingSocks", package: "FlyingFox"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]),
        /// The crash soak behind `switchyard soak`: processes killed at random, effects counted.
        .target(
            name: "SwitchyardSoak",
            dependencies: [
                "SwitchyardRuntime", "SwitchyardHost", "SwitchyardLoader", "SwitchyardConfig", "SwitchyardTransportKit", "SwitchyardABI", "SwitchyardPostgres",
                "SwitchyardWire",
            ]),
        /// The `switchyard` command: a thin shell over the library modules.
        .executableTarget(
            name: "SwitchyardCLI",
            dependencies: [
                "SwitchyardLoader", "SwitchyardHost", "SwitchyardConfig", "SwitchyardBench", "SwitchyardConformance", "SwitchyardSoak",
                "SwitchyardTransportKit", "SwitchyardRuntime", "SwitchyardWire", "OrdersExample", "SwitchyardNative", "SwitchyardAdmin",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ]),

        // MARK: Examples

        /// The orders example system that `switchyard demo` runs (examples/orders).
        .target(
            name: "OrdersExample", dependencies: ["SwitchyardRuntime", "SwitchyardConfig", "SwitchyardPostgres"], path: "examples/orders",
            exclude: ["README.md", "switchyard.yaml", "direct.yaml", "nats.yaml", "postgres.yaml", "rabbitmq.yaml"], sources: ["Sources"]),

        // MARK: Benchmarks

        /// The suites behind `switchyard bench`.
        .target(
            name: "SwitchyardBench",
            dependencies: [
                "SwitchyardHost", "SwitchyardLoader", "SwitchyardABI", "CSQLite", "SwitchyardRuntime", "SwitchyardWire", "SwitchyardConfig", "CNats", "CFFI", "CRabbitMQ",
                "SwitchyardNative", "SwitchyardPostgres", "SwitchyardTransportKit", "CBenchSupport",
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Benchmarks/SwitchyardBench"),
        /// What the suites read from C that Swift's Glibc module does not export (`mallinfo2`).
        .target(name: "CBenchSupport", path: "Benchmarks/CBenchSupport"),
        /// Runs one hot path a given number of times, for the `instructions` suite to count under
        /// callgrind (a synchronous main: valgrind cannot run the async `switchyard`).
        .executableTarget(name: "switchyard-hot-path", dependencies: ["SwitchyardBench"], path: "Benchmarks/HotPath"),
        .target(
            name: "BenchNullCPlugin", dependencies: ["CSwitchyard"], path: "Benchmarks/Plugins/NullC",
            publicHeadersPath: "."),
        .target(name: "BenchNullSwiftPlugin", dependencies: ["SwitchyardPluginKit"], path: "Benchmarks/Plugins/NullSwift"),

        // MARK: Tests

        /// A child process for the durability tests (publishes to a durable queue, gets SIGKILLed).
        .executableTarget(
            name: "switchyard-durability-probe", dependencies: ["SwitchyardHost", "SwitchyardLoader", "SwitchyardABI"],
            path: "Tests/Helpers/DurabilityProbe"),
        /// A service the tests and their child processes share.
        .target(name: "SwitchyardTestServices", dependencies: ["SwitchyardRuntime"], path: "Tests/Helpers/TestServices"),
        /// A host process for the SIGTERM drain test.
        .executableTarget(
            name: "switchyard-drain-probe",
            dependencies: [
                "SwitchyardRuntime", "SwitchyardTestServices",
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Tests/Helpers/DrainProbe"),
        /// What the test targets share: build products, temporary directories, child processes,
        /// C fixtures, a NATS server on a free port.
        .target(
            name: "SwitchyardTestSupport",
            dependencies: ["SwitchyardABI", "SwitchyardLoader", "SwitchyardConformance", .product(name: "Logging", package: "swift-log")],
            path: "Tests/Support"),
        // One test target per module, each file named after the suite it holds.
        .testTarget(name: "SwitchyardABITests", dependencies: ["SwitchyardTestSupport", "SwitchyardABI", "SwitchyardHost", "SwitchyardLoader"]),
        .testTarget(
            name: "SwitchyardLoaderTests", dependencies: ["SwitchyardTestSupport", "SwitchyardLoader", "SwitchyardHost", "SwitchyardConformance"]),
        .testTarget(
            name: "SwitchyardHostTests",
            dependencies: [
                "SwitchyardTestSupport", "SwitchyardHost", "SwitchyardLoader", "SwitchyardConformance", "SwitchyardRuntime", "SwitchyardWire",
                "SwitchyardConfig", .product(name: "MetricsTestKit", package: "swift-metrics"),
            ]),
        .testTarget(
            name: "SwitchyardTransportKitTests",
            dependencies: [
                "SwitchyardTestSupport", "SwitchyardHost", "SwitchyardLoader", "SwitchyardConformance", "SwitchyardRuntime", "SwitchyardPluginKit",
                "SwitchyardTransportKit", "SwitchyardWire", "NATSTransport",
            ]),
        .testTarget(
            name: "SwitchyardConformanceTests",
            dependencies: ["SwitchyardTestSupport", "SwitchyardConformance", "SwitchyardHost", "SwitchyardLoader", "SwitchyardPostgres", "SwitchyardTransportKit"]),
        .testTarget(name: "SwitchyardConfigTests", dependencies: ["SwitchyardTestSupport", "SwitchyardConfig"]),
        .testTarget(name: "SwitchyardWireTests", dependencies: ["SwitchyardTestSupport", "SwitchyardWire", "SwitchyardRuntime", "SwitchyardConfig"]),
        .testTarget(
            name: "SwitchyardRuntimeTests",
            dependencies: [
                "SwitchyardTestSupport", "SwitchyardRuntime", "SwitchyardWire", "SwitchyardConfig", "SwitchyardHost", "SwitchyardLoader",
                "SwitchyardConformance", "SwitchyardTransportKit", "SwitchyardNative", "SwitchyardTestServices", "SwitchyardPostgres",
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "InMemoryTracing", package: "swift-distributed-tracing"),
            ]),
        .testTarget(
            name: "SwitchyardAdminTests",
            dependencies: ["SwitchyardTestSupport", "SwitchyardAdmin", "SwitchyardRuntime", "SwitchyardConfig", "SwitchyardTestServices", "SwitchyardABI"]),
        .testTarget(
            name: "SwitchyardCLITests",
            dependencies: [
                "SwitchyardTestSupport", "SwitchyardABI", "SwitchyardHost", "SwitchyardLoader", "SwitchyardConformance", "SwitchyardRuntime",
                "SwitchyardSoak",
            ]),
    ]
)
