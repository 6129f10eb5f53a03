// Prefetching the rows of a table: rows far apart in a large table each cost a DRAM round
// trip, and prefetching the next ones overlaps them.
#ifndef JSLIDE_FFI_PREFETCH_H_
#define JSLIDE_FFI_PREFETCH_H_

#include <cstdint>

#include "isa.h"

namespace jslide {

// The cache lines of bytes from row, for reading.
JSLIDE_INLINE void PrefetchForRead(const void* row, int64_t bytes) {
  const char* p = static_cast<const char*>(row);
  for (int64_t off = 0; off < bytes; off += 64) __builtin_prefetch(p + off, 0);
}

// The cache lines of bytes from row, for writing (an update in place).
JSLIDE_INLINE void PrefetchForWrite(const void* row, int64_t bytes) {
  const char* p = static_cast<const char*>(row);
  for (int64_t off = 0; off < bytes; off += 64) __builtin_prefetch(p + off, 1);
}

}  // namespace jslide

#endif  // JSLIDE_FFI_PREFETCH_H_
