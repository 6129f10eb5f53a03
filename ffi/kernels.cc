#include "kernels.h"

#include <algorithm>
#include <cmath>
#include <cstring>

// Hot loops are compiled for AVX-512, AVX2 and baseline x86-64 and picked at load time, so a
// wheel built on one machine runs (fast) on another. Elsewhere, one portable version.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(JSLIDE_NO_CLONES)
#define JSLIDE_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define JSLIDE_CLONES
#endif

namespace jslide {
namespace {

inline float Dot(const float* __restrict a, const float* __restrict b, int64_t d) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int64_t k = 0; k < d; ++k) s += a[k] * b[k];
  return s;
}

inline void Axpy(float alpha, const float* __restrict x, float* __restrict y, int64_t d) {
#pragma omp simd
  for (int64_t k = 0; k < d; ++k) y[k] += alpha * x[k];
}

// Collects (id, position) for ids in [row_begin, row_end), sorted so equal ids are adjacent
// (positions ascending within an id). A counting sort when the row range is not much larger
// than the number of ids (O(range + count)); otherwise a comparison sort.
void GroupByRow(const int32_t* ids, int64_t count, int64_t row_begin, int64_t row_end,
                std::vector<uint64_t>& keys, std::vector<int32_t>& counts) {
  keys.clear();
  const int64_t range = row_end - row_begin;
  auto key = [](int64_t id, int64_t p) {
    return (static_cast<uint64_t>(id) << 32) | static_cast<uint64_t>(p);
  };
  if (range <= 8 * count) {
    counts.assign(static_cast<size_t>(range + 1), 0);
    int64_t m = 0;
    for (int64_t p = 0; p < count; ++p) {
      const int64_t id = ids[p];
      if (id >= row_begin && id < row_end) {
        ++counts[id - row_begin + 1];
        ++m;
      }
    }
    for (int64_t r = 0; r < range; ++r) counts[r + 1] += counts[r];
    keys.resize(static_cast<size_t>(m));
    for (int64_t p = 0; p < count; ++p) {
      const int64_t id = ids[p];
      if (id >= row_begin && id < row_end) keys[counts[id - row_begin]++] = key(id, p);
    }
    return;
  }
  for (int64_t p = 0; p < count; ++p) {
    const int64_t id = ids[p];
    if (id >= row_begin && id < row_end) keys.push_back(key(id, p));
  }
  std::sort(keys.begin(), keys.end());
}

// Calls update(row, summed_gradient) once for every distinct id in [row_begin, row_end).
template <typename RowUpdate>
inline void ForEachSummedRow(const int32_t* ids, const float* coef, const float* vecs,
                             int64_t r, int64_t a, int64_t d, int64_t row_begin,
                             int64_t row_end, RowScratch& s, RowUpdate&& update) {
  GroupByRow(ids, r * a, row_begin, row_end, s.keys, s.counts);
  s.grad.resize(static_cast<size_t>(d));
  float* g = s.grad.data();
  const size_t n = s.keys.size();
  for (size_t i = 0; i < n;) {
    const int64_t row = static_cast<int64_t>(s.keys[i] >> 32);
    std::fill(g, g + d, 0.0f);
    for (; i < n && static_cast<int64_t>(s.keys[i] >> 32) == row; ++i) {
      const int64_t p = static_cast<int64_t>(s.keys[i] & 0xffffffffu);
      Axpy(coef[p], vecs + (p / a) * d, g, d);
    }
    update(row, g);
  }
}

}  // namespace

JSLIDE_CLONES
void GatherDotRows(const float* x, const float* w, const float* b, const int32_t* ids,
                   int64_t a, int64_t d, float* y, int64_t begin, int64_t end) {
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
      if (j + 4 < a && id[j + 4] >= 0) __builtin_prefetch(w + int64_t{id[j + 4]} * d);
      yr[j] = Dot(xr, w + n * d, d) + (b ? b[n] : 0.0f);
    }
  }
}

JSLIDE_CLONES
void GatherWeightedSumRows(const int32_t* ids, const float* coef, int64_t a, const float* w,
                           int64_t d, float* out, int64_t begin, int64_t end) {
  for (int64_t r = begin; r < end; ++r) {
    const int32_t* id = ids + r * a;
    const float* c = coef + r * a;
    float* o = out + r * d;
    std::fill(o, o + d, 0.0f);
    for (int64_t j = 0; j < a; ++j) {
      if (id[j] < 0) continue;
      if (j + 4 < a && id[j + 4] >= 0) __builtin_prefetch(w + int64_t{id[j + 4]} * d);
      Axpy(c[j], w + int64_t{id[j]} * d, o, d);
    }
  }
}

