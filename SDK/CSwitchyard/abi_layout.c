/*
 * Compile-time checks of the ABI layout. This file defines no symbols on purpose: the ABI target
 * must stay header-only at link time (see the header's note on `static inline`).
 * The offsets pin ABI 1.x on LP64 platforms; a change to an existing line is an ABI break.
 */
#include "switchyard_plugin.h"

#if defined(__LP64__) || defined(_LP64)
_Static_assert(offsetof(sy_plugin_descriptor, struct_size) == 0, "struct_size must come first");
_Static_assert(offsetof(sy_plugin_descriptor, abi_major) == 4, "abi_major at 4");
_Static_assert(offsetof(sy_plugin_descriptor, abi_minor) == 6, "abi_minor at 6");
_Static_assert(offsetof(sy_plugin_descriptor, name) == 8, "name at 8");
_Static_assert(offsetof(sy_plugin_descriptor, capabilities) == 32, "capabilities at 32");
_Static_assert(offsetof(sy_plugin_descriptor, create) == 40, "create at 40");
_Static_assert(SY_DESCRIPTOR_SIZE_V1_0 == 104, "ABI 1.0 descriptor is 104 bytes");
_Static_assert(SY_DESCRIPTOR_SIZE_V1_1 == 112, "ABI 1.1 descriptor is 112 bytes");
_Static_assert(offsetof(sy_plugin_descriptor, publish_batch) == 104, "1.1 appends publish_batch at 104");
_Static_assert(SY_MESSAGE_SIZE_V1_0 == 104, "ABI 1.0 sy_message is 104 bytes");
_Static_assert(offsetof(sy_message, expires_at_ns) == 104, "1.3 appends expires_at_ns at 104");
_Static_assert(sizeof(sy_message) == 120, "sy_message is 120 bytes (a multiple of 8: arrays stride by it)");
_Static_assert(SY_SUBSCRIBER_SIZE_V1_0 == 24, "ABI 1.0 sy_subscriber is 24 bytes");
_Static_assert(sizeof(sy_subscriber) == 32, "1.3 appends deliver_batch at 24");
_Static_assert(offsetof(sy_plugin_descriptor, settle_batch) == 112, "1.3 appends settle_batch at 112");
_Static_assert(offsetof(sy_plugin_descriptor, publish_and_settle) == 120, "1.3 appends publish_and_settle at 120");
_Static_assert(SY_DESCRIPTOR_SIZE_V1_3 == 128, "ABI 1.3 descriptor is 128 bytes");
_Static_assert(offsetof(sy_plugin_descriptor, extend) == 128 && SY_DESCRIPTOR_SIZE_V1_6 == 136, "1.6 appends extend at 128");
_Static_assert(offsetof(sy_plugin_descriptor, publish_async) == 136 && SY_DESCRIPTOR_SIZE_V1_7 == 144, "1.7 appends publish_async at 136");
_Static_assert(offsetof(sy_plugin_descriptor, instance_capabilities) == 144 && SY_DESCRIPTOR_SIZE_V1_8 == 152,
               "1.8 appends instance_capabilities at 144");
_Static_assert(offsetof(sy_plugin_descriptor, channel_stats) == 152 && SY_DESCRIPTOR_SIZE_V1_9 == 160,
               "1.9 appends channel_stats at 152");
_Static_assert(offsetof(sy_channel_stats, channel) == 8 && offsetof(sy_channel_stats, group) == 24
                   && SY_CHANNEL_STATS_SIZE_V1_9 == 64 && sizeof(sy_channel_stats) == 64,
               "sy_channel_stats is 64 bytes at 1.9");
_Static_assert(SY_SETTLEMENT_SIZE_V1_0 == 32 && sizeof(sy_settlement) == 32, "sy_settlement is 32 bytes");
_Static_assert(SY_SUBSCRIBE_OPTIONS_SIZE_V1_0 == 52, "ABI 1.0 sy_subscribe_options ends with start at 48");
_Static_assert(offsetof(sy_subscribe_options, reserved) == 52, "1.4 names the old padding reserved, at 52");
_Static_assert(offsetof(sy_subscribe_options, flags) == 56 && SY_SUBSCRIBE_OPTIONS_SIZE_V1_4 == 64,
               "1.4 appends flags at 56: past a 1.3 writer's struct_size of 56, so never read from one");
_Static_assert(sizeof(sy_subscribe_options) == 64, "sy_subscribe_options is 64 bytes");
_Static_assert(SY_CREATE_ARGS_SIZE_V1_0 == 56 && SY_STATS_SIZE_V1_0 == 72, "sy_create_args and sy_stats at 1.0");
_Static_assert(SY_HOST_SERVICES_SIZE_V1_0 == 48 && SY_HOST_SERVICES_SIZE_V1_2 == 56, "sy_host_services at 1.0 and 1.2");
_Static_assert(offsetof(sy_host_services, metric) == 40, "ABI 1.0/1.1 host services end with metric at 40");
_Static_assert(offsetof(sy_host_services, dead_lettered) == 48, "1.2 appends dead_lettered at 48");
_Static_assert(sizeof(sy_host_services) == 56, "sy_host_services is 56 bytes");
_Static_assert(sizeof(sy_error) == 516, "sy_error is 516 bytes");
#endif
