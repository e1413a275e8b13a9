/*
 * switchyard_plugin.h — the Switchyard transport plugin ABI, version 1.
 *
 * This header is the whole contract between the Switchyard host and a transport plugin (a shared
 * object loaded with dlopen). A plugin written in any language that can export a C function and
 * lay out C structs can implement it; nothing else is needed to build one.
 *
 * Compatibility rules (docs/abi.md explains them at length):
 *  - A plugin exports one entry function, SY_PLUGIN_ENTRY_SYMBOL, of type sy_plugin_entry_fn: the
 *    only symbol a host looks up. (A plugin written in Swift or C++ exports its language's own
 *    symbols too; a host loads plugins with RTLD_LOCAL, so that two plugins' copies of a library
 *    never bind to each other.)
 *  - Every struct that may grow starts with `uint32_t struct_size`, set by whoever fills it in.
 *    Structs only ever grow at the end. A reader accepts an older, smaller struct and treats the
 *    fields past its struct_size as absent (zero / NULL); it never reads past struct_size. The
 *    smallest size a reader may accept is the struct's ABI 1.0 size, SY_<STRUCT>_SIZE_V1_0 below.
 *    The easy way to follow the rule: copy min(struct_size, sizeof) bytes into a zeroed local
 *    (sy_read_sized does exactly that) and read the local.
 *  - Arrays of growable structs (publish_batch's messages, deliver_batch's messages,
 *    settle_batch's settlements) are strided by struct_size (ABI 1.3): every element carries the
 *    same struct_size, a multiple of 8 and at least the struct's 1.0 size (refuse the call with
 *    SY_ERR_INVALID_ARGUMENT otherwise; deliver_batch, which returns a count, cannot: the host's
 *    subscriber settles the first message as a dead letter, with the reason, and counts it
 *    taken, so that the same broken batch is not offered for ever; a one-element array has no
 *    stride to check), and element i starts i * struct_size bytes after the
 *    first. A reader walks them with sy_array_at. A host gives a plugin of an older minor (its
 *    descriptor's abi_minor) its publish_batch array at that minor's size: a 1.1 plugin walks it
 *    by its own sizeof(sy_message). deliver_batch exists only from 1.3 on, so a plugin lays its
 *    messages out at its own sizeof.
 *  - Whoever fills a struct zeroes the fields it does not set, `reserved` included. A reader never
 *    reads `reserved` (nor checks it for zero): a later minor may give it a meaning.
 *  - SY_ABI_MAJOR changes only when an existing field changes meaning or position. The host refuses
 *    a plugin of another major. SY_ABI_MINOR grows when fields or functions are appended or
 *    capabilities, flags or codes are added.
 *  - Integer constants are #defines over fixed-width types, never C enums, so their size is fixed.
 *
 * Conventions for every declaration below:
 *  - "borrowed": the callee may read the memory only until the call returns; copy what you keep.
 *  - "static": the memory must stay valid and unchanged for as long as the plugin is loaded
 *    (plugins are never unloaded, so: forever).
 *  - Strings are UTF-8. `sy_str` is length-delimited and NOT NUL-terminated; `const char *` is
 *    NUL-terminated.
 *  - Functions returning `sy_status` return SY_OK on success; on failure they return an error
 *    code and, when `err` is not NULL, fill it in (see sy_error).
 *
 * This header is C99 and C++17 clean under -Wall -Wextra -Werror -pedantic. Helpers are
 * `static inline` on purpose: a helper with external linkage would be exported from every plugin
 * image and could bind to another plugin's copy.
 */
#ifndef SWITCHYARD_PLUGIN_H
#define SWITCHYARD_PLUGIN_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------------------------------------
 * Versions and the entry point
 * ------------------------------------------------------------------------------------------- */

/** ABI major version. A host refuses a plugin whose descriptor carries another major. */
#define SY_ABI_MAJOR 1
/** ABI minor version. Grows when fields are appended to structs or capabilities, flags or codes are
 *  added; older minors stay loadable.
 *  1.1 appended sy_plugin_descriptor.publish_batch.
 *  1.2 appended sy_host_services.dead_lettered.
 *  1.3 appended sy_message.expires_at_ns and .flags (SY_CAP_EXPIRY), sy_subscriber.deliver_batch,
 *      sy_plugin_descriptor.settle_batch and .publish_and_settle, and made arrays of structs strided
 *      by struct_size.
 *  1.4 appended sy_subscribe_options.flags (SY_SUBSCRIBE_SETTLE_ON_DELIVERY) and the message flag
 *      SY_MESSAGE_SETTLED.
 *  1.5 added the capability SY_CAP_PRIVATE_WIRE.
 *  1.6 appended sy_plugin_descriptor.extend (lease renewal).
 *  1.7 appended sy_plugin_descriptor.publish_async (publishing without blocking the caller).
 *  1.8 appended sy_plugin_descriptor.instance_capabilities (what one configured instance keeps).
 *  1.9 appended sy_plugin_descriptor.channel_stats (counts per channel and subscriber group). */
#define SY_ABI_MINOR 9

/** Name of the one symbol a plugin exports: a function of type `sy_plugin_entry_fn`. */
#define SY_PLUGIN_ENTRY_SYMBOL "switchyard_plugin_entry"

/** Longest plugin name, in bytes, without the terminating NUL. Names match `[a-z0-9-]+`, start
 *  with a letter and do not end with '-'. */
#define SY_PLUGIN_NAME_MAX 63

/** Size of the message buffer in sy_error, including the terminating NUL. */
#define SY_ERROR_MESSAGE_CAPACITY 512

/**
 * Put in front of the entry point's definition so that it is exported with C linkage and default
 * visibility from C and C++ alike (a C++ plugin without `extern "C"` exports a mangled name the
 * host cannot find; a plugin built with -fvisibility=hidden exports nothing):
 *
 *     SY_PLUGIN_EXPORT const sy_plugin_descriptor *switchyard_plugin_entry(uint32_t host_abi_major) { ... }
 */
#ifdef __cplusplus
#define SY_PLUGIN_EXPORT extern "C" __attribute__((visibility("default")))
#else
#define SY_PLUGIN_EXPORT __attribute__((visibility("default")))
#endif

struct sy_plugin_descriptor;

/**
 * The plugin entry point, exported as SY_PLUGIN_ENTRY_SYMBOL.
 *
 * `host_abi_major` is the SY_ABI_MAJOR the host was built with. Return a pointer to a static
 * descriptor whose `abi_major` equals it, or NULL to refuse to load (for example when the plugin
 * supports only another major). The host calls it once per load, from one thread, before anything
 * else; it must not block or call back into the host.
 */
typedef const struct sy_plugin_descriptor *(*sy_plugin_entry_fn)(uint32_t host_abi_major);

/* ---------------------------------------------------------------------------------------------
 * Status codes and errors
 * ------------------------------------------------------------------------------------------- */

/** Result of every fallible ABI function. 0 is success; the others say what kind of failure. */
typedef int32_t sy_status;

