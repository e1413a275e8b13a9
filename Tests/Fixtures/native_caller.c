/* A C program calling routed native functions through bound function pointers. */
#include <inttypes.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include "switchyard_native.h"

int main(int argc, char **argv) {
    char error[1024];
    if (argc < 2) return 2;
    sy_native_client *client = sy_native_open(argv[1], error, sizeof error);
    if (!client) { fprintf(stderr, "open: %s\n", error); return 2; }
    int32_t (*add)(int32_t, int32_t) = (int32_t (*)(int32_t, int32_t))sy_native_bind(client, "Math.add", "i32(i32, i32)", error, sizeof error);
    double (*scale)(int32_t, double) = (double (*)(int32_t, double))sy_native_bind(client, "Math.scale", "f64(i32, f64)", error, sizeof error);
    char *(*greet)(const char *) = (char *(*)(const char *))sy_native_bind(client, "Math.greet", "str(str)", error, sizeof error);
    uint64_t (*sum)(const uint8_t *, size_t) = (uint64_t (*)(const uint8_t *, size_t))sy_native_bind(client, "Math.sum", "u64(bytes)", error, sizeof error);
    if (!add || !scale || !greet || !sum) { fprintf(stderr, "bind: %s\n", error); return 3; }
    if (sy_native_bind(client, "Math.add", "i32(i32, i32", error, sizeof error) == NULL) printf("bad signature: %s\n", error);

    printf("add=%d\n", add(40, 2));
    printf("scale=%g\n", scale(3, 1.5));
    char *greeting = greet("from C");
    printf("greet=%s\n", greeting ? greeting : "(null)");
    sy_native_free_string(greeting);
    uint8_t data[] = {1, 2, 3};
    printf("sum=%" PRIu64 "\n", sum(data, sizeof data));
    printf("error after success=[%s]\n", sy_native_last_error());

    /* The host refuses a call whose arguments do not fit: zero, and the reason. */
    int32_t (*wrong)(int32_t) = (int32_t (*)(int32_t))sy_native_bind(client, "Math.add", "i32(i32)", error, sizeof error);
    int32_t refused = wrong(1);
    printf("refused=%d error=[%s]\n", refused, sy_native_last_error());

    /* A result of another kind than the bound signature's is a failed call, never a made-up
     * value (an infinite f64 read as i64 used to trap in the client). */
    int64_t (*misbound)(int32_t, double) = (int64_t (*)(int32_t, double))sy_native_bind(client, "Math.scale", "i64(i32, f64)", error, sizeof error);
    int64_t mismatched = misbound(1, INFINITY);
    printf("mismatched=%" PRId64 " error=[%s]\n", mismatched, sy_native_last_error());
    /* A whole-number result that does not fit the bound width fails too: never truncated (300 as
     * an i8 read 44). */
    int8_t (*narrow)(int32_t, int32_t) = (int8_t (*)(int32_t, int32_t))sy_native_bind(client, "Math.add", "i8(i32, i32)", error, sizeof error);
    int8_t narrowed = narrow(200, 100);
    printf("narrowed=%d error=[%s]\n", narrowed, sy_native_last_error());
    /* An infinite f64 result travels (on a JSON route as the string "Infinity"). */
    printf("infinite=%g\n", scale(1, INFINITY));
    sy_native_close(client);
    return 0;
}
