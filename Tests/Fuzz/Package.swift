// swift-tools-version: 6.1
// libFuzzer targets for Switchyard's parsers of untrusted input: envelopes and arguments,
// config files, native signatures. A package of its own because libFuzzer supplies `main`:
// build with --sanitize=fuzzer (scripts/fuzz does).
import PackageDescription

let flags: [SwiftSetting] = [.unsafeFlags(["-parse-as-library"])]

let package = Package(
    name: "switchyard-fuzz",
    platforms: [.macOS(.v15)],
    dependencies: [.package(name: "switchyard", path: "../..")],
    targets: [
        .executableTarget(
            name: "fuzz-envelope",
            dependencies: [.product(name: "SwitchyardWire", package: "switchyard")],
            path: "Sources/FuzzEnvelope", swiftSettings: flags),
        .executableTarget(
            name: "fuzz-config",
            dependencies: [.product(name: "SwitchyardConfig", package: "switchyard")],
            path: "Sources/FuzzConfig", swiftSettings: flags),
        .executableTarget(
            name: "fuzz-signature",
            dependencies: [.product(name: "SwitchyardNative", package: "switchyard")],
            path: "Sources/FuzzSignature", swiftSettings: flags),
    ]
)