#define SY_OK 0                     /**< Success. */
#define SY_ERR_INVALID_ARGUMENT 1   /**< A NULL, empty or malformed argument. */
#define SY_ERR_CONFIG 2             /**< The instance config is malformed; the message names the key. */
#define SY_ERR_UNSUPPORTED 3        /**< The plugin does not do this (see its capabilities). */
#define SY_ERR_NOT_FOUND 4          /**< Unknown subscription or delivery id. */
#define SY_ERR_FULL 5               /**< Bounded capacity reached; nothing was stored. */
#define SY_ERR_TOO_LARGE 6          /**< A message or header exceeds a configured limit. */
#define SY_ERR_TIMEOUT 7            /**< A deadline passed before the work finished. */
#define SY_ERR_CLOSED 8             /**< The instance is draining or destroyed. */
#define SY_ERR_IO 9                 /**< Storage or network failure; the operation did not happen. */
#define SY_ERR_UNAVAILABLE 10       /**< A remote dependency cannot be reached right now. */
#define SY_ERR_INTERNAL 11          /**< A bug or an impossible state inside the plugin. */

/**
 * Error out-parameter. Owned by the caller (usually on its stack), filled in by the callee on
 * failure. The callee writes `code` and a NUL-terminated, one-line, human-readable `message`
 * (truncated to fit), and never writes past `message[SY_ERROR_MESSAGE_CAPACITY - 1]`.
 * The callee must leave it untouched on success.
 */
typedef struct sy_error {
    sy_status code;                               /**< Same value the function returned. */
    char message[SY_ERROR_MESSAGE_CAPACITY];      /**< One line, NUL-terminated, UTF-8. */
} sy_error;

/**
 * Fills `err` (when not NULL) with `code` and `message` (copied, truncated to fit, NUL-terminated)
 * and returns `code`, so a callee can write `return sy_error_set(err, SY_ERR_FULL, "queue full");`.
 */
static inline sy_status sy_error_set(sy_error *err, sy_status code, const char *message) {
    if (err != NULL) {
        size_t n = 0;
        err->code = code;
        if (message != NULL) {
            n = strlen(message);
            if (n > SY_ERROR_MESSAGE_CAPACITY - 1) n = SY_ERROR_MESSAGE_CAPACITY - 1;
            memcpy(err->message, message, n);
        }
        err->message[n] = '\0';
    }
    return code;
}

/* ---------------------------------------------------------------------------------------------
 * Plain data
 * ------------------------------------------------------------------------------------------- */

/** A UTF-8 string slice, not NUL-terminated. `data` may be NULL only when `len` is 0.
 *  Ownership is stated wherever the type is used. */
typedef struct sy_str {
    const char *data;
    size_t len;
} sy_str;

/** A byte slice. `data` may be NULL only when `len` is 0. Ownership is stated where used. */
typedef struct sy_bytes {
    const uint8_t *data;
    size_t len;
} sy_bytes;

/** One message header. Keys are case-sensitive; a key may repeat. */
typedef struct sy_header {
    sy_str key;
    sy_str value;
} sy_header;

/** Makes an sy_str from a NUL-terminated string (or NULL, giving the empty slice). */
static inline sy_str sy_str_from_cstr(const char *s) {
    sy_str out;
    out.data = s;
    out.len = (s != NULL) ? strlen(s) : 0;
    return out;
}

/** sy_message.flags: when the message expires, drop it instead of dead-lettering it (a reply
 *  whose caller stopped waiting is of no use to anyone). */
#define SY_MESSAGE_DROP_WHEN_EXPIRED ((uint32_t)1 << 0)
/** sy_message.flags, on a delivery only (1.4): the transport removed the message as it handed it
 *  over (a subscription with SY_SUBSCRIBE_SETTLE_ON_DELIVERY). The subscriber does not settle this
 *  delivery; a settle of it returns SY_ERR_NOT_FOUND. A delivery without the flag is settled as
 *  always, even on such a subscription (a transport may honor the option for some deliveries and
 *  not others, or not at all). Meaningless on publish: a transport ignores it there and never
 *  stores it. */
#define SY_MESSAGE_SETTLED ((uint32_t)1 << 1)

/**
 * A message as it crosses the boundary.
 *
 * Ownership: every pointer inside is borrowed. On `publish` the plugin may read it only until
 * publish returns. On delivery (sy_subscriber.deliver) the host may read it only until deliver
 * returns. Whoever keeps a message copies it.
 *
 * Times are nanoseconds since the Unix epoch (UTC), as given by sy_host_services.now_ns.
 *
 * `deliver_at_ns` in the future on a plugin without SY_CAP_DELAY: the plugin delivers the message
 * now (the host never routes a delayed call to such a plugin; a delay decorator in front of it
 * holds the message until it is due). `expires_at_ns` on a plugin without SY_CAP_EXPIRY: the
 * plugin ignores it, and the host's receiver of typed calls dead-letters, unrun, a call whose
 * deadline has passed when it arrives (the call's envelope carries the deadline that the host
 * set `expires_at_ns` from).
 */
typedef struct sy_message {
    uint32_t struct_size;       /**< sizeof(sy_message) as the writer knows it. */
    uint32_t attempt;           /**< Deliveries so far, this one included (1 on the first). Set by
                                     the transport on delivery; on publish, the attempt the sender
                                     wants to record (0 or 1 for a new message). Travels with the
                                     message, so it survives restarts of durable transports. */
    sy_str id;                  /**< Unique message id, chosen by the publisher. Required. */
    sy_str channel;             /**< Destination channel (queue or topic name). Required. */
    sy_str ordering_key;        /**< Messages sharing a non-empty key are delivered one at a time
                                     in publish order within a subscriber group. Empty: no order. */
    const sy_header *headers;   /**< `header_count` headers; NULL when `header_count` is 0. */
    size_t header_count;
    sy_bytes body;              /**< Opaque payload. */
    int64_t deliver_at_ns;      /**< Earliest delivery time; 0 or a past time means now. */
    int64_t enqueued_at_ns;     /**< When the transport accepted it. Set by the transport on
                                     delivery; ignored on publish. */

    /* ---- ABI 1.3 (present when SY_SIZE_THROUGH(sy_message, flags) <= struct_size) ---- */

    int64_t expires_at_ns;      /**< 0: never. Wall clock (now_ns). Otherwise a transport with
                                     SY_CAP_EXPIRY never delivers the message at or after this
                                     time: it dead-letters it with reason "expired"
                                     (SY_SETTLE_DEAD_LETTER's path, reported through
                                     sy_host_services.dead_lettered; without SY_CAP_DEAD_LETTER it
                                     drops it), or drops it when `flags` has
                                     SY_MESSAGE_DROP_WHEN_EXPIRED, and it does so even when nobody
                                     subscribes to the channel (within a minute). It keeps both
                                     fields with the message and hands them over on delivery; a dead
                                     letter's copy has neither (dead letters never expire). The host
                                     sets them from a call's deadline. */
    uint32_t flags;             /**< SY_MESSAGE_* bits; unknown bits are kept and ignored. */
    uint32_t reserved;          /**< Zero. */
} sy_message;

/* ---------------------------------------------------------------------------------------------
 * Capabilities
 * ------------------------------------------------------------------------------------------- */

/** Capability flags a plugin declares in its descriptor. The host refuses configuration that
 *  needs a capability the plugin does not declare. Unknown bits are ignored by older hosts. */
