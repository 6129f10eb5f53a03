#include "kernels.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <utility>

#include "isa.h"
#include "mix.h"
#include "prefetch.h"

namespace jslide {
namespace {

JSLIDE_INLINE float Dot(const float* __restrict a, const float* __restrict b, int64_t d) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int64_t k = 0; k < d; ++k) s += a[k] * b[k];
  return s;
}

JSLIDE_INLINE void Axpy(float alpha, const float* __restrict x, float* __restrict y, int64_t d) {
#pragma omp simd
  for (int64_t k = 0; k < d; ++k) y[k] += alpha * x[k];
}

// Writes x; to bfloat16, rounded stochastically: `random`'s low 16 bits are added below the
// kept bits before truncating, so x rounds away from zero with probability equal to the
// dropped fraction (unbiased: E[result] = x). Round-to-nearest would drop any update smaller
// than half the spacing of bfloat16 numbers (2^-9 of the weight): most of Adam's steps at a
// learning rate of 1e-3. Inf and NaN pass unchanged (a carry could turn NaN into inf).
JSLIDE_INLINE void StoreRounded(float* p, float x, uint32_t) { *p = x; }
JSLIDE_INLINE void StoreRounded(Bf16* p, float x, uint32_t random) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  const uint32_t dither = (u & 0x7f800000u) == 0x7f800000u ? 0u : (random & 0xffffu);
  p->bits = static_cast<uint16_t>((u + dither) >> 16);
}

// Random bits for element k of a row (a counter-based hash: no state, the same bits for the
// same (key, element) in every process and thread).
JSLIDE_INLINE uint32_t ElementBits(uint32_t row_key, int64_t k) {
  return Mix32(row_key ^ (static_cast<uint32_t>(k) * 0x9e3779b9u));
}

JSLIDE_INLINE uint32_t RowKey(uint32_t seed, int64_t row) {
  return Mix32(seed + static_cast<uint32_t>(row) * 0x85ebca6bu +
               static_cast<uint32_t>(row >> 32) * 0xc2b2ae35u);
}

// x . w (w widened), and y += alpha * w. The dot keeps 16 partial sums (one 512-bit register,
// two 256-bit ones) and adds them at the end: an `omp simd` reduction here was lowered to
// per-lane arrays on the stack, summed one scalar at a time, which cost the gathers a third.
template <typename W>
JSLIDE_INLINE float DotRow(const float* __restrict x, const W* __restrict w, int64_t d) {
  constexpr int kLanes = 16;
  float acc[kLanes] = {};
  int64_t k = 0;
  for (; k + kLanes <= d; k += kLanes)
    for (int l = 0; l < kLanes; ++l) acc[l] += x[k + l] * Widen(w[k + l]);
  float s = 0.0f;
  for (int l = 0; l < kLanes; ++l) s += acc[l];
  for (; k < d; ++k) s += x[k] * Widen(w[k]);
  return s;
}

template <typename W>
JSLIDE_INLINE void AxpyRow(float alpha, const W* __restrict w, float* __restrict y, int64_t d) {
#pragma omp simd
  for (int64_t k = 0; k < d; ++k) y[k] += alpha * Widen(w[k]);
}

