// Top-k selection of score rows (lsh.h): integer keys, a histogram threshold, a radix
// sort of the few candidates.
#include "lsh.h"

#include <algorithm>
#include <cstring>

#include "isa.h"
#include "order_key.h"

namespace jslide {

namespace {

constexpr int64_t kSmallTop = 8;  // above, the threshold path is faster (measured)

// keys[i] = OrderKey(scores[i]); returns the largest key. One vectorized pass.
JSLIDE_INLINE uint32_t RowKeys(const float* __restrict scores, int64_t c, uint32_t* __restrict keys) {
  uint32_t hi = 0;
#pragma omp simd reduction(max : hi)
  for (int64_t i = 0; i < c; ++i) {
    const uint32_t key = OrderKey(scores[i]);
    keys[i] = key;
    hi = hi > key ? hi : key;
  }
  return hi;
}

// Sorts entries[0, n) (RankKeys) ascending by their key half, using tmp[0, n) as the other
// buffer; returns the one that holds the result. The position half is already ascending,
// and LSD radix passes are stable. Linear, unlike a comparison sort.
JSLIDE_INLINE uint64_t* SortByKey(uint64_t* entries, uint64_t* tmp, int64_t n) {
  for (int bit = 32; bit < 64; bit += 8) {
    uint32_t count[256] = {0};
    for (int64_t j = 0; j < n; ++j) ++count[(entries[j] >> bit) & 255];
    if (count[(entries[0] >> bit) & 255] == n) continue;  // one digit value: nothing to move
    uint32_t start = 0;
    for (uint32_t& x : count) {
      const uint32_t here = x;
      x = start;
      start += here;
    }
    for (int64_t j = 0; j < n; ++j) tmp[count[(entries[j] >> bit) & 255]++] = entries[j];
    std::swap(entries, tmp);
  }
  return entries;
}

// The smallest key tau with at least k keys >= tau among keys[0, c), up to the resolution
// of a 256-bin histogram over [lo, hi]: every key >= the returned value is a candidate.
JSLIDE_INLINE uint32_t HistogramThreshold(const uint32_t* keys, int64_t c, int64_t k) {
  uint32_t lo = 0xffffffffu, hi = 0;
  for (int64_t i = 0; i < c; ++i) {
    lo = std::min(lo, keys[i]);
    hi = std::max(hi, keys[i]);
  }
  int shift = 0;
  while ((static_cast<uint64_t>(hi - lo) >> shift) > 255) ++shift;
  uint32_t hist[256] = {0};
  for (int64_t i = 0; i < c; ++i) ++hist[(keys[i] - lo) >> shift];
  uint32_t boundary = 255;
  int64_t above = 0;
  for (; boundary > 0 && above + hist[boundary] < k; --boundary) above += hist[boundary];
  return lo + (boundary << shift);
}

}  // namespace

JSLIDE_CLONES void TopIndices(const float* scores, int64_t c, int64_t k, int32_t* out,
                              TopScratch& scratch) {
  if (k == 1) {
    // The first position of the largest key (the nearest centroid of every row at each
    // k-means step): a max, then a min over the positions that hold it, both vectorized.
    scratch.keys.resize(static_cast<size_t>(c));
    const uint32_t* keys = scratch.keys.data();
    const uint32_t hi = RowKeys(scores, c, scratch.keys.data());
    const int32_t none = static_cast<int32_t>(c);
    int32_t first = none;
    for (int64_t i = 0; i < c; ++i)
      first = std::min(first, keys[i] == hi ? static_cast<int32_t>(i) : none);
    out[0] = first;
    return;
  }
  if (k <= kSmallTop) {
    // Few wanted (a few probes): keep the best k sorted; almost every entry is rejected by
    // one compare with the k-th best, so this is one pass.
    uint64_t best[kSmallTop];
    for (int64_t i = 0; i < k; ++i) {  // insertion sort of the first k
      const uint64_t key = RankKey(OrderKey(scores[i]), i);
      int64_t j = i;
      for (; j > 0 && best[j - 1] > key; --j) best[j] = best[j - 1];
      best[j] = key;
    }
    auto keep = [&](int64_t i) {
      const uint64_t key = RankKey(OrderKey(scores[i]), i);
      if (key >= best[k - 1]) return;
      int64_t j = k - 1;
      for (; j > 0 && best[j - 1] > key; --j) best[j] = best[j - 1];
      best[j] = key;
    };
    // Blocks of 16 with one vectorized test against the k-th best: a later entry beats it
    // only with a strictly higher key (ties go to the earlier position).
    constexpr int64_t kBlock = 16;
    int64_t i = k;
    for (; i + kBlock <= c; i += kBlock) {
      const uint32_t worst = ~static_cast<uint32_t>(best[k - 1] >> 32);
      int any = 0;
#pragma omp simd reduction(| : any)
      for (int64_t l = 0; l < kBlock; ++l) any |= OrderKey(scores[i + l]) > worst;
      if (!any) continue;
      for (int64_t l = 0; l < kBlock; ++l) keep(i + l);
    }
    for (; i < c; ++i) keep(i);
    for (int64_t i = 0; i < k; ++i) out[i] = static_cast<int32_t>(best[i] & 0xffffffffu);
    return;
  }
  // Many wanted (the probes of a query: ~70-300 of 1,024-2,048). A threshold that about
  // 1.5 k keys pass, read off a sorted sample of 64 keys (checked by a vectorized count;
  // a histogram when the sample misjudges), the entries above it gathered without branches,
  // and those radix sorted. Linear passes, no comparison sort.
  scratch.keys.resize(static_cast<size_t>(c));
  scratch.cand.resize(2 * static_cast<size_t>(c));
  uint32_t* keys = scratch.keys.data();
  RowKeys(scores, c, keys);
  constexpr int64_t kSample = 64;
  uint32_t tau = 0;
  if (c >= 4 * kSample) {
    uint32_t sample[kSample];
    for (int64_t j = 0; j < kSample; ++j) sample[j] = keys[j * c / kSample];
    // The sample's j-th largest stands for about j * c / kSample keys.
    const int64_t j = std::min<int64_t>(kSample, (3 * k * kSample) / (2 * c) + 2);
    std::nth_element(sample, sample + (kSample - j), sample + kSample);
    tau = sample[kSample - j];
    int64_t passing = 0;
    for (int64_t i = 0; i < c; ++i) passing += keys[i] >= tau;
    if (passing < k) tau = HistogramThreshold(keys, c, k);
  } else {
    tau = HistogramThreshold(keys, c, k);
  }
  uint64_t* cand = scratch.cand.data();
  int64_t n = 0;
  for (int64_t i = 0; i < c; ++i) {
    cand[n] = RankKey(keys[i], i);  // n <= i: in bounds
    n += keys[i] >= tau;
  }
  const uint64_t* sorted = SortByKey(cand, cand + c, n);
  for (int64_t i = 0; i < k; ++i) out[i] = static_cast<int32_t>(sorted[i] & 0xffffffffu);
}

}  // namespace jslide