typedef uint64_t sy_capabilities;

#define SY_CAP_QUEUE ((sy_capabilities)1 << 0)       /**< Competing consumers: one delivery per message per group. */
#define SY_CAP_FANOUT ((sy_capabilities)1 << 1)      /**< Every subscriber group gets its own copy. */
#define SY_CAP_DELAY ((sy_capabilities)1 << 2)       /**< Honors deliver_at_ns in the future. */
#define SY_CAP_RETRY ((sy_capabilities)1 << 3)       /**< Timed redelivery: honors SY_SETTLE_RETRY's retry_after_ns and
                                                          the visibility timeout, without holding back other messages,
                                                          and keeps each message's attempt count (its retry reasons too,
                                                          where it also dead-letters: they go into the dead letter's
                                                          history). */
#define SY_CAP_DEAD_LETTER ((sy_capabilities)1 << 4) /**< SY_SETTLE_DEAD_LETTER moves the message to a dead-letter channel. */
#define SY_CAP_DURABLE ((sy_capabilities)1 << 5)     /**< A successful publish survives a process crash. A capability of
                                                          the plugin: one that stores durably only when its config says so
                                                          (the bundled queue, topic and delay with `path`) declares it, and
                                                          keeps the promise only where so configured — which its
                                                          instance_capabilities (1.8) tells the host, per instance. */
#define SY_CAP_ORDERED ((sy_capabilities)1 << 6)     /**< Honors ordering_key. */
#define SY_CAP_WRAPS_INNER ((sy_capabilities)1 << 7) /**< A decorator: needs an inner transport at creation. */
#define SY_CAP_EXPIRY ((sy_capabilities)1 << 8)      /**< Honors expires_at_ns and SY_MESSAGE_DROP_WHEN_EXPIRED (1.3).
                                                          Decorators pass both fields through to their inner. */
#define SY_CAP_PRIVATE_WIRE ((sy_capabilities)1 << 9) /**< Only Switchyard hosts read this transport's messages: its store
                                                           is its own (memory, its own file), not a broker other systems
                                                           share. The host then writes typed calls and their replies in
                                                           the envelope's compact form (docs/envelope.md), not as
                                                           CloudEvents headers.
                                                           Decided by the innermost plugin of a chain; decorators leave it
                                                           out. Hosts older than 1.5 ignore it. */

/* ---------------------------------------------------------------------------------------------
 * Host services, handed to every instance at creation
 * ------------------------------------------------------------------------------------------- */

/** Log levels for sy_host_services.log, in increasing severity. */
#define SY_LOG_TRACE 0
#define SY_LOG_DEBUG 1
#define SY_LOG_INFO 2
#define SY_LOG_NOTICE 3
#define SY_LOG_WARNING 4
#define SY_LOG_ERROR 5

/** Metric kinds for sy_host_services.metric. */
#define SY_METRIC_COUNTER 0   /**< Adds `value` (0 to 2^63) to a counter. */
#define SY_METRIC_GAUGE 1     /**< Sets a gauge to `value` (finite). */
#define SY_METRIC_TIMER_NS 2  /**< Records one duration of `value` nanoseconds (0 to 2^63). A value
                                   out of its kind's range, NaN or infinite is ignored, with a
                                   warning once per metric. */

/**
 * Services the host lends a plugin instance: logging, clocks, metrics, dead-letter reports (1.2).
 * Plugins never look host
 * symbols up by name; everything they may call on the host is here.
 *
 * Ownership: owned by the host; the pointer given at creation stays valid until `destroy` of that
 * instance returns. Threading: every function may be called from any thread, concurrently, and
 * returns promptly: none waits for the network or a disk sync, but `log` and `dead_lettered`
 * write a log line (to the host's log output, stderr by default, or to the parent process under
 * isolation), which a stalled reader of that output can hold up. Keep them off paths where a
 * lock of yours is held. None may be called after `destroy` returns.
 * The 1.0 functions (log, now_ns, monotonic_ns, metric) are never NULL: call them without a check.
 * Read a later one only through SY_HOST_SERVICES_HAS (an older host's struct ends before it).
 */
typedef struct sy_host_services {
    uint32_t struct_size;     /**< sizeof(sy_host_services) as the host knows it. */
    uint16_t abi_major;       /**< The host's SY_ABI_MAJOR. */
    uint16_t abi_minor;       /**< The host's SY_ABI_MINOR. */
    void *host_context;       /**< Opaque; pass it back as the first argument of every call. */

    /** Logs one line. `message` is borrowed and NUL-terminated. The host adds the transport name. */
    void (*log)(void *host_context, int32_t level, const char *message);

    /** Wall-clock time, nanoseconds since the Unix epoch. Use it for message timestamps. */
    int64_t (*now_ns)(void *host_context);

    /** Monotonic time in nanoseconds: CLOCK_MONOTONIC on Linux (so drain's deadline can go straight
     *  to pthread_cond_timedwait on a condition variable set to CLOCK_MONOTONIC). Use it for
     *  timeouts and deadlines. */
    int64_t (*monotonic_ns)(void *host_context);

    /** Records a metric. `name` is borrowed and NUL-terminated (e.g. "published"); `kind` is a
     *  SY_METRIC_* value. Switchyard's host records it as `switchyard_transport_<name>` with a
     *  `transport` label holding the transport's name. A name has one kind in the whole process:
     *  the first kind reported wins, and a later report under another kind is dropped (logged
     *  once). Counters and timers take whole numbers from 0 to 2^63 (a fraction is cut off);
     *  a value that is not finite is dropped. */
    void (*metric)(void *host_context, int32_t kind, const char *name, double value);

    /* ---- ABI 1.2 (present when SY_SIZE_THROUGH(sy_host_services, dead_lettered) <= struct_size) ---- */

    /**
     * Tells the host that the instance has just moved a message to a dead-letter channel —
     * whatever the reason: a SY_SETTLE_DEAD_LETTER settlement, its own retry limit, a message it
     * could not read. Call it once per message, after the message is stored there. For a
     * dead-lettering that a settle asked for, call it before that settle returns (the host
     * recognises the dead letters it asked for itself only while its settle runs; a later report
     * of one is answered and logged a second time). Any thread; do not hold a lock that publish
     * or settle takes. Returns promptly: the host logs and counts the dead letter and, when the
     * message is a call whose caller still waits for a reply, answers that caller from a thread
     * of its own (so the caller hears at once instead of at its deadline).
     *
     * `message` is the message as it now stands in the dead-letter channel, borrowed for the
     * call: its `channel` is the dead-letter channel, and its headers are ALL of the original's
     * (the host reads the call's `ce-id`, `ce-type`, `ce-sytarget`, `ce-syreplyto` and
     * `ce-sydeadline` from them) plus the plugin's own record of why — the bundled plugins add
     * `sy-dlq-reason`, `sy-dlq-channel`, `sy-dlq-attempts` (deliveries made; the host prefers it
     * to `message->attempt`), `sy-dlq-at` and `sy-dlq-history`, which `switchyard dlq` shows,
     * and on fan-out transports `sy-dlq-group`: the subscriber group whose copy it was (empty for
     * the default group), so that `switchyard dlq replay` sends it to that group alone.
     * `reason` is borrowed. Decorators that hand dead-lettering to their inner transport do not
     * call it: whoever stores the message does. NULL in a host older than 1.2, whose table is
     * also smaller: check struct_size first (sy_host_dead_lettered does both).
     */
    void (*dead_lettered)(void *host_context, const sy_message *message, sy_str reason);
} sy_host_services;

