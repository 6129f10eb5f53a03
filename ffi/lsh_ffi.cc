// XLA FFI handlers for LSH: validation and parallel split; the maths is in lsh.cc.
#include "lsh_ffi.h"

#include <algorithm>
#include <atomic>
#include <limits>
#include <string>
#include <vector>

#include "ffi_checks.h"
#include "lsh.h"
#include "parallel.h"

namespace ffi = xla::ffi;

namespace jslide {
namespace {

ffi::Error CheckCodesOut(const char* k, int64_t b, int64_t l, S32R2Out& codes) {
  if (l > kMaxTables) return Invalid(k, "L must be at most " + std::to_string(kMaxTables));
  if (codes->dimensions()[0] != b || codes->dimensions()[1] != l)
    return Invalid(k, "codes must be [" + std::to_string(b) + ", " + std::to_string(l) + "]");
  return ffi::Error::Success();
}

ffi::Error SimHashImpl(ffi::ThreadPool pool, F32R2 x, S32R3 idx, F32R3 sign, S32R2Out codes) {
  const char* k = "jslide_simhash";
  for (int i = 0; i < 3; ++i)
    if (idx.dimensions()[i] != sign.dimensions()[i])
      return Invalid(k, "idx " + Dims(idx.dimensions()) + " and sign " +
                            Dims(sign.dimensions()) + " differ");
  const int64_t b = x.dimensions()[0], d = x.dimensions()[1];
  const int64_t l = idx.dimensions()[0], kk = idx.dimensions()[1], nnz = idx.dimensions()[2];
  if (kk > kMaxHashesTimesBits)
    return Invalid(k, "K must be at most " + std::to_string(kMaxHashesTimesBits));
  JSLIDE_RETURN_IF_ERROR(CheckCodesOut(k, b, l, codes));
  JSLIDE_RETURN_IF_ERROR(CheckRange(k, "idx", idx.typed_data(), idx.element_count(), 0, d));
  ParallelFor(pool, b, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      SimHashCodes(x.typed_data() + r * d, idx.typed_data(), sign.typed_data(), l, kk, nnz,
                   codes->typed_data() + r * l);
  });
  return ffi::Error::Success();
}

ffi::Error DwtaImpl(ffi::ThreadPool pool, F32R2 x, S32R3 bins, S32R2Out codes) {
  const char* k = "jslide_dwta";
  const int64_t b = x.dimensions()[0], d = x.dimensions()[1];
  const int64_t l = bins.dimensions()[0], kk = bins.dimensions()[1];
  const int64_t bin_size = bins.dimensions()[2];
  if (bin_size < 2 || (bin_size & (bin_size - 1)) != 0)
    return Invalid(k, "bin_size must be a power of two >= 2, got " + std::to_string(bin_size));
  int bits = 0;
  while ((int64_t{1} << bits) < bin_size) ++bits;
  if (kk * bits > kMaxHashesTimesBits)
    return Invalid(k, "K * log2(bin_size) must be at most " + std::to_string(kMaxHashesTimesBits));
  JSLIDE_RETURN_IF_ERROR(CheckCodesOut(k, b, l, codes));
  JSLIDE_RETURN_IF_ERROR(CheckRange(k, "bins", bins.typed_data(), bins.element_count(), 0, d));
  ParallelFor(pool, b, 16, [&](int64_t begin, int64_t end) {
    std::vector<int32_t> scratch(l * kk);
    for (int64_t r = begin; r < end; ++r)
      DwtaCodes(x.typed_data() + r * d, bins.typed_data(), l, kk, bin_size,
                codes->typed_data() + r * l, scratch.data());
  });
  return ffi::Error::Success();
}

ffi::Error SparseSimHashImpl(ffi::ThreadPool pool, S32R2 ids, F32R2 vals, U32R2 seeds,
                             int64_t dim, S32R2Out codes) {
  const char* k = "jslide_sparse_simhash";
  if (!SameDims(ids, vals)) return Invalid(k, "feat_ids and feat_vals must both be [B, F]");
  const int64_t b = ids.dimensions()[0], f = ids.dimensions()[1];
  const int64_t l = seeds.dimensions()[0], kk = seeds.dimensions()[1];
  if (kk > kMaxHashesTimesBits)
    return Invalid(k, "K must be at most " + std::to_string(kMaxHashesTimesBits));
  JSLIDE_RETURN_IF_ERROR(CheckCodesOut(k, b, l, codes));
  JSLIDE_RETURN_IF_ERROR(CheckRange(k, "feat_ids", ids.typed_data(), ids.element_count(), -1, dim));
  ParallelFor(pool, b, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      SparseSimHashCodes(ids.typed_data() + r * f, vals.typed_data() + r * f,
                         f, seeds.typed_data(), l, kk, codes->typed_data() + r * l);
  });
  return ffi::Error::Success();
}

