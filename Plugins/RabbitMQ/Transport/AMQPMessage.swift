// How a Switchyard message looks in AMQP 0-9-1: CloudEvents in binary content mode, attributes
// as headers with the `cloudEvents_` prefix (the name the CloudEvents AMQP binding and the SDKs'
// RabbitMQ integrations use), `datacontenttype` as the content-type property, the message id as
// message-id, and what AMQP has no field for as `sy-` headers. Mapping: docs/transports.md.

import CRabbitMQ
import Foundation
import SwitchyardPluginKit
import SwitchyardTransportKit

/// Header names the plugins add on the wire.
enum AMQPHeaders {
    static let orderingKey = "sy-ordering-key"
    /// The publisher's header order (keys, comma-separated): AMQP tables hold one value per key.
    static let order = "sy-header-order"
    /// `expires_at_ns`, wall clock (the broker's TTL is set from it as well).
    static let expiresAt = "sy-expires-at"
    /// `sy_message.flags`.
    static let flags = "sy-flags"
    /// The attempt this copy's delivery counts as (a retry queues a copy with one more).
    static let attempt = "sy-attempt"
    /// Reasons of earlier retries, one per line: the dead letter's history.
    static let retryHistory = "sy-retry-history"
    /// Marks the CloudEvents attributes the plugin added to a plain message.
    static let addedCloudEvent = "sy-ce-added"
    /// The CloudEvents attribute prefix on AMQP 0-9-1 (`ce-id` ↔ `cloudEvents_id`).
    static let cloudEventsPrefix = "cloudEvents_"
    /// What AMQP 1.0 producers may use instead.
    static let cloudEventsPrefixColon = "cloudEvents:"
    /// The broker's delivery count (quorum queues): returns to the queue, crashes included.
    static let deliveryCount = "x-delivery-count"
}

/// What a message carries beyond its own fields when the plugin queues it.
struct AMQPExtras {
    /// The attempt its next delivery counts as, before the broker's returns (0: a fresh publish,
    /// which is attempt 1).
    var attempt: UInt32 = 0
    /// Reasons of the retries so far.
    var history: [String] = []
    /// Per-message TTL in milliseconds, if any.
    var expirationMillis: Int64?
}

/// A message read off a queue: the Switchyard message, and what the plugin needs to settle it.
struct AMQPDelivered {
    var message: Message
    var history: [String]
    /// The broker's reason when the broker dead-lettered it (TTL, delivery limit): only on
    /// dead-letter queues, for messages that did not come through the plugin's own dead-lettering.
    var brokerDeadLetterReason: String?
    /// The queue the broker dead-lettered it from (x-death's `queue`), with the reason: on a
    /// topic, the subscriber group's queue, which names the group.
    var brokerDeadLetterQueue: String?
}

enum AMQPMessage {
    /// Fills `properties` for `message` (memory in `arena`).
    static func properties(_ message: MessageView, extras: AMQPExtras, source: String, nowNanos: Int64, arena: AMQPArena) -> amqp_basic_properties_t {
        var properties = amqp_basic_properties_t()
        properties._flags = SY_AMQP_PROPERTY_HEADERS | SY_AMQP_PROPERTY_DELIVERY_MODE | SY_AMQP_PROPERTY_MESSAGE_ID | SY_AMQP_PROPERTY_TIMESTAMP
        properties.delivery_mode = 2  // persistent
        properties.message_id = amqp_bytes_t(len: message.fields.id.len, bytes: UnsafeMutableRawPointer(mutating: message.fields.id.data))
        properties.timestamp = UInt64(max(0, nowNanos / 1_000_000_000))
        var grouped: [(String, [String])] = []
        var position: [String: Int] = [:]
        var order: [String] = []
        var hasCloudEvent = false
        for index in 0..<message.headerCount {
            let header = message.fields.headers[index]
            let key = String(header.key)
            let value = String(header.value)
            order.append(key)
            if key == CloudEventsHeader.specVersion { hasCloudEvent = true }
            if key == "ce-datacontenttype" && properties._flags & SY_AMQP_PROPERTY_CONTENT_TYPE == 0 {
                properties._flags |= SY_AMQP_PROPERTY_CONTENT_TYPE
                properties.content_type = arena.bytes(value)
                continue
            }
            let wireKey = key.hasPrefix("ce-") ? AMQPHeaders.cloudEventsPrefix + key.dropFirst(3) : key
            if let at = position[wireKey] {
                grouped[at].1.append(value)
            } else {
                position[wireKey] = grouped.count
                grouped.append((wireKey, [value]))
            }
        }
        var entries: [(String, AMQPField)] = grouped.map { key, values in
            (key, values.count == 1 ? .string(values[0]) : .array(values.map { .string($0) }))
        }
        if !hasCloudEvent {
            // Every message on the wire is a CloudEvent: plain messages get the required
            // attributes (taken off again on delivery, so a message arrives as it left).
            entries += [
                (AMQPHeaders.cloudEventsPrefix + "specversion", .string("1.0")),
                (AMQPHeaders.cloudEventsPrefix + "id", .string(String(message.fields.id))),
                (AMQPHeaders.cloudEventsPrefix + "source", .string(source)),
                (AMQPHeaders.cloudEventsPrefix + "type", .string("switchyard.message")),
                (AMQPHeaders.addedCloudEvent, .string("1")),
            ]
        }
        if order.count > 1 { entries.append((AMQPHeaders.order, .string(order.joined(separator: ",")))) }
        if let key = message.orderingKey { entries.append((AMQPHeaders.orderingKey, .string(key))) }
        if message.expiresAtNanos > 0 { entries.append((AMQPHeaders.expiresAt, .int(message.expiresAtNanos))) }
        // `settled` describes one delivery, never a stored message.
        let flags = message.flags.subtracting(.settled)
        if flags.rawValue != 0 { entries.append((AMQPHeaders.flags, .int(Int64(flags.rawValue)))) }
        if extras.attempt > 1 { entries.append((AMQPHeaders.attempt, .int(Int64(extras.attempt)))) }
        if !extras.history.isEmpty { entries.append((AMQPHeaders.retryHistory, .string(extras.history.joined(separator: "\n")))) }
        properties.headers = arena.table(entries)
        if let ttl = extras.expirationMillis {
            properties._flags |= SY_AMQP_PROPERTY_EXPIRATION
            properties.expiration = arena.bytes(String(max(0, ttl)))
        }
        return properties
    }

