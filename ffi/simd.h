// W-lane float vectors (GCC/Clang vector extensions) and the helpers the hand-blocked loops
// of the neuron-list and nearest-centroid kernels share. Every helper is always inlined, so
// each instruction-set clone of a kernel (isa.h) gets its own registers.
#ifndef JSLIDE_FFI_SIMD_H_
#define JSLIDE_FFI_SIMD_H_

#include <cstdint>

#include "bf16.h"
#include "isa.h"

namespace jslide {

// W floats as one value (GCC/Clang vector extensions, so each instruction-set version gets
// its own registers: W = 16 is one AVX-512 register, W = 8 one AVX2 register or two SSE).
template <int W>
struct Vec {
  typedef float F __attribute__((vector_size(4 * W)));
  typedef uint32_t U __attribute__((vector_size(4 * W)));
  typedef uint16_t H __attribute__((vector_size(2 * W)));
};
typedef Vec<8>::F Floats8;

// W elements of a row (float32, or bfloat16 bits widened exactly: the upper half of a
// float32) or of an x, as float32.
template <int W>
JSLIDE_INLINE typename Vec<W>::F LoadW(const float* p) {
  typename Vec<W>::F v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}
template <int W>
JSLIDE_INLINE typename Vec<W>::F LoadW(const Bf16* p) {
  typename Vec<W>::H h;
  __builtin_memcpy(&h, p, sizeof h);
  const typename Vec<W>::U u = __builtin_convertvector(h, typename Vec<W>::U) << 16;
  typename Vec<W>::F v;
  __builtin_memcpy(&v, &u, sizeof v);
  return v;
}
// The lane sums of a[0..7], as one value: a tree of in-register shuffles and adds, where a
// scalar sum of each would be eight dependent adds per dot product.
JSLIDE_INLINE Floats8 LaneSums8(const Floats8* a) {
  using Lanes = int __attribute__((vector_size(32)));
  const Lanes even = {0, 8, 2, 10, 4, 12, 6, 14}, odd = {1, 9, 3, 11, 5, 13, 7, 15};
  const Lanes lo2 = {0, 1, 8, 9, 4, 5, 12, 13}, hi2 = {2, 3, 10, 11, 6, 7, 14, 15};
  const Lanes lo4 = {0, 1, 2, 3, 8, 9, 10, 11}, hi4 = {4, 5, 6, 7, 12, 13, 14, 15};
  Floats8 t[4], u[2];
  for (int j = 0; j < 4; ++j)  // pairs of lanes: a[2j] and a[2j + 1] interleaved
    t[j] = __builtin_shuffle(a[2 * j], a[2 * j + 1], even) +
           __builtin_shuffle(a[2 * j], a[2 * j + 1], odd);
  for (int j = 0; j < 2; ++j)  // quarters: a[4j .. 4j + 3], per 128-bit half
    u[j] = __builtin_shuffle(t[2 * j], t[2 * j + 1], lo2) +
           __builtin_shuffle(t[2 * j], t[2 * j + 1], hi2);
  return __builtin_shuffle(u[0], u[1], lo4) + __builtin_shuffle(u[0], u[1], hi4);
}

// The lane sums of eight W-lane values: 16 lanes are first folded to 8, two at a time (each
// pair's halves swapped across, then added).
JSLIDE_INLINE Floats8 LaneSums(const Floats8* a) { return LaneSums8(a); }
JSLIDE_INLINE Floats8 LaneSums(const Vec<16>::F* a) {
  using Lanes = int __attribute__((vector_size(64)));
  const Lanes lo = {0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23};
  const Lanes hi = {8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31};
  Floats8 half[8];
  for (int j = 0; j < 4; ++j) {
    const Vec<16>::F pair = __builtin_shuffle(a[2 * j], a[2 * j + 1], lo) +
                            __builtin_shuffle(a[2 * j], a[2 * j + 1], hi);
    __builtin_memcpy(&half[2 * j], &pair, sizeof pair);  // half[2j], half[2j + 1]
  }
  return LaneSums8(half);
}

// v in every lane. Written as an add of zeros (one scalar add and a broadcast per step):
// the forms that fold to a bare broadcast (v * ones, a shuffle) let GCC's SLP pass merge
// the G broadcasts into masked ones with the accumulators in memory, 5x slower.
template <int W>
JSLIDE_INLINE typename Vec<W>::F Broadcast(float v) {
  return typename Vec<W>::F{} + v;
}

// Whether the 16-lane (AVX-512) versions run here; asked once.
inline bool WideVectors() {
#if JSLIDE_HAS_CLONES
  static const bool wide = __builtin_cpu_supports("x86-64-v4");
  return wide;
#else
  return false;
#endif
}

}  // namespace jslide

#endif  // JSLIDE_FFI_SIMD_H_