ffi::Error BuildIndexImpl(ffi::ThreadPool pool, S32R2 codes, S32R2Out offsets, S32R2Out ids) {
  const char* k = "jslide_build_index";
  const int64_t n = codes.dimensions()[0], l = codes.dimensions()[1];
  if (offsets->dimensions()[0] != l) return Invalid(k, "offsets must be [L, num_buckets + 1]");
  const int64_t num_buckets = offsets->dimensions()[1] - 1;
  if (ids->dimensions()[0] != l || ids->dimensions()[1] != n)
    return Invalid(k, "ids must be [L, N]");
  if (n >= (int64_t{1} << 31)) return Invalid(k, "at most 2^31 - 1 rows");
  JSLIDE_RETURN_IF_ERROR(CheckRange(k, "codes", codes.typed_data(), codes.element_count(), 0, num_buckets));
  // Tables in parallel: each worker builds whole tables.
  ParallelFor(pool, l, 1, [&](int64_t t_begin, int64_t t_end) {
    BuildIndexTables(codes.typed_data(), n, l, num_buckets, offsets->typed_data(),
                     ids->typed_data(), t_begin, t_end);
  });
  return ffi::Error::Success();
}

ffi::Error TopIndicesImpl(ffi::ThreadPool pool, F32R2 scores, S32R2Out out) {
  const char* k = "jslide_top_indices";
  const int64_t r = scores.dimensions()[0], c = scores.dimensions()[1];
  const int64_t top = out->dimensions()[1];
  if (out->dimensions()[0] != r || top < 1 || top > c)
    return Invalid(k, "result must be [R, k] with 1 <= k <= C = " + std::to_string(c));
  ParallelFor(pool, r, 16, [&](int64_t begin, int64_t end) {
    thread_local TopScratch scratch;  // kept by the pool's threads: nothing allocated per call
    for (int64_t i = begin; i < end; ++i)
      TopIndices(scores.typed_data() + i * c, c, top, out->typed_data() + i * top, scratch);
  });
  return ffi::Error::Success();
}

ffi::Error NearestCentroidsImpl(ffi::ThreadPool pool, F32R2 x, F32R2 centroids, S32R2Out out) {
  const char* k = "jslide_nearest_centroids";
  const int64_t b = x.dimensions()[0], d = x.dimensions()[1], c = centroids.dimensions()[0];
  if (centroids.dimensions()[1] != d)
    return Invalid(k, "centroids must be [C, " + std::to_string(d) + "]");
  if (c < 1 || c >= (int64_t{1} << 31)) return Invalid(k, "C must be in [1, 2^31)");
  if (out->dimensions()[0] != b) return Invalid(k, "result must be [B, p]");
  const int64_t p = out->dimensions()[1];
  if (p < 1 || p > std::min(c, kMaxNearest))
    return Invalid(k, "p must be in [1, min(C, " + std::to_string(kMaxNearest) + ")], got " +
                          std::to_string(p));
  // Packed by the calling thread into its own buffers, kept between calls.
  thread_local std::vector<float> panels;
  panels.resize(static_cast<size_t>((c + kCentroidPanel - 1) / kCentroidPanel * (d + 1) *
                                    kCentroidPanel));
  PackCentroidPanels(centroids.typed_data(), c, d, panels.data());
  const float* packed = panels.data();
  ParallelFor(pool, b, 64, [&](int64_t begin, int64_t end) {
    NearestCentroids(x.typed_data(), d, packed, c, p, begin, end, out->typed_data());
  });
  return ffi::Error::Success();
}