// Collects (id - row_begin, position) for the ids in [row_begin, row_end), sorted by id with
// positions ascending within an id, in O(count) whatever the table's size: the keys in range
// are first compacted without branches (each worker of a call keeps about 1/workers of the
// ids, so a branch per id is a coin flip), then sorted by a counting sort when the range is
// no larger than their number, else by an LSD radix sort (11 bits a pass, so two passes up to
// 4M rows). A comparison sort here made a step's cost grow with N.
void GroupByRow(const int32_t* ids, int64_t count, int64_t row_begin, int64_t row_end,
                RowScratch& s) {
  const uint64_t range = static_cast<uint64_t>(row_end - row_begin);
  s.sorted.resize(static_cast<size_t>(count) + 1);  // one slot past the end for rejected ids
  uint64_t* compact = s.sorted.data();
  int64_t m = 0;
  for (int64_t p = 0; p < count; ++p) {
    const uint64_t rel = static_cast<uint64_t>(int64_t{ids[p]} - row_begin);  // padding: huge
    compact[m] = (rel << 32) | static_cast<uint64_t>(p);
    m += rel < range;
  }
  s.keys.resize(static_cast<size_t>(m));
  uint64_t* keys = s.keys.data();
  if (static_cast<int64_t>(range) <= std::max<int64_t>(m, 1024)) {
    std::vector<int32_t>& counts = s.counts;
    counts.assign(range + 1, 0);
    for (int64_t i = 0; i < m; ++i) ++counts[(compact[i] >> 32) + 1];
    for (uint64_t r = 0; r < range; ++r) counts[r + 1] += counts[r];
    for (int64_t i = 0; i < m; ++i) keys[counts[compact[i] >> 32]++] = compact[i];  // stable
    return;
  }
  constexpr int kBits = 11;
  constexpr uint64_t kMask = (uint64_t{1} << kBits) - 1;
  int bits = 0;
  while ((uint64_t{1} << bits) < range) ++bits;
  uint32_t hist[kMask + 1];
  uint64_t* from = compact;
  uint64_t* to = keys;
  for (int shift = 32; shift < 32 + bits; shift += kBits) {
    std::fill(hist, hist + kMask + 1, 0u);
    for (int64_t i = 0; i < m; ++i) ++hist[(from[i] >> shift) & kMask];
    uint32_t sum = 0;
    for (uint64_t b = 0; b <= kMask; ++b) sum += std::exchange(hist[b], sum);
    for (int64_t i = 0; i < m; ++i) to[hist[(from[i] >> shift) & kMask]++] = from[i];  // stable
    std::swap(from, to);
  }
  if (from != keys) std::copy(from, from + m, keys);
}

// Touched rows ahead of the one being updated whose table (and moment) rows are prefetched:
// rows far apart in a large table each cost a DRAM round trip, and these overlap them.
constexpr int64_t kPrefetchRows = 8;
// Rows ahead that the gathers prefetch (each row is read once, so more can be in flight).
constexpr int64_t kPrefetchGather = 16;

// GroupByRow, then where each distinct row's run of keys starts (s.starts, one past the end
// last), so rows ahead can be prefetched.
void GroupDistinctRows(const int32_t* ids, int64_t count, int64_t row_begin, int64_t row_end,
                       RowScratch& s) {
  GroupByRow(ids, count, row_begin, row_end, s);
  s.starts.clear();
  const size_t n = s.keys.size();
  for (size_t i = 0; i < n; ++i)
    if (i == 0 || (s.keys[i] >> 32) != (s.keys[i - 1] >> 32))
      s.starts.push_back(static_cast<uint32_t>(i));
  s.starts.push_back(static_cast<uint32_t>(n));
}

// visit(row, first key, end key) for every distinct row of s (GroupDistinctRows), in
// increasing order, after prefetch(row) for the row `ahead` rows later.
template <typename Visit, typename RowPrefetch>
JSLIDE_INLINE void ForEachDistinctRow(const RowScratch& s, int64_t row_begin, int64_t ahead,
                                      Visit&& visit, RowPrefetch&& prefetch) {
  const int64_t rows = static_cast<int64_t>(s.starts.size()) - 1;
  auto row_of = [&](int64_t j) __attribute__((always_inline)) {
    return row_begin + static_cast<int64_t>(s.keys[s.starts[j]] >> 32);
  };
  for (int64_t j = 0; j < rows; ++j) {
    if (j + ahead < rows) prefetch(row_of(j + ahead));
    visit(row_of(j), s.starts[j], s.starts[j + 1]);
  }
}

JSLIDE_INLINE uint32_t Position(uint64_t key) { return static_cast<uint32_t>(key & 0xffffffffu); }

// Calls update(row, summed_gradient) once for every distinct id in [row_begin, row_end), in
// increasing row order, after prefetch(row) for the row kPrefetchRows ahead.
template <typename RowUpdate, typename RowPrefetch>
JSLIDE_INLINE void ForEachSummedRow(const int32_t* ids, const float* coef, const float* vecs,
                                    int64_t r, int64_t a, int64_t d, int64_t row_begin,
                                    int64_t row_end, RowScratch& s, RowUpdate&& update,
                                    RowPrefetch&& prefetch) {
  GroupDistinctRows(ids, r * a, row_begin, row_end, s);
  s.grad.resize(static_cast<size_t>(d));
  float* g = s.grad.data();
  const uint32_t width = static_cast<uint32_t>(a);
  ForEachDistinctRow(
      s, row_begin, kPrefetchRows,
      [&](int64_t row, uint32_t first, uint32_t last) __attribute__((always_inline)) {
        std::fill(g, g + d, 0.0f);
        for (uint32_t i = first; i < last; ++i) {
          const uint32_t p = Position(s.keys[i]);
          Axpy(coef[p], vecs + static_cast<int64_t>(p / width) * d, g, d);
        }
        update(row, g);
      },
      prefetch);
}

