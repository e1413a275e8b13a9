import CSwitchyard

/// The compatibility rule for structs that cross the boundary (switchyard_plugin.h): a reader
/// accepts an older, smaller struct — down to its ABI 1.0 size — and reads the fields past its
/// `struct_size` as zero; it never reads past `struct_size`. Every Swift reader of a caller-sized
/// struct goes through ``read(_:minimum:)``, so a plugin built from a newer SDK keeps working
/// with an older host and the other way round.
public enum SizedStruct {
    /// The ABI 1.0 sizes (`SY_*_SIZE_V1_0` in the header, which Swift cannot import).
    public static let messageV1_0 = through(\sy_message.enqueued_at_ns)
    /// `sy_message` as ABI 1.3 defines it (expiry and flags).
    public static let messageV1_3 = MemoryLayout<sy_message>.size
    /// `sy_subscriber` at 1.0: context and deliver.
    public static let subscriberV1_0 = through(\sy_subscriber.deliver)
    /// `sy_subscriber` at 1.3: deliver_batch.
    public static let subscriberV1_3 = through(\sy_subscriber.deliver_batch)
    /// `sy_subscribe_options` at 1.0.
    public static let subscribeOptionsV1_0 = through(\sy_subscribe_options.start)
    /// `sy_subscribe_options` at 1.4: flags.
    public static let subscribeOptionsV1_4 = through(\sy_subscribe_options.flags)
    /// `sy_settlement` at 1.0.
    public static let settlementV1_0 = through(\sy_settlement.reason)
    /// `sy_create_args` at 1.0.
    public static let createArgsV1_0 = through(\sy_create_args.inner)
    /// `sy_stats` at 1.0.
    public static let statsV1_0 = through(\sy_stats.depth)
    /// `sy_host_services` at 1.0 (through `metric`) and 1.2 (`dead_lettered`).
    public static let hostServicesV1_0 = through(\sy_host_services.metric)
    /// `sy_host_services` at 1.2.
    public static let hostServicesV1_2 = through(\sy_host_services.dead_lettered)
    /// `sy_channel_stats` as ABI 1.9 introduced it.
    public static let channelStatsV1_9 = through(\sy_channel_stats.waiting)
    /// `sy_plugin_descriptor` at 1.0 (through `stats`).
    public static let descriptorV1_0 = through(\sy_plugin_descriptor.stats)

    /// Size of `Root` up to and including `field` (the header's `SY_SIZE_THROUGH`).
    public static func through<Root, Value>(_ field: KeyPath<Root, Value>) -> Int {
        MemoryLayout<Root>.offset(of: field)! + MemoryLayout<Value>.size
    }

    /// The struct at `pointer` as this build knows it: its first `struct_size` bytes (at most
    /// `MemoryLayout<T>.size`) over a zeroed value, its `struct_size` saying what the copy holds
    /// (a newer writer's larger size is brought down to this build's: a copy passed on — a
    /// decorator's subscriber handed to its inner plugin — must not tell the next reader to read
    /// past it). Nil when `struct_size` is below `minimum`. `T` must be a C struct whose first
    /// field is `uint32_t struct_size`.
    @inlinable
    public static func read<T>(_ pointer: UnsafePointer<T>, minimum: Int) -> T? {
        let raw = UnsafeRawPointer(pointer)
        let size = Int(raw.load(as: UInt32.self))
        guard size >= minimum else { return nil }
        if size == MemoryLayout<T>.size { return pointer.pointee }
        if size > MemoryLayout<T>.size {
            var copy = pointer.pointee
            withUnsafeMutableBytes(of: &copy) { $0.storeBytes(of: UInt32(MemoryLayout<T>.size), as: UInt32.self) }
            return copy
        }
        return withUnsafeTemporaryAllocation(of: T.self, capacity: 1) { buffer in
            let out = UnsafeMutableRawPointer(buffer.baseAddress!)
            out.initializeMemory(as: UInt8.self, repeating: 0, count: MemoryLayout<T>.size)
            out.copyMemory(from: raw, byteCount: size)
            return out.load(as: T.self)
        }
    }

    /// Checks an array of `count` growable structs against the header's stride rule before it is
    /// walked: every element's `struct_size` the same, a multiple of 8 and at least `minimum`.
    /// One element has no stride to check. Throws `invalidArgument` naming `call` (a caller that
    /// breaks the rule would otherwise have its elements read from the wrong places).
    public static func checkStride<T>(_ first: UnsafePointer<T>, count: Int, minimum: Int, _ call: String) throws(TransportError) {
        guard count > 1 else { return }
        let raw = UnsafeRawPointer(first)
        let stride = Int(raw.load(as: UInt32.self))
        guard stride >= minimum, stride % 8 == 0 else {
            throw TransportError(
                .invalidArgument,
                "\(call): an array of \(count) with struct_size \(stride): an array's elements are strided by a struct_size that is a multiple of 8 and at least \(minimum)")
        }
        for index in 1..<count where Int(raw.advanced(by: index * stride).load(as: UInt32.self)) != stride {
            throw TransportError(
                .invalidArgument, "\(call): element \(index)'s struct_size is not the first's \(stride): every element of an array carries the same")
        }
    }

    /// Element `index` of an array of growable structs, strided by the first element's
    /// `struct_size` (the header's stride rule; `sy_array_at`).
    @inlinable
    public static func element<T>(_ first: UnsafePointer<T>, _ index: Int) -> UnsafePointer<T> {
        let stride = Int(UnsafeRawPointer(first).load(as: UInt32.self))
        return (UnsafeRawPointer(first) + index * stride).assumingMemoryBound(to: T.self)
    }
}
