/*
 * A plugin as a third party built it against ABI 1.1: the frozen 1.1 C template (plugin.c beside
 * this file, with the 1.1 header) plus a publish_batch that walks its array the 1.1 way, by its
 * own sizeof(sy_message). A newer host must lay batches out at that size for it (the header's
 * stride rule); laid out at a newer, larger size, every message after the first would be garbage.
 */
#define switchyard_plugin_entry template_entry
#include "plugin.c"
#undef switchyard_plugin_entry

static sy_status legacy_publish_batch(void *self, const sy_message *messages, size_t count, sy_error *err) {
    size_t i;
    for (i = 0; i < count; i++) {
        if (messages[i].struct_size < sizeof(sy_message) || messages[i].id.len == 0 || messages[i].channel.len == 0)
            return sy_error_set(err, SY_ERR_INVALID_ARGUMENT, "publish_batch: a message in the batch is malformed");
    }
    for (i = 0; i < count; i++) {
        sy_status status = example_publish(self, &messages[i], err);
        if (status != SY_OK) return status;
    }
    return SY_OK;
}

static sy_plugin_descriptor legacy;

__attribute__((visibility("default")))
const sy_plugin_descriptor *switchyard_plugin_entry(uint32_t host_abi_major) {
    if (host_abi_major != SY_ABI_MAJOR) return NULL;
    legacy = descriptor;
    legacy.name = "legacy-batch";
    legacy.publish_batch = legacy_publish_batch;
    return &legacy;
}
