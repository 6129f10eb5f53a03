#include "lsh.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "isa.h"

namespace jslide {
namespace {

// splitmix64: a counter-based generator, so results do not depend on the thread schedule.
struct Rng {
  uint64_t state;
  uint64_t Next() {
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, n) (n > 0); the modulo bias is below 2^-32 for n < 2^32.
  uint64_t Below(uint64_t n) { return Next() % n; }
};

int Log2(int64_t v) {
  int b = 0;
  while ((int64_t{1} << b) < v) ++b;
  return b;
}

}  // namespace

void SimHashCodes(const float* x, const int32_t* idx, const float* sign, int64_t l, int64_t k,
                  int64_t nnz, int32_t* codes) {
  for (int64_t t = 0; t < l; ++t) {
    int32_t code = 0;
    for (int64_t b = 0; b < k; ++b) {
      const int64_t base = (t * k + b) * nnz;
      float s = 0.0f;
      for (int64_t i = 0; i < nnz; ++i) s += sign[base + i] * x[idx[base + i]];
      code |= static_cast<int32_t>(s >= 0.0f) << b;
    }
    codes[t] = code;
  }
}

namespace {

// Position of the largest non-zero entry of x over one bin (first on ties), -1 if all zero.
// Branch-free: on random data the comparisons are unpredictable.
template <int kBin>
inline int32_t BinArgmax(const float* x, const int32_t* bin, int64_t bin_size) {
  const int64_t size = kBin > 0 ? kBin : bin_size;
  int32_t best = -1;
  float best_val = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < size; ++i) {
    const float v = x[bin[i]];
    const bool take = (v != 0.0f) & (v > best_val);
    best = take ? static_cast<int32_t>(i) : best;
    best_val = take ? v : best_val;
  }
  return best;
}

template <int kBin>
void DwtaValues(const float* x, const int32_t* bins, int64_t num_hashes, int64_t bin_size,
                int32_t* value) {
  for (int64_t h = 0; h < num_hashes; ++h)
    value[h] = BinArgmax<kBin>(x, bins + h * bin_size, bin_size);
}

}  // namespace

void DwtaCodes(const float* x, const int32_t* bins, int64_t l, int64_t k, int64_t bin_size,
               int32_t* codes, int32_t* scratch) {
  const int64_t num_hashes = l * k;
  int32_t* value = scratch;  // argmax position per hash, -1 if the bin is empty
  switch (bin_size) {  // unrolled versions for the usual bin sizes
    case 4: DwtaValues<4>(x, bins, num_hashes, bin_size, value); break;
    case 8: DwtaValues<8>(x, bins, num_hashes, bin_size, value); break;
    case 16: DwtaValues<16>(x, bins, num_hashes, bin_size, value); break;
    default: DwtaValues<0>(x, bins, num_hashes, bin_size, value);
  }
  const int bits = Log2(bin_size);
  for (int64_t t = 0; t < l; ++t) {
    int32_t code = 0;
    for (int64_t b = 0; b < k; ++b) {
      const int64_t h = t * k + b;
      int32_t v = value[h];
      for (int attempt = 1; v < 0 && attempt <= kDwtaMaxProbes; ++attempt)
        v = value[DwtaProbe(static_cast<uint32_t>(h), attempt, static_cast<uint32_t>(num_hashes))];
      code |= std::max(v, 0) << (b * bits);
    }
    codes[t] = code;
  }
}

void SparseSimHashCodes(const int32_t* ids, const float* vals, int64_t f, const uint32_t* seeds,
                        int64_t l, int64_t k, int32_t* codes) {
  for (int64_t t = 0; t < l; ++t) {
    int32_t code = 0;
    for (int64_t b = 0; b < k; ++b) {
      const uint32_t seed = seeds[t * k + b];
      float s = 0.0f;
      for (int64_t i = 0; i < f; ++i)
        if (ids[i] >= 0) s += SparseSimHashEntry(seed, static_cast<uint32_t>(ids[i])) * vals[i];
      code |= static_cast<int32_t>(s >= 0.0f) << b;
    }
    codes[t] = code;
  }
}

