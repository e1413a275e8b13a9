// nats.c, the NATS C client (Debian's libnats-dev), for the nats plugins.
#include <nats/nats.h>
