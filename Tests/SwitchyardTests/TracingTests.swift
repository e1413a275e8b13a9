import Foundation
import Instrumentation
import ServiceContextModule
import Testing
import Tracing
@testable import SwitchyardRuntime

/// A minimal W3C tracer: spans record their trace and parent ids, and context crosses process
/// boundaries as a `traceparent` header, as an OpenTelemetry tracer would carry it.
final class RecordingTracer: Tracer, @unchecked Sendable {
    private enum TraceKey: ServiceContextKey { typealias Value = (trace: String, span: String) }

    final class RecordedSpan: Tracing.Span, @unchecked Sendable {
        let lock = NSLock()
        let context: ServiceContext
        let kind: SpanKind
        let parentSpanID: String?
        var name: String
        var errors: [String] = []
        var attributes: SpanAttributes = [:]
        let isRecording = true
        var operationName: String {
            get { lock.withLock { name } }
            set { lock.withLock { name = newValue } }
        }
        var trace: String { context[TraceKey.self]!.trace }
        var spanID: String { context[TraceKey.self]!.span }

        init(name: String, context: ServiceContext, kind: SpanKind, parentSpanID: String?) {
            self.name = name
            self.context = context
            self.kind = kind
            self.parentSpanID = parentSpanID
        }
        func setStatus(_ status: SpanStatus) {}
        func addEvent(_ event: SpanEvent) {}
        func recordError<Instant: TracerInstant>(_ error: any Error, attributes: SpanAttributes, at instant: @autoclosure () -> Instant) {
            lock.withLock { errors.append("\(error)") }
        }
        func addLink(_ link: SpanLink) {}
        func end<Instant: TracerInstant>(at instant: @autoclosure () -> Instant) {}
    }

    private let lock = NSLock()
    private var recorded: [RecordedSpan] = []
    var spans: [RecordedSpan] { lock.withLock { recorded } }

    func startSpan<Instant: TracerInstant>(
        _ operationName: String, context: @autoclosure () -> ServiceContext, ofKind kind: SpanKind,
        at instant: @autoclosure () -> Instant, function: String, file fileID: String, line: UInt
    ) -> RecordedSpan {
        var context = context()
        let parent = context[TraceKey.self]
        let ids = (trace: parent?.trace ?? Self.hex(16), span: Self.hex(8))
        context[TraceKey.self] = ids
        let span = RecordedSpan(name: operationName, context: context, kind: kind, parentSpanID: parent?.span)
        lock.withLock { recorded.append(span) }
        return span
    }

    func forceFlush() {}

    func inject<Carrier, Inject>(_ context: ServiceContext, into carrier: inout Carrier, using injector: Inject)
    where Inject: Injector, Carrier == Inject.Carrier {
        guard let ids = context[TraceKey.self] else { return }
        injector.inject("00-\(ids.trace)-\(ids.span)-01", forKey: "traceparent", into: &carrier)
    }

    func extract<Carrier, Extract>(_ carrier: Carrier, into context: inout ServiceContext, using extractor: Extract)
    where Extract: Extractor, Carrier == Extract.Carrier {
        guard let header = extractor.extract(key: "traceparent", from: carrier) else { return }
        let parts = header.split(separator: "-")
        guard parts.count == 4 else { return }
        context[TraceKey.self] = (String(parts[1]), String(parts[2]))
    }

    static func hex(_ bytes: Int) -> String {
        (0..<bytes).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined()
    }

    /// The process-wide tracer (swift-distributed-tracing bootstraps once per process).
    static let shared: RecordingTracer = {
        let tracer = RecordingTracer()
        InstrumentationSystem.bootstrap(tracer)
        return tracer
    }()
}

@Suite("Tracing")
struct TracingTests {
    @Test("traceparent travels in the envelope: the receiver's span continues the caller's trace across a queue")
    func traceFollowsTheCall() async throws {
        let tracer = RecordingTracer.shared
        let system = try makeSystem(TypedCallTests.queueConfig)
        try system.host("traced-shop", as: $Shop.self) { ShopService(actorSystem: $0, ledger: Ledger()) }
        let shop = try $Shop.resolve(id: "traced-shop", using: system)
        let receipt = try await withSpan("checkout") { _ in try await shop.place(Order(id: 99, customer: "trace", amount: 1)) }
        #expect(receipt == "receipt-99-trace")
        let checkout = try #require(tracer.spans.last { $0.operationName == "checkout" })
        let client = try #require(tracer.spans.first { $0.kind == .client && $0.trace == checkout.trace })
        let server = try #require(tracer.spans.first { $0.kind == .consumer && $0.trace == checkout.trace })
        #expect(client.operationName == "Shop.place(_:)")
        #expect(server.operationName == "Shop.place(_:)")
        #expect(server.parentSpanID == client.spanID)
        await system.shutdown()
    }
}
