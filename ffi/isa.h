// Per-instruction-set versions of the hot loops.
#ifndef JSLIDE_FFI_ISA_H_
#define JSLIDE_FFI_ISA_H_

// Hot loops are compiled for x86-64-v4 (AVX-512 F/BW/DQ/VL: the bfloat16 packing needs BW to
// use 512-bit registers), x86-64-v3 (AVX2 with FMA) and baseline x86-64, and picked at load
// time, so a wheel built on one machine runs (fast) on another. Elsewhere, one version.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(JSLIDE_NO_CLONES)
#define JSLIDE_HAS_CLONES 1
#define JSLIDE_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define JSLIDE_HAS_CLONES 0
#define JSLIDE_CLONES
#endif
// Helpers and lambdas of a cloned kernel must be inlined into it to get its instruction set.
#define JSLIDE_INLINE __attribute__((always_inline)) inline

#endif  // JSLIDE_FFI_ISA_H_