/** True when the host's services table is large enough to hold `field` (an ABI minor that has
 *  it) and the host set it. */
#define SY_HOST_SERVICES_HAS(host, field) \
    ((host)->struct_size >= offsetof(sy_host_services, field) + sizeof((host)->field) && (host)->field != NULL)

/** Reports a dead letter to the host when the host knows the service (ABI 1.2 and later);
 *  does nothing with an older host. See sy_host_services.dead_lettered. */
static inline void sy_host_dead_lettered(const sy_host_services *host, const sy_message *message, sy_str reason) {
    if (host != NULL && SY_HOST_SERVICES_HAS(host, dead_lettered)) host->dead_lettered(host->host_context, message, reason);
}

/* ---------------------------------------------------------------------------------------------
 * Subscriptions and settlement
 * ------------------------------------------------------------------------------------------- */

/** Identifies one delivery of one message within an instance; chosen by the plugin. Never 0.
 *  Unique among the instance's deliveries that are not yet settled — and a delivery released
 *  (by drain, unsubscribe or a refusal; after a visibility timeout too, where the transport can
 *  tell) is dead for good: a late settle of it returns SY_ERR_NOT_FOUND. So never reuse an id
 *  while its old holder could still settle it; an increasing counter per instance is the simple
 *  way. */
typedef uint64_t sy_delivery_id;

/** Identifies one subscription within an instance; chosen by the plugin. Never 0. */
typedef uint64_t sy_subscription_id;

/**
 * The receiving side of a subscription, given by whoever subscribes (the host, or a decorator
 * plugin subscribing to its inner transport).
 *
 * Ownership: the subscriber owns `context`; the plugin copies this struct at subscribe and may
 * call `deliver` until `unsubscribe` (or `destroy`) of that subscription returns.
 */
typedef struct sy_subscriber {
    uint32_t struct_size;     /**< sizeof(sy_subscriber) as the subscriber knows it. */
    void *context;            /**< Opaque; passed back as the first argument of deliver. */

    /**
     * Hands one message to the subscriber. `message` is borrowed until deliver returns.
     * Returns SY_OK when the subscriber took the delivery: it will settle `delivery` exactly once,
     * possibly from inside this call and from any thread (never, when the message carries
     * SY_MESSAGE_SETTLED). Any other status means it refused
     * (for example while draining): the plugin treats the delivery as released.
     *
     * Threading: the plugin may call it from any thread, concurrently for different deliveries,
     * including the thread inside `publish`, `subscribe` or `settle` (the C template delivers
     * there), as long as it holds no lock that a settling or publishing function would take: the
     * subscriber may settle and publish from inside deliver — `settle`, `settle_batch`,
     * `publish`, `publish_batch`, `publish_and_settle` and `extend` (the host's subscriber settles
     * a batch with `settle_batch` from inside `deliver_batch`). A subscriber therefore never
     * blocks in deliver waiting for its own publishes.
     */
    sy_status (*deliver)(void *context, sy_delivery_id delivery, const sy_message *message);

    /* ---- ABI 1.3 (present when SY_SIZE_THROUGH(sy_subscriber, deliver_batch) <= struct_size) ---- */

    /**
     * Hands `count` messages (count >= 1) in one call: `deliveries[i]` is the delivery of the
     * message at sy_array_at(messages, i). All are borrowed until it returns. Optional: NULL, or
     * absent in an older subscriber, means the plugin calls `deliver` once per message.
     *
     * Returns how many of the deliveries, from the first, the subscriber took (0..count; a larger
     * value means count): it will settle each of those exactly once, as with deliver (except
     * those carrying SY_MESSAGE_SETTLED). The plugin
     * treats the rest as released, as if deliver had refused them: their delivery ids are dead
     * (settling one gives SY_ERR_NOT_FOUND), their attempts are not counted, and they are offered
     * again later, in the same order. A subscriber refuses for one reason only, that it cannot
     * take more now (draining, full); there is no error to report. A batch holds at most as many
     * messages as the subscription's max_in_flight leaves room for, and, on a plugin that declares
     * SY_CAP_ORDERED, at most one message per ordering key and group (the next of a key waits for
     * this one's settlement, as with single deliveries; a plugin without it ignores ordering
     * keys). A plugin may use deliver and deliver_batch on the same subscription, as it
     * likes. Same threading rules as deliver.
     */
    size_t (*deliver_batch)(void *context, const sy_delivery_id *deliveries, const sy_message *messages, size_t count);
} sy_subscriber;

/** Where a new subscriber group starts on a transport that keeps history (a durable topic). */
#define SY_START_NEW 0        /**< Only messages published after the group was created. */
#define SY_START_EARLIEST 1   /**< Every message the transport still keeps. */

/**
 * What to subscribe to. Borrowed for the duration of `subscribe`.
 * Fields left 0 take the instance's configured defaults.
 */
typedef struct sy_subscribe_options {
    uint32_t struct_size;         /**< sizeof(sy_subscribe_options) as the caller knows it. */
    uint32_t max_in_flight;       /**< Prefetch: most unsettled deliveries at once (backpressure). */
    sy_str channel;               /**< Channel to consume. Required. */
    sy_str group;                 /**< Subscriber group: members compete for each message; every
                                       group gets its own copy on fan-out transports. Empty means
                                       the default group. */
    int64_t visibility_timeout_ns;/**< An unsettled delivery is redelivered after this long. */
    int32_t start;                /**< SY_START_* for a group the transport has not seen before. */
    uint32_t reserved;            /**< Zero. Padding before 1.4 (inside an older writer's
                                       struct_size, so it may hold anything there): never read. */

    /* ---- ABI 1.4 (present when SY_SIZE_THROUGH(sy_subscribe_options, flags) <= struct_size) ---- */

    uint64_t flags;               /**< SY_SUBSCRIBE_* bits; a transport ignores bits it does not know. */
} sy_subscribe_options;

/**
 * sy_subscribe_options.flags (1.4): settle each delivery as it is handed over — at most once.
 * The transport may remove a message from storage when it delivers it, in the same step that
 * takes it (one write on a durable transport instead of a lease and then an acknowledgement), and
 * marks each delivery it treated so with SY_MESSAGE_SETTLED. Such a delivery is never redelivered:
 * if the subscriber loses it, it is gone. For subscribers with nothing to redo, such as the host's
 * reply channels (a reply is handed to a waiting call in memory; if the caller's process dies, so
 * does the call). A transport that cannot, or a decorator that does not pass the option on,
 * delivers without the flag and the subscriber settles as usual. What deliver_batch refuses of
 * such deliveries is stored again, attempt uncounted, and offered later (possibly after newer
 * messages). A transport that stores again what was refused must keep per-key order and other
 * groups' copies intact: the SDK's broker takes only messages without an ordering key, on
 * transports that do not fan out, and leases the rest as usual (delivered unmarked).
 */
