// The maths of jslide's kernels on plain contiguous row-major arrays. No XLA types here: the
// FFI binding layer (jslide_ffi.cc) validates, splits work into ranges and calls these. An id
// < 0 is padding and contributes nothing.
//
// Tables (and Adam's moments) hold float32 or bfloat16 elements (`Bf16`, the upper 16 bits of
// a float32); every computation is in float32: a bfloat16 element is widened exactly, and a
// result is written back to bfloat16 with stochastic rounding (StoreRounded), so updates far
// below the spacing of bfloat16 numbers still move a weight in expectation instead of being
// rounded away.
#ifndef JSLIDE_FFI_KERNELS_H_
#define JSLIDE_FFI_KERNELS_H_

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <vector>

#include "bf16.h"

namespace jslide {

// Where the rows of a table lie: row n is the d elements from n * stride. A table [N, D] has
// stride D. A 1-D array read in windows (ROBE's blocks) has stride 1: row n is the window of
// d elements from element n, and windows overlap.
//
// y[r, j] = x[r] . w[ids[r, j]] + b[ids[r, j]] (b may be null), 0 where ids[r, j] < 0.
// x: [R, D], w: rows of D, ids and y: [R, A]; rows r in [begin, end).
template <typename W>
void GatherDotRows(const float* x, const W* w, const float* b, const int32_t* ids, int64_t a,
                   int64_t d, int64_t stride, float* y, int64_t begin, int64_t end);

// out[r] = sum_j coef[r, j] * w[ids[r, j]].  ids, coef: [R, A]; w: rows of D; out: [R, D].
template <typename W>
void GatherWeightedSumRows(const int32_t* ids, const float* coef, int64_t a, const W* w,
                           int64_t d, int64_t stride, float* out, int64_t begin, int64_t end);

// The row-sparse kernels below take a factored matrix: ids, coef [R, A] and vecs [R, D]; row
// n of the matrix it stands for is the sum of coef[r, j] * vecs[r] over ids[r, j] == n. With
// `window` = 0 the table is [N, D] and the kernels work on the rows in [row_begin, row_end).
// With `window` = D > 0 the table is a 1-D array of N elements, ids[r, j] is the first
// element of a window of D (windows may overlap and are summed element by element), and the
// kernels work on the elements in [row_begin, row_end), each element a row of one value.

// The dense form of a factored row-sparse matrix, restricted to rows [row_begin, row_end):
// zeroes those rows, then adds every contribution to them. dense: [N, D] (or [N] windowed).
void ScatterOuterRows(const int32_t* ids, const float* coef, const float* vecs, int64_t r,
                      int64_t a, int64_t d, int64_t window, float* dense, int64_t row_begin,
                      int64_t row_end);

struct AdamHyper {
  float lr, b1, b2, eps;
  float bias_correction1, bias_correction2;  // 1 - b1^t, 1 - b2^t
  int64_t step;                              // t (1, 2, ...)
};

// What dense Adam does to a row during k steps in which its gradient is 0, after step s:
// m *= b1^k, v *= b2^k, and w -= lr * sum_{i=1..k} (b1^i m / (1 - b1^(s+i))) /
// (sqrt(b2^i v / (1 - b2^(s+i))) + eps). With r = b1 / sqrt(b2) that sum is
// m / sqrt(v) * sum_i r^i sqrt(1 - b2^(s+i)) / (1 - b1^(s+i)), one scalar per row; eps is
// kept as sqrt(v) + eps. The first 64 terms are summed exactly, the rest (weight r^64, about
// 1e-3 for Adam's defaults) as a geometric tail with the bias corrections frozen.
struct AdamCatchUp {
  float scale;   // lr * the sum above
  float decay1;  // b1^k
  float decay2;  // b2^k
};
AdamCatchUp AdamCatchUpFactors(const AdamHyper& h, int64_t s, int64_t k);

// AdamCatchUpFactors for one call (fixed hyperparameters and step t), memoized by the last
// step s: rows updated at the same step share them, and most rows of a call do. Clear it
// before each call: the entries hold for one call's hyperparameters.
class CatchUpCache {
 public:
  const AdamCatchUp& Get(const AdamHyper& h, int64_t s, int64_t k);
  void Clear() { std::fill(used_, used_ + kSize, false); }

