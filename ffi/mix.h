// A 32-bit integer mix shared by the LSH code and the stochastic rounding of the kernels.
#ifndef JSLIDE_FFI_MIX_H_
#define JSLIDE_FFI_MIX_H_

#include <cstdint>

namespace jslide {

// lowbias32: a deterministic hash, also written in numpy in jslide/lsh (the references).
inline uint32_t Mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  x ^= x >> 16;
  return x;
}

}  // namespace jslide

#endif  // JSLIDE_FFI_MIX_H_
