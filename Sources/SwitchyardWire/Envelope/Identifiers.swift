import Foundation
import SwitchyardABI
import Synchronization

/// Wall-clock time in nanoseconds since the Unix epoch (the ABI's time base).
public enum WallClock {
    /// Now.
    @inline(__always)
    public static func nowNanos() -> Int64 { wallClockNanoseconds() }
}

/// Envelope ids: UUIDv7 (RFC 9562), time-ordered so ids sort by creation time.
///
/// The 74 bits after the millisecond timestamp are a per-process random seed mixed with a
/// counter (RFC 9562 §6.2, method 3 in spirit): unique within the process without a system call
/// per id, and unique across processes with overwhelming probability.
public enum EnvelopeID {
    private static let seed: UInt64 = UInt64.random(in: .min ... .max)
    private static let counter = Atomic<UInt64>(0)

    /// A new id, e.g. `01937f4c-5e2a-7b3d-9c1e-2f4a6b8c0d1e`.
    public static func make() -> String { make(nowNanos: WallClock.nowNanos()) }

    /// A new id for a message made at `nowNanos` (the wall clock, ns since 1970), for a caller
    /// that has read the clock already.
    public static func make(nowNanos: Int64) -> String {
        let millis = UInt64(max(0, nowNanos) / 1_000_000)
        let random = SplitMix.mix(seed &+ counter.add(1, ordering: .relaxed).newValue &* SplitMix.gamma)
        let high = (millis << 16) | 0x7000 | ((random >> 52) & 0x0FFF)
        let low = 0x8000_0000_0000_0000 | (random & 0x3FFF_FFFF_FFFF_FFFF)
        return format(high: high, low: low)
    }

    /// `8-4-4-4-12` lowercase hex digits of the 128 bits.
    package static func format(high: UInt64, low: UInt64) -> String {
        // The 32 digits made eight at a time (``hexDigits(_:)``: a few word operations instead of
        // a loop per digit; this runs on every call), then copied out around the dashes.
        var digits = (
            hexDigits(UInt32(truncatingIfNeeded: high >> 32)), hexDigits(UInt32(truncatingIfNeeded: high)),
            hexDigits(UInt32(truncatingIfNeeded: low >> 32)), hexDigits(UInt32(truncatingIfNeeded: low))
        )
        return withUnsafeBytes(of: &digits) { hex in
            String(unsafeUninitializedCapacity: 36) { buffer in
                let text = UnsafeMutableRawBufferPointer(buffer)
                for (from, to, count) in [(0, 0, 8), (8, 9, 4), (12, 14, 4), (16, 19, 4), (20, 24, 12)] {
                    text.baseAddress!.advanced(by: to).copyMemory(from: hex.baseAddress!.advanced(by: from), byteCount: count)
                }
                for dash in [8, 13, 18, 23] { text[dash] = UInt8(ascii: "-") }
                return 36
            }
        }
    }