 private:
  static constexpr int64_t kSize = 512;
  int64_t key_[kSize];
  AdamCatchUp value_[kSize];
  bool used_[kSize] = {};
};

// Scratch space reused across the rows one worker updates, and across calls (no allocation
// per row, nor per call once the buffers have grown).
struct RowScratch {
  std::vector<uint64_t> keys;     // (row id - first row << 32) | flat position in ids
  std::vector<uint64_t> sorted;   // the radix sort's other buffer
  std::vector<int32_t> counts;    // per-row counts, for the counting sort
  std::vector<uint32_t> starts;   // where each distinct row's keys start
  std::vector<float> grad;        // one summed gradient row (or run of windowed elements)
  std::vector<AdamCatchUp> factors;  // catch-up factors of a run's elements
  CatchUpCache catch_up;
};

// The first out-of-range `last` entry the workers of a call met (row -1: none), which the
// call reports as an error: a step reads `last` only at the rows it updates, in row order,
// and an entry outside [0, max_last] is never used as a step count.
struct LastCheck {
  int64_t max_last = 0;
  std::atomic<int64_t> row{-1};
  std::atomic<int32_t> value{0};
  void Report(int64_t r, int32_t v) {
    int64_t none = -1;
    if (row.compare_exchange_strong(none, r)) value.store(v);
  }
};

// Lazy Adam on the rows in [row_begin, row_end) that occur in ids (window > 0: the elements
// some window covers, each with its own `last`): each such row's gradient
// is summed over its occurrences, then its moments and weights are updated in place.
// Rows that do not occur are not read or written. With `last` (the step each row was last
// updated at, 0 for never; else null) a row first catches up on the steps since then as
// dense Adam would have taken them (AdamCatchUpFactors), and last[row] becomes h.step.
// W: the table's element type; S: the moments'. bfloat16 results are rounded stochastically
// with bits drawn from (h.step, row, column).
// `last` entries outside [0, h.step - 1] go to `check` (non-null with `last`).
template <typename W, typename S>
void SparseAdamRows(const int32_t* ids, const float* coef, const float* vecs, int64_t r,
                    int64_t a, int64_t d, int64_t window, W* w, S* m, S* v, int32_t* last,
                    LastCheck* check, const AdamHyper& h, int64_t row_begin, int64_t row_end,
                    RowScratch& scratch);

// Brings every row in [row_begin, row_end) up to step h.step (dense Adam's zero-gradient
// steps since last[row]), and sets last[row] = h.step.
template <typename W, typename S>
void AdamCatchUpRows(W* w, S* m, S* v, int32_t* last, int64_t d, const AdamHyper& h,
                     int64_t row_begin, int64_t row_end);

// w[n] -= lr * (summed gradient of row n), for the rows in [row_begin, row_end) that occur.
// A bfloat16 table is rounded stochastically with bits drawn from (seed, row, column).
template <typename W>
void SparseSgdRows(const int32_t* ids, const float* coef, const float* vecs, int64_t r,
                   int64_t a, int64_t d, int64_t window, W* w, float lr, uint32_t seed,
                   int64_t row_begin, int64_t row_end, RowScratch& scratch);

// Sum over the rows n in [row_begin, row_end) that occur in ids of |summed gradient of n|^2
// (the squared norm of the dense matrix the factored one stands for, restricted to them).
double RowSparseSqNormRows(const int32_t* ids, const float* coef, const float* vecs, int64_t r,
                           int64_t a, int64_t d, int64_t window, int64_t row_begin,
                           int64_t row_end, RowScratch& scratch);

// ROBE (Desai, Chou and Shrivastava, MLSys 2022): every embedding lives in one shared 1-D
// array of `memory` elements. Block c of the embedding of global row g (its elements
// c * block .. (c + 1) * block - 1) is the window of `block` elements starting at
//   ((a * g + b * c + c0) mod P) mod (memory - block + 1),   P = 2038074743 (the authors'),
// so a window never wraps. a, b, c0 come from a 32-bit seed (MakeRobeHash): stable across
// versions and processes, so a checkpoint reads the same slots everywhere.
constexpr uint64_t kRobePrime = 2038074743u;
struct RobeHash {
  uint64_t a, b, c0;
  uint64_t span;  // memory - block + 1
};
RobeHash MakeRobeHash(uint32_t seed, int64_t memory, int64_t block);

// slots[r, c, k] = ((a g + b c + c0) mod P) mod span for g = offset + ids[r, k] and c < blocks
// (-1 where ids[r, k] < 0).
// ids: [R, K] table rows; slots: [R, blocks, K]; rows r in [begin, end).
void RobeSlots(const int32_t* ids, int64_t k, int64_t blocks, int64_t offset, const RobeHash& h,
               int32_t* slots, int64_t begin, int64_t end);

// Which instruction set the dispatched kernels run with ("x86-64-v4": AVX-512; "x86-64-v3":
// AVX2 and FMA; or "default").
const char* KernelIsa();

}  // namespace jslide

#endif  // JSLIDE_FFI_KERNELS_H_
