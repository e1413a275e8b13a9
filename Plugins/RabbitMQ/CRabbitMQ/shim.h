// rabbitmq-c, the AMQP 0-9-1 client (Debian's librabbitmq-dev), for the rabbitmq plugins.
#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_tcp_socket.h>
#include <amqp_ssl_socket.h>
#include <sys/eventfd.h>  // a consumer thread waits on its socket and an eventfd together

// amqp_login_with_properties is variadic, which Swift cannot call: the PLAIN-mechanism form, fixed.
// The client announces `consumer_cancel_notify`, without which RabbitMQ drops a consumer of a
// deleted queue silently (the plugin reconnects and declares the queue again on basic.cancel).
static inline amqp_rpc_reply_t sy_amqp_login_plain(amqp_connection_state_t connection, const char *vhost, int frame_max,
                                                   int heartbeat, const char *user, const char *password) {
    amqp_table_entry_t capabilities[3];
    const char *names[3] = {"consumer_cancel_notify", "authentication_failure_close", "exchange_exchange_bindings"};
    for (int i = 0; i < 3; i++) {
        capabilities[i].key = amqp_cstring_bytes(names[i]);
        capabilities[i].value.kind = AMQP_FIELD_KIND_BOOLEAN;
        capabilities[i].value.value.boolean = 1;
    }
    amqp_table_entry_t properties[2];
    properties[0].key = amqp_cstring_bytes("capabilities");
    properties[0].value.kind = AMQP_FIELD_KIND_TABLE;
    properties[0].value.value.table.num_entries = 3;
    properties[0].value.value.table.entries = capabilities;
    properties[1].key = amqp_cstring_bytes("product");
    properties[1].value.kind = AMQP_FIELD_KIND_UTF8;
    properties[1].value.value.bytes = amqp_cstring_bytes("switchyard");
    amqp_table_t table = {2, properties};
    return amqp_login_with_properties(connection, vhost, 0, frame_max, heartbeat, &table, AMQP_SASL_METHOD_PLAIN, user,
                                      password);
}

// The method ids Swift needs, as constants (the header's macros carry casts Swift does not import).
static const amqp_method_number_t SY_AMQP_BASIC_ACK = AMQP_BASIC_ACK_METHOD;
static const amqp_method_number_t SY_AMQP_BASIC_NACK = AMQP_BASIC_NACK_METHOD;
static const amqp_method_number_t SY_AMQP_BASIC_RETURN = AMQP_BASIC_RETURN_METHOD;
static const amqp_method_number_t SY_AMQP_BASIC_CANCEL = AMQP_BASIC_CANCEL_METHOD;
static const amqp_method_number_t SY_AMQP_CHANNEL_CLOSE = AMQP_CHANNEL_CLOSE_METHOD;
static const amqp_method_number_t SY_AMQP_CONNECTION_CLOSE = AMQP_CONNECTION_CLOSE_METHOD;
static const amqp_flags_t SY_AMQP_PROPERTY_CONTENT_TYPE = AMQP_BASIC_CONTENT_TYPE_FLAG;
static const amqp_flags_t SY_AMQP_PROPERTY_HEADERS = AMQP_BASIC_HEADERS_FLAG;
static const amqp_flags_t SY_AMQP_PROPERTY_DELIVERY_MODE = AMQP_BASIC_DELIVERY_MODE_FLAG;
static const amqp_flags_t SY_AMQP_PROPERTY_EXPIRATION = AMQP_BASIC_EXPIRATION_FLAG;
static const amqp_flags_t SY_AMQP_PROPERTY_MESSAGE_ID = AMQP_BASIC_MESSAGE_ID_FLAG;
static const amqp_flags_t SY_AMQP_PROPERTY_TIMESTAMP = AMQP_BASIC_TIMESTAMP_FLAG;
