#ifndef SWITCHYARD_BENCH_SUPPORT_H
#define SWITCHYARD_BENCH_SUPPORT_H

#include <stddef.h>

/// Bytes the C heap has handed out and not taken back, over every arena (glibc's `mallinfo2`:
/// `uordblks` plus the mmapped blocks `hblkhd`). What queued messages hold, where the resident
/// size does not grow while malloc reuses memory freed earlier in the process.
size_t bench_heap_bytes_in_use(void);

#endif
