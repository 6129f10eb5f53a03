// Locality-sensitive hashing maths: hash families (hashing.cc), the CSR index (lsh_index.cc),
// top-k selection (top_indices.cc), active-set retrieval (lsh_query.cc), neuron lists
// (neuron_lists.cc) and nearest centroids (nearest_centroids.cc). Plain row-major arrays; the
// FFI binding (lsh_ffi.cc) validates and parallelises.
#ifndef JSLIDE_FFI_LSH_H_
#define JSLIDE_FFI_LSH_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "bf16.h"
#include "mix.h"

namespace jslide {

// SimHash with sparse projections. Bit (l, k) of a vector x is [sum_i sign[l,k,i] x[idx[l,k,i]] >= 0];
// the code of table l is sum_k bit(l, k) << k. idx, sign: [L, K, nnz]; x: [D]; codes: [L].
void SimHashCodes(const float* x, const int32_t* idx, const float* sign, int64_t l, int64_t k,
                  int64_t nnz, int32_t* codes);

// Densified winner-take-all. Hash (l, k) is the position of the largest entry of x among the
// bin_size coordinates bins[l, k, :] (first on ties); a bin whose entries are all zero is
// empty and takes the value of the first non-empty bin on its probe sequence
// (DwtaProbe), or 0 if none is found. Code of table l: sum_k hash(l, k) << (k * log2(bin_size)).
// scratch: at least L * K ints.
void DwtaCodes(const float* x, const int32_t* bins, int64_t l, int64_t k, int64_t bin_size,
               int32_t* codes, int32_t* scratch);
inline uint32_t DwtaProbe(uint32_t hash_index, uint32_t attempt, uint32_t num_hashes) {
  return Mix32(hash_index * 0x9e3779b1u + attempt * 0x85ebca6bu + 1u) % num_hashes;
}
constexpr int kDwtaMaxProbes = 64;

// SimHash of a sparse input, with projections derived from a hash instead of stored: entry
// (bit b, feature f) of the projection is +1 or -1 with probability 1/6 each and 0 otherwise,
// decided by SparseSimHashEntry(seeds[b], f). ids: [F] (-1 padding), vals: [F]; codes: [L].
inline float SparseSimHashEntry(uint32_t seed, uint32_t feature) {
  const uint32_t h = Mix32(seed ^ Mix32(feature + 0x632be5abu));
  if (h % 3u != 0u) return 0.0f;
  return (h >> 31) ? 1.0f : -1.0f;
}
void SparseSimHashCodes(const int32_t* ids, const float* vals, int64_t f, const uint32_t* seeds,
                        int64_t l, int64_t k, int32_t* codes);

// CSR index of tables [t_begin, t_end): codes [N, L] -> offsets [L, B+1], ids [L, N], rows of
// each bucket in increasing order (a stable counting sort).
void BuildIndexTables(const int32_t* codes, int64_t n, int64_t l, int64_t num_buckets,
                      int32_t* offsets, int32_t* ids, int64_t t_begin, int64_t t_end);

// The positions of the k highest of scores[0, c), highest first (ties: lower position
// first; NaN ranks below everything). scratch is reused across calls.
struct TopScratch {
  std::vector<uint32_t> keys;
  std::vector<uint64_t> cand;
};
void TopIndices(const float* scores, int64_t c, int64_t k, int32_t* out, TopScratch& scratch);

enum class QueryStrategy : int32_t { kVanilla = 0, kTopK = 1, kThreshold = 2, kRanked = 3 };

struct QueryConfig {
  int64_t num_rows;         // N
  int64_t num_hash_tables;  // L
  int64_t num_probes;       // codes per query: probes * L, column t probing table t % L
  int64_t num_buckets;      // buckets per table
  int64_t active;           // active ids per example
  int64_t retrieved;        // ids taken from the buckets at most (the rest: forced or fill)
  QueryStrategy strategy;
  int64_t threshold;        // for kThreshold
  int64_t max_per_bucket;  // ids read from one bucket at most
  int64_t fill_group;      // consecutive examples that share one random fill
  bool fill;               // false: no random fill, -1 after the retrieved ids (inference)
  uint64_t seed;
};

// Open-addressing map id -> count, reused across examples (cleared by its used slots).
class IdCounter {
 public:
  void Reserve(int64_t max_items);
  // Adds one occurrence; returns the count after adding.
  int32_t Add(int32_t id);
  void Clear();
  int64_t Size() const { return static_cast<int64_t>(used_.size()); }
  // fn(id, count) for every distinct id, in insertion order.
  template <typename Fn>
  void ForEach(Fn&& fn) const {
    for (int64_t s : used_) fn(slot_id_[s], slot_count_[s]);
  }

