// bfloat16 table elements: the upper 16 bits of a float32. Every kernel computes in float32;
// a bfloat16 element widens exactly, and writes back are rounded (kernels.cc, stochastically).
#ifndef JSLIDE_FFI_BF16_H_
#define JSLIDE_FFI_BF16_H_

#include <cstdint>
#include <cstring>

namespace jslide {

struct Bf16 {
  uint16_t bits;
};

// A table element as float32: exact for both types (bfloat16 is float32's upper half).
__attribute__((always_inline)) inline float Widen(float x) { return x; }
__attribute__((always_inline)) inline float Widen(Bf16 x) {
  const uint32_t u = static_cast<uint32_t>(x.bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

}  // namespace jslide

#endif  // JSLIDE_FFI_BF16_H_