// The same for windows: ids are the first elements of `window` consecutive elements of a 1-D
// table, which may overlap (ROBE's blocks). Calls update(first, count, g) once for every run
// of consecutive elements in [elem_begin, elem_end) that some window covers, in increasing
// order, g holding the count elements' summed gradient; windows that straddle the range's
// ends contribute only their part inside it (another worker owns the rest).
template <typename RunUpdate, typename Prefetch>
JSLIDE_INLINE void ForEachSummedWindowRun(const int32_t* ids, const float* coef,
                                          const float* vecs, int64_t r, int64_t a,
                                          int64_t window, int64_t elem_begin, int64_t elem_end,
                                          RowScratch& s, RunUpdate&& update,
                                          Prefetch&& prefetch) {
  const int64_t first_start = std::max<int64_t>(0, elem_begin - window + 1);
  GroupDistinctRows(ids, r * a, first_start, elem_end, s);
  std::vector<float>& acc = s.grad;
  const uint32_t width = static_cast<uint32_t>(a);
  int64_t run_lo = 0, run_hi = 0;  // the current run [run_lo, run_hi); empty when equal
  auto flush = [&]() __attribute__((always_inline)) {
    const int64_t lo = std::max(run_lo, elem_begin), hi = std::min(run_hi, elem_end);
    if (hi > lo) update(lo, hi - lo, acc.data() + (lo - run_lo));
  };
  ForEachDistinctRow(
      s, first_start, kPrefetchRows,
      [&](int64_t start, uint32_t first, uint32_t last) __attribute__((always_inline)) {
        if (start >= run_hi) {  // no overlap with the run so far: a new run
          flush();
          run_lo = run_hi = start;
          acc.clear();
        }
        if (start + window > run_hi) {
          run_hi = start + window;
          acc.resize(static_cast<size_t>(run_hi - run_lo));  // zeros appended
        }
        float* g = acc.data() + (start - run_lo);
        for (uint32_t i = first; i < last; ++i) {
          const uint32_t p = Position(s.keys[i]);
          Axpy(coef[p], vecs + static_cast<int64_t>(p / width) * window, g, window);
        }
      },
      prefetch);
  flush();
}

// update(first, count, g) over the rows (window == 0: rows of d elements, count 1) or the
// runs of windowed elements (window > 0: rows of one element) that the ids touch.
template <typename RunUpdate, typename Prefetch>
JSLIDE_INLINE void ForEachSummedRun(const int32_t* ids, const float* coef, const float* vecs,
                                    int64_t r, int64_t a, int64_t d, int64_t window,
                                    int64_t row_begin, int64_t row_end, RowScratch& s,
                                    RunUpdate&& update, Prefetch&& prefetch) {
  if (window > 0) {
    ForEachSummedWindowRun(ids, coef, vecs, r, a, window, row_begin, row_end, s, update,
                           prefetch);
    return;
  }
  ForEachSummedRow(
      ids, coef, vecs, r, a, d, row_begin, row_end, s,
      [&](int64_t row, const float* g) __attribute__((always_inline)) { update(row, 1, g); },
      prefetch);
}

}  // namespace

