// The nearest centroids of each example (lsh.h): a register-blocked product against packed
// panels of centroids, keeping each example's best p as the scores come out.
#include "lsh.h"

#include <algorithm>
#include <limits>

#include "isa.h"
#include "order_key.h"
#include "simd.h"

namespace jslide {

void PackCentroidPanels(const float* centroids, int64_t c, int64_t d, float* panels) {
  const int64_t num_panels = (c + kCentroidPanel - 1) / kCentroidPanel;
  std::fill(panels, panels + num_panels * (d + 1) * kCentroidPanel, 0.0f);
  for (int64_t j = 0; j < c; ++j) {
    const float* row = centroids + j * d;
    float* panel = panels + (j / kCentroidPanel) * (d + 1) * kCentroidPanel + j % kCentroidPanel;
    float norm = 0.0f;
    for (int64_t i = 0; i < d; ++i) {
      panel[i * kCentroidPanel] = row[i];
      norm += row[i] * row[i];
    }
    panel[d * kCentroidPanel] = 0.5f * norm;
  }
}

namespace {

// One example's p best centroids as RankKeys (ascending = best first), empty: all ones.
JSLIDE_INLINE void KeepNearest(uint64_t key, int64_t p, uint64_t* best) {
  if (key >= best[p - 1]) return;
  int64_t j = p - 1;
  for (; j > 0 && best[j - 1] > key; --j) best[j] = best[j - 1];
  best[j] = key;
}

// Bit j set where score[j] >= bound (never for NaN): a superset of the entries that can
// enter a best list whose worst score is `bound`.
JSLIDE_INLINE uint32_t AtLeast(const float* score, int n, float bound) {
  uint32_t bits = 0;
  for (int j = 0; j < n; ++j) bits |= uint32_t{score[j] >= bound} << j;
  return bits;
}

// G examples against every panel: each step of d broadcasts one element of each x and
// multiplies it into the panel's NV vectors (a register-blocked matrix product: no lane
// sums); the panel's last row is its half squared norms. The G x kCentroidPanel scores
// x . c - |c|^2 / 2 are then tested against each example's p-th best, W at a time.
template <int W, int G>
JSLIDE_INLINE void NearestBlock(const float* const* xs, int64_t g, int64_t d,
                                const float* panels, int64_t c, int64_t p,
                                uint64_t (*best)[kMaxNearest]) {
  using F = typename Vec<W>::F;
  constexpr int NV = kCentroidPanel / W;
  const int64_t num_panels = (c + kCentroidPanel - 1) / kCentroidPanel;
  for (int64_t q = 0; q < num_panels; ++q) {
    const float* panel = panels + q * (d + 1) * kCentroidPanel;
    F acc[G][NV] = {};
    for (int64_t i = 0; i < d; ++i) {
      F col[NV];
      for (int v = 0; v < NV; ++v) col[v] = LoadW<W>(panel + i * kCentroidPanel + v * W);
      for (int t = 0; t < G; ++t) {
        const F xi = Broadcast<W>(xs[t][i]);
        for (int v = 0; v < NV; ++v) acc[t][v] += xi * col[v];
      }
    }
    // Scores out of the registers, all G x NV at once (constant indices: a runtime one
    // would keep the accumulators in memory through the loop above).
    float scores[G][kCentroidPanel];
    for (int v = 0; v < NV; ++v) {
      const F half_norm = LoadW<W>(panel + d * kCentroidPanel + v * W);
      for (int t = 0; t < G; ++t) {
        const F sv = acc[t][v] - half_norm;
        __builtin_memcpy(scores[t] + v * W, &sv, sizeof sv);
      }
    }
    const int64_t c0 = q * kCentroidPanel;
    const int64_t valid = std::min<int64_t>(kCentroidPanel, c - c0);
    const uint32_t live = valid == kCentroidPanel ? 0xffffffffu : (uint32_t{1} << valid) - 1;
    for (int64_t t = 0; t < g; ++t) {
      const float* score = scores[t];
      // Until p are kept, every centroid goes in; then only those scoring at least the
      // p-th best (KeepNearest has the last word: ties go to the lower index, NaN last).
      const uint64_t worst = best[t][p - 1];
      uint32_t pass = live;
      const uint32_t worst_key = ~static_cast<uint32_t>(worst >> 32);
      if (worst != ~uint64_t{0} && worst_key != 0) {  // full, and its worst is not NaN
        const float bound = FromOrderKey(worst_key);
        pass &= AtLeast(score, kCentroidPanel, bound);
      }
      for (; pass != 0; pass &= pass - 1) {
        const int j = __builtin_ctz(pass);
        KeepNearest(RankKey(OrderKey(score[j]), c0 + j), p, best[t]);
      }
    }
  }
}

template <int W, int G>
JSLIDE_INLINE void NearestCentroidsWith(const float* x, int64_t d, const float* panels,
                                        int64_t c, int64_t p, int64_t begin, int64_t end,
                                        int32_t* out) {
  uint64_t best[G][kMaxNearest];
  for (int64_t e0 = begin; e0 < end; e0 += G) {
    const int64_t g = std::min<int64_t>(G, end - e0);
    const float* xs[G];
    for (int t = 0; t < G; ++t) xs[t] = x + (e0 + std::min<int64_t>(t, g - 1)) * d;  // padded
    for (int t = 0; t < G; ++t) std::fill(best[t], best[t] + p, ~uint64_t{0});
    NearestBlock<W, G>(xs, g, d, panels, c, p, best);
    for (int64_t t = 0; t < g; ++t)
      for (int64_t j = 0; j < p; ++j)
        out[(e0 + t) * p + j] = static_cast<int32_t>(best[t][j] & 0xffffffffu);
  }
}

// 8-lane vectors in the cloned version, 16 where AVX-512 is there (as ScoreLists).
JSLIDE_CLONES void NearestCentroids8(const float* x, int64_t d, const float* panels, int64_t c,
                                     int64_t p, int64_t begin, int64_t end, int32_t* out) {
  NearestCentroidsWith<8, 2>(x, d, panels, c, p, begin, end, out);
}

#if JSLIDE_HAS_CLONES
__attribute__((target("arch=x86-64-v4"))) void NearestCentroids16(
    const float* x, int64_t d, const float* panels, int64_t c, int64_t p, int64_t begin,
    int64_t end, int32_t* out) {
  NearestCentroidsWith<16, 8>(x, d, panels, c, p, begin, end, out);
}
#endif

}  // namespace

void NearestCentroids(const float* x, int64_t d, const float* panels, int64_t c, int64_t p,
                      int64_t begin, int64_t end, int32_t* out) {
#if JSLIDE_HAS_CLONES
  if (WideVectors()) return NearestCentroids16(x, d, panels, c, p, begin, end, out);
#endif
  NearestCentroids8(x, d, panels, c, p, begin, end, out);
}
}  // namespace jslide
