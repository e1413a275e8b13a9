import SwitchyardWire
import Testing

@testable import SwitchyardTransportKit

@Suite("SequentialTable (store entries and deliveries by id)")
struct SequentialTableTests {
    /// The table must answer exactly as a dictionary would, whatever order ids leave in: mostly
    /// in order, some late, some put back after leaving (an undone settlement), some never.
    @Test("agrees with a dictionary under random inserts, removals and put-backs")
    func agreesWithDictionary() {
        var generator = SplitMix(seed: 14)
        var table = SequentialTable<String>()
        var model: [UInt64: String] = [:]
        var next: UInt64 = 0
        for step in 0..<5_000 {
            switch generator.next() % 10 {
            case 0..<5:
                next += 1
                table.insert("v\(next)", at: next)
                model[next] = "v\(next)"
            case 5..<8:
                // Mostly the oldest present, sometimes any. (Cheap on purpose: a test that hogs one
                // of the cooperative pool's two threads here starves the tests beside it.)
                guard let id = generator.next() % 4 == 0 ? model.keys.randomElement(using: &generator) : model.keys.min() else { continue }
                #expect(table.removeValue(forKey: id) == model.removeValue(forKey: id))
            case 8:
                // A removal of an id that is not there changes nothing.
                let id = generator.next() % (next + 2)
                #expect(table.removeValue(forKey: id) == model.removeValue(forKey: id))
            default:
                // Put back an id that left (older than the newest).
                guard next > 0 else { continue }
                let id = 1 + generator.next() % next
                if model[id] == nil {
                    table.insert("back\(id)", at: id)
                    model[id] = "back\(id)"
                }
            }
            if step % 499 == 0 || step == 4_999 {
                #expect(table.count == model.count)
                #expect(table.isEmpty == model.isEmpty)
                #expect(table.all.map(\.id) == model.keys.sorted())
                #expect(table.all.allSatisfy { model[$0.id] == $0.value })
                #expect((0...(next + 1)).allSatisfy { table[$0] == model[$0] })
            }
        }
        table.removeAll()
        #expect(table.isEmpty && table.all.isEmpty && table[next] == nil)
        table.insert("after", at: next + 5)
        #expect(table[next + 5] == "after" && table.count == 1)
    }
}