#define SY_SUBSCRIBE_SETTLE_ON_DELIVERY ((uint64_t)1 << 0)

/** Settlement outcomes. */
#define SY_SETTLE_ACK 0          /**< Done; remove the message. */
#define SY_SETTLE_RETRY 1        /**< Failed; deliver again after `retry_after_ns`, counting an
                                      attempt. Must not hold back the messages behind it. */
#define SY_SETTLE_DEAD_LETTER 2  /**< Give up now; move to the dead-letter channel with `reason`. */
#define SY_SETTLE_RELEASE 3      /**< Give it back untouched, without counting an attempt (e.g.
                                      during shutdown); redelivered as soon as possible. */
/* An outcome (or a SY_START_* value) the plugin does not know is refused with
 * SY_ERR_INVALID_ARGUMENT, never guessed at: a later minor that adds one uses it only with
 * plugins whose descriptor's abi_minor has it. (Flags are the other way round: unknown bits are
 * ignored.) */

/** How one delivery ends. Borrowed for the duration of `settle`. On a plugin without
 *  SY_CAP_RETRY, SY_SETTLE_RETRY makes the message ready again after `retry_after_ns` at best
 *  (a plugin that cannot wait redelivers at once) and counts the attempt; without
 *  SY_CAP_DEAD_LETTER, SY_SETTLE_DEAD_LETTER removes the message as SY_SETTLE_ACK would and logs a
 *  warning (it has nowhere to keep it). A route's retry policy needs SY_CAP_RETRY (the host
 *  refuses the route otherwise), but the host settles with these outcomes on any plugin where it
 *  must end a delivery: a failed fire-and-forget call, a call it refuses or cannot read, an
 *  expired call (dead letters); an inbox it cannot reach (a retry). So every plugin follows
 *  these rules. */
typedef struct sy_settlement {
    uint32_t struct_size;     /**< sizeof(sy_settlement) as the caller knows it. */
    int32_t outcome;          /**< SY_SETTLE_* */
    int64_t retry_after_ns;   /**< With SY_SETTLE_RETRY: the delay before the next attempt. */
    sy_str reason;            /**< With SY_SETTLE_RETRY or SY_SETTLE_DEAD_LETTER: why (the last
                                   error). Kept with the message's attempt history. */
} sy_settlement;

/** Counters an instance reports. The caller sets `struct_size`; the plugin fills the fields that
 *  fit inside it and leaves the rest alone. Counters are totals since creation. */
typedef struct sy_stats {
    uint32_t struct_size;
    uint32_t reserved;        /**< Zero. */
    uint64_t published;
    uint64_t delivered;
    uint64_t acked;
    uint64_t retried;
    uint64_t dead_lettered;
    uint64_t released;
    uint64_t in_flight;       /**< Deliveries handed out and not yet settled, now. */
    uint64_t depth;           /**< Messages stored and not yet delivered, now. */
} sy_stats;

/** One channel's messages in one subscriber group, as `channel_stats` reports them (ABI 1.9). The
 *  plugin fills it (struct_size = its sizeof, fields it does not set zero) and lends it for the
 *  callback; a reader copies it with sy_read_sized and SY_CHANNEL_STATS_SIZE_V1_9. Counts are now,
 *  like sy_stats' depth and in_flight, and may be a moment old where the engine counts lazily. */
typedef struct sy_channel_stats {
    uint32_t struct_size;
    uint32_t reserved;        /**< Zero. */
    sy_str channel;           /**< The channel (`payments`, or its dead-letter channel `payments.dlq`). */
    sy_str group;             /**< The subscriber group whose copies these are on a fan-out
                                   transport (a topic); empty where every subscriber shares one
                                   copy (a queue, a dead-letter channel). */
    uint64_t depth;           /**< Messages stored and not yet delivered, retries waiting for
                                   their backoff included. */
    uint64_t in_flight;       /**< Deliveries handed out and not yet settled. */
    uint64_t waiting;         /**< Of depth: those not due yet (a retry's backoff, a later
                                   deliver_at the transport keeps itself), where the transport can
                                   tell; 0 where it cannot (a broker that keeps a message waiting
                                   for its retry unacknowledged counts it in in_flight). */
} sy_channel_stats;

/** Receives one channel's counts from `channel_stats`, on the thread that called it, before it
 *  returns. `stats` is borrowed for the call. `context` is the caller's. */
typedef void (*sy_channel_stats_fn)(void *context, const sy_channel_stats *stats);

/* ---------------------------------------------------------------------------------------------
 * Instances
 * ------------------------------------------------------------------------------------------- */

/** An existing transport instance, handed to a decorator as its inner transport. The decorator
 *  calls the inner through `plugin`'s functions with `instance` as the first argument. Both
 *  pointers stay valid until the decorator's `destroy` returns; the host destroys the inner only
 *  after the decorator. `plugin` is the host's validated copy of the inner plugin's descriptor,
 *  zero past what that plugin declared: a function it lacks reads NULL. The copy is as large as
 *  the host's own descriptor: from a host of an older minor, check
 *  SY_SIZE_THROUGH(sy_plugin_descriptor, FIELD) <= plugin->struct_size before reading a field
 *  of a later minor (a 1.7 host's copy ends before instance_capabilities, a 1.8 host's before
 *  channel_stats). What the inner instance keeps: its instance_capabilities when present, else the
 *  copy's `capabilities`. */
typedef struct sy_transport_ref {
    const struct sy_plugin_descriptor *plugin;
    void *instance;
} sy_transport_ref;

/** Everything `create` receives. Borrowed for the duration of `create`, except `host`, which
 *  stays valid until `destroy` returns (see sy_host_services), and `inner` (see sy_transport_ref). */
typedef struct sy_create_args {
    uint32_t struct_size;         /**< sizeof(sy_create_args) as the host knows it. */
    uint32_t reserved;            /**< Zero. */
    sy_str instance_name;         /**< The transport's name in the host config (for logs). */
    sy_str config_json;           /**< The plugin's own config as one JSON object ("{}" if none). */
    const sy_host_services *host; /**< Never NULL. */
    const sy_transport_ref *inner;/**< The inner transport for decorators, NULL otherwise. */
} sy_create_args;

/**
 * Told the outcome of one `publish_async` (ABI 1.7), exactly once: `status` is SY_OK once every
 * message is stored as `publish_batch` would store it, otherwise the error that stored none of
 * them, described by `err` (never NULL then; NULL with SY_OK). `err` is borrowed for the call.
 * `done_context` is the pointer the caller (the host, or a decorator) passed to publish_async.
 *
 * Called on any thread: a thread of the plugin's (a durable store's, once its commit is synced) or
 * the publishing thread itself, before publish_async returns (an in-memory store answers at
 * once, and every error found before anything is queued is told this way). It must return
 * promptly — it may hold up the plugin's next commit — and must not call into the same instance
 * (a host resumes whatever waited for the publish elsewhere).
 */
typedef void (*sy_publish_done_fn)(void *done_context, sy_status status, const sy_error *err);

