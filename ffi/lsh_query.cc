// Active-set retrieval of one example: forced ids, the buckets' ids per the strategy,
// random fill (lsh.h).
#include "lsh.h"

#include <algorithm>
#include <cstring>
#include <limits>

namespace jslide {
namespace {

// splitmix64: a counter-based generator, so results do not depend on the thread schedule.
struct Rng {
  uint64_t state;
  uint64_t Next() {
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, n) (n > 0); the modulo bias is below 2^-32 for n < 2^32.
  uint64_t Below(uint64_t n) { return Next() % n; }
};

}  // namespace

// ------------------------------------------------------------------------------ IdCounter

void IdCounter::Reserve(int64_t max_items) {
  Clear();
  uint64_t cap = 16;
  while (cap < static_cast<uint64_t>(2 * max_items)) cap <<= 1;
  if (cap > slot_id_.size()) {
    slot_id_.assign(cap, -1);
    slot_count_.assign(cap, 0);
  }
  // Probe only a prefix of the allocation sized to this use (every slot is free after Clear),
  // so a small query's table stays in cache.
  mask_ = cap - 1;
}

int64_t IdCounter::Slot(int32_t id) const {
  uint64_t s = Mix32(static_cast<uint32_t>(id)) & mask_;
  while (slot_id_[s] != -1 && slot_id_[s] != id) s = (s + 1) & mask_;
  return static_cast<int64_t>(s);
}

int32_t IdCounter::Add(int32_t id) {
  const int64_t s = Slot(id);
  if (slot_id_[s] == -1) {
    slot_id_[s] = id;
    used_.push_back(s);
  }
  return ++slot_count_[s];
}

void IdCounter::Clear() {
  for (int64_t s : used_) {
    slot_id_[s] = -1;
    slot_count_[s] = 0;
  }
  used_.clear();
}

// ------------------------------------------------------------------------------ QueryOne

bool QueryOne(const int32_t* codes, const int32_t* offsets, const int32_t* ids,
              const int32_t* force, int64_t num_force, const QueryConfig& cfg, uint64_t example,
              int32_t* out, QueryScratch& s) {
  Rng rng{cfg.seed ^ (example * 0xd1342543de82ef95ull)};
  const int64_t active = cfg.active, n = cfg.num_rows;
  s.chosen.Reserve(n, active);
  int64_t filled = 0;
  for (int64_t i = 0; i < num_force && filled < active; ++i)
    if (force[i] >= 0 && s.chosen.Add(force[i])) out[filled++] = force[i];

  // Reads table t's bucket codes[t] (at most max_per_bucket ids, from a random start,
  // cyclically, so a query costs O(L * max_per_bucket) whatever the bucket sizes), calling
  // visit(id) until it returns false. Returns false for a corrupt index: offsets outside
  // [0, N] or a row id outside [0, N) (refused rather than returned).
  const int64_t per_bucket = cfg.max_per_bucket;
  const int64_t width = cfg.num_buckets + 1;
  auto read_bucket = [&](int64_t t, auto&& visit) {
    const int64_t table = t % cfg.num_hash_tables;
    const int32_t* o = offsets + table * width;
    const int32_t code = codes[t];
    const int64_t begin = o[code], size = o[code + 1] - o[code];
    if (begin < 0 || size < 0 || begin + size > n) return false;
    const int32_t* bucket = ids + table * n + begin;
    const int64_t start = size > per_bucket ? static_cast<int64_t>(rng.Below(size)) : 0;
    for (int64_t i = 0, m = std::min(size, per_bucket); i < m; ++i) {
      const int32_t id = bucket[start + i < size ? start + i : start + i - size];
      if (id < 0 || id >= n) return false;
      if (!visit(id)) break;
    }
    return true;
  };
  const int64_t room = std::min(active - filled, cfg.retrieved);
  if (cfg.strategy == QueryStrategy::kRanked) {
    // The codes come best first: each new id is taken as it is read, and reading stops once
    // the room is filled (forced ids found in the buckets are skipped, not counted).
    const int64_t enough = filled + room;
    constexpr int64_t kAhead = 4;  // buckets are scattered over ids: fetch a few ahead
    for (int64_t t = 0; t < cfg.num_probes && filled < enough; ++t) {
      if (t + kAhead < cfg.num_probes) {
        const int64_t ahead = (t + kAhead) % cfg.num_hash_tables;
        const int32_t begin = offsets[ahead * width + codes[t + kAhead]];
        if (begin >= 0 && begin < n) __builtin_prefetch(ids + ahead * n + begin);
      }
      const bool ok = read_bucket(t, [&](int32_t id) {
        if (s.chosen.Add(id)) out[filled++] = id;
        return filled < enough;
      });
      if (!ok) return false;
    }
  } else {
    // Size the counter to what this query reads, so it stays in cache.
    int64_t to_read = 0;
    for (int64_t t = 0; t < cfg.num_probes; ++t) {
      const int32_t* o = offsets + (t % cfg.num_hash_tables) * width;
      to_read += std::min<int64_t>(std::max<int64_t>(o[codes[t] + 1] - o[codes[t]], 0),
                                   per_bucket);
    }
    s.counter.Reserve(to_read + 1);
    for (int64_t t = 0; t < cfg.num_probes; ++t)
      if (!read_bucket(t, [&](int32_t id) { s.counter.Add(id); return true; })) return false;

    // Candidates not already forced (and, for kThreshold, found in enough tables).
    s.candidates.clear();
    s.candidate_counts.clear();
    const int32_t min_count =
        cfg.strategy == QueryStrategy::kThreshold ? static_cast<int32_t>(cfg.threshold) : 1;
    s.counter.ForEach([&](int32_t id, int32_t count) {
      if (count >= min_count && !s.chosen.Contains(id)) {
        s.candidates.push_back(id);
        s.candidate_counts.push_back(count);
      }
    });
    const int64_t m = static_cast<int64_t>(s.candidates.size());
    auto take = [&](int32_t id) {  // candidates are not chosen yet
      s.chosen.Add(id);
      out[filled++] = id;
    };
    // Appends a uniform random subset of `want` of the candidates in positions [lo, hi).
    auto sample = [&](int64_t lo, int64_t hi, int64_t want) {
      for (int64_t i = lo; i < lo + want; ++i) {
        const int64_t j = i + static_cast<int64_t>(rng.Below(hi - i));
        std::swap(s.candidates[i], s.candidates[j]);
        take(s.candidates[i]);
      }
    };
    if (m <= room) {
      for (int64_t i = 0; i < m; ++i) take(s.candidates[i]);
    } else if (cfg.strategy != QueryStrategy::kTopK) {
      sample(0, m, room);
    } else {
      // The ids found in the most tables: every id above the cutoff count, then a random
      // subset of those at the cutoff. Counts are at most P * L, so this is a counting pass.
      s.histogram.assign(cfg.num_probes + 2, 0);
      for (int32_t c : s.candidate_counts) ++s.histogram[c];
      int64_t cutoff = cfg.num_probes + 1, above = 0;
      while (cutoff > 1 && above + s.histogram[cutoff - 1] <= room) above += s.histogram[--cutoff];
      --cutoff;  // ids with count > cutoff all fit; those at == cutoff compete for the rest
      int64_t at = 0;
      for (int64_t i = 0; i < m; ++i) {
        if (s.candidate_counts[i] > cutoff) {
          take(s.candidates[i]);
        } else if (s.candidate_counts[i] == cutoff) {
          s.candidates[at++] = s.candidates[i];  // compact the ties to the front
        }
      }
      sample(0, at, std::min(room - above, at));
    }
  }

  // Fill with uniform random ids not yet chosen, so the softmax always has negatives. The
  // examples of a fill group draw from the same sequence, so the group's fill touches about
  // `active` distinct rows instead of group * active (sampled softmax's shared negatives).
  if (cfg.fill_group > 1)
    rng.state = cfg.seed ^ ((example / static_cast<uint64_t>(cfg.fill_group) + 1) *
                            0x5bd1e9955bd1e995ull);
  if (cfg.fill && filled < active) {
    if (n <= 4 * active) {
      // Small tables: a uniform random subset of the ids not chosen yet.
      s.candidates.clear();
      for (int64_t id = 0; id < n; ++id)
        if (!s.chosen.Contains(static_cast<int32_t>(id))) s.candidates.push_back(static_cast<int32_t>(id));
      const int64_t c = static_cast<int64_t>(s.candidates.size());
      for (int64_t i = 0; i < c && filled < active; ++i) {
        const int64_t j = i + static_cast<int64_t>(rng.Below(c - i));
        std::swap(s.candidates[i], s.candidates[j]);
        out[filled++] = s.candidates[i];
      }
    } else {
      while (filled < active) {  // at least 3/4 of the draws are new, so this ends quickly
        const int32_t id = static_cast<int32_t>(rng.Below(n));
        if (s.chosen.Add(id)) out[filled++] = id;
      }
    }
  }
  for (; filled < active; ++filled) out[filled] = -1;
  return true;
}

}  // namespace jslide