JSLIDE_CLONES
void ScatterOuterRows(const int32_t* ids, const float* coef, const float* vecs, int64_t r,
                      int64_t a, int64_t d, float* dense, int64_t row_begin, int64_t row_end) {
  std::memset(dense + row_begin * d, 0, sizeof(float) * (row_end - row_begin) * d);
  const int64_t count = r * a;
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

JSLIDE_CLONES
void CatchUpRow(float* __restrict w, float* __restrict m, float* __restrict v, int64_t d,
                const AdamCatchUp& c, float eps) {
#pragma omp simd
  for (int64_t k = 0; k < d; ++k) {
    w[k] -= c.scale * m[k] / (std::sqrt(v[k]) + eps);
    m[k] *= c.decay1;
    v[k] *= c.decay2;
  }
}

}  // namespace

JSLIDE_CLONES
void SparseAdamRows(const int32_t* ids, const float* coef, const float* vecs, int64_t r,
                    int64_t a, int64_t d, float* w, float* m, float* v, int32_t* last,
                    const AdamHyper& h, int64_t row_begin, int64_t row_end,
                    RowScratch& scratch) {
  const float lr = h.lr, b1 = h.b1, b2 = h.b2, eps = h.eps;
  const float inv_bc1 = 1.0f / h.bias_correction1, inv_bc2 = 1.0f / h.bias_correction2;
  ForEachSummedRow(ids, coef, vecs, r, a, d, row_begin, row_end, scratch,
                   [&](int64_t row, const float* __restrict g) {
                     float* __restrict wr = w + row * d;
                     float* __restrict mr = m + row * d;
                     float* __restrict vr = v + row * d;
                     if (last != nullptr) {
                       const int64_t s = last[row];
                       // s == 0: never updated, so m = v = 0 and dense Adam left it alone.
                       if (s > 0 && h.step - 1 > s)
                         CatchUpRow(wr, mr, vr, d, scratch.catch_up.Get(h, s, h.step - 1 - s),
                                    eps);
                       last[row] = static_cast<int32_t>(h.step);
                     }
#pragma omp simd
                     for (int64_t k = 0; k < d; ++k) {
                       const float mk = b1 * mr[k] + (1.0f - b1) * g[k];
                       const float vk = b2 * vr[k] + (1.0f - b2) * g[k] * g[k];
                       mr[k] = mk;
                       vr[k] = vk;
                       wr[k] -= lr * (mk * inv_bc1) / (std::sqrt(vk * inv_bc2) + eps);
                     }
                   });
}

void AdamCatchUpRows(float* w, float* m, float* v, int32_t* last, int64_t d,
                     const AdamHyper& h, int64_t row_begin, int64_t row_end) {
  CatchUpCache cache;
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t s = last[row];
    if (s > 0 && h.step > s)
      CatchUpRow(w + row * d, m + row * d, v + row * d, d, cache.Get(h, s, h.step - s), h.eps);
    last[row] = static_cast<int32_t>(h.step);
  }
}

JSLIDE_CLONES
void SparseSgdRows(const int32_t* ids, const float* coef, const float* vecs, int64_t r,
                   int64_t a, int64_t d, float* w, float lr, int64_t row_begin,
                   int64_t row_end, RowScratch& scratch) {
  ForEachSummedRow(ids, coef, vecs, r, a, d, row_begin, row_end, scratch,
                   [&](int64_t row, const float* g) { Axpy(-lr, g, w + row * d, d); });
}

JSLIDE_CLONES
double RowSparseSqNormRows(const int32_t* ids, const float* coef, const float* vecs, int64_t r,
                           int64_t a, int64_t d, int64_t row_begin, int64_t row_end,
                           RowScratch& scratch) {
  double total = 0.0;
  ForEachSummedRow(ids, coef, vecs, r, a, d, row_begin, row_end, scratch,
                   [&](int64_t, const float* g) { total += Dot(g, g, d); });
  return total;
}

const char* KernelIsa() {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(JSLIDE_NO_CLONES)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return "avx512f";
  if (__builtin_cpu_supports("avx2")) return "avx2";
#endif
  return "default";
}

}  // namespace jslide
