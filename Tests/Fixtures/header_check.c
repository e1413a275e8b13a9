/* Compiled by the tests as C99 and as C++17 with -Wall -Wextra -Werror -pedantic: the headers must
 * be clean in both, and their static inline helpers must be usable. */
#include "switchyard_plugin.h"
#include "switchyard_config.h"

int header_check(void);
int header_check(void) {
    sy_error err;
    sy_str s = sy_str_from_cstr("channel");
    sy_message m;
    sy_config config;
    int64_t n = 0;
    int read;
    memset(&m, 0, sizeof m);
    m.struct_size = sizeof m;
    read = sy_read_sized(&m, sizeof m, &m, SY_MESSAGE_SIZE_V1_0);
    (void)sy_array_at(&m, 0);
    if (sy_config_parse(&config, sy_str_from_cstr("{\"n\": 3}"), &err) == SY_OK) (void)sy_config_int(&config, "n", &n, &err);
    return (int)sy_error_set(&err, SY_ERR_FULL, "full") + (int)s.len + (int)SY_DESCRIPTOR_SIZE_V1_0 + read + (int)n;
}

/* The export macro gives C linkage in C++ too. */
SY_PLUGIN_EXPORT const sy_plugin_descriptor *switchyard_plugin_entry(uint32_t host_abi_major);
SY_PLUGIN_EXPORT const sy_plugin_descriptor *switchyard_plugin_entry(uint32_t host_abi_major) {
    (void)host_abi_major;
    return NULL;
}
