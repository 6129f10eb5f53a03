// Scores as order-preserving integer keys: selection and ranking by integer compares, with
// NaN ranked last and no branches on it (top_indices.cc, nearest_centroids.cc).
#ifndef JSLIDE_FFI_ORDER_KEY_H_
#define JSLIDE_FFI_ORDER_KEY_H_

#include <cstdint>
#include <cstring>

#include "isa.h"

namespace jslide {

// Order-preserving as unsigned: higher score, higher key; NaN lowest (below -inf). Written
// without branches so that a loop of it vectorizes.
JSLIDE_INLINE uint32_t OrderKey(float score) {
  uint32_t u;
  std::memcpy(&u, &score, sizeof(u));
  const uint32_t key = u ^ (static_cast<uint32_t>(static_cast<int32_t>(u) >> 31) | 0x80000000u);
  return (u & 0x7fffffffu) > 0x7f800000u ? 0u : key;
}

// The score of a key (not NaN's, 0): OrderKey inverted.
JSLIDE_INLINE float FromOrderKey(uint32_t key) {
  const uint32_t u = key & 0x80000000u ? key ^ 0x80000000u : ~key;
  float score;
  std::memcpy(&score, &u, sizeof score);
  return score;
}

// An entry as one integer that sorts ascending by (key descending, position ascending):
// integer compares, no branches on NaN in a comparator.
JSLIDE_INLINE uint64_t RankKey(uint32_t key, int64_t i) {
  return (uint64_t{~key} << 32) | static_cast<uint32_t>(i);
}

}  // namespace jslide

#endif  // JSLIDE_FFI_ORDER_KEY_H_