void BuildIndexTables(const int32_t* codes, int64_t n, int64_t l, int64_t num_buckets,
                      int32_t* offsets, int32_t* ids, int64_t t_begin, int64_t t_end) {
  const int64_t width = num_buckets + 1;
  for (int64_t t = t_begin; t < t_end; ++t)
    std::memset(offsets + t * width, 0, sizeof(int32_t) * width);
  // One pass over the rows for all of this worker's tables: counts, then prefix sums.
  for (int64_t r = 0; r < n; ++r)
    for (int64_t t = t_begin; t < t_end; ++t) ++offsets[t * width + codes[r * l + t] + 1];
  for (int64_t t = t_begin; t < t_end; ++t) {
    int32_t* o = offsets + t * width;
    for (int64_t c = 0; c < num_buckets; ++c) o[c + 1] += o[c];
  }
  // Placement: a running cursor per bucket, kept in the next bucket's start (restored after).
  std::vector<int32_t> cursor;
  for (int64_t t = t_begin; t < t_end; ++t) {
    const int32_t* o = offsets + t * width;
    cursor.assign(o, o + num_buckets);
    int32_t* out = ids + t * n;
    for (int64_t r = 0; r < n; ++r) out[cursor[codes[r * l + t]]++] = static_cast<int32_t>(r);
  }
}

// ------------------------------------------------------------------------------ IdCounter

void IdCounter::Reserve(int64_t max_items) {
  Clear();
  uint64_t cap = 16;
  while (cap < static_cast<uint64_t>(2 * max_items)) cap <<= 1;
  if (cap > slot_id_.size()) {
    slot_id_.assign(cap, -1);
    slot_count_.assign(cap, 0);
  }
  // Probe only a prefix of the allocation sized to this use (every slot is free after Clear),
  // so a small query's table stays in cache.
  mask_ = cap - 1;
}

int64_t IdCounter::Slot(int32_t id) const {
  uint64_t s = Mix32(static_cast<uint32_t>(id)) & mask_;
  while (slot_id_[s] != -1 && slot_id_[s] != id) s = (s + 1) & mask_;
  return static_cast<int64_t>(s);
}

int32_t IdCounter::Add(int32_t id) {
  const int64_t s = Slot(id);
  if (slot_id_[s] == -1) {
    slot_id_[s] = id;
    used_.push_back(s);
  }
  return ++slot_count_[s];
}

void IdCounter::Clear() {
  for (int64_t s : used_) {
    slot_id_[s] = -1;
    slot_count_[s] = 0;
  }
  used_.clear();
}

// ------------------------------------------------------------------------------ TopIndices