    /// `value`'s eight lowercase hex digits, most significant first, as the bytes of a
    /// little-endian word: each nibble spread to a byte of its own, then turned into its digit
    /// in all eight bytes at once.
    @inline(__always)
    static func hexDigits(_ value: UInt32) -> UInt64 {
        var spread = UInt64(value)
        spread = (spread | spread << 16) & 0x0000_FFFF_0000_FFFF
        spread = (spread | spread << 8) & 0x00FF_00FF_00FF_00FF
        spread = (spread | spread << 4) & 0x0F0F_0F0F_0F0F_0F0F
        // 1 in each byte whose nibble is 10 or more: those get `a`-`f` instead of `:`-`?`.
        let letters = ((spread &+ 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101
        let ascii = spread &+ 0x3030_3030_3030_3030 &+ letters &* 0x27
        // The least significant nibble sits in the lowest byte; text wants it last.
        return ascii.byteSwapped
    }
}

/// SplitMix64: a small, fast, seeded generator — for ids' random bits and for anything that must
/// replay the same sequence from a seed (a soak's kill schedule, a randomized test). Not for secrets.
package struct SplitMix: RandomNumberGenerator {
    /// The increment between states: 2^64 divided by the golden ratio.
    static let gamma: UInt64 = 0x9E37_79B9_7F4A_7C15
    private var state: UInt64

    /// A generator whose sequence `seed` decides.
    package init(seed: UInt64) { state = seed }

    package mutating func next() -> UInt64 {
        state &+= Self.gamma
        return Self.mix(state)
    }

    /// SplitMix64's finaliser: spreads a counter's bits over the whole word.
    static func mix(_ value: UInt64) -> UInt64 {
        var z = value
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// RFC 3339 times (`2026-11-27T08:15:30.123456789Z`), formatted and parsed without Foundation's
/// formatters, which cost microseconds per call.
public enum RFC3339 {
    /// UTC with nanoseconds.
    public static func format(nanos: Int64) -> String {
        String(unsafeUninitializedCapacity: formattedCount) { write(nanos: nanos, into: UnsafeMutableRawBufferPointer($0)) }
    }

    /// Bytes of a time ``format(nanos:)`` makes (`2026-11-27T08:15:30.123456789Z`).
    public static let formattedCount = 30

    /// Writes ``format(nanos:)``'s text into `buffer` (at least ``formattedCount`` bytes) without
    /// making a string; returns how many bytes it wrote.
    @discardableResult
    public static func write(nanos: Int64, into buffer: UnsafeMutableRawBufferPointer) -> Int {
        precondition(buffer.count >= formattedCount, "RFC3339.write needs \(formattedCount) bytes")
        let seconds = nanos >= 0 ? nanos / 1_000_000_000 : (nanos - 999_999_999) / 1_000_000_000
        let fraction = Int(nanos - seconds * 1_000_000_000)
        let days = Int(seconds >= 0 ? seconds / 86_400 : (seconds - 86_399) / 86_400)
        let secondOfDay = Int(seconds - Int64(days) * 86_400)
        let (year, month, day) = civil(fromDays: days)
        // Two digits at a time: half the divisions of one digit at a time (this runs on every call).
        let out = buffer.baseAddress!.assumingMemoryBound(to: UInt8.self)
        @inline(__always) func pair(_ value: Int, at offset: Int) {
            let tens = value / 10
            out[offset] = UInt8(truncatingIfNeeded: 48 + tens)
            out[offset + 1] = UInt8(truncatingIfNeeded: 48 + value - tens * 10)
        }
        pair(year / 100, at: 0); pair(year % 100, at: 2); out[4] = UInt8(ascii: "-")
        pair(month, at: 5); out[7] = UInt8(ascii: "-"); pair(day, at: 8); out[10] = UInt8(ascii: "T")
        pair(secondOfDay / 3600, at: 11); out[13] = UInt8(ascii: ":"); pair(secondOfDay / 60 % 60, at: 14); out[16] = UInt8(ascii: ":")
        pair(secondOfDay % 60, at: 17); out[19] = UInt8(ascii: ".")
        let high = fraction / 100_000  // the first four digits of nine
        let low = fraction - high * 100_000
        pair(high / 100, at: 20); pair(high % 100, at: 22); pair(low / 1000, at: 24); pair(low / 10 % 100, at: 26)
        out[28] = UInt8(truncatingIfNeeded: 48 + low % 10); out[29] = UInt8(ascii: "Z")
        return formattedCount
    }

    /// Nanoseconds since the epoch for `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`; nil otherwise.
    public static func parse(_ text: String) -> Int64? {
        var text = text
        return text.withUTF8 { parse(UnsafeRawBufferPointer($0)) }
    }

    /// ``parse(_:)`` from UTF-8 bytes: an envelope's times are read straight from the message,
    /// with no string made of them.
    public static func parse(_ bytes: UnsafeRawBufferPointer) -> Int64? {
        guard bytes.count >= 20, let base = bytes.baseAddress?.assumingMemoryBound(to: UInt8.self) else { return nil }
        @inline(__always) func number(_ range: Range<Int>) -> Int? {
            guard range.upperBound <= bytes.count else { return nil }
            var value = 0
            for index in range {
                let digit = base[index] &- 48
                guard digit < 10 else { return nil }
                value = value * 10 + Int(digit)
            }
            return value
        }
        guard let year = number(0..<4), bytes[4] == UInt8(ascii: "-"), let month = number(5..<7), bytes[7] == UInt8(ascii: "-"),
            let day = number(8..<10), bytes[10] == UInt8(ascii: "T") || bytes[10] == UInt8(ascii: "t"),
            let hour = number(11..<13), bytes[13] == UInt8(ascii: ":"), let minute = number(14..<16),
            bytes[16] == UInt8(ascii: ":"), let second = number(17..<19),
            (1...12).contains(month), (1...31).contains(day), hour < 24, minute < 60, second <= 60
        else { return nil }
        var index = 19
        var fraction: Int64 = 0
        if index < bytes.count, bytes[index] == UInt8(ascii: ".") {
            index += 1
            var scale: Int64 = 100_000_000
            let start = index
            while index < bytes.count, (48...57).contains(bytes[index]) {
                fraction += Int64(bytes[index] - 48) * scale
                scale /= 10
                index += 1
            }
            guard index > start else { return nil }
        }
        guard index < bytes.count else { return nil }
        var offsetSeconds = 0
        switch bytes[index] {
        case UInt8(ascii: "Z"), UInt8(ascii: "z"):
            guard index + 1 == bytes.count else { return nil }
        case UInt8(ascii: "+"), UInt8(ascii: "-"):
            guard index + 6 == bytes.count, let h = number(index + 1..<index + 3), bytes[index + 3] == UInt8(ascii: ":"),
                let m = number(index + 4..<index + 6)
            else { return nil }
            offsetSeconds = (h * 3600 + m * 60) * (bytes[index] == UInt8(ascii: "+") ? 1 : -1)
        default: return nil
        }
        let days = Int64(daysFromCivil(year: year, month: month, day: day))
        let seconds = days * 86_400 + Int64(hour * 3600 + minute * 60 + second - offsetSeconds)
        // Nanoseconds since 1970 fit an Int64 only from 1677 to 2262: a time outside that (any
        // four-digit year is well-formed) is not an error to trap on but a time this runtime
        // cannot represent, and the envelope carrying it is refused like any other bad one.
        let (nanos, overflowed) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        let (total, overflowedAgain) = nanos.addingReportingOverflow(fraction)
        return overflowed || overflowedAgain ? nil : total
    }

    // Howard Hinnant's civil-calendar algorithms (proleptic Gregorian, any era).
    static func civil(fromDays z: Int) -> (Int, Int, Int) {
        let z = z + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let day = doy - (153 * mp + 2) / 5 + 1
        let month = mp < 10 ? mp + 3 : mp - 9
        return (yoe + era * 400 + (month <= 2 ? 1 : 0), month, day)
    }

    static func daysFromCivil(year: Int, month: Int, day: Int) -> Int {
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yoe = y - era * 400
        let doy = (153 * (month > 2 ? month - 3 : month + 9) + 2) / 5 + day - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        return era * 146_097 + doe - 719_468
    }
}