template <typename W>
JSLIDE_CLONES void GatherDotRows(const float* x, const W* w, const float* b, const int32_t* ids,
                                 int64_t a, int64_t d, int64_t stride, float* y, int64_t begin,
                                 int64_t end) {
  const int64_t row_bytes = d * static_cast<int64_t>(sizeof(W));
  for (int64_t r = begin; r < end; ++r) {
    const float* xr = x + r * d;
    const int32_t* id = ids + r * a;
    float* yr = y + r * a;
    for (int64_t j = 0; j < a; ++j) {
      const int64_t n = id[j];
      if (n < 0) {
        yr[j] = 0.0f;
        continue;
      }
      // Prefetch a later row: the gathered rows are scattered over a large table.
      if (j + kPrefetchGather < a && id[j + kPrefetchGather] >= 0)
        PrefetchForRead(w + int64_t{id[j + kPrefetchGather]} * stride, row_bytes);
      yr[j] = DotRow(xr, w + n * stride, d) + (b ? b[n] : 0.0f);
    }
  }
}
template void GatherDotRows<float>(const float*, const float*, const float*, const int32_t*,
                                   int64_t, int64_t, int64_t, float*, int64_t, int64_t);
template void GatherDotRows<Bf16>(const float*, const Bf16*, const float*, const int32_t*,
                                  int64_t, int64_t, int64_t, float*, int64_t, int64_t);

template <typename W>
JSLIDE_CLONES void GatherWeightedSumRows(const int32_t* ids, const float* coef, int64_t a,
                                         const W* w, int64_t d, int64_t stride, float* out,
                                         int64_t begin, int64_t end) {
  const int64_t row_bytes = d * static_cast<int64_t>(sizeof(W));
  for (int64_t r = begin; r < end; ++r) {
    const int32_t* id = ids + r * a;
    const float* c = coef + r * a;
    float* o = out + r * d;
    std::fill(o, o + d, 0.0f);
    for (int64_t j = 0; j < a; ++j) {
      if (id[j] < 0) continue;
      if (j + kPrefetchGather < a && id[j + kPrefetchGather] >= 0)
        PrefetchForRead(w + int64_t{id[j + kPrefetchGather]} * stride, row_bytes);
      AxpyRow(c[j], w + int64_t{id[j]} * stride, o, d);
    }
  }
}
template void GatherWeightedSumRows<float>(const int32_t*, const float*, int64_t, const float*,
                                           int64_t, int64_t, float*, int64_t, int64_t);
template void GatherWeightedSumRows<Bf16>(const int32_t*, const float*, int64_t, const Bf16*,
                                          int64_t, int64_t, float*, int64_t, int64_t);

JSLIDE_CLONES
void ScatterOuterRows(const int32_t* ids, const float* coef, const float* vecs, int64_t r,
                      int64_t a, int64_t d, int64_t window, float* dense, int64_t row_begin,
                      int64_t row_end) {
  const int64_t count = r * a;
  if (window > 0) {  // elements [row_begin, row_end) of a 1-D table; windows of d = window
    std::memset(dense + row_begin, 0, sizeof(float) * (row_end - row_begin));
    for (int64_t p = 0; p < count; ++p) {
      const int64_t o = ids[p];
      if (o < 0 || o >= row_end || o + window <= row_begin) continue;
      const int64_t lo = std::max(o, row_begin), hi = std::min(o + window, row_end);
      Axpy(coef[p], vecs + (p / a) * window + (lo - o), dense + lo, hi - lo);
    }
    return;
  }
  std::memset(dense + row_begin * d, 0, sizeof(float) * (row_end - row_begin) * d);
  for (int64_t p = 0; p < count; ++p) {
    const int64_t n = ids[p];
    if (n >= row_begin && n < row_end) Axpy(coef[p], vecs + (p / a) * d, dense + n * d, d);
  }
}

AdamCatchUp AdamCatchUpFactors(const AdamHyper& h, int64_t s, int64_t k) {
  if (k <= 0) return {0.0f, 1.0f, 1.0f};
  const double b1 = h.b1, b2 = h.b2, ratio = b1 / std::sqrt(b2);
  double p1 = std::pow(b1, static_cast<double>(s)), p2 = std::pow(b2, static_cast<double>(s));
  double ri = 1.0, sum = 0.0;
  const int64_t exact = std::min<int64_t>(k, 64);
  for (int64_t i = 1; i <= exact; ++i) {
    p1 *= b1;
    p2 *= b2;
    ri *= ratio;
    sum += ri * std::sqrt(1.0 - p2) / (1.0 - p1);
  }
  if (k > exact) {
    const double rest = static_cast<double>(k - exact);
    const double geometric = ratio == 1.0 ? rest
                                          : ratio * (1.0 - std::pow(ratio, rest)) / (1.0 - ratio);
    sum += ri * geometric * std::sqrt(1.0 - p2 * b2) / (1.0 - p1 * b1);
  }
  const double kd = static_cast<double>(k);
  return {static_cast<float>(h.lr * sum), static_cast<float>(std::pow(b1, kd)),
          static_cast<float>(std::pow(b2, kd))};
}