ffi::Error ListTopKImpl(ffi::ThreadPool pool, F32R2 x, Any w, F32R1 bias, S32R2 lists,
                        S32R2 probes, F32R2Out top_scores, S32R2Out top_ids) {
  const char* k = "jslide_list_topk";
  JSLIDE_RETURN_IF_ERROR(CheckRank(k, "w", w, 2));  // float32 or bfloat16: no static type
  JSLIDE_RETURN_IF_ERROR(CheckTableType(k, "w", w));
  const int64_t b = x.dimensions()[0], d = x.dimensions()[1], n = w.dimensions()[0];
  const int64_t c = lists.dimensions()[0], s = lists.dimensions()[1], p = probes.dimensions()[1];
  if (w.dimensions()[1] != d) return Invalid(k, "w must be [N, " + std::to_string(d) + "]");
  if (bias.dimensions()[0] != n) return Invalid(k, "bias must be [" + std::to_string(n) + "]");
  if (probes.dimensions()[0] != b) return Invalid(k, "probes must be [" + std::to_string(b) + ", P]");
  if (n >= (int64_t{1} << 31) || c >= (int64_t{1} << 31) || b * p >= (int64_t{1} << 31))
    return Invalid(k, "N, C and B * P must be below 2^31");
  if (top_scores->dimensions()[0] != b || !SameDims(*top_scores, *top_ids))
    return Invalid(k, "results must be [B, k] scores and ids");
  const int64_t top = top_scores->dimensions()[1];
  if (top < 1) return Invalid(k, "k must be at least 1");
  JSLIDE_RETURN_IF_ERROR(CheckRange(k, "lists", lists.typed_data(), lists.element_count(), -1, n));
  JSLIDE_RETURN_IF_ERROR(CheckRange(k, "probes", probes.typed_data(), probes.element_count(), 0, c));
  // Lists split over the workers by work (rows x examples), each worker keeping its own
  // best k per example (the first in the results), merged at the end.
  std::vector<int32_t> start(static_cast<size_t>(c + 1));
  std::vector<int32_t> members(static_cast<size_t>(b * p));
  GroupProbesByList(probes.typed_data(), b, p, c, start.data(), members.data());
  const int64_t work = b * p * s;
  const int64_t workers = NumWorkers(pool, work, 1 << 16);
  float* scores = top_scores->typed_data();
  int32_t* ids = top_ids->typed_data();
  std::fill(scores, scores + b * top, -std::numeric_limits<float>::infinity());
  std::fill(ids, ids + b * top, -1);
  std::vector<float> other_scores(static_cast<size_t>((workers - 1) * b * top),
                                  -std::numeric_limits<float>::infinity());
  std::vector<int32_t> other_ids(other_scores.size(), -1);
  // Chunk t takes the lists whose examples start in [t, t + 1) * B * P / workers.
  auto first_list = [&](int64_t t) {
    const int64_t target = t * b * p / workers;
    return static_cast<int64_t>(std::lower_bound(start.begin(), start.end() - 1, target) -
                                start.begin());
  };
  ParallelChunks(pool, workers, workers, [&](int64_t t, int64_t, int64_t) {
    float* sc = t == 0 ? scores : other_scores.data() + (t - 1) * b * top;
    int32_t* id = t == 0 ? ids : other_ids.data() + (t - 1) * b * top;
    const int64_t c_end = t + 1 == workers ? c : first_list(t + 1);
    auto score = [&](const auto* rows) {
      ScoreLists(x.typed_data(), rows, bias.typed_data(), d, lists.typed_data(), s, start.data(),
                 members.data(), first_list(t), c_end, top, sc, id);
    };
    if (w.element_type() == ffi::DataType::BF16)
      score(static_cast<const Bf16*>(w.untyped_data()));
    else
      score(static_cast<const float*>(w.untyped_data()));
  });
  if (workers > 1)
    ParallelFor(pool, b, 256, [&](int64_t begin, int64_t end) {
      for (int64_t e = begin; e < end; ++e)
        for (int64_t t = 1; t < workers; ++t) {
          const int64_t at = (t - 1) * b * top + e * top;
          MergeBest(other_scores.data() + at, other_ids.data() + at, top, scores + e * top,
                    ids + e * top);
        }
    });
  return ffi::Error::Success();
}