/**
 * The plugin descriptor, returned by the entry point. Static: it must stay valid and unchanged
 * while the plugin is loaded (forever).
 *
 * The host reads `struct_size`, `abi_major` and `abi_minor` first and nothing else until they
 * pass: the descriptor must be at least large enough for the fields of the minor it claims.
 *
 * Threading, for every function below unless it says otherwise: may be called from any thread and
 * concurrently with every other function on the same instance, except that no call on an instance
 * overlaps or follows its `destroy`. Functions that take a deadline or may wait (drain) say so;
 * all others return promptly.
 */
typedef struct sy_plugin_descriptor {
    uint32_t struct_size;         /**< sizeof(sy_plugin_descriptor) as the plugin knows it. */
    uint16_t abi_major;           /**< SY_ABI_MAJOR the plugin was built for. */
    uint16_t abi_minor;           /**< SY_ABI_MINOR the plugin was built for. */

    const char *name;             /**< Static. Unique plugin name, `[a-z0-9-]`, at most
                                       SY_PLUGIN_NAME_MAX bytes. Config selects plugins by it. */
    const char *version;          /**< Static. Semantic version of the plugin, e.g. "1.2.0". */
    const char *description;      /**< Static. One line for `switchyard plugins list`. */
    sy_capabilities capabilities; /**< SY_CAP_* flags. */

    /**
     * Creates an instance from `args`. On success stores an opaque instance pointer (never NULL)
     * in `*out_instance` and returns SY_OK. On failure returns an error (SY_ERR_CONFIG naming the
     * offending key for bad config, as "config key 'NAME': what is wrong", which hosts turn into
     * the key's line in their config file) and leaves `*out_instance` untouched. Required.
     */
    sy_status (*create)(const sy_create_args *args, void **out_instance, sy_error *err);

    /**
     * Destroys an instance: stops deliveries (no deliver call is running or will start once it
     * returns), releases unsettled deliveries, frees everything. Whatever would keep another
     * instance or process from opening the same store (open files and their locks, a listening
     * socket) is let go before it returns, not later by a thread of the plugin's: the host may
     * create the next instance on it at once. The host calls it at most once, after every other
     * call on the instance has returned. (Switchyard's host waits 10 s for calls still running
     * in the plugin; should one still run then, it never destroys the instance, which keeps what
     * it holds until the process exits, and says so in its log.) Required.
     */
    void (*destroy)(void *instance);

    /**
     * Accepts one message. Returns SY_OK only once the message is stored as the capabilities
     * promise (committed to disk when SY_CAP_DURABLE). `message` is borrowed. SY_ERR_FULL when
     * bounded capacity is reached, SY_ERR_CLOSED while draining. Required.
     */
    sy_status (*publish)(void *instance, const sy_message *message, sy_error *err);

    /**
     * Starts delivering `options->channel` to `subscriber`, as a member of `options->group`.
     * `options` is borrowed; `*subscriber` is copied. Stores a non-zero id in `*out_id`. Required.
     * A subscribe that fails has delivered nothing to `subscriber` and never will: the caller
     * frees the subscriber's context as soon as it returns (check everything that can fail
     * before the first delivery, which may run inside this call).
     */
    sy_status (*subscribe)(void *instance, const sy_subscribe_options *options,
                           const sy_subscriber *subscriber, sy_subscription_id *out_id,
                           sy_error *err);

    /**
     * Stops a subscription. When it returns, no deliver call for it is running or will start
     * (it must not be called from inside that subscription's own deliver). Its unsettled
     * deliveries are released for redelivery to other members of the group. Required.
     */
    sy_status (*unsubscribe)(void *instance, sy_subscription_id id, sy_error *err);

    /**
     * Settles one delivery, exactly once. `settlement` is borrowed. May be called from inside
     * `deliver`, with any outcome: the message handed to that deliver stays borrowed by the
     * subscriber until deliver returns, so an ack inside it must not free what the message points
     * into before then (the C template marks the message and frees it when deliver returns). A
     * message given back inside its own deliver (release, retry) is offered again on a later
     * round, never from inside this settle; a plugin that delivers on the caller's thread must not
     * re-offer it there without end (a subscriber that keeps giving back would hold `publish`
     * forever: the conformance check give-back-inside-deliver). An outcome the plugin lacks the
     * capability for (SY_CAP_RETRY, SY_CAP_DEAD_LETTER) is never refused with
     * SY_ERR_UNSUPPORTED, which would leave the delivery unsettled: sy_settlement says what it
     * does there, and settle returns SY_OK as for any outcome — other errors only when the
     * transport itself failed (a broker unreachable), and then the delivery is as it was in the
     * transport: given back when its visibility timeout runs out (a caller that settles it again
     * may find it, or get SY_ERR_NOT_FOUND from a layer that forgot it, such as an isolation
     * proxy).
     * SY_ERR_NOT_FOUND for an unknown, already settled or released delivery. Required.
     */
    sy_status (*settle)(void *instance, sy_delivery_id delivery, const sy_settlement *settlement,
                        sy_error *err);

    /**
     * Drains before shutdown: stops starting new deliveries and refuses new publishes with
     * SY_ERR_CLOSED, then waits until every delivery is settled or the monotonic clock
     * (sy_host_services.monotonic_ns, not now_ns) reaches `deadline_ns`; deliveries still
     * unsettled then are released, and a later `settle` of one of them returns SY_ERR_NOT_FOUND.
     * Returns SY_ERR_TIMEOUT when it had to release any. Blocks the calling thread. A
     * `deadline_ns` already past (or 0) releases what is unsettled at once. A delivery whose
     * deliver call is still running at the deadline may stay in flight (its subscriber may still
     * settle it) or be released, as the plugin can; either way drain returns SY_ERR_TIMEOUT.
     * After drain the instance stays closed until `destroy`: publishes get SY_ERR_CLOSED and
     * nothing is delivered (a subscribe is refused with SY_ERR_CLOSED, or succeeds and receives nothing). Optional (NULL: the
     * host skips it). Switchyard's runtime does not call it when it shuts down: it drains its own
     * subscriptions (releasing the deliveries it holds with SY_SETTLE_RELEASE), unsubscribes and
     * destroys, so what must happen at shutdown belongs in `unsubscribe` and `destroy`. The
     * conformance kit calls it, and so does a plugin host process under isolation when told to.
     */
    sy_status (*drain)(void *instance, int64_t deadline_ns, sy_error *err);

    /** Fills `out` with counters (see sy_stats for the size rule). Optional (NULL: none). */
    sy_status (*stats)(void *instance, sy_stats *out, sy_error *err);

    /* ---- ABI 1.1 ---- */

    /**
     * Accepts `count` messages (an array, borrowed for the call), all or nothing where the
     * transport can store them as one unit: SY_OK once every one is stored as `publish` would
     * store it (one commit for a durable transport), otherwise an error and none of them stored.
     * A transport whose engine takes one message at a time (a broker without batches: NATS
     * JetStream, AMQP; the Swift kit's default) stores them in order and, failing midway, returns
     * an error that says a first part may be stored (publishing the batch again with the same ids
     * repeats at most that part). Lets a producer pay one lock, one wake-up and one commit per
     * batch instead of per message. Optional (NULL, or absent in a 1.0 plugin: the host publishes
     * the messages one at a time).
     */
    sy_status (*publish_batch)(void *instance, const sy_message *messages, size_t count, sy_error *err);

    /* ---- ABI 1.3 ---- */

    /**
     * Settles `count` deliveries in one call: `deliveries[i]` with the settlement at
     * sy_array_at(settlements, i) (count >= 1). Each is settled independently, exactly as `settle`
     * would settle it, in array order; one that fails does not stop the others. When `out_statuses` is
     * not NULL, `out_statuses[i]` receives each one's status. Returns SY_OK when all succeeded;
     * otherwise the status of the first that failed, with `err` filled in for it. Lets a
     * subscriber pay one lock (and one commit on a durable transport) per batch instead of per
     * delivery. Optional (NULL, or absent before 1.3: the host settles one at a time).
     */
    sy_status (*settle_batch)(void *instance, const sy_delivery_id *deliveries, const sy_settlement *settlements,
                              size_t count, sy_status *out_statuses, sy_error *err);

    /**
     * Publishes `count` messages (count >= 0, strided by struct_size, borrowed) and settles
     * `delivery` with `settlement` as one unit: SY_OK when the messages are stored as
     * `publish_batch` would store them AND the delivery is settled — in one commit on a durable
     * transport — otherwise an error and neither happened (SY_ERR_NOT_FOUND: the delivery was
     * unknown or already settled, and nothing was stored). This is how a handler's reply, and the
     * messages its work produced, commit together with the acknowledgement of the message it
     * handled: a crash leaves either all of them or none, never a reply without its ack (a
     * duplicate) or an ack without its reply (a lost answer). `messages` may be NULL when `count`
     * is 0. While draining it refuses with SY_ERR_CLOSED and changes nothing (the subscriber may
     * then settle alone; Switchyard's host leaves the delivery unsettled, so that it is delivered
     * again, and answered, by whoever takes it next). Any outcome may be given; a dead-letter one is reported through
     * dead_lettered as settle would. Optional (NULL, or absent before 1.3: the host publishes, then
     * settles).
     */
    sy_status (*publish_and_settle)(void *instance, const sy_message *messages, size_t count, sy_delivery_id delivery,
                                    const sy_settlement *settlement, sy_error *err);

    /* ---- ABI 1.6 ---- */

    /**
     * Extends the leases of `count` unsettled deliveries (count >= 0; `deliveries` is borrowed, and
     * may be NULL when count is 0). Each one's lease — how long the transport waits for its
     * settlement before handing the message out again (its visibility timeout, or ack wait) —
     * starts again now, as long as the lease the delivery was handed out with. The attempt is not
     * counted again and nothing is delivered. A subscriber calls it for deliveries it still holds
     * when about half their lease has passed — waiting behind busy handlers, or in a slow one — so
     * that the message is not delivered a second time meanwhile. Each delivery is extended
     * independently; when `out_statuses` is not NULL, `out_statuses[i]` receives each one's status
     * (SY_ERR_NOT_FOUND: unknown, settled, or released by a drain or an unsubscribe). A delivery
     * whose lease already ran out is reported SY_ERR_NOT_FOUND where the transport can tell, and
     * may be reported SY_OK where it cannot (a broker that keeps the lease itself): extending it
     * must have no effect — it may already be on its way to someone else, so a transport whose
     * broker extends by message rather than by delivery refuses it. Returns SY_OK when
     * all succeeded, otherwise the status of the first that failed, with `err` filled in for it.
     *
     * When `out_lease_ns` is not NULL it receives the length of a lease in ns, as deliveries of
     * subscriptions that set no visibility_timeout_ns of their own get it (0: deliveries have no
     * time limit and are held until settled). With count 0 the call only reports that: a
     * subscriber asks when a subscription begins, to know when to extend (Switchyard's host asks
     * again every second until it gets an answer, when the first ask failed). Optional (NULL, or absent
     * before 1.6: leases cannot be extended; the visibility timeout must then cover a handler plus
     * its wait in the subscriber).
     */
    sy_status (*extend)(void *instance, const sy_delivery_id *deliveries, size_t count, sy_status *out_statuses,
                        int64_t *out_lease_ns, sy_error *err);

    /* ---- ABI 1.7 ---- */

    /**
     * `publish_batch` without blocking the calling thread until the messages are stored: accepts
     * `count` messages (count >= 1, strided by struct_size, borrowed for this call only — copy
     * them before returning), all or nothing, and returns at once; `done(done_context, ...)` is
     * called exactly once with the outcome (see sy_publish_done_fn), possibly before this
     * returns. What SY_OK promises is what publish_batch's SY_OK promises (committed to disk when
     * SY_CAP_DURABLE); the errors are publish_batch's, SY_ERR_CLOSED while draining included.
     * Messages of one publish_async are stored in order, but two publish_async calls in flight at
     * once may be stored in either order: a publisher that needs its messages in order waits for
     * each `done` before the next, or publishes them in one call. With `done` NULL nothing is
     * published (there is nobody to tell). `destroy` calls the `done` of every publish_async not
     * yet told before it returns (a decorator's: see below).
     *
     * It never waits for storage (a commit, a broker's acknowledgement) on the calling thread — a
     * host calls it from threads that must not block, such as a Swift task's — though, like
     * every call, it may take a lock for a moment. Where waiting cannot be avoided (a bounded
     * transport that is full waits for room), the plugin waits on a thread of its own.
     *
     * A decorator (SY_CAP_WRAPS_INNER) that offers it passes the publish on to its inner
     * transport's publish_async, with `done` and `done_context` unchanged (a wrapper of its own
     * around them may run after the decorator's `destroy` returned: it must need nothing of the
     * decorator's). Over an inner transport without one it still must not block: it calls the
     * inner publish_batch on a thread of its own, and its `destroy` waits for that call (up to
     * the inner's own waits, such as a full_wait). This host calls a decorator's publish_async
     * only where every transport under it offers one. A publish passed on is told at the latest
     * when the innermost transport's `destroy` returns — a host destroys a decorator before the
     * transports under it — and the decorator's `destroy` does not wait for it.
     *
     * It lets a durable store commit many single-message publishers in one transaction while
     * waking one thread per commit, not one per publisher. Optional (NULL, or absent before 1.7:
     * the host publishes with publish or publish_batch, from threads of its own where those wait
     * for storage). Offer it only where the plugin truly does not block: a host may use it for
     * any publish (Switchyard's does where the chain is durable and its publishes measure slow,
     * and calls publish otherwise).
     */
    void (*publish_async)(void *instance, const sy_message *messages, size_t count, sy_publish_done_fn done,
                          void *done_context);

    /* ---- ABI 1.8 ---- */

    /**
     * The capabilities `instance` keeps as it was configured: the descriptor's `capabilities`, less
     * those its config turned off — a plugin that stores durably only with a `path` leaves out
     * SY_CAP_DURABLE for an instance created without one. Never more than the descriptor declares
     * (a host ignores any other bit); SY_CAP_WRAPS_INNER stays for a decorator (no config turns it
     * off). The same answer for the instance's whole life, from any thread, any number of times
     * (Switchyard's host asks once, after `create`; a decorator may ask its inner again). Returns
     * promptly.
     *
     * The host decides with it what the descriptor alone cannot tell: whether calls into the
     * instance may wait for storage (this host calls a durable instance's publish and settle off
     * the threads that must not block, and an in-memory one's inline) and whether its messages
     * outlive the process (what operators are shown, and whether its dead letters can be read from
     * another process). A decorator answers for itself only; a host asks each transport of a chain.
     * Optional (NULL, or absent before 1.8: the instance keeps every capability the descriptor
     * declares).
     */
    sy_capabilities (*instance_capabilities)(void *instance);

    /* ---- ABI 1.9 ---- */

    /**
     * Reports what the instance holds, per channel and subscriber group: calls `each(context,
     * &stats)` once for every (channel, group) that has a message stored or in flight, itself, on
     * the thread that called channel_stats, before returning (never later, never from a thread of
     * its own). A fan-out plugin may also report its subscriber groups that hold nothing, with
     * zeros; one without fan-out reports every channel under the empty group, and need not report
     * channels that hold nothing. Dead-letter channels are channels like any other. The order is the
     * plugin's (the host sorts and adds up duplicates); the reports need not be one snapshot.
     * `each` only copies and returns (it never calls into the plugin): it may be called with the
     * plugin's own lock held. Returns SY_OK once every one was reported, or an error — then the
     * reports made before it are incomplete and a host discards them: SY_ERR_UNAVAILABLE or
     * SY_ERR_IO when the engine cannot be asked now, SY_ERR_UNSUPPORTED when this instance never
     * reports channels (as NULL does). A decorator (SY_CAP_WRAPS_INNER) that keeps no messages of
     * its own passes the call to its inner transport; one that holds messages itself (a delay's
     * scheduled ones) adds them where it can tell their channel.
     *
     * Operators read it (`switchyard stats --channels`, the admin API's channels, a mistyped
     * channel name in `switchyard dlq`), not the data path: it may take as long as a count of the
     * store takes, though not while holding up deliveries for long. Optional (NULL, or absent
     * before 1.9: the host shows only the instance's totals from `stats`).
     */
    sy_status (*channel_stats)(void *instance, sy_channel_stats_fn each, void *context, sy_error *err);
} sy_plugin_descriptor;

