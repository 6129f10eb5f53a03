// Sparse inference through neuron lists (lsh.h): the examples probing a list scored
// together against its rows, in register blocks, keeping each example's best k.
#include "lsh.h"

#include <algorithm>
#include <limits>

#include "isa.h"
#include "prefetch.h"
#include "simd.h"

namespace jslide {

namespace {

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

// Scores G examples against a block's nr rows, R rows at a time (the last group padded with
// its last row, whose extra scores are dropped): dots[t][r] = xs[t] . w_rows[r] + bias.
// Prefetches ahead[0, na), R of them per step.
template <int W, int G, int R, int kBlock, typename Row>
JSLIDE_INLINE void ScoreBlock(const float* const* xs, const Row* w, const float* bias,
                              int64_t d, const int32_t* rows, int64_t nr,
                              float (*dots)[kBlock], const Row* const* ahead, int64_t na) {
  for (int64_t r0 = 0; r0 < nr; r0 += R) {
    for (int64_t a = r0; a < std::min<int64_t>(na, r0 + R); ++a) PrefetchForRead(ahead[a], d * int64_t{sizeof(Row)});
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
        for (int64_t r = 0; r < nr; ++r)
          PrefetchForRead(w + int64_t{rows[r]} * d, d * int64_t{sizeof(Row)});
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

void ScoreLists(const float* x, const Bf16* w, const float* bias, int64_t d,
                const int32_t* lists, int64_t s, const int32_t* start, const int32_t* members,
                int64_t c_begin, int64_t c_end, int64_t k, float* top_scores, int32_t* top_ids) {
  ScoreListsOf(x, w, bias, d, lists, s, start, members, c_begin, c_end, k, top_scores, top_ids);
}

void MergeBest(const float* scores, const int32_t* ids, int64_t k, float* into_scores,
               int32_t* into_ids) {
  for (int64_t i = 0; i < k && ids[i] >= 0; ++i) KeepBest(scores[i], ids[i], k, into_scores, into_ids);
}

// ----------------------------------------------------------------------- NearestCentroids
}  // namespace jslide