ffi::Error QueryImpl(ffi::ThreadPool pool, S32R2 codes, S32R2 offsets, S32R2 ids, S32R2 force,
                     U32R1 seed, S32R1 first, int64_t active, int64_t strategy, int64_t threshold,
                     int64_t max_per_bucket, int64_t fill_group, int64_t fill,
                     int64_t retrieved, S32R2Out out) {
  const char* k = "jslide_lsh_query";
  const int64_t b = codes.dimensions()[0], num_codes = codes.dimensions()[1];
  const int64_t l = ids.dimensions()[0];
  const int64_t n = ids.dimensions()[1], num_buckets = offsets.dimensions()[1] - 1;
  if (offsets.dimensions()[0] != l || l < 1 || num_codes < l || num_codes % l != 0)
    return Invalid(k, "codes [B, P * L] (P probes of each of the L tables), offsets "
                      "[L, buckets + 1] and ids [L, N] disagree on L");
  if (force.dimensions()[0] != b) return Invalid(k, "force_ids must have one row per query");
  if (seed.element_count() != 2) return Invalid(k, "seed must hold 2 uint32");
  // first: the number of this batch's row 0 in the whole batch (a data-parallel shard's
  // offset), so each example draws the same random fill on any number of shards.
  if (first.element_count() != 1 || first.typed_data()[0] < 0)
    return Invalid(k, "first must hold one int32 >= 0");
  const uint64_t first_example = static_cast<uint64_t>(first.typed_data()[0]);
  if (active < 1) return Invalid(k, "active must be >= 1");
  if (strategy < 0 || strategy > 3) return Invalid(k, "unknown strategy");
  if (max_per_bucket < 1) return Invalid(k, "max_per_bucket must be >= 1");
  if (fill_group < 1) return Invalid(k, "fill_group must be >= 1");
  if (out->dimensions()[0] != b || out->dimensions()[1] != active)
    return Invalid(k, "result must be [B, active]");
  JSLIDE_RETURN_IF_ERROR(CheckRange(k, "codes", codes.typed_data(), codes.element_count(), 0, num_buckets));
  JSLIDE_RETURN_IF_ERROR(CheckRange(k, "force_ids", force.typed_data(), force.element_count(), -1, n));
  const uint32_t* sp = seed.typed_data();
  if (retrieved < 0) return Invalid(k, "retrieved must be >= 0");
  const QueryConfig cfg{n, l, num_codes, num_buckets, active, retrieved,
                        static_cast<QueryStrategy>(strategy),
                        threshold, max_per_bucket, fill_group, fill != 0,
                        (uint64_t{sp[0]} << 32) | sp[1]};
  const int64_t f = force.dimensions()[1];
  std::atomic<bool> corrupt{false};
  ParallelFor(pool, b, 4, [&](int64_t begin, int64_t end) {
    thread_local QueryScratch scratch;  // kept by the pool's threads: nothing allocated per call
    for (int64_t r = begin; r < end; ++r)
      if (!QueryOne(codes.typed_data() + r * num_codes, offsets.typed_data(), ids.typed_data(),
                    force.typed_data() + r * f, f, cfg, first_example + static_cast<uint64_t>(r),
                    out->typed_data() + r * active, scratch)) {
        corrupt.store(true);
        return;
      }
  });
  if (corrupt.load())
    return Invalid(k, "a corrupt index: offsets point outside its ids, or ids lie outside [0, N)");
  return ffi::Error::Success();
}

}  // namespace
}  // namespace jslide

