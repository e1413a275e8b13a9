import Foundation
import InMemoryTracing
import Instrumentation
import ServiceContextModule
import SwitchyardABI
import SwitchyardTestSupport
import SwitchyardWire
import Testing
import Tracing

@testable import SwitchyardRuntime

/// The tracer swift-distributed-tracing ships for tests, bootstrapped once for the process (a
/// process has one instrument). Its context travels under its own keys
/// (`in-memory-trace-id`, `in-memory-span-id`), not W3C `traceparent`: exactly what a
/// runtime that only knew `traceparent` lost.
enum ProcessTracer {
    static let shared: InMemoryTracer = {
        let tracer = InMemoryTracer()
        InstrumentationSystem.bootstrap(tracer)
        return tracer
    }()
}

@Suite("Tracing")
struct TracingTests {
    @Test("with the bootstrapped tracer (InMemoryTracer), the receiver's span continues the caller's trace across a queue")
    func traceFollowsTheCall() async throws {
        let tracer = ProcessTracer.shared
        let system = try await makeSystem(TypedCallTests.queueConfig)
        try system.host("traced-shop", as: $Shop.self) { ShopService(actorSystem: $0, ledger: Ledger()) }
        let shop = try $Shop.resolve(id: "traced-shop", using: system)
        let receipt = try await withSpan("checkout") { _ in try await shop.place(Order(id: 99, customer: "trace", amount: 1)) }
        #expect(receipt == "receipt-99-trace")
        await system.shutdown()
        let spans = tracer.finishedSpans
        let checkout = try #require(spans.last { $0.operationName == "checkout" })
        let client = try #require(spans.first { $0.kind == .client && $0.traceID == checkout.traceID })
        let server = try #require(
            spans.first { $0.kind == .consumer && $0.traceID == checkout.traceID },
            "the receiver's span is in another trace: \(spans.map { "\($0.operationName) \($0.kind) \($0.traceID)" })")
        #expect(client.operationName == "Shop.place(_:)")
        #expect(client.parentSpanID == checkout.spanID)
        #expect(server.operationName == "Shop.place(_:)")
        #expect(server.parentSpanID == client.spanID)
    }

    @Test("whatever keys an instrument injects travel in the envelope: W3C ones as ce-traceparent/ce-tracestate, others in ce-sytracecontext, escaped")
    func carrierRoundTrip() throws {
        var carrier = TraceCarrier()
        let injector = TraceCarrier.Injector()
        injector.inject("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", forKey: "traceparent", into: &carrier)
        injector.inject("vendor=a", forKey: "tracestate", into: &carrier)
        injector.inject("42", forKey: "in-memory-trace-id", into: &carrier)
        injector.inject("a=b,c;d %", forKey: "baggage", into: &carrier)
        let envelope = Envelope(
            target: .init(name: "Shop.place(_:)", identifier: "x"), arguments: [],
            traceparent: carrier.traceparent, tracestate: carrier.tracestate, traceContext: carrier.encodedOther)
        let message = envelope.message(channel: "shop")
        #expect(message.header("ce-traceparent") == "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        #expect(message.header("ce-tracestate") == "vendor=a")
        let read = try message.withCMessage { pointer in try Envelope(MessageView(validating: pointer)) }
        let back = TraceCarrier(traceparent: read.traceparent, tracestate: read.tracestate, encodedOther: read.traceContext)
        let extractor = TraceCarrier.Extractor()
        #expect(extractor.extract(key: "traceparent", from: back) == carrier.traceparent)
        #expect(extractor.extract(key: "in-memory-trace-id", from: back) == "42")
        #expect(extractor.extract(key: "baggage", from: back) == "a=b,c;d %")
        #expect(extractor.extract(key: "absent", from: back) == nil)
    }
}
