import ArgumentParser
import Foundation
import SwitchyardBench
import SwitchyardLoader

/// `switchyard bench`: the one harness every performance figure comes from.
struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Run benchmarks; each figure is set against a baseline measured in the same run.",
        discussion: """
            Build in release first: swift build -c release && .build/release/switchyard bench. \
            Suites: \(allBenchSuites.map(\.name).joined(separator: ", ")). \
            Without names every suite runs but \(allBenchSuites.filter { !$0.runsByDefault }.map(\.name).joined(separator: ", ")), which runs when named.
            """)

    @Argument(help: "Suites to run (default: all).")
    var suites: [String] = []

    @Flag(help: "Fewer iterations and rounds: the whole run takes under a minute.")
    var quick = false

    @Option(help: ArgumentHelp("Also write the results as JSON to this file.", valueName: "file"))
    var json: String?

    func validate() throws {
        let known = Set(allBenchSuites.map(\.name))
        if let unknown = suites.first(where: { !known.contains($0) }) {
            throw ValidationError("unknown suite '\(unknown)' (known: \(allBenchSuites.map(\.name).joined(separator: ", ")))")
        }
    }

    func run() throws {
        // A path that cannot be written was found only after every suite had run (minutes).
        if let json {
            let directory = (URL(fileURLWithPath: json).deletingLastPathComponent().path as NSString).standardizingPath
            guard FileManager.default.isWritableFile(atPath: directory) else {
                throw CommandFailure("--json \(json): cannot write in \(directory) (it does not exist, or is not writable); nothing was run")
            }
        }
        let machine = MachineInfo.current()
        if machine.build == "debug" { printError("warning: this is a debug build; numbers are not representative (swift build -c release)") }
        printError("machine: \(machine.cpu), \(machine.cores) cores, \(machine.memoryGiB) GiB, \(machine.build) build")
        let selected = suites.isEmpty ? allBenchSuites.filter(\.runsByDefault) : allBenchSuites.filter { suites.contains($0.name) }
        let context = BenchContext(
            quick: quick, pluginDirectories: SearchDirectory.currentExecutableDirectory().map { [$0] } ?? [],
            progress: { printError("  … \($0)") })
        var results: [BenchResult] = []
        var failed: [String] = []
        var unavailable: [String] = []
        for suite in selected {
            printError("[\(suite.name)] \(suite.summary)")
            let started = Date()
            do {
                results += try suite.run(context)
                results.append(BenchResult(suite: suite.name, metric: "peak_rss_mib", value: Measure.peakResidentMiB(), unit: "MiB"))
                printError("  done in \(String(format: "%.1f", Date().timeIntervalSince(started))) s")
            } catch {
                printError("  skipped: \(error)")
                // What this machine lacks (BenchUnavailable: a server, a tool) is no failure of a
                // default run; a suite asked for by name, or one that broke (BenchFailure, or any
                // other error), is.
                if !(error is BenchUnavailable) || !suites.isEmpty { failed.append(suite.name) } else { unavailable.append(suite.name) }
            }
        }
        let report = BenchReport(machine: machine, results: results)
        print(report.table())
        if !unavailable.isEmpty { printError("suites this machine cannot run: \(unavailable.joined(separator: ", "))") }
        if let json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
            do {
                try encoder.encode(report).write(to: URL(fileURLWithPath: json))
            } catch {
                throw CommandFailure("--json \(json): cannot write the report (\(error.localizedDescription)); the table above has the numbers")
            }
        }
        if !failed.isEmpty {
            printError("error: suites that failed: \(failed.joined(separator: ", ")) (their errors are above; the report leaves them out)")
            throw ExitCode.failure
        }
    }
}