XLA_FFI_DEFINE_HANDLER_SYMBOL(JslideSimHash, jslide::SimHashImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<jslide::F32R2>()
                                  .Arg<jslide::S32R3>()
                                  .Arg<jslide::F32R3>()
                                  .Ret<ffi::BufferR2<ffi::S32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(JslideDwta, jslide::DwtaImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<jslide::F32R2>()
                                  .Arg<jslide::S32R3>()
                                  .Ret<ffi::BufferR2<ffi::S32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(JslideSparseSimHash, jslide::SparseSimHashImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<jslide::S32R2>()
                                  .Arg<jslide::F32R2>()
                                  .Arg<jslide::U32R2>()
                                  .Attr<int64_t>("dim")
                                  .Ret<ffi::BufferR2<ffi::S32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(JslideBuildIndex, jslide::BuildIndexImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<jslide::S32R2>()
                                  .Ret<ffi::BufferR2<ffi::S32>>()
                                  .Ret<ffi::BufferR2<ffi::S32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(JslideTopIndices, jslide::TopIndicesImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<jslide::F32R2>()
                                  .Ret<ffi::BufferR2<ffi::S32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(JslideNearestCentroids, jslide::NearestCentroidsImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<jslide::F32R2>()  // x
                                  .Arg<jslide::F32R2>()  // centroids
                                  .Ret<ffi::BufferR2<ffi::S32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(JslideListTopK, jslide::ListTopKImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<jslide::F32R2>()  // x
                                  .Arg<ffi::AnyBuffer>()  // w: float32 or bfloat16
                                  .Arg<jslide::F32R1>()  // bias
                                  .Arg<jslide::S32R2>()  // lists
                                  .Arg<jslide::S32R2>()  // probes
                                  .Ret<ffi::BufferR2<ffi::F32>>()
                                  .Ret<ffi::BufferR2<ffi::S32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(JslideLshQuery, jslide::QueryImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<jslide::S32R2>()  // codes
                                  .Arg<jslide::S32R2>()  // offsets
                                  .Arg<jslide::S32R2>()  // ids
                                  .Arg<jslide::S32R2>()  // force
                                  .Arg<jslide::U32R1>()  // seed
                                  .Arg<jslide::S32R1>()  // first
                                  .Attr<int64_t>("active")
                                  .Attr<int64_t>("strategy")
                                  .Attr<int64_t>("threshold")
                                  .Attr<int64_t>("max_per_bucket")
                                  .Attr<int64_t>("fill_group")
                                  .Attr<int64_t>("fill")
                                  .Attr<int64_t>("retrieved")
                                  .Ret<ffi::BufferR2<ffi::S32>>());

namespace jslide {

std::vector<std::pair<const char*, XLA_FFI_Handler*>> LshHandlers() {
  return {{"jslide_simhash", JslideSimHash},
          {"jslide_dwta", JslideDwta},
          {"jslide_sparse_simhash", JslideSparseSimHash},
          {"jslide_build_index", JslideBuildIndex},
          {"jslide_top_indices", JslideTopIndices},
          {"jslide_list_topk", JslideListTopK},
          {"jslide_nearest_centroids", JslideNearestCentroids},
          {"jslide_lsh_query", JslideLshQuery}};
}

}  // namespace jslide