 private:
  int64_t Slot(int32_t id) const;
  std::vector<int32_t> slot_id_;
  std::vector<int32_t> slot_count_;
  std::vector<int64_t> used_;  // occupied slots, in insertion order
  uint64_t mask_ = 0;
};

// A set of row ids in [0, N): a bitmap (N / 8 bytes, in cache for N in the millions), cleared
// through the list of the ids added, so a query costs what it adds, not N.
class IdBitset {
 public:
  void Reserve(int64_t num_rows, int64_t max_items) {
    Clear();
    const size_t words = static_cast<size_t>((num_rows + 63) / 64);
    if (bits_.size() < words) bits_.assign(words, 0);
    added_.reserve(static_cast<size_t>(max_items));
  }
  bool Contains(int32_t id) const { return (bits_[id >> 6] >> (id & 63)) & 1; }
  // Adds id (in [0, N)); true if it was not there.
  bool Add(int32_t id) {
    uint64_t& word = bits_[id >> 6];
    const uint64_t bit = uint64_t{1} << (id & 63);
    if (word & bit) return false;
    word |= bit;
    added_.push_back(id);
    return true;
  }
  void Clear() {
    for (int32_t id : added_) bits_[id >> 6] = 0;
    added_.clear();
  }

 private:
  std::vector<uint64_t> bits_;
  std::vector<int32_t> added_;
};

struct QueryScratch {
  IdCounter counter;
  IdBitset chosen;
  std::vector<int32_t> candidates;
  std::vector<int32_t> candidate_counts;
  std::vector<int64_t> histogram;
};

// Active ids of one example: forced ids, then retrieved ids per the strategy, then uniform
// random ids, all distinct; -1 pads only when N < active. out: [active].
// Returns false (and writes nothing more) if a bucket's offsets fall outside [0, N].
bool QueryOne(const int32_t* codes, const int32_t* offsets, const int32_t* ids,
              const int32_t* force, int64_t num_force, const QueryConfig& cfg, uint64_t example,
              int32_t* out, QueryScratch& scratch);

// Sparse inference through neuron lists: example e probes lists probes[e, 0..P), each a row
// of lists [C, S] (neuron ids, -1 skipped), and keeps the k best distinct neurons by exact
// score x[e] . w[n] + bias[n] (ties: lower id first; NaN and -inf never kept).
//
// GroupProbesByList: the examples probing each list, start [C + 1] and members [B * P] (a
// counting sort; probes must lie in [0, C)).
void GroupProbesByList(const int32_t* probes, int64_t b, int64_t p, int64_t num_lists,
                       int32_t* start, int32_t* members);
// ScoreLists: lists [c_begin, c_end) against the examples probing them, all of one list's
// examples per row read, so a row costs one trip to memory per list, not per example. Keeps
// each example's best k, sorted best first, in top_scores / top_ids [B, k] (the caller
// starts them at -inf / -1). Rows of w are float32, or bfloat16 (widened exactly: half the
// bytes read).
void ScoreLists(const float* x, const float* w, const float* bias, int64_t d,
                const int32_t* lists, int64_t s, const int32_t* start, const int32_t* members,
                int64_t c_begin, int64_t c_end, int64_t k, float* top_scores, int32_t* top_ids);
void ScoreLists(const float* x, const Bf16* w, const float* bias, int64_t d,
                const int32_t* lists, int64_t s, const int32_t* start, const int32_t* members,
                int64_t c_begin, int64_t c_end, int64_t k, float* top_scores, int32_t* top_ids);
// MergeBest: folds one example's best k (from another worker) into its best k.
void MergeBest(const float* scores, const int32_t* ids, int64_t k, float* into_scores,
               int32_t* into_ids);

// Nearest centroids (the probes of neuron lists, the regions of their training queries):
// the p centroids of c [C, d] nearest to each x (Euclidean), nearest first, ties by lower
// index, NaN distances last. The centroids are packed first into panels of kCentroidPanel
// columns, [ceil(C / kCentroidPanel)][d + 1][kCentroidPanel] (row d: half their squared
// norms; zeros past C); NearestCentroids then ranks examples [begin, end) of x [B, d] into
// out [B, p], scoring x . c - |c|^2 / 2 without a [B, C] array.
constexpr int64_t kCentroidPanel = 32;
constexpr int64_t kMaxNearest = 64;  // p at most this (more: rank a score matrix instead)
void PackCentroidPanels(const float* centroids, int64_t c, int64_t d, float* panels);
void NearestCentroids(const float* x, int64_t d, const float* panels, int64_t c, int64_t p,
                      int64_t begin, int64_t end, int32_t* out);

}  // namespace jslide

#endif  // JSLIDE_FFI_LSH_H_
