// Shared by the FFI handlers: buffer aliases and argument errors that name the argument.
#ifndef JSLIDE_FFI_FFI_ERRORS_H_
#define JSLIDE_FFI_FFI_ERRORS_H_

#include <cstdint>
#include <string>

#include "xla/ffi/api/ffi.h"

namespace jslide {

using F32 = xla::ffi::Buffer<xla::ffi::F32>;
using S32 = xla::ffi::Buffer<xla::ffi::S32>;
using U32 = xla::ffi::Buffer<xla::ffi::U32>;
using F32Out = xla::ffi::ResultBuffer<xla::ffi::F32>;
using S32Out = xla::ffi::ResultBuffer<xla::ffi::S32>;

inline std::string Dims(xla::ffi::Span<const int64_t> dims) {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "]";
}

inline xla::ffi::Error Invalid(const std::string& kernel, const std::string& msg) {
  return xla::ffi::Error::InvalidArgument(kernel + ": " + msg);
}

template <typename B>
xla::ffi::Error CheckRank(const std::string& k, const char* name, const B& buf, size_t rank) {
  if (buf.dimensions().size() != rank)
    return Invalid(k, std::string(name) + " must have rank " + std::to_string(rank) +
                          ", got shape " + Dims(buf.dimensions()));
  return xla::ffi::Error::Success();
}

}  // namespace jslide

#define JSLIDE_RETURN_IF_ERROR(expr)               \
  do {                                             \
    ::xla::ffi::Error jslide_err_ = (expr);        \
    if (jslide_err_.failure()) return jslide_err_; \
  } while (0)

#endif  // JSLIDE_FFI_FFI_ERRORS_H_
