// Hash families: SimHash with sparse projections, densified winner-take-all (DWTA), and
// SimHash of sparse inputs (lsh.h).
#include "lsh.h"

#include <cmath>
#include <limits>

namespace jslide {
namespace {

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
}  // namespace jslide