    /// Reads a delivered message as published (headers, id, ordering key, expiry, flags) with its
    /// attempt: attempts before it was queued plus the broker's delivery count.
    static func read(_ envelope: amqp_envelope_t, channel: String, deadLetterChannel: Bool) -> AMQPDelivered {
        let properties = envelope.message.properties
        var byKey: [String: [String]] = [:]
        var keyOrder: [String] = []
        var orderingKey: String?
        var publisherOrder: [String]?
        var addedCloudEvent = false
        var expiresAt: Int64 = 0
        var flags: UInt32 = 0
        var queuedAttempt: Int64 = 0
        var deliveryCount: Int64?
        var history: [String] = []
        var brokerReason: String?
        var brokerQueue: String?
        func add(_ key: String, _ value: String) {
            if byKey[key] == nil { keyOrder.append(key) }
            byKey[key, default: []].append(value)
        }
        if properties._flags & SY_AMQP_PROPERTY_HEADERS != 0 {
            for (key, field) in AMQPField.read(properties.headers) {
                switch key {
                case AMQPHeaders.orderingKey: orderingKey = field.text
                case AMQPHeaders.order: publisherOrder = field.text?.split(separator: ",").map(String.init)
                case AMQPHeaders.addedCloudEvent: addedCloudEvent = true
                case AMQPHeaders.expiresAt: expiresAt = field.text.flatMap { Int64($0) } ?? 0
                case AMQPHeaders.flags: flags = field.text.flatMap { UInt32($0) } ?? 0
                case AMQPHeaders.attempt: queuedAttempt = field.text.flatMap { Int64($0) } ?? 0
                case AMQPHeaders.retryHistory: history = field.text.map { $0.split(separator: "\n").map(String.init) } ?? []
                case AMQPHeaders.deliveryCount: deliveryCount = field.text.flatMap { Int64($0) }
                case "x-death":
                    // The broker's dead-lettering: the latest first, its reason a string.
                    if case .array(let deaths) = field, case .table(let latest)? = deaths.first {
                        brokerReason = latest.first { $0.0 == "reason" }?.1.text
                        brokerQueue = latest.first { $0.0 == "queue" }?.1.text
                    }
                case _ where key.hasPrefix("x-first-death-") || key.hasPrefix("x-last-death-"): continue
                default:
                    var name = key
                    if key.hasPrefix(AMQPHeaders.cloudEventsPrefix) {
                        name = "ce-" + key.dropFirst(AMQPHeaders.cloudEventsPrefix.count)
                    } else if key.hasPrefix(AMQPHeaders.cloudEventsPrefixColon) {
                        name = "ce-" + key.dropFirst(AMQPHeaders.cloudEventsPrefixColon.count)
                    }
                    if case .array(let items) = field {
                        for item in items { if let text = item.text { add(name, text) } }
                    } else if let text = field.text {
                        add(name, text)
                    }
                }
            }
        }
        if properties._flags & SY_AMQP_PROPERTY_CONTENT_TYPE != 0 { add("ce-datacontenttype", String(amqp: properties.content_type)) }
        if addedCloudEvent {
            for key in [CloudEventsHeader.specVersion, CloudEventsHeader.id, CloudEventsHeader.source, CloudEventsHeader.type] { byKey[key] = nil }
        }
        let headers = HeaderOrder.restore(byKey, keyOrder: keyOrder, publisherOrder: publisherOrder)
        // Quorum queues count returns; classic queues only say whether it is one.
        let returns = deliveryCount ?? (envelope.redelivered != 0 ? 1 : 0)
        let attempt = UInt32(clamping: max(1, queuedAttempt) + returns)
        let id =
            properties._flags & SY_AMQP_PROPERTY_MESSAGE_ID != 0 && properties.message_id.len > 0
            ? String(amqp: properties.message_id) : headers.first { $0.key == CloudEventsHeader.id }?.value ?? "amqp-\(envelope.delivery_tag)"
        let body = envelope.message.body.len > 0 ? [UInt8](UnsafeRawBufferPointer(start: envelope.message.body.bytes, count: envelope.message.body.len)) : []
        var message = Message(
            id: id, channel: channel, orderingKey: orderingKey, headers: headers, body: body, attempt: attempt,
            enqueuedAtNanos: Int64(properties.timestamp) * 1_000_000_000)
        message.expiresAtNanos = expiresAt
        message.flags = MessageFlags(rawValue: flags)
        let fromBroker = deadLetterChannel && brokerReason != nil && message.header(DeadLetterHeader.reason) == nil
        return AMQPDelivered(
            message: message, history: history, brokerDeadLetterReason: fromBroker ? brokerReason : nil, brokerDeadLetterQueue: fromBroker ? brokerQueue : nil)
    }
}
