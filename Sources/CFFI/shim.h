// libffi (Debian's libffi-dev) for native modules. Swift 6 refuses libffi's mutable globals
// (ffi_type_sint32 and friends) as shared mutable state, so they are reached through these
// accessors; FFI_DEFAULT_ABI is a macro/enum Swift cannot always import, hence sy_ffi_default_abi.
#include <ffi.h>
#include <stddef.h>

static inline ffi_type *sy_ffi_type_void(void) { return &ffi_type_void; }
static inline ffi_type *sy_ffi_type_uint8(void) { return &ffi_type_uint8; }
static inline ffi_type *sy_ffi_type_sint8(void) { return &ffi_type_sint8; }
static inline ffi_type *sy_ffi_type_uint16(void) { return &ffi_type_uint16; }
static inline ffi_type *sy_ffi_type_sint16(void) { return &ffi_type_sint16; }
static inline ffi_type *sy_ffi_type_uint32(void) { return &ffi_type_uint32; }
static inline ffi_type *sy_ffi_type_sint32(void) { return &ffi_type_sint32; }
static inline ffi_type *sy_ffi_type_uint64(void) { return &ffi_type_uint64; }
static inline ffi_type *sy_ffi_type_sint64(void) { return &ffi_type_sint64; }
static inline ffi_type *sy_ffi_type_float(void) { return &ffi_type_float; }
static inline ffi_type *sy_ffi_type_double(void) { return &ffi_type_double; }
static inline ffi_type *sy_ffi_type_pointer(void) { return &ffi_type_pointer; }
static inline ffi_abi sy_ffi_default_abi(void) { return FFI_DEFAULT_ABI; }
