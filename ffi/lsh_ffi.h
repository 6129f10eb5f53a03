// The LSH handlers, for the nanobind module to register.
#ifndef JSLIDE_FFI_LSH_FFI_H_
#define JSLIDE_FFI_LSH_FFI_H_

#include <utility>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace jslide {
std::vector<std::pair<const char*, XLA_FFI_Handler*>> LshHandlers();
}  // namespace jslide

#endif  // JSLIDE_FFI_LSH_FFI_H_
