// The maths of jslide's kernels on plain contiguous float32/int32 arrays (row-major).
// No XLA types here: the FFI binding layer (jslide_ffi.cc) validates, splits work into
// ranges and calls these. An id < 0 is padding and contributes nothing.
#ifndef JSLIDE_FFI_KERNELS_H_
#define JSLIDE_FFI_KERNELS_H_

#include <cstdint>
#include <vector>

namespace jslide {

// Index of the first id outside [-1, n), or -1 if all are valid.
int64_t FirstIdOutOfRange(const int32_t* ids, int64_t count, int64_t n);
// Index of the first NaN or infinity, or -1 if all are finite.
int64_t FirstNonFinite(const float* x, int64_t count);

// y[r, j] = x[r] . w[ids[r, j]] + b[ids[r, j]] (b may be null), 0 where ids[r, j] < 0.
// x: [R, D], w: [N, D], ids and y: [R, A]; rows r in [begin, end).
void GatherDotRows(const float* x, const float* w, const float* b, const int32_t* ids,
                   int64_t a, int64_t d, float* y, int64_t begin, int64_t end);

// out[r] = sum_j coef[r, j] * w[ids[r, j]].  ids, coef: [R, A]; w: [N, D]; out: [R, D].
void GatherWeightedSumRows(const int32_t* ids, const float* coef, int64_t a, const float* w,
                           int64_t d, float* out, int64_t begin, int64_t end);

// The dense form of a factored row-sparse matrix, restricted to rows [row_begin, row_end):
// dense[n] = sum over (r, j) with ids[r, j] == n of coef[r, j] * vecs[r]. Zeroes those rows first.
// ids, coef: [R, A]; vecs: [R, D]; dense: [N, D].
void ScatterOuterRows(const int32_t* ids, const float* coef, const float* vecs, int64_t r,
                      int64_t a, int64_t d, float* dense, int64_t row_begin, int64_t row_end);

struct AdamHyper {
  float lr, b1, b2, eps;
  float bias_correction1, bias_correction2;  // 1 - b1^t, 1 - b2^t
};

// Scratch space reused across the rows one worker updates (no allocation per row).
struct RowScratch {
  std::vector<uint64_t> keys;     // (row id << 32) | flat position in ids
  std::vector<int32_t> counts;    // per-row counts, for the counting sort
  std::vector<float> grad;        // one summed gradient row
};

// Lazy Adam on the rows in [row_begin, row_end) that occur in ids: each such row's gradient
// is summed over its occurrences, then its moments and weights are updated in place.
// Rows that do not occur are not read or written.
void SparseAdamRows(const int32_t* ids, const float* coef, const float* vecs, int64_t r,
                    int64_t a, int64_t d, float* w, float* m, float* v, const AdamHyper& h,
                    int64_t row_begin, int64_t row_end, RowScratch& scratch);

// w[n] -= lr * (summed gradient of row n), for the rows in [row_begin, row_end) that occur.
void SparseSgdRows(const int32_t* ids, const float* coef, const float* vecs, int64_t r,
                   int64_t a, int64_t d, float* w, float lr, int64_t row_begin,
                   int64_t row_end, RowScratch& scratch);

// Which instruction set the dispatched kernels run with ("avx512f", "avx2" or "default").
const char* KernelIsa();

}  // namespace jslide

#endif  // JSLIDE_FFI_KERNELS_H_