const AdamCatchUp& CatchUpCache::Get(const AdamHyper& h, int64_t s, int64_t k) {
  const int64_t slot = s % kSize;
  if (!used_[slot] || key_[slot] != s) {
    used_[slot] = true;
    key_[slot] = s;
    value_[slot] = AdamCatchUpFactors(h, s, k);
  }
  return value_[slot];
}

namespace {

// The zero-gradient steps of AdamCatchUpFactors on one row; `key` seeds the rounding bits.
template <typename W, typename S>
JSLIDE_INLINE void CatchUpElement(W* __restrict w, S* __restrict m, S* __restrict v,
                                  const AdamCatchUp& c, float eps, uint32_t bits);

template <typename W, typename S>
JSLIDE_INLINE void CatchUpRow(W* __restrict w, S* __restrict m, S* __restrict v, int64_t d,
                              const AdamCatchUp& c, float eps, uint32_t key) {
#pragma omp simd
  for (int64_t k = 0; k < d; ++k) CatchUpElement(w + k, m + k, v + k, c, eps, ElementBits(key, k));
}

// CatchUpRow for one element, with its 32 rounding bits.
template <typename W, typename S>
JSLIDE_INLINE void CatchUpElement(W* __restrict w, S* __restrict m, S* __restrict v,
                                  const AdamCatchUp& c, float eps, uint32_t bits) {
  const float mk = Widen(*m), vk = Widen(*v);
  StoreRounded(w, Widen(*w) - c.scale * mk / (std::sqrt(vk) + eps), bits);
  StoreRounded(m, mk * c.decay1, bits >> 16);
  StoreRounded(v, vk * c.decay2, bits * 0x2c1b3c6du >> 16);
}

// Seeds of the rounding bits of a step: distinct for the catch-up and the update.
JSLIDE_INLINE uint32_t StepSeed(int64_t step, uint32_t salt) {
  return Mix32(static_cast<uint32_t>(step) * 0x27d4eb2fu + salt);
}

}  // namespace

