// The CSR index of a table's rows: a stable counting sort of the rows by bucket (lsh.h).
#include "lsh.h"

#include <cstring>
#include <vector>

namespace jslide {

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

}  // namespace jslide
