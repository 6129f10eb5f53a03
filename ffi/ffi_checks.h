// Shared by every FFI handler: buffer aliases, and argument checks whose errors name the
// argument and what was expected. One copy of each check, so Python-facing messages agree.
#ifndef JSLIDE_FFI_FFI_CHECKS_H_
#define JSLIDE_FFI_FFI_CHECKS_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>

#include "xla/ffi/api/ffi.h"

namespace jslide {

using F32 = xla::ffi::Buffer<xla::ffi::F32>;
using S32 = xla::ffi::Buffer<xla::ffi::S32>;
using U32 = xla::ffi::Buffer<xla::ffi::U32>;
using Any = xla::ffi::AnyBuffer;
using F32Out = xla::ffi::ResultBuffer<xla::ffi::F32>;
using AnyOut = xla::ffi::Result<xla::ffi::AnyBuffer>;
using S32Out = xla::ffi::ResultBuffer<xla::ffi::S32>;
// Buffers of a stated rank: XLA checks the rank when it decodes the call (the Python side
// checks it first, naming the argument).
using F32R1 = xla::ffi::BufferR1<xla::ffi::F32>;
using F32R2 = xla::ffi::BufferR2<xla::ffi::F32>;
using F32R3 = xla::ffi::BufferR3<xla::ffi::F32>;
using S32R1 = xla::ffi::BufferR1<xla::ffi::S32>;
using S32R2 = xla::ffi::BufferR2<xla::ffi::S32>;
using S32R3 = xla::ffi::BufferR3<xla::ffi::S32>;
using U32R1 = xla::ffi::BufferR1<xla::ffi::U32>;
using U32R2 = xla::ffi::BufferR2<xla::ffi::U32>;
using F32R2Out = xla::ffi::ResultBufferR2<xla::ffi::F32>;
using S32R2Out = xla::ffi::ResultBufferR2<xla::ffi::S32>;
using S32R3Out = xla::ffi::ResultBufferR3<xla::ffi::S32>;

// Limits shared with jslide/lsh/_common.py (the Python side raises before a kernel runs).
constexpr int64_t kMaxHashesTimesBits = 24;  // bits of a bucket code: 2^24 buckets per table
constexpr int64_t kMaxTables = 512;

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

// (rows, row length) of a table: [N] (one value a row, e.g. a bias: passed as it is, since
// a reshape to [N, 1] around an aliased call makes XLA copy the whole table) or [N, D].
template <typename B>
xla::ffi::Error TableDims(const std::string& k, const char* name, const B& buf, int64_t* n,
                          int64_t* d) {
  const auto dims = buf.dimensions();
  if (dims.size() != 1 && dims.size() != 2)
    return Invalid(k, std::string(name) + " must be a table [N] or [N, D], got shape " +
                          Dims(dims));
  *n = dims[0];
  *d = dims.size() == 2 ? dims[1] : 1;
  return xla::ffi::Error::Success();
}

template <typename A, typename B>
bool SameDims(const A& a, const B& b) {
  const auto x = a.dimensions(), y = b.dimensions();
  return x.size() == y.size() && std::equal(x.begin(), x.end(), y.begin());
}

inline const char* TypeName(xla::ffi::DataType t) {
  switch (t) {
    case xla::ffi::DataType::F32: return "float32";
    case xla::ffi::DataType::BF16: return "bfloat16";
    case xla::ffi::DataType::F16: return "float16";
    case xla::ffi::DataType::F64: return "float64";
    case xla::ffi::DataType::S32: return "int32";
    default: return "another type";
  }
}

// A table's (or an Adam moment's) element type: float32 or bfloat16.
inline xla::ffi::Error CheckTableType(const std::string& k, const char* name, const Any& buf) {
  const auto t = buf.element_type();
  if (t != xla::ffi::DataType::F32 && t != xla::ffi::DataType::BF16)
    return Invalid(k, std::string(name) + " must be float32 or bfloat16, got " + TypeName(t));
  return xla::ffi::Error::Success();
}

// The first value outside [lo, hi), as an error naming the argument.
inline xla::ffi::Error CheckRange(const std::string& k, const char* name, const int32_t* v,
                                  int64_t count, int64_t lo, int64_t hi) {
  for (int64_t i = 0; i < count; ++i)
    if (v[i] < lo || v[i] >= hi)
      return Invalid(k, std::string(name) + " holds " + std::to_string(v[i]) +
                            " at flat position " + std::to_string(i) + "; expected [" +
                            std::to_string(lo) + ", " + std::to_string(hi) + ")");
  return xla::ffi::Error::Success();
}

// Row ids of a table of n rows: [-1, n), -1 being padding.
template <typename Ids>
xla::ffi::Error CheckIds(const std::string& k, const char* name, const Ids& ids, int64_t n) {
  return CheckRange(k, name, ids.typed_data(), ids.element_count(), -1, n);
}

template <typename Floats>
xla::ffi::Error CheckFinite(const std::string& k, const char* name, const Floats& x) {
  const float* p = x.typed_data();
  for (int64_t i = 0, count = x.element_count(); i < count; ++i)
    if (!std::isfinite(p[i]))
      return Invalid(k, std::string(name) + " has a non-finite value at flat position " +
                            std::to_string(i) + "; refusing to write it into a table");
  return xla::ffi::Error::Success();
}

// With input_output_aliases and donated inputs the result buffer is the input buffer; if XLA
// gave a distinct one, start it from the input so an in-place update is still correct.
template <typename In, typename Out>
void StartFrom(const In& in, Out& out) {
  if (out->untyped_data() != in.untyped_data())
    std::memcpy(out->untyped_data(), in.untyped_data(), in.size_bytes());
}

}  // namespace jslide

#define JSLIDE_RETURN_IF_ERROR(expr)               \
  do {                                             \
    ::xla::ffi::Error jslide_err_ = (expr);        \
    if (jslide_err_.failure()) return jslide_err_; \
  } while (0)

#endif  // JSLIDE_FFI_FFI_CHECKS_H_
