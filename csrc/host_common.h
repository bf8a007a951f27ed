// Host-side code that the CPU (csrc/cpu) and CUDA (csrc/cuda) ops both run: the dtype dispatch, output shapes,
// the `width` check of select_tokens, the index range check of compact and the cu_seqlens of compact_varlen. Kept
// in one place so that both backends answer with the same shapes, values and error messages.
#pragma once
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/aminmax.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Optional.h>

#include <cstdint>
#include <limits>
#include <vector>

#include "validate.h"

// The dtypes the ops accept for activations and scores: float32, float16, bfloat16 (no float64 instantiations).
#define SDTP_DISPATCH_FLOATING(TYPE, NAME, ...)                 \
  AT_DISPATCH_SWITCH(TYPE, NAME,                               \
                     AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__) \
                     AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__)  \
                     AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))

namespace sdtp {

// Product of x.size(i) for i in [from, to): element count of that range of dims (1 when it is empty).
inline int64_t size_prod(const at::Tensor& x, int64_t from, int64_t to) {
  int64_t p = 1;
  for (int64_t i = from; i < to; ++i) p *= x.size(i);
  return p;
}

// select_tokens: the output width. `kept_max` is the largest kept count of any row; a given `width` must hold it.
inline int64_t check_width(c10::optional<int64_t> width, int64_t kept_max) {
  if (!width.has_value()) return kept_max;
  TORCH_CHECK_VALUE(*width >= kept_max, "sdtp.select_tokens: argument 'width' = ", *width,
                    " is smaller than the largest kept count ", kept_max);
  return *width;
}

// compact: x's sizes with the sequence dim d replaced by K.
inline std::vector<int64_t> compact_sizes(const at::Tensor& x, int64_t d, int64_t K) {
  auto sizes = x.sizes().vec();
  sizes[d] = K;
  return sizes;
}

// compact_varlen: x's sizes [B, N, ...] packed to [T, ...].
inline std::vector<int64_t> compact_varlen_sizes(const at::Tensor& x, int64_t T) {
  auto sizes = x.sizes().vec();
  sizes.erase(sizes.begin());
  sizes[0] = T;
  return sizes;
}

// compact: checks that index values lie in [-1, N), with one read of its extremes (a device-to-host copy on CUDA).
inline void check_index_range(const at::Tensor& index, int64_t N, const char* op) {
  if (index.numel() == 0) return;
  const auto [lo, hi] = at::aminmax(index);
  const auto host = at::stack({lo, hi}).cpu();
  check_index_bounds(host.data_ptr<int64_t>()[0], host.data_ptr<int64_t>()[1], N, op);
}

// compact_varlen: rows keep their non-negative index entries, in order; cu_seqlens are their running totals.
struct SeqLens {
  at::Tensor cu_seqlens;   // int32 [B + 1] on index's device, cu_seqlens[0] = 0
  at::Tensor kept;         // bool [B, K] = index >= 0 (undefined when B == 0)
  at::Tensor counts;       // int64 [B] kept entries per row (undefined when B == 0)
  at::Tensor ends;         // int64 [B] = cu_seqlens[1:] (undefined when B == 0)
  int64_t total = 0;       // T = cu_seqlens[B]
  int64_t max_seqlen = 0;  // longest row
};

// On either device, with one device-to-host read (none when B == 0) that also brings back index's extremes, so a
// value outside [-1, N) is an error before anything is packed: every row of the result is written.
inline SeqLens seqlens_from_index(const at::Tensor& index, int64_t N, const char* op) {
  const int64_t B = index.size(0);
  SeqLens s;
  s.cu_seqlens = at::zeros({B + 1}, index.options().dtype(at::kInt));
  if (B == 0) return s;
  s.kept = index.ge(0);
  s.counts = s.kept.sum(1);
  s.ends = s.counts.cumsum(0);
  s.cu_seqlens.slice(0, 1).copy_(s.ends);
  std::vector<at::Tensor> stats = {s.ends[B - 1], s.counts.max()};
  if (index.numel() > 0) {
    const auto [lo, hi] = at::aminmax(index);
    stats.insert(stats.end(), {lo, hi});
  }
  const auto host = at::stack(stats).cpu();
  const int64_t* v = host.data_ptr<int64_t>();
  if (index.numel() > 0) check_index_bounds(v[2], v[3], N, op);
  s.total = v[0];
  s.max_seqlen = v[1];
  TORCH_CHECK_VALUE(s.total <= std::numeric_limits<int32_t>::max(), op, ": ", s.total, " kept rows do not fit ",
                    "cu_seqlens, which FlashAttention's varlen layout holds as int32");
  return s;
}

}  // namespace sdtp
