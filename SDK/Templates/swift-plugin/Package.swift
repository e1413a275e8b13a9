// swift-tools-version: 6.1
// A Switchyard transport plugin, built as a shared object: `swift build -c release` leaves
// .build/release/libswitchyard-example-swift.so. Rename the product, the target and the plugin
// name (in ExamplePlugin.swift) to make it yours.
import PackageDescription

let package = Package(
    name: "example-swift-plugin",
    products: [
        // The file name the host discovers: lib<product>.so. Keep it a dynamic library.
        .library(name: "switchyard-example-swift", type: .dynamic, targets: ["ExamplePlugin"])
    ],
    dependencies: [
        // Point this at your checkout of Switchyard (or its URL with branch: "main": no releases
        // are tagged yet).
        .package(name: "switchyard", path: "../../..")
    ],
    targets: [
        .target(
            name: "ExamplePlugin",
            dependencies: [.product(name: "SwitchyardPluginKit", package: "switchyard")])
    ]
)