template <typename W, typename S>
JSLIDE_CLONES void SparseAdamRows(const int32_t* ids, const float* coef, const float* vecs,
                                  int64_t r, int64_t a, int64_t d, int64_t window, W* w, S* m,
                                  S* v, int32_t* last, LastCheck* check, const AdamHyper& h,
                                  int64_t row_begin, int64_t row_end, RowScratch& scratch) {
  const float lr = h.lr, b1 = h.b1, b2 = h.b2, eps = h.eps;
  const float inv_bc1 = 1.0f / h.bias_correction1, inv_bc2 = 1.0f / h.bias_correction2;
  const uint32_t update_seed = StepSeed(h.step, 0x1u), catch_up_seed = StepSeed(h.step, 0x2u);
  scratch.catch_up.Clear();
  const int64_t row_len = window > 0 ? 1 : d;  // windows update a 1-D table element by element
  const int64_t w_bytes = row_len * static_cast<int64_t>(sizeof(W));
  const int64_t s_bytes = row_len * static_cast<int64_t>(sizeof(S));
  // One element: moments, then the weight, with its 32 rounding bits.
  auto adam = [&](W* __restrict wk, S* __restrict mk_, S* __restrict vk_, float g,
                  uint32_t bits) __attribute__((always_inline)) {
    const float mk = b1 * Widen(*mk_) + (1.0f - b1) * g;
    const float vk = b2 * Widen(*vk_) + (1.0f - b2) * g * g;
    StoreRounded(mk_, mk, bits >> 16);
    StoreRounded(vk_, vk, bits * 0x2c1b3c6du >> 16);
    StoreRounded(wk, Widen(*wk) - lr * (mk * inv_bc1) / (std::sqrt(vk * inv_bc2) + eps), bits);
  };
  ForEachSummedRun(
      ids, coef, vecs, r, a, d, window, row_begin, row_end, scratch,
      [&](int64_t first, int64_t count, const float* __restrict g)
          __attribute__((always_inline)) {
        W* __restrict wr = w + first * row_len;
        S* __restrict mr = m + first * row_len;
        S* __restrict vr = v + first * row_len;
        // s == 0: never updated, so m = v = 0 and dense Adam left it alone; s outside
        // [0, step - 1] is a corrupt state, reported and never used.
        auto behind = [&](int64_t row) __attribute__((always_inline)) {
          const int32_t s = last[row];
          last[row] = static_cast<int32_t>(h.step);
          if (s < 0 || s > check->max_last) {
            check->Report(row, s);
            return false;
          }
          return s > 0 && h.step - 1 > s;
        };
        if (last != nullptr && row_len > 1) {  // one row
          const int64_t s = last[first];
          if (behind(first))
            CatchUpRow(wr, mr, vr, row_len, scratch.catch_up.Get(h, s, h.step - 1 - s), eps,
                       RowKey(catch_up_seed, first));
        } else if (last != nullptr) {  // a run of one-element rows: factors, then one pass
          scratch.factors.resize(static_cast<size_t>(count));
          AdamCatchUp* f = scratch.factors.data();
          bool any = false;
          for (int64_t i = 0; i < count; ++i) {
            const int64_t s = last[first + i];
            const bool late = behind(first + i);
            f[i] = late ? scratch.catch_up.Get(h, s, h.step - 1 - s) : AdamCatchUp{0, 1, 1};
            any |= late;
          }
          // Rows not behind get (0, 1, 1): their values are stored back unchanged.
          if (any) {
#pragma omp simd
            for (int64_t i = 0; i < count; ++i)
              CatchUpElement(wr + i, mr + i, vr + i, f[i], eps,
                             ElementBits(RowKey(catch_up_seed, first + i), 0));
          }
        }
        if (row_len == 1) {  // a run of one-element rows, each with its own rounding key
#pragma omp simd
          for (int64_t i = 0; i < count; ++i)
            adam(wr + i, mr + i, vr + i, g[i], ElementBits(RowKey(update_seed, first + i), 0));
        } else {  // one row
          const uint32_t key = RowKey(update_seed, first);
#pragma omp simd
          for (int64_t k = 0; k < row_len; ++k)
            adam(wr + k, mr + k, vr + k, g[k], ElementBits(key, k));
        }
      },
      [&](int64_t row) __attribute__((always_inline)) {
        PrefetchForWrite(w + row * row_len, w_bytes);
        PrefetchForWrite(m + row * row_len, s_bytes);
        PrefetchForWrite(v + row * row_len, s_bytes);
      });
}

template <typename W, typename S>
JSLIDE_CLONES void AdamCatchUpRows(W* w, S* m, S* v, int32_t* last, int64_t d,
                                   const AdamHyper& h, int64_t row_begin, int64_t row_end) {
  CatchUpCache cache;
  const uint32_t seed = StepSeed(h.step, 0x3u);
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t s = last[row];
    if (s > 0 && h.step > s)
      CatchUpRow(w + row * d, m + row * d, v + row * d, d, cache.Get(h, s, h.step - s), h.eps,
                 RowKey(seed, row));
    last[row] = static_cast<int32_t>(h.step);
  }
}

#define JSLIDE_ADAM_INSTANCES(W, S)                                                          \
  template void SparseAdamRows<W, S>(const int32_t*, const float*, const float*, int64_t,    \
                                     int64_t, int64_t, int64_t, W*, S*, S*, int32_t*,        \
                                     LastCheck*, const AdamHyper&, int64_t, int64_t,         \
                                     RowScratch&);                                           \
  template void AdamCatchUpRows<W, S>(W*, S*, S*, int32_t*, int64_t, const AdamHyper&,       \
                                      int64_t, int64_t);
JSLIDE_ADAM_INSTANCES(float, float)
JSLIDE_ADAM_INSTANCES(float, Bf16)
JSLIDE_ADAM_INSTANCES(Bf16, float)
JSLIDE_ADAM_INSTANCES(Bf16, Bf16)
#undef JSLIDE_ADAM_INSTANCES