/** Size of a struct up to and including `field`, for checking `struct_size` against a field:
 *  a field is present when SY_SIZE_THROUGH(type, field) <= struct_size. */
#define SY_SIZE_THROUGH(type, field) (offsetof(type, field) + sizeof(((type *)0)->field))

/** Smallest descriptor a host accepts for ABI 1.0: every field through `stats`. */
#define SY_DESCRIPTOR_SIZE_V1_0 SY_SIZE_THROUGH(sy_plugin_descriptor, stats)
/** Smallest descriptor a host accepts for ABI 1.1: every field through `publish_batch`. */
#define SY_DESCRIPTOR_SIZE_V1_1 SY_SIZE_THROUGH(sy_plugin_descriptor, publish_batch)
/** Smallest descriptor a host accepts for ABI 1.3: every field through `publish_and_settle`. */
#define SY_DESCRIPTOR_SIZE_V1_3 SY_SIZE_THROUGH(sy_plugin_descriptor, publish_and_settle)
/** Descriptor size at ABI 1.6: every field through `extend`. */
#define SY_DESCRIPTOR_SIZE_V1_6 SY_SIZE_THROUGH(sy_plugin_descriptor, extend)
/** Descriptor size at ABI 1.7: every field through `publish_async`. */
#define SY_DESCRIPTOR_SIZE_V1_7 SY_SIZE_THROUGH(sy_plugin_descriptor, publish_async)
/** Descriptor size at ABI 1.8: every field through `instance_capabilities`. */
#define SY_DESCRIPTOR_SIZE_V1_8 SY_SIZE_THROUGH(sy_plugin_descriptor, instance_capabilities)
/** Descriptor size at ABI 1.9: every field through `channel_stats`. */
#define SY_DESCRIPTOR_SIZE_V1_9 SY_SIZE_THROUGH(sy_plugin_descriptor, channel_stats)

