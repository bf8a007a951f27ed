// CPU select_tokens (docs/ARCHITECTURE.md §3.2): per row, a partial selection (nth_element) of the pivot over the
// unprotected valid tokens, then one ascending scan that writes the kept positions already sorted and right-aligned.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../host_common.h"
#include "../select_plan.h"
#include "../validate.h"

namespace sdtp {
namespace {

// Valid positions of one row, ascending.
void valid_positions(const bool* mask, int64_t N, std::vector<int64_t>& out) {
  out.clear();
  for (int64_t i = 0; i < N; ++i)
    if (mask == nullptr || mask[i]) out.push_back(i);
}

// Unique ranking key: score key in the high half, inverted position in the low half, so ties go to the lowest
// position and the order is total.
inline uint64_t rank_key(float score, int64_t pos) {
  return (uint64_t(score_key(score)) << 32) | (0xFFFFFFFFu - uint32_t(pos));
}

template <typename ScoreT>
void select_rows(const at::Tensor& scores, const bool* mask, const std::vector<RowPlan>& plans, int64_t K,
                 at::Tensor& index) {
  const int64_t N = scores.size(1);
  const ScoreT* s = scores.data_ptr<ScoreT>();
  int64_t* out = index.data_ptr<int64_t>();
  at::parallel_for(0, scores.size(0), 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> pos;
    std::vector<uint64_t> keys;
    for (int64_t b = begin; b < end; ++b) {
      const ScoreT* row = s + b * N;
      valid_positions(mask ? mask + b * N : nullptr, N, pos);
      const RowPlan& p = plans[b];
      const int64_t m = p.ranked_kept();
      uint64_t pivot = ~uint64_t{0};  // keys >= pivot are kept; none when m == 0
      if (m > 0) {
        keys.clear();
        for (int64_t r = p.sink_end; r < p.local_begin; ++r)
          keys.push_back(rank_key(static_cast<float>(row[pos[r]]), pos[r]));
        std::nth_element(keys.begin(), keys.begin() + (m - 1), keys.end(), std::greater<uint64_t>());
        pivot = keys[m - 1];
      }
      int64_t* dst = out + b * K;
      std::fill(dst, dst + (K - p.kept), int64_t{-1});
      dst += K - p.kept;
      const int64_t L = static_cast<int64_t>(pos.size());
      for (int64_t r = 0; r < L; ++r) {
        const bool keep_it = r < p.sink_end || r >= p.local_begin ||
                             (m > 0 && rank_key(static_cast<float>(row[pos[r]]), pos[r]) >= pivot);
        if (keep_it) *dst++ = pos[r];
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> select_tokens_cpu(const at::Tensor& scores_in, const at::Tensor& keep_in,
                                                      const c10::optional<at::Tensor>& valid_in, int64_t num_sink,
                                                      const c10::optional<at::Tensor>& num_local_in,
                                                      c10::optional<int64_t> width, bool check) {
  // `check` only spares a device-to-host read (docs/ARCHITECTURE.md §3.4); here every value is on the host and
  // always checked.
  check_select_inputs(scores_in, keep_in, valid_in, num_sink, num_local_in, width, check);
  TORCH_CHECK(scores_in.device().is_cpu(), "sdtp.select_tokens: argument 'scores' must be a CPU tensor here");
  const int64_t B = scores_in.size(0), N = scores_in.size(1);
  const auto scores = scores_in.contiguous();
  const auto keep = per_row(keep_in, B, at::kCPU);
  const auto num_local =
      num_local_in.has_value() ? per_row(*num_local_in, B, at::kCPU) : at::zeros({B}, at::kLong);
  at::Tensor valid;
  if (valid_in.has_value()) valid = valid_in->to(at::kBool).contiguous();
  const bool* mask = valid.defined() ? valid.data_ptr<bool>() : nullptr;

  // Row plans first: they fix the output width K.
  std::vector<RowPlan> plans(B);
  auto counts = at::empty({B}, at::kLong);
  int64_t K = 0;
  for (int64_t b = 0; b < B; ++b) {
    int64_t L = N;
    if (mask) L = std::count(mask + b * N, mask + (b + 1) * N, true);
    plans[b] = plan_row(L, keep.data_ptr<int64_t>()[b], num_sink, num_local.data_ptr<int64_t>()[b]);
    counts.data_ptr<int64_t>()[b] = plans[b].kept;
    K = std::max(K, plans[b].kept);
  }
  K = check_width(width, K);
  auto index = at::empty({B, K}, at::kLong);
  SDTP_DISPATCH_FLOATING(scores.scalar_type(), "sdtp_select_tokens_cpu",
                         [&] { select_rows<scalar_t>(scores, mask, plans, K, index); });
  return {index, counts};
}

}  // namespace

TORCH_LIBRARY_IMPL(sdtp, CPU, m) { m.impl("select_tokens", &select_tokens_cpu); }

}  // namespace sdtp
