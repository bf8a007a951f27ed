// How many tokens a row keeps and which of its valid ranks are protected (docs/ARCHITECTURE.md §3.2).
// Shared by the CPU and CUDA kernels so both answer the same way.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define SDTP_HOST_DEVICE __host__ __device__
#else
#define SDTP_HOST_DEVICE
#endif

namespace sdtp {

struct RowPlan {
  int64_t sink_end;     // valid ranks [0, sink_end) are protected sinks
  int64_t local_begin;  // valid ranks [local_begin, L) are protected locals
  int64_t protected_count;
  int64_t kept;         // c: tokens kept, protected ones included
  // ranks in [sink_end, local_begin) compete by score; this many of them are kept
  SDTP_HOST_DEVICE int64_t ranked_kept() const { return kept - protected_count; }
};

SDTP_HOST_DEVICE inline RowPlan plan_row(int64_t L, int64_t keep, int64_t num_sink, int64_t num_local) {
  RowPlan p;
  p.sink_end = num_sink < L ? num_sink : L;
  int64_t local = num_local < L ? num_local : L;
  p.local_begin = L - local;
  if (p.local_begin < p.sink_end) p.local_begin = p.sink_end;
  p.protected_count = p.sink_end + (L - p.local_begin);
  int64_t want = keep < L ? keep : L;
  p.kept = want > p.protected_count ? want : p.protected_count;
  return p;
}

// Order-preserving 32-bit key of a score: larger score -> larger key, -0.0 == +0.0, NaN below everything.
// Integer-only on purpose: under nvcc --use_fast_math (-ftz=true) a float compare flushes subnormals to zero,
// which would fold subnormal scores into +0.0 on the GPU but not on the CPU.
SDTP_HOST_DEVICE inline uint32_t score_key(float s) {
  uint32_t bits;
#if defined(__CUDA_ARCH__)
  bits = __float_as_uint(s);
#else
  __builtin_memcpy(&bits, &s, sizeof(bits));
#endif
  const uint32_t mag = bits & 0x7FFFFFFFu;
  if (mag > 0x7F800000u) return 0u;  // NaN
  if (mag == 0u) bits = 0u;          // fold -0.0 into +0.0
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

}  // namespace sdtp
