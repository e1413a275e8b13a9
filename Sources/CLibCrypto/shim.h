// OpenSSL's libcrypto (Debian's libssl-dev), for the loader's sha256 of plugin files (pins).
// Only the EVP digest interface is used.
#include <openssl/evp.h>
