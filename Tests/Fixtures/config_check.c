/* Exercises switchyard_config.h: reads the JSON object given as argv[1] with every getter and
 * prints what it read, or the error, one line. */
#include "switchyard_config.h"
#include <inttypes.h>

int main(int argc, char **argv) {
    sy_config config;
    sy_error err;
    int64_t capacity = 1000, timeout = 30000000000;
    int durable = 0;
    char prefix[32] = "jobs";
    if (argc < 2) return 2;
    if (sy_config_parse(&config, sy_str_from_cstr(argv[1]), &err) != SY_OK
        || sy_config_int_range(&config, "capacity", 1, 1000000, &capacity, &err) != SY_OK
        || sy_config_duration_ns(&config, "timeout", &timeout, &err) != SY_OK
        || sy_config_bool(&config, "durable", &durable, &err) != SY_OK
        || sy_config_string(&config, "prefix", prefix, sizeof prefix, &err) != SY_OK
        || sy_config_finish(&config, &err) != SY_OK
        || (durable && prefix[0] == '\0' && sy_config_refuse(&err, "prefix", "must not be empty when durable is true") != SY_OK)) {
        printf("error %d: %s\n", (int)err.code, err.message);
        return 1;
    }
    printf("capacity=%" PRId64 " timeout=%" PRId64 " durable=%d prefix=%s\n", capacity, timeout, durable, prefix);
    return 0;
}
