/* The system SQLite (Debian: libsqlite3-dev), for the durable transports. */
#include <sqlite3.h>
#include <sys/inotify.h>
#include <poll.h>

/* SQLITE_TRANSIENT is a cast macro Swift cannot import. */
static inline sqlite3_destructor_type csqlite_transient(void) { return SQLITE_TRANSIENT; }