namespace {

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

// ------------------------------------------------------------------------------ QueryOne

bool QueryOne(const int32_t* codes, const int32_t* offsets, const int32_t* ids,
              const int32_t* force, int64_t num_force, const QueryConfig& cfg, uint64_t example,
              int32_t* out, QueryScratch& s) {
  Rng rng{cfg.seed ^ (example * 0xd1342543de82ef95ull)};
  const int64_t active = cfg.active, n = cfg.num_rows;
  s.chosen.Reserve(n, active);
  int64_t filled = 0;
  for (int64_t i = 0; i < num_force && filled < active; ++i)
    if (force[i] >= 0 && s.chosen.Add(force[i])) out[filled++] = force[i];

  // Reads table t's bucket codes[t] (at most max_per_bucket ids, from a random start,
  // cyclically, so a query costs O(L * max_per_bucket) whatever the bucket sizes), calling
  // visit(id) until it returns false. Returns false for a corrupt index: offsets outside
  // [0, N] or a row id outside [0, N) (refused rather than returned).
  const int64_t per_bucket = cfg.max_per_bucket;
  const int64_t width = cfg.num_buckets + 1;
  auto read_bucket = [&](int64_t t, auto&& visit) {
    const int64_t table = t % cfg.num_hash_tables;
    const int32_t* o = offsets + table * width;
    const int32_t code = codes[t];
    const int64_t begin = o[code], size = o[code + 1] - o[code];
    if (begin < 0 || size < 0 || begin + size > n) return false;
    const int32_t* bucket = ids + table * n + begin;
    const int64_t start = size > per_bucket ? static_cast<int64_t>(rng.Below(size)) : 0;
    for (int64_t i = 0, m = std::min(size, per_bucket); i < m; ++i) {
      const int32_t id = bucket[start + i < size ? start + i : start + i - size];
      if (id < 0 || id >= n) return false;
      if (!visit(id)) break;
    }
    return true;
  };
  const int64_t room = std::min(active - filled, cfg.retrieved);
  if (cfg.strategy == QueryStrategy::kRanked) {
    // The codes come best first: each new id is taken as it is read, and reading stops once
    // the room is filled (forced ids found in the buckets are skipped, not counted).
    const int64_t enough = filled + room;
    constexpr int64_t kAhead = 4;  // buckets are scattered over ids: fetch a few ahead
    for (int64_t t = 0; t < cfg.num_probes && filled < enough; ++t) {
      if (t + kAhead < cfg.num_probes) {
        const int64_t ahead = (t + kAhead) % cfg.num_hash_tables;
        const int32_t begin = offsets[ahead * width + codes[t + kAhead]];
        if (begin >= 0 && begin < n) __builtin_prefetch(ids + ahead * n + begin);
      }
      const bool ok = read_bucket(t, [&](int32_t id) {
        if (s.chosen.Add(id)) out[filled++] = id;
        return filled < enough;
      });
      if (!ok) return false;
    }
  } else {
    // Size the counter to what this query reads, so it stays in cache.
    int64_t to_read = 0;
    for (int64_t t = 0; t < cfg.num_probes; ++t) {
      const int32_t* o = offsets + (t % cfg.num_hash_tables) * width;
      to_read += std::min<int64_t>(std::max<int64_t>(o[codes[t] + 1] - o[codes[t]], 0),
                                   per_bucket);
    }
    s.counter.Reserve(to_read + 1);
    for (int64_t t = 0; t < cfg.num_probes; ++t)
      if (!read_bucket(t, [&](int32_t id) { s.counter.Add(id); return true; })) return false;

    // Candidates not already forced (and, for kThreshold, found in enough tables).
    s.candidates.clear();
    s.candidate_counts.clear();
    const int32_t min_count =
        cfg.strategy == QueryStrategy::kThreshold ? static_cast<int32_t>(cfg.threshold) : 1;
    s.counter.ForEach([&](int32_t id, int32_t count) {
      if (count >= min_count && !s.chosen.Contains(id)) {
        s.candidates.push_back(id);
        s.candidate_counts.push_back(count);
      }
    });
    const int64_t m = static_cast<int64_t>(s.candidates.size());
    auto take = [&](int32_t id) {  // candidates are not chosen yet
      s.chosen.Add(id);
      out[filled++] = id;
    };
    // Appends a uniform random subset of `want` of the candidates in positions [lo, hi).
    auto sample = [&](int64_t lo, int64_t hi, int64_t want) {
      for (int64_t i = lo; i < lo + want; ++i) {
        const int64_t j = i + static_cast<int64_t>(rng.Below(hi - i));
        std::swap(s.candidates[i], s.candidates[j]);
        take(s.candidates[i]);
      }
    };
    if (m <= room) {
      for (int64_t i = 0; i < m; ++i) take(s.candidates[i]);
    } else if (cfg.strategy != QueryStrategy::kTopK) {
      sample(0, m, room);
    } else {
      // The ids found in the most tables: every id above the cutoff count, then a random
      // subset of those at the cutoff. Counts are at most P * L, so this is a counting pass.
      s.histogram.assign(cfg.num_probes + 2, 0);
      for (int32_t c : s.candidate_counts) ++s.histogram[c];
      int64_t cutoff = cfg.num_probes + 1, above = 0;
      while (cutoff > 1 && above + s.histogram[cutoff - 1] <= room) above += s.histogram[--cutoff];
      --cutoff;  // ids with count > cutoff all fit; those at == cutoff compete for the rest
      int64_t at = 0;
      for (int64_t i = 0; i < m; ++i) {
        if (s.candidate_counts[i] > cutoff) {
          take(s.candidates[i]);
        } else if (s.candidate_counts[i] == cutoff) {
          s.candidates[at++] = s.candidates[i];  // compact the ties to the front
        }
      }
      sample(0, at, std::min(room - above, at));
    }
  }

  // Fill with uniform random ids not yet chosen, so the softmax always has negatives. The
  // examples of a fill group draw from the same sequence, so the group's fill touches about
  // `active` distinct rows instead of group * active (sampled softmax's shared negatives).
  if (cfg.fill_group > 1)
    rng.state = cfg.seed ^ ((example / static_cast<uint64_t>(cfg.fill_group) + 1) *
                            0x5bd1e9955bd1e995ull);
  if (cfg.fill && filled < active) {
    if (n <= 4 * active) {
      // Small tables: a uniform random subset of the ids not chosen yet.
      s.candidates.clear();
      for (int64_t id = 0; id < n; ++id)
        if (!s.chosen.Contains(static_cast<int32_t>(id))) s.candidates.push_back(static_cast<int32_t>(id));
      const int64_t c = static_cast<int64_t>(s.candidates.size());
      for (int64_t i = 0; i < c && filled < active; ++i) {
        const int64_t j = i + static_cast<int64_t>(rng.Below(c - i));
        std::swap(s.candidates[i], s.candidates[j]);
        out[filled++] = s.candidates[i];
      }
    } else {
      while (filled < active) {  // at least 3/4 of the draws are new, so this ends quickly
        const int32_t id = static_cast<int32_t>(rng.Below(n));
        if (s.chosen.Add(id)) out[filled++] = id;
      }
    }
  }
  for (; filled < active; ++filled) out[filled] = -1;
  return true;
}

// ------------------------------------------------------------------------------- ListTopK

namespace {

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
JSLIDE_INLINE typename Vec<W>::F LoadW(const uint16_t* p) {
  typename Vec<W>::H h;
  __builtin_memcpy(&h, p, sizeof h);
  const typename Vec<W>::U u = __builtin_convertvector(h, typename Vec<W>::U) << 16;
  typename Vec<W>::F v;
  __builtin_memcpy(&v, &u, sizeof v);
  return v;
}
JSLIDE_INLINE float Widen(float v) { return v; }
JSLIDE_INLINE float Widen(uint16_t bits) {
  const uint32_t u = uint32_t{bits} << 16;
  float v;
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

// G x R = 8 dot products: xs[t] . ws[r] (d elements) into out[t * R + r]. Each W-lane load
// of an x or a row serves R or G multiply-adds, so the loop is bound by the FMAs, not by the
// loads (one row against one x needs two loads per FMA).
template <int W, int G, int R, typename Row>
JSLIDE_INLINE void DotBlock(const float* const* xs, const Row* const* ws, int64_t d,
                            float* out) {
  static_assert(G * R == 8, "one lane-sum tree of eight accumulators");
  using F = typename Vec<W>::F;
  F acc[G * R] = {};
  const int64_t body = d - d % W;
  for (int64_t i = 0; i < body; i += W) {
    F wv[R];
    for (int r = 0; r < R; ++r) wv[r] = LoadW<W>(ws[r] + i);
    for (int t = 0; t < G; ++t) {
      const F xv = LoadW<W>(xs[t] + i);
      for (int r = 0; r < R; ++r) acc[t * R + r] += xv * wv[r];
    }
  }
  const Floats8 sums = LaneSums(acc);
  __builtin_memcpy(out, &sums, sizeof sums);
  if (body == d) return;
  for (int t = 0; t < G; ++t)
    for (int r = 0; r < R; ++r)
      for (int64_t i = body; i < d; ++i) out[t * R + r] += xs[t][i] * Widen(ws[r][i]);
}

template <typename Row>
JSLIDE_INLINE void PrefetchRow(const Row* row, int64_t d) {
  const char* p = reinterpret_cast<const char*>(row);
  for (int64_t off = 0; off < d * int64_t{sizeof(Row)}; off += 64) __builtin_prefetch(p + off, 0);
}

// Scores G examples against a block's nr rows, R rows at a time (the last group padded with
// its last row, whose extra scores are dropped): dots[t][r] = xs[t] . w_rows[r] + bias.
// Prefetches ahead[0, na), R of them per step.
template <int W, int G, int R, int kBlock, typename Row>
JSLIDE_INLINE void ScoreBlock(const float* const* xs, const Row* w, const float* bias,
                              int64_t d, const int32_t* rows, int64_t nr,
                              float (*dots)[kBlock], const Row* const* ahead, int64_t na) {
  for (int64_t r0 = 0; r0 < nr; r0 += R) {
    for (int64_t a = r0; a < std::min<int64_t>(na, r0 + R); ++a) PrefetchRow(ahead[a], d);
    const Row* ws[R];
    for (int r = 0; r < R; ++r) ws[r] = w + int64_t{rows[std::min<int64_t>(r0 + r, nr - 1)]} * d;
    float out[G * R];
    DotBlock<W, G, R>(xs, ws, d, out);
    for (int r = 0; r < R && r0 + r < nr; ++r) {
      const float br = bias[rows[r0 + r]];
      for (int t = 0; t < G; ++t) dots[t][r0 + r] = out[t * R + r] + br;
    }
  }
}

// Inserts (score, id) into one example's best k, kept sorted best first, unless it ranks
// below the k-th or is already there (a neuron in two probed lists: same score, same rank).
JSLIDE_INLINE void KeepBest(float score, int32_t id, int64_t k, float* scores, int32_t* ids) {
  const float worst = scores[k - 1];
  if (!(score > worst || (score == worst && id < ids[k - 1]))) return;  // NaN fails both
  int64_t j = k - 1;
  for (; j > 0; --j) {
    const float s = scores[j - 1];
    if (!(score > s || (score == s && id < ids[j - 1]))) break;
  }
  // A copy already kept has the same rank, so it sits above position j.
  for (int64_t i = 0; i < j; ++i)
    if (ids[i] == id) return;
  for (int64_t i = k - 1; i > j; --i) {
    scores[i] = scores[i - 1];
    ids[i] = ids[i - 1];
  }
  scores[j] = score;
  ids[j] = id;
}

}  // namespace

void GroupProbesByList(const int32_t* probes, int64_t b, int64_t p, int64_t num_lists,
                       int32_t* start, int32_t* members) {
  std::fill(start, start + num_lists + 1, 0);
  for (int64_t i = 0; i < b * p; ++i) ++start[probes[i] + 1];
  for (int64_t c = 0; c < num_lists; ++c) start[c + 1] += start[c];
  for (int64_t i = 0; i < b * p; ++i) members[start[probes[i]]++] = static_cast<int32_t>(i / p);
  for (int64_t c = num_lists; c > 0; --c) start[c] = start[c - 1];  // back to the starts
  start[0] = 0;
}

namespace {

// Whether the 16-lane (AVX-512) versions run here; asked once.
bool WideVectors() {
#if JSLIDE_HAS_CLONES
  static const bool wide = __builtin_cpu_supports("x86-64-v4");
  return wide;
#else
  return false;
#endif
}

template <int W, typename Row>
JSLIDE_INLINE void ScoreListsWith(const float* x, const Row* w, const float* bias, int64_t d,
                                  const int32_t* lists, int64_t s, const int32_t* start,
                                  const int32_t* members, int64_t c_begin, int64_t c_end,
                                  int64_t k, float* top_scores, int32_t* top_ids) {
  constexpr int64_t kBlock = 16;  // rows scored before the best-k are consulted
  int32_t rows[kBlock];
  float dots[4][kBlock] = {};  // entries past a short block keep earlier values: masked off
  for (int64_t c = c_begin; c < c_end; ++c) {
    const int32_t* ex = members + start[c];
    const int64_t m = start[c + 1] - start[c];
    if (m == 0) continue;
    const int32_t* row_ids = lists + c * s;
    for (int64_t j0 = 0; j0 < s; j0 += kBlock) {
      int64_t nr = 0;
      for (int64_t j = j0; j < std::min(s, j0 + kBlock); ++j)
        if (row_ids[j] >= 0) rows[nr++] = row_ids[j];
      // The next block's rows, prefetched while the first group of examples is scored (a
      // burst of them at once stalls on the line-fill buffers); at a list's start, the
      // first block's too.
      const Row* ahead[kBlock];
      int64_t na = 0;
      for (int64_t j = j0 + kBlock; j < std::min(s, j0 + 2 * kBlock); ++j)
        if (row_ids[j] >= 0) ahead[na++] = w + int64_t{row_ids[j]} * d;
      if (j0 == 0)
        for (int64_t r = 0; r < nr; ++r) PrefetchRow(w + int64_t{rows[r]} * d, d);
      // Examples four at a time (then 2, then 1). The block's rows stay in L1 across the
      // groups.
      for (int64_t i = 0; i < m;) {
        const int64_t g = m - i >= 4 ? 4 : m - i >= 2 ? 2 : 1;
        const float* xs[4];
        int64_t es[4];
        for (int64_t t = 0; t < g; ++t) {
          es[t] = ex[i + t];
          xs[t] = x + es[t] * d;
        }
        i += g;
        const int64_t np = i == g ? na : 0;
        if (g == 4) ScoreBlock<W, 4, 2, kBlock>(xs, w, bias, d, rows, nr, dots, ahead, np);
        else if (g == 2) ScoreBlock<W, 2, 4, kBlock>(xs, w, bias, d, rows, nr, dots, ahead, np);
        else ScoreBlock<W, 1, 8, kBlock>(xs, w, bias, d, rows, nr, dots, ahead, np);
        for (int64_t t = 0; t < g; ++t) {
          float* sc = top_scores + es[t] * k;
          int32_t* id = top_ids + es[t] * k;
          // Most scores fall below the k-th best: one vectorized test of the whole block,
          // then only the rows that pass (the k-th best only rises as they go in).
          const float worst = sc[k - 1];
          uint32_t pass = 0;
          for (int r = 0; r < kBlock; ++r) pass |= uint32_t{dots[t][r] >= worst} << r;
          pass &= (uint32_t{1} << nr) - 1;
          for (; pass != 0; pass &= pass - 1) {
            const int r = __builtin_ctz(pass);
            KeepBest(dots[t][r], rows[r], k, sc, id);
          }
        }
      }
    }
  }
}

// The versions: 8 lanes in the cloned one (AVX2, or SSE pairs), 16 where AVX-512 is there
// (12% faster on the trained WordNet layer; target_clones cannot change a vector's width).
template <typename Row>
JSLIDE_CLONES void ScoreLists8(const float* x, const Row* w, const float* bias, int64_t d,
                               const int32_t* lists, int64_t s, const int32_t* start,
                               const int32_t* members, int64_t c_begin, int64_t c_end,
                               int64_t k, float* top_scores, int32_t* top_ids) {
  ScoreListsWith<8>(x, w, bias, d, lists, s, start, members, c_begin, c_end, k, top_scores,
                    top_ids);
}

#if JSLIDE_HAS_CLONES
template <typename Row>
__attribute__((target("arch=x86-64-v4"))) void ScoreLists16(
    const float* x, const Row* w, const float* bias, int64_t d, const int32_t* lists, int64_t s,
    const int32_t* start, const int32_t* members, int64_t c_begin, int64_t c_end, int64_t k,
    float* top_scores, int32_t* top_ids) {
  ScoreListsWith<16>(x, w, bias, d, lists, s, start, members, c_begin, c_end, k, top_scores,
                     top_ids);
}
#endif

template <typename Row>
void ScoreListsOf(const float* x, const Row* w, const float* bias, int64_t d,
                  const int32_t* lists, int64_t s, const int32_t* start, const int32_t* members,
                  int64_t c_begin, int64_t c_end, int64_t k, float* top_scores,
                  int32_t* top_ids) {
#if JSLIDE_HAS_CLONES
  if (WideVectors())
    return ScoreLists16(x, w, bias, d, lists, s, start, members, c_begin, c_end, k, top_scores,
                        top_ids);
#endif
  ScoreLists8(x, w, bias, d, lists, s, start, members, c_begin, c_end, k, top_scores, top_ids);
}

}  // namespace

void ScoreLists(const float* x, const float* w, const float* bias, int64_t d,
                const int32_t* lists, int64_t s, const int32_t* start, const int32_t* members,
                int64_t c_begin, int64_t c_end, int64_t k, float* top_scores, int32_t* top_ids) {
  ScoreListsOf(x, w, bias, d, lists, s, start, members, c_begin, c_end, k, top_scores, top_ids);
}

void ScoreLists(const float* x, const uint16_t* w, const float* bias, int64_t d,
                const int32_t* lists, int64_t s, const int32_t* start, const int32_t* members,
                int64_t c_begin, int64_t c_end, int64_t k, float* top_scores, int32_t* top_ids) {
  ScoreListsOf(x, w, bias, d, lists, s, start, members, c_begin, c_end, k, top_scores, top_ids);
}

void MergeBest(const float* scores, const int32_t* ids, int64_t k, float* into_scores,
               int32_t* into_ids) {
  for (int64_t i = 0; i < k && ids[i] >= 0; ++i) KeepBest(scores[i], ids[i], k, into_scores, into_ids);
}

// ----------------------------------------------------------------------- NearestCentroids

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

// v in every lane. Written as an add of zeros (one scalar add and a broadcast per step):
// the forms that fold to a bare broadcast (v * ones, a shuffle) let GCC's SLP pass merge
// the G broadcasts into masked ones with the accumulators in memory, 5x slower.
template <int W>
JSLIDE_INLINE typename Vec<W>::F Broadcast(float v) {
  return typename Vec<W>::F{} + v;
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
