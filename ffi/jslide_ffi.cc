// XLA FFI binding layer: decodes buffers, validates every shape and id (never reading out of
// bounds), splits the work over XLA's intra-op thread pool and calls the maths in kernels.cc.
#include <atomic>
#include <cstdint>
#if defined(__linux__)
#include <sys/mman.h>
#endif
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "ffi_checks.h"
#include "kernels.h"
#include "lsh_ffi.h"
#include "mix.h"
#include "nanobind/nanobind.h"
#include "parallel.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
namespace nb = nanobind;

namespace jslide {
namespace {

std::atomic<int64_t> g_max_threads{0};

// Rows of work below which a kernel does not bother to split.
constexpr int64_t kMinRowsPerTask = 8;

// The calling thread's scratch space, kept between calls (no allocation per call once its
// buffers have grown to the batch's size).
RowScratch& ThreadScratch() {
  thread_local RowScratch scratch;
  return scratch;
}

// fn(element) with a value of the C++ element type of t (float, or Bf16 for bfloat16); the
// caller has checked that t is one of them.
template <typename Fn>
decltype(auto) WithElement(ffi::DataType t, Fn&& fn) {
  if (t == ffi::DataType::BF16) return fn(Bf16{});
  return fn(float{});
}

template <typename T>
const T* Data(const Any& buf, T) {
  return static_cast<const T*>(buf.untyped_data());
}

template <typename T>
T* Data(AnyOut& buf, T) {
  return static_cast<T*>(buf->untyped_data());
}

// Shapes of a factored row-sparse matrix: ids, coef [R, A]; vecs [R, D]; table rows [N, D].
ffi::Error CheckFactored(const std::string& k, const S32R2& ids, const F32R2& coef,
                         const F32R2& vecs, int64_t n, int64_t d) {
  if (coef.dimensions()[0] != ids.dimensions()[0] || coef.dimensions()[1] != ids.dimensions()[1])
    return Invalid(k, "coef shape " + Dims(coef.dimensions()) + " must equal ids shape " +
                          Dims(ids.dimensions()));
  if (vecs.dimensions()[0] != ids.dimensions()[0] || vecs.dimensions()[1] != d)
    return Invalid(k, "vecs shape " + Dims(vecs.dimensions()) + " must be [" +
                          std::to_string(ids.dimensions()[0]) + ", " + std::to_string(d) + "]");
  return CheckIds(k, "ids", ids, n);
}

// A window of a 1-D table of n elements: in [1, n] (`length` names n in the message).
ffi::Error CheckWindow(const std::string& k, int64_t window, int64_t n, const char* length) {
  if (window < 0 || window > n)
    return Invalid(k, "window must be in [1, " + std::to_string(n) + "] (" + length + "), got " +
                          std::to_string(window));
  return ffi::Error::Success();
}

// The same for a factored matrix over a table of n rows of d elements (window == 0) or over a
// 1-D table of n elements read in overlapping windows of `window` elements (ids: window
// starts, in [-1, n - window + 1); vecs: [R, window]).
ffi::Error CheckWindowedFactored(const std::string& k, const S32R2& ids, const F32R2& coef,
                                 const F32R2& vecs, int64_t n, int64_t d, int64_t window) {
  if (window == 0) return CheckFactored(k, ids, coef, vecs, n, d);
  JSLIDE_RETURN_IF_ERROR(CheckWindow(k, window, n, "the table's length"));
  if (d != 1) return Invalid(k, "a table read in windows must be 1-D");
  return CheckFactored(k, ids, coef, vecs, n - window + 1, window);
}

// (rows, row length, stride) of a gathered table: [N, D] (window 0) or a 1-D array read in
// windows of `window` elements (rows: the window starts).
ffi::Error GatherTable(const std::string& k, const Any& w, int64_t window, int64_t* rows,
                       int64_t* d, int64_t* stride) {
  JSLIDE_RETURN_IF_ERROR(CheckTableType(k, "w", w));
  if (window == 0) {
    JSLIDE_RETURN_IF_ERROR(CheckRank(k, "w", w, 2));
    *rows = w.dimensions()[0];
    *d = *stride = w.dimensions()[1];
    return ffi::Error::Success();
  }
  JSLIDE_RETURN_IF_ERROR(CheckRank(k, "w", w, 1));
  const int64_t n = w.dimensions()[0];
  JSLIDE_RETURN_IF_ERROR(CheckWindow(k, window, n, "w's length"));
  *rows = n - window + 1;
  *d = window;
  *stride = 1;
  return ffi::Error::Success();
}

// ---------------------------------------------------------------------------------------------

ffi::Error GatherDotImpl(ffi::ThreadPool pool, F32R2 x, Any w, F32R1 b, S32R2 ids, int64_t window,
                         F32R2Out y) {
  const std::string k = "jslide_gather_dot";
  int64_t n = 0, wd = 0, stride = 0;
  JSLIDE_RETURN_IF_ERROR(GatherTable(k, w, window, &n, &wd, &stride));
  const int64_t r = x.dimensions()[0], d = x.dimensions()[1], a = ids.dimensions()[1];
  if (wd != d)
    return Invalid(k, "w's rows have " + std::to_string(wd) + " elements but x shape " +
                          Dims(x.dimensions()) + " has " + std::to_string(d));
  if (ids.dimensions()[0] != r)
    return Invalid(k, "ids shape " + Dims(ids.dimensions()) + " must have " +
                          std::to_string(r) + " rows like x");
  const int64_t n_bias = b.dimensions()[0];
  if (n_bias != 0 && n_bias != n)
    return Invalid(k, "b must have " + std::to_string(n) + " entries (or 0 for no bias), got " +
                          std::to_string(n_bias));
  if (y->dimensions()[0] != r || y->dimensions()[1] != a)
    return Invalid(k, "result shape " + Dims(y->dimensions()) + " must equal ids shape");
  JSLIDE_RETURN_IF_ERROR(CheckIds(k, "ids", ids, n));
  const float* bias = n_bias ? b.typed_data() : nullptr;
  WithElement(w.element_type(), [&](auto e) {
    ParallelFor(pool, r, kMinRowsPerTask, [&](int64_t begin, int64_t end) {
      GatherDotRows(x.typed_data(), Data(w, e), bias, ids.typed_data(), a, d, stride,
                    y->typed_data(), begin, end);
    });
  });
  return ffi::Error::Success();
}

ffi::Error GatherWeightedSumImpl(ffi::ThreadPool pool, S32R2 ids, F32R2 coef, Any w, int64_t window,
                                 F32Out out) {
  const std::string k = "jslide_gather_weighted_sum";
  int64_t n = 0, d = 0, stride = 0;
  JSLIDE_RETURN_IF_ERROR(GatherTable(k, w, window, &n, &d, &stride));
  const int64_t r = ids.dimensions()[0], a = ids.dimensions()[1];
  if (coef.dimensions()[0] != r || coef.dimensions()[1] != a)
    return Invalid(k, "coef shape " + Dims(coef.dimensions()) + " must equal ids shape " +
                          Dims(ids.dimensions()));
  if (out->dimensions().size() != 2 || out->dimensions()[0] != r || out->dimensions()[1] != d)
    return Invalid(k, "result shape " + Dims(out->dimensions()) + " must be [R, D]");
  JSLIDE_RETURN_IF_ERROR(CheckIds(k, "ids", ids, n));
  WithElement(w.element_type(), [&](auto e) {
    ParallelFor(pool, r, kMinRowsPerTask, [&](int64_t begin, int64_t end) {
      GatherWeightedSumRows(ids.typed_data(), coef.typed_data(), a, Data(w, e), d, stride,
                            out->typed_data(), begin, end);
    });
  });
  return ffi::Error::Success();
}

ffi::Error ScatterOuterImpl(ffi::ThreadPool pool, S32R2 ids, F32R2 coef, F32R2 vecs, int64_t window,
                            F32Out dense) {
  const std::string k = "jslide_scatter_outer";
  int64_t n = 0, d = 0;
  JSLIDE_RETURN_IF_ERROR(TableDims(k, "result", *dense, &n, &d));
  if (window == 0 && dense->dimensions().size() != 2)
    return Invalid(k, "result must have rank 2, got " + Dims(dense->dimensions()));
  JSLIDE_RETURN_IF_ERROR(CheckWindowedFactored(k, ids, coef, vecs, n, d, window));
  const int64_t r = ids.dimensions()[0], a = ids.dimensions()[1];
  // Each worker owns a range of output rows, so no two write the same row.
  ParallelFor(pool, n, 1024, [&](int64_t begin, int64_t end) {
    ScatterOuterRows(ids.typed_data(), coef.typed_data(), vecs.typed_data(), r, a,
                     vecs.dimensions()[1], window, dense->typed_data(), begin, end);
  });
  return ffi::Error::Success();
}

// Splits table rows into ranges, one per worker, each owning the rows it updates.
template <typename Fn>
void ForRowRanges(ffi::ThreadPool& pool, int64_t n, int64_t work, Fn&& fn) {
  const int64_t workers = NumWorkers(pool, work, 256);
  ParallelChunks(pool, n, workers, [&](int64_t, int64_t begin, int64_t end) {
    fn(begin, end, ThreadScratch());
  });
}

// Shapes of Adam's moments (those of the table w: [N] or [N, D]) and, with catch-up, of
// `last` ([N], the step each row was last updated at).
ffi::Error CheckAdamState(const std::string& k, const Any& w, const Any& m, const Any& v,
                          const S32* last, int64_t* n, int64_t* d) {
  JSLIDE_RETURN_IF_ERROR(TableDims(k, "w", w, n, d));
  JSLIDE_RETURN_IF_ERROR(CheckTableType(k, "w", w));
  JSLIDE_RETURN_IF_ERROR(CheckTableType(k, "m", m));
  if (v.element_type() != m.element_type())
    return Invalid(k, std::string("Adam moments must share one type, got m ") +
                          TypeName(m.element_type()) + " and v " + TypeName(v.element_type()));
  for (const Any* s : {&m, &v})
    if (!SameDims(*s, w))
      return Invalid(k, "Adam moments must have the table's shape " + Dims(w.dimensions()) +
                            ", got " + Dims(s->dimensions()));
  if (last != nullptr && (last->dimensions().size() != 1 || last->dimensions()[0] != *n))
    return Invalid(k, "last must have shape [" + std::to_string(*n) + "], got " +
                          Dims(last->dimensions()));
  return ffi::Error::Success();
}

// Every entry of last in [0, max_last] (for the catch-up of all rows, which reads them all).
ffi::Error CheckLastOfAllRows(const std::string& k, const S32& last, int64_t max_last) {
  const int32_t* l = last.typed_data();
  for (int64_t i = 0, n = last.element_count(); i < n; ++i)
    if (l[i] < 0 || l[i] > max_last)
      return Invalid(k, "last[" + std::to_string(i) + "] = " + std::to_string(l[i]) +
                            " must lie in [0, " + std::to_string(max_last) +
                            "] (the steps already taken)");
  return ffi::Error::Success();
}

// Learning rate, bias corrections and step from `hyper` = [lr, 1 - b1^t, 1 - b2^t, t_hi,
// t_lo], t = t_hi * 65536 + t_lo: two float32 halves hold every int32 step exactly, where
// one float32 is exact only up to 2^24 (a run of 16.7M steps).
ffi::Error ReadAdamHyper(const std::string& k, const F32& hyper, float b1, float b2, float eps,
                         AdamHyper* h) {
  if (hyper.element_count() != 5)
    return Invalid(k, "hyper must hold [learning_rate, 1 - b1^t, 1 - b2^t, t_hi, t_lo]");
  JSLIDE_RETURN_IF_ERROR(CheckFinite(k, "hyper", hyper));
  const float* hp = hyper.typed_data();
  const bool halves = hp[3] >= 0.0f && hp[3] < 32768.0f && hp[4] >= 0.0f && hp[4] < 65536.0f &&
                      hp[3] == static_cast<float>(static_cast<int64_t>(hp[3])) &&
                      hp[4] == static_cast<float>(static_cast<int64_t>(hp[4]));
  if (!halves) return Invalid(k, "the step's halves t_hi, t_lo must be integers in range");
  const int64_t step = static_cast<int64_t>(hp[3]) * 65536 + static_cast<int64_t>(hp[4]);
  if (!(hp[1] > 0.0f) || !(hp[2] > 0.0f) || step < 1)
    return Invalid(k, "bias corrections 1 - b^t must be positive and the step t >= 1");
  *h = AdamHyper{hp[0], b1, b2, eps, hp[1], hp[2], step};
  return ffi::Error::Success();
}

// Lazy Adam (last == nullptr) or Adam with catch-up (last: [N] steps of last update).
ffi::Error SparseAdam(const std::string& k, ffi::ThreadPool& pool, Any w, Any m, Any v,
                      const S32* last, S32R2 ids, F32R2 coef, F32R2 vecs, F32 hyper, float b1,
                      float b2, float eps, int64_t window, AnyOut w_out, AnyOut m_out,
                      AnyOut v_out, S32Out* last_out) {
  AdamHyper h;
  JSLIDE_RETURN_IF_ERROR(ReadAdamHyper(k, hyper, b1, b2, eps, &h));
  int64_t n = 0, d = 0;
  JSLIDE_RETURN_IF_ERROR(CheckAdamState(k, w, m, v, last, &n, &d));
  JSLIDE_RETURN_IF_ERROR(CheckWindowedFactored(k, ids, coef, vecs, n, d, window));
  JSLIDE_RETURN_IF_ERROR(CheckFinite(k, "coef", coef));
  JSLIDE_RETURN_IF_ERROR(CheckFinite(k, "vecs", vecs));
  StartFrom(w, w_out);
  StartFrom(m, m_out);
  StartFrom(v, v_out);
  int32_t* last_rows = nullptr;
  if (last != nullptr) {
    StartFrom(*last, *last_out);
    last_rows = (*last_out)->typed_data();
  }
  const int64_t r = ids.dimensions()[0], a = ids.dimensions()[1];
  const int64_t vd = vecs.dimensions()[1];
  // The kernel reads last[] only at the rows it updates (an O(N) check every step would cost
  // more than the step) and reports an entry outside [0, t - 1] here, never using it; the
  // outputs of a failed call are not seen (fresh buffers, or donated ones XLA invalidates).
  LastCheck check;
  check.max_last = h.step - 1;
  WithElement(w.element_type(), [&](auto we) {
    WithElement(m.element_type(), [&](auto se) {
      ForRowRanges(pool, n, r * a, [&](int64_t begin, int64_t end, RowScratch& scratch) {
        SparseAdamRows(ids.typed_data(), coef.typed_data(), vecs.typed_data(), r, a, vd, window,
                       Data(w_out, we), Data(m_out, se), Data(v_out, se), last_rows, &check, h,
                       begin, end, scratch);
      });
    });
  });
  if (check.row.load() >= 0)
    return Invalid(k, "last[" + std::to_string(check.row.load()) + "] = " +
                          std::to_string(check.value.load()) + " must lie in [0, " +
                          std::to_string(check.max_last) + "] (the steps already taken)");
  return ffi::Error::Success();
}

ffi::Error SparseAdamImpl(ffi::ThreadPool pool, Any w, Any m, Any v, S32R2 ids, F32R2 coef,
                          F32R2 vecs, F32 hyper, float b1, float b2, float eps, int64_t window,
                          AnyOut w_out, AnyOut m_out, AnyOut v_out) {
  return SparseAdam("jslide_sparse_adam", pool, w, m, v, nullptr, ids, coef, vecs, hyper, b1,
                    b2, eps, window, w_out, m_out, v_out, nullptr);
}

ffi::Error SparseAdamCatchUpImpl(ffi::ThreadPool pool, Any w, Any m, Any v, S32 last, S32R2 ids,
                                 F32R2 coef, F32R2 vecs, F32 hyper, float b1, float b2, float eps,
                                 int64_t window, AnyOut w_out, AnyOut m_out, AnyOut v_out,
                                 S32Out last_out) {
  return SparseAdam("jslide_sparse_adam_catch_up", pool, w, m, v, &last, ids, coef, vecs, hyper,
                    b1, b2, eps, window, w_out, m_out, v_out, &last_out);
}

// Every row brought up to step t (dense Adam's zero-gradient steps since its last update).
ffi::Error AdamCatchUpImpl(ffi::ThreadPool pool, Any w, Any m, Any v, S32 last, F32 hyper,
                           float b1, float b2, float eps, AnyOut w_out, AnyOut m_out,
                           AnyOut v_out, S32Out last_out) {
  const std::string k = "jslide_adam_catch_up";
  AdamHyper h;
  JSLIDE_RETURN_IF_ERROR(ReadAdamHyper(k, hyper, b1, b2, eps, &h));
  int64_t n = 0, d = 0;
  JSLIDE_RETURN_IF_ERROR(CheckAdamState(k, w, m, v, &last, &n, &d));
  JSLIDE_RETURN_IF_ERROR(CheckLastOfAllRows(k, last, h.step));
  StartFrom(w, w_out);
  StartFrom(m, m_out);
  StartFrom(v, v_out);
  StartFrom(last, last_out);
  WithElement(w.element_type(), [&](auto we) {
    WithElement(m.element_type(), [&](auto se) {
      ParallelFor(pool, n, 1024, [&](int64_t begin, int64_t end) {
        AdamCatchUpRows(Data(w_out, we), Data(m_out, se), Data(v_out, se),
                        last_out->typed_data(), d, h, begin, end);
      });
    });
  });
  return ffi::Error::Success();
}

// Seed of the stochastic rounding of an SGD step on a bfloat16 table, from its gradient's
// coefficients (the step has no counter; the gradient changes every step, so the bits do).
uint32_t GradientSeed(const F32R2& coef) {
  const uint32_t* bits = static_cast<const uint32_t*>(coef.untyped_data());
  uint32_t seed = 0x5bd1e995u;
  for (int64_t i = 0, count = coef.element_count(); i < count; ++i)
    seed ^= Mix32(bits[i] + static_cast<uint32_t>(i) * 0x9e3779b9u);
  return seed;
}

ffi::Error SparseSgdImpl(ffi::ThreadPool pool, Any w, S32R2 ids, F32R2 coef, F32R2 vecs, F32 hyper,
                         int64_t window, AnyOut w_out) {
  const std::string k = "jslide_sparse_sgd";
  int64_t n = 0, d = 0;
  JSLIDE_RETURN_IF_ERROR(TableDims(k, "w", w, &n, &d));
  JSLIDE_RETURN_IF_ERROR(CheckTableType(k, "w", w));
  if (hyper.element_count() != 1) return Invalid(k, "hyper must hold [learning_rate]");
  JSLIDE_RETURN_IF_ERROR(CheckWindowedFactored(k, ids, coef, vecs, n, d, window));
  JSLIDE_RETURN_IF_ERROR(CheckFinite(k, "coef", coef));
  JSLIDE_RETURN_IF_ERROR(CheckFinite(k, "vecs", vecs));
  JSLIDE_RETURN_IF_ERROR(CheckFinite(k, "hyper", hyper));
  StartFrom(w, w_out);
  const float lr = hyper.typed_data()[0];
  const uint32_t seed = w.element_type() == ffi::DataType::BF16 ? GradientSeed(coef) : 0u;
  const int64_t r = ids.dimensions()[0], a = ids.dimensions()[1];
  const int64_t vd = vecs.dimensions()[1];
  WithElement(w.element_type(), [&](auto e) {
    ForRowRanges(pool, n, r * a, [&](int64_t begin, int64_t end, RowScratch& scratch) {
      SparseSgdRows(ids.typed_data(), coef.typed_data(), vecs.typed_data(), r, a, vd, window,
                    Data(w_out, e), lr, seed, begin, end, scratch);
    });
  });
  return ffi::Error::Success();
}

// Passes x through (aliased) once `unit` says the row-sparse value it belongs to was not
// changed by leafwise arithmetic: unit == 1, or unit == 0 with x all zero (a zeros_like).
ffi::Error CheckUnitImpl(S32 unit, Any x, std::string_view what, bool allow_zero, AnyOut out) {
  const std::string k = "jslide_check_unit";
  if (unit.element_count() != 1) return Invalid(k, "unit must be a scalar int32");
  JSLIDE_RETURN_IF_ERROR(CheckTableType(k, "x", x));
  const int32_t u = unit.typed_data()[0];
  bool ok = u == 1;
  if (u == 0 && allow_zero) {
    ok = WithElement(x.element_type(), [&](auto e) {
      const auto* p = Data(x, e);
      for (int64_t i = 0, count = x.element_count(); i < count; ++i)
        if (Widen(p[i]) != 0.0f) return false;
      return true;
    });
  }
  if (!ok) return Invalid(k, "unit is " + std::to_string(u) + ", not 1: " + std::string(what));
  StartFrom(x, out);
  return ffi::Error::Success();
}

// A zero-filled buffer that the kernel backs with transparent huge pages where it allows
// them (THP "always" or "madvise"): the advice comes before anything touches the fresh
// memory, so its pages fault in 2 MiB at a time. A sparse step reads rows scattered over
// tables far larger than the TLB's reach, and each row on a 4 KiB page costs a page walk
// (measured: 18% of a step at 1M rows). Elsewhere it is a plain zero fill.
ffi::Error HugePageZerosImpl(ffi::ThreadPool pool, AnyOut out) {
  char* data = static_cast<char*>(out->untyped_data());
  const int64_t bytes = static_cast<int64_t>(out->size_bytes());
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);  // a hint
#endif
  constexpr int64_t kChunk = int64_t{2} << 20;
  ParallelFor(pool, (bytes + kChunk - 1) / kChunk, 1, [&](int64_t first, int64_t last) {
    const int64_t from = first * kChunk, to = std::min(bytes, last * kChunk);
    std::memset(data + from, 0, static_cast<size_t>(to - from));
  });
  return ffi::Error::Success();
}

// |dense form of (ids, coef, vecs)|^2, summed in double per worker, over row ranges.
ffi::Error RowSparseSqNormImpl(ffi::ThreadPool pool, S32R2 ids, F32R2 coef, F32R2 vecs,
                               int64_t num_rows, int64_t window, F32Out out) {
  const std::string k = "jslide_row_sparse_sq_norm";
  if (num_rows < 0) return Invalid(k, "num_rows must be >= 0");
  const int64_t d = vecs.dimensions()[1];
  JSLIDE_RETURN_IF_ERROR(
      CheckWindowedFactored(k, ids, coef, vecs, num_rows, window ? 1 : d, window));
  if (out->element_count() != 1) return Invalid(k, "result must be a scalar");
  const int64_t r = ids.dimensions()[0], a = ids.dimensions()[1];
  const int64_t workers = NumWorkers(pool, r * a, 256);
  std::vector<double> partial(static_cast<size_t>(workers), 0.0);
  ParallelChunks(pool, num_rows, workers, [&](int64_t c, int64_t begin, int64_t end) {
    partial[c] = RowSparseSqNormRows(ids.typed_data(), coef.typed_data(), vecs.typed_data(), r,
                                     a, d, window, begin, end, ThreadScratch());
  });
  double total = 0.0;
  for (double p : partial) total += p;
  out->typed_data()[0] = static_cast<float>(total);
  return ffi::Error::Success();
}

// ROBE's window starts of table rows (RobeSlots), ids checked against the table's rows.
ffi::Error RobeSlotsImpl(ffi::ThreadPool pool, S32R2 ids, int64_t offset, int64_t num_rows,
                         int64_t memory, int64_t block, int64_t blocks, int64_t seed,
                         S32Out slots) {
  const std::string k = "jslide_robe_slots";
  if (block < 1 || memory < block)
    return Invalid(k, "block must be in [1, memory=" + std::to_string(memory) + "], got " +
                          std::to_string(block));
  if (memory - block + 1 > int64_t{0x7fffffff})
    return Invalid(k, "memory must leave at most 2^31 - 1 window starts");
  if (blocks < 1) return Invalid(k, "blocks must be >= 1");
  if (offset < 0 || num_rows < 0 || offset + num_rows > static_cast<int64_t>(kRobePrime))
    return Invalid(k, "the tables' rows (offset " + std::to_string(offset) + " + " +
                          std::to_string(num_rows) + ") must stay below " +
                          std::to_string(kRobePrime) + ", the hash's prime");
  if (seed < 0 || seed > int64_t{0xffffffff}) return Invalid(k, "seed must be a uint32");
  const int64_t r = ids.dimensions()[0], kk = ids.dimensions()[1];
  if (slots->dimensions().size() != 3 || slots->dimensions()[0] != r ||
      slots->dimensions()[1] != blocks || slots->dimensions()[2] != kk)
    return Invalid(k, "result must be [R, blocks, K]");
  JSLIDE_RETURN_IF_ERROR(CheckIds(k, "ids", ids, num_rows));
  const RobeHash h = MakeRobeHash(static_cast<uint32_t>(seed), memory, block);
  ParallelFor(pool, r, 64, [&](int64_t begin, int64_t end) {
    RobeSlots(ids.typed_data(), kk, blocks, offset, h, slots->typed_data(), begin, end);
  });
  return ffi::Error::Success();
}

}  // namespace