template <typename W>
JSLIDE_CLONES void SparseSgdRows(const int32_t* ids, const float* coef, const float* vecs,
                                 int64_t r, int64_t a, int64_t d, int64_t window, W* w, float lr,
                                 uint32_t seed, int64_t row_begin, int64_t row_end,
                                 RowScratch& scratch) {
  const int64_t row_len = window > 0 ? 1 : d;
  const int64_t w_bytes = row_len * static_cast<int64_t>(sizeof(W));
  ForEachSummedRun(
      ids, coef, vecs, r, a, d, window, row_begin, row_end, scratch,
      [&](int64_t first, int64_t count, const float* __restrict g)
          __attribute__((always_inline)) {
        W* __restrict wr = w + first * row_len;
        if (row_len == 1) {
#pragma omp simd
          for (int64_t i = 0; i < count; ++i)
            StoreRounded(wr + i, Widen(wr[i]) - lr * g[i],
                         ElementBits(RowKey(seed, first + i), 0));
        } else {
          const uint32_t key = RowKey(seed, first);
#pragma omp simd
          for (int64_t k = 0; k < row_len; ++k)
            StoreRounded(wr + k, Widen(wr[k]) - lr * g[k], ElementBits(key, k));
        }
      },
      [&](int64_t row) __attribute__((always_inline)) {
        PrefetchForWrite(w + row * row_len, w_bytes);
      });
}
template void SparseSgdRows<float>(const int32_t*, const float*, const float*, int64_t, int64_t,
                                   int64_t, int64_t, float*, float, uint32_t, int64_t, int64_t,
                                   RowScratch&);
template void SparseSgdRows<Bf16>(const int32_t*, const float*, const float*, int64_t, int64_t,
                                  int64_t, int64_t, Bf16*, float, uint32_t, int64_t, int64_t,
                                  RowScratch&);

JSLIDE_CLONES
double RowSparseSqNormRows(const int32_t* ids, const float* coef, const float* vecs, int64_t r,
                           int64_t a, int64_t d, int64_t window, int64_t row_begin,
                           int64_t row_end, RowScratch& scratch) {
  const int64_t row_len = window > 0 ? 1 : d;
  double total = 0.0;
  ForEachSummedRun(
      ids, coef, vecs, r, a, d, window, row_begin, row_end, scratch,
      [&](int64_t, int64_t count, const float* g) __attribute__((always_inline)) {
        total += Dot(g, g, count * row_len);
      },
      [](int64_t) __attribute__((always_inline)) {});
  return total;
}

RobeHash MakeRobeHash(uint32_t seed, int64_t memory, int64_t block) {
  return {1 + Mix32(seed + 0x9e3779b9u) % (kRobePrime - 1), Mix32(seed + 0x3c6ef372u) % kRobePrime,
          Mix32(seed + 0xdaa66d2bu) % kRobePrime, static_cast<uint64_t>(memory - block + 1)};
}

void RobeSlots(const int32_t* ids, int64_t k, int64_t blocks, int64_t offset, const RobeHash& h,
               int32_t* slots, int64_t begin, int64_t end) {
  // The hash of kernels.h with (a g + c0) mod P computed once per id, and the last reduction
  // in 32 bits (both operands are below 2^31): the same value, a fraction of the divisions.
  // b * c mod P stepped by additions over the blocks: every term stays below P, so a sum of
  // two needs one conditional subtraction, not a division.
  const uint32_t span = static_cast<uint32_t>(h.span);
  for (int64_t r = begin; r < end; ++r)
    for (int64_t j = 0; j < k; ++j) {
      const int64_t id = ids[r * k + j];
      const uint64_t base =
          id < 0 ? 0 : (h.a * static_cast<uint64_t>(offset + id) + h.c0) % kRobePrime;
      uint64_t bc = 0;  // b * c mod P
      for (int64_t c = 0; c < blocks; ++c) {
        uint64_t x = base + bc;
        x -= x >= kRobePrime ? kRobePrime : 0;
        slots[(r * blocks + c) * k + j] =
            id < 0 ? -1 : static_cast<int32_t>(static_cast<uint32_t>(x) % span);
        bc += h.b;
        bc -= bc >= kRobePrime ? kRobePrime : 0;
      }
    }
}

const char* KernelIsa() {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(JSLIDE_NO_CLONES)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("x86-64-v4")) return "x86-64-v4";
  if (__builtin_cpu_supports("x86-64-v3")) return "x86-64-v3";
#endif
  return "default";
}

}  // namespace jslide
