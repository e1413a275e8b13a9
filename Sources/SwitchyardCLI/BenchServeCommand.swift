import ArgumentParser
import SwitchyardBench
import SwitchyardLoader

/// `switchyard bench-serve`: the serving process of a benchmark that needs two processes
/// (`durable-rr`). Started by `switchyard bench`, never by hand; it serves until its standard
/// input closes.
struct BenchServeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-serve",
        abstract: "Serve the far side of a two-process benchmark (started by switchyard bench).",
        shouldDisplay: false)

    @Argument(help: "The suite to serve (durable-rr).")
    var suite: String

    @Argument(help: ArgumentHelp("The suite's database file.", valueName: "file"))
    var database: String

    func validate() throws {
        guard suite == "durable-rr" else { throw ValidationError("bench-serve serves only durable-rr, not '\(suite)'") }
    }

    func run() throws {
        try DurableRequestReplySuite.serve(
            database: database, pluginDirectories: SearchDirectory.currentExecutableDirectory().map { [$0] } ?? [])
    }
}