int64_t MaxThreads() { return g_max_threads.load(std::memory_order_relaxed); }
void SetMaxThreads(int64_t n) { g_max_threads.store(n < 0 ? 0 : n, std::memory_order_relaxed); }

}  // namespace jslide

XLA_FFI_DEFINE_HANDLER_SYMBOL(JslideGatherDot, jslide::GatherDotImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<jslide::F32R2>()  // x
                                  .Arg<jslide::Any>()  // w
                                  .Arg<jslide::F32R1>()  // b
                                  .Arg<jslide::S32R2>()  // ids
                                  .Attr<int64_t>("window")
                                  .Ret<ffi::BufferR2<ffi::F32>>()  // y
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(JslideGatherWeightedSum, jslide::GatherWeightedSumImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<jslide::S32R2>()  // ids
                                  .Arg<jslide::F32R2>()  // coef
                                  .Arg<jslide::Any>()  // w
                                  .Attr<int64_t>("window")
                                  .Ret<jslide::F32>()  // out
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(JslideScatterOuter, jslide::ScatterOuterImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<jslide::S32R2>()  // ids
                                  .Arg<jslide::F32R2>()  // coef
                                  .Arg<jslide::F32R2>()  // vecs
                                  .Attr<int64_t>("window")
                                  .Ret<jslide::F32>()  // dense
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(JslideSparseAdam, jslide::SparseAdamImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<jslide::Any>()  // w
                                  .Arg<jslide::Any>()  // m
                                  .Arg<jslide::Any>()  // v
                                  .Arg<jslide::S32R2>()  // ids
                                  .Arg<jslide::F32R2>()  // coef
                                  .Arg<jslide::F32R2>()  // vecs
                                  .Arg<jslide::F32>()  // hyper
                                  .Attr<float>("b1")
                                  .Attr<float>("b2")
                                  .Attr<float>("eps")
                                  .Attr<int64_t>("window")
                                  .Ret<jslide::Any>()  // w
                                  .Ret<jslide::Any>()  // m
                                  .Ret<jslide::Any>()  // v
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(JslideSparseAdamCatchUp, jslide::SparseAdamCatchUpImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<jslide::Any>()  // w
                                  .Arg<jslide::Any>()  // m
                                  .Arg<jslide::Any>()  // v
                                  .Arg<jslide::S32>()  // last
                                  .Arg<jslide::S32R2>()  // ids
                                  .Arg<jslide::F32R2>()  // coef
                                  .Arg<jslide::F32R2>()  // vecs
                                  .Arg<jslide::F32>()  // hyper
                                  .Attr<float>("b1")
                                  .Attr<float>("b2")
                                  .Attr<float>("eps")
                                  .Attr<int64_t>("window")
                                  .Ret<jslide::Any>()  // w
                                  .Ret<jslide::Any>()  // m
                                  .Ret<jslide::Any>()  // v
                                  .Ret<jslide::S32>()  // last
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(JslideAdamCatchUp, jslide::AdamCatchUpImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<jslide::Any>()  // w
                                  .Arg<jslide::Any>()  // m
                                  .Arg<jslide::Any>()  // v
                                  .Arg<jslide::S32>()  // last
                                  .Arg<jslide::F32>()  // hyper
                                  .Attr<float>("b1")
                                  .Attr<float>("b2")
                                  .Attr<float>("eps")
                                  .Ret<jslide::Any>()  // w
                                  .Ret<jslide::Any>()  // m
                                  .Ret<jslide::Any>()  // v
                                  .Ret<jslide::S32>()  // last
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(JslideSparseSgd, jslide::SparseSgdImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<jslide::Any>()  // w
                                  .Arg<jslide::S32R2>()  // ids
                                  .Arg<jslide::F32R2>()  // coef
                                  .Arg<jslide::F32R2>()  // vecs
                                  .Arg<jslide::F32>()  // hyper
                                  .Attr<int64_t>("window")
                                  .Ret<jslide::Any>()  // w
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(JslideCheckUnit, jslide::CheckUnitImpl,
                              ffi::Ffi::Bind()
                                  .Arg<jslide::S32>()  // unit
                                  .Arg<jslide::Any>()  // x
                                  .Attr<std::string_view>("what")
                                  .Attr<bool>("allow_zero")
                                  .Ret<jslide::Any>()  // x, aliased
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(JslideRobeSlots, jslide::RobeSlotsImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<jslide::S32R2>()  // ids
                                  .Attr<int64_t>("offset")
                                  .Attr<int64_t>("num_rows")
                                  .Attr<int64_t>("memory")
                                  .Attr<int64_t>("block")
                                  .Attr<int64_t>("blocks")
                                  .Attr<int64_t>("seed")
                                  .Ret<jslide::S32>()  // slots
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(JslideHugePageZeros, jslide::HugePageZerosImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Ret<jslide::Any>()  // zeros
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(JslideRowSparseSqNorm, jslide::RowSparseSqNormImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<jslide::S32R2>()  // ids
                                  .Arg<jslide::F32R2>()  // coef
                                  .Arg<jslide::F32R2>()  // vecs
                                  .Attr<int64_t>("num_rows")
                                  .Attr<int64_t>("window")
                                  .Ret<jslide::F32>()  // squared norm
);

namespace {

template <typename T>
nb::capsule EncapsulateFfiHandler(T* fn) {
  return nb::capsule(reinterpret_cast<void*>(fn));
}

}  // namespace

NB_MODULE(_jslide_ffi, m) {
  m.def("registrations", []() {
    // Every handler, kernels and LSH alike, from one table of (target name, handler).
    const std::pair<const char*, XLA_FFI_Handler*> kernels[] = {
        {"jslide_gather_dot", JslideGatherDot},
        {"jslide_gather_weighted_sum", JslideGatherWeightedSum},
        {"jslide_scatter_outer", JslideScatterOuter},
        {"jslide_sparse_adam", JslideSparseAdam},
        {"jslide_sparse_adam_catch_up", JslideSparseAdamCatchUp},
        {"jslide_adam_catch_up", JslideAdamCatchUp},
        {"jslide_sparse_sgd", JslideSparseSgd},
        {"jslide_check_unit", JslideCheckUnit},
        {"jslide_row_sparse_sq_norm", JslideRowSparseSqNorm},
        {"jslide_huge_page_zeros", JslideHugePageZeros},
        {"jslide_robe_slots", JslideRobeSlots},
    };
    nb::dict d;
    for (const auto& [name, handler] : kernels) d[name] = EncapsulateFfiHandler(handler);
    for (const auto& [name, handler] : jslide::LshHandlers()) d[name] = EncapsulateFfiHandler(handler);
    return d;
  });
  m.def("set_max_threads", &jslide::SetMaxThreads, nb::arg("n"),
        "Caps the threads one kernel call uses (0: all of XLA's intra-op pool).");
  m.def("max_threads", &jslide::MaxThreads);
  m.def("kernel_isa", &jslide::KernelIsa,
        "Instruction set the dispatched kernels use on this machine.");
}
