/*
 * bench-null-c — a transport that accepts and discards every message, for `switchyard bench abi`.
 * Its publish does the least a real plugin must (check the message, count it), so what the
 * benchmark measures is the cost of crossing the ABI, not of storing anything.
 */
#include "switchyard_plugin.h"

#include <stdlib.h>

typedef struct { uint64_t published; } null_instance;

static sy_status null_create(const sy_create_args *args, void **out, sy_error *err) {
    null_instance *self;
    if (args == NULL || out == NULL) return sy_error_set(err, SY_ERR_INVALID_ARGUMENT, "create: NULL argument");
    self = (null_instance *)calloc(1, sizeof *self);
    if (self == NULL) return sy_error_set(err, SY_ERR_INTERNAL, "out of memory");
    *out = self;
    return SY_OK;
}

static void null_destroy(void *self) { free(self); }

static sy_status null_publish(void *self, const sy_message *m, sy_error *err) {
    if (self == NULL || m == NULL || m->struct_size < sizeof(sy_message) || m->id.len == 0 || m->channel.len == 0)
        return sy_error_set(err, SY_ERR_INVALID_ARGUMENT, "publish: invalid message");
    __atomic_fetch_add(&((null_instance *)self)->published, 1, __ATOMIC_RELAXED);
    return SY_OK;
}

static sy_status null_subscribe(void *self, const sy_subscribe_options *o, const sy_subscriber *s,
                                sy_subscription_id *out, sy_error *err) {
    (void)self; (void)o; (void)s; (void)out;
    return sy_error_set(err, SY_ERR_UNSUPPORTED, "bench-null-c delivers nothing");
}

static sy_status null_unsubscribe(void *self, sy_subscription_id id, sy_error *err) {
    (void)self; (void)id;
    return sy_error_set(err, SY_ERR_NOT_FOUND, "no subscriptions");
}

static sy_status null_settle(void *self, sy_delivery_id d, const sy_settlement *s, sy_error *err) {
    (void)self; (void)d; (void)s;
    return sy_error_set(err, SY_ERR_NOT_FOUND, "no deliveries");
}

static sy_status null_stats(void *self, sy_stats *out, sy_error *err) {
    if (self == NULL || out == NULL) return sy_error_set(err, SY_ERR_INVALID_ARGUMENT, "stats: NULL argument");
    if (out->struct_size >= SY_SIZE_THROUGH(sy_stats, published))
        out->published = __atomic_load_n(&((null_instance *)self)->published, __ATOMIC_RELAXED);
    return SY_OK;
}

static const sy_plugin_descriptor descriptor = {
    sizeof(sy_plugin_descriptor), SY_ABI_MAJOR, SY_ABI_MINOR,
    "bench-null-c", "1.0.0", "Discards every message (C); used by switchyard bench", 0,
    null_create, null_destroy, null_publish, null_subscribe, null_unsubscribe, null_settle, NULL, null_stats,
    NULL, /* publish_batch */
};

__attribute__((visibility("default")))
const sy_plugin_descriptor *switchyard_plugin_entry(uint32_t host_abi_major) {
    return host_abi_major == SY_ABI_MAJOR ? &descriptor : NULL;
}