/** ABI 1.0 sizes of the structs that can grow: the smallest struct_size a reader accepts. */
#define SY_MESSAGE_SIZE_V1_0 SY_SIZE_THROUGH(sy_message, enqueued_at_ns)
#define SY_SUBSCRIBER_SIZE_V1_0 SY_SIZE_THROUGH(sy_subscriber, deliver)
#define SY_SUBSCRIBE_OPTIONS_SIZE_V1_0 SY_SIZE_THROUGH(sy_subscribe_options, start)
#define SY_SETTLEMENT_SIZE_V1_0 SY_SIZE_THROUGH(sy_settlement, reason)
#define SY_STATS_SIZE_V1_0 SY_SIZE_THROUGH(sy_stats, depth)
#define SY_CREATE_ARGS_SIZE_V1_0 SY_SIZE_THROUGH(sy_create_args, inner)
#define SY_HOST_SERVICES_SIZE_V1_0 SY_SIZE_THROUGH(sy_host_services, metric)
/** Sizes at later minors, for the structs that grew. */
#define SY_HOST_SERVICES_SIZE_V1_2 SY_SIZE_THROUGH(sy_host_services, dead_lettered)
#define SY_MESSAGE_SIZE_V1_3 SY_SIZE_THROUGH(sy_message, reserved)
#define SY_SUBSCRIBER_SIZE_V1_3 SY_SIZE_THROUGH(sy_subscriber, deliver_batch)
#define SY_SUBSCRIBE_OPTIONS_SIZE_V1_4 SY_SIZE_THROUGH(sy_subscribe_options, flags)
/** sy_channel_stats as 1.9 introduced it: the smallest struct_size a reader accepts. */
#define SY_CHANNEL_STATS_SIZE_V1_9 SY_SIZE_THROUGH(sy_channel_stats, waiting)

/**
 * Reads a caller-sized struct the way the compatibility rules ask: zeroes `out` (`out_size`
 * bytes: your sizeof), then copies min(its struct_size, out_size) bytes of `in`, so that fields
 * an older writer did not have read as zero and a newer writer's extra fields are not read.
 * Returns 0 when `in` is NULL or its struct_size is below `min_size` (its ABI 1.0 size), else 1.
 * The copy keeps the writer's struct_size, which may exceed `out_size`: before passing the copy on
 * (a decorator forwarding options to its inner transport), set its struct_size to `out_size`, or
 * the next reader reads past it.
 *
 *     sy_message m;
 *     if (!sy_read_sized(&m, sizeof m, msg, SY_MESSAGE_SIZE_V1_0)) return SY_ERR_INVALID_ARGUMENT;
 */
static inline int sy_read_sized(void *out, size_t out_size, const void *in, size_t min_size) {
    uint32_t size;
    if (in == NULL) return 0;
    memcpy(&size, in, sizeof size);
    if (size < min_size) return 0;
    memset(out, 0, out_size);
    memcpy(out, in, size < out_size ? size : out_size);
    return 1;
}

/** Element `index` of an array of growable structs (see the stride rule at the top): `first`
 *  points at element 0, whose struct_size gives the stride. */
static inline const void *sy_array_at(const void *first, size_t index) {
    uint32_t stride;
    memcpy(&stride, first, sizeof stride);
    return (const uint8_t *)first + index * stride;
}

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* SWITCHYARD_PLUGIN_H */
