// CPU saliency_score (docs/ARCHITECTURE.md §3.1): tokens in blocks, each block normalised in fp32 and multiplied by
// w1 with the RMSNorm weight folded in; bias, GELU and the w2 dot run on the block, so no [tokens, H] tensor is ever
// whole.
// Blocks run one after another and each ATen call inside uses every thread: a parallel loop over blocks would nest
// the GEMM library's own threads inside ours, which collapses under load.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/gelu.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/mv.h>
#include <ATen/ops/rsqrt.h>
#include <torch/library.h>

#include "../validate.h"

namespace sdtp {
namespace {

constexpr int64_t kTokensPerBlock = 1024;

at::Tensor saliency_score_cpu(const at::Tensor& hidden, const at::Tensor& norm_weight, const at::Tensor& w1,
                              const at::Tensor& b1, const at::Tensor& w2, const at::Tensor& b2, double eps) {
  const int64_t D = check_score_inputs(hidden, norm_weight, w1, b1, w2, b2, eps);
  TORCH_CHECK(hidden.device().is_cpu(), "sdtp.saliency_score: argument 'hidden' must be a CPU tensor here");
  auto out_sizes = hidden.sizes().vec();
  out_sizes.pop_back();
  auto out = at::empty(out_sizes, hidden.options().dtype(at::kFloat));
  const auto x = hidden.reshape({-1, D}).contiguous();
  const int64_t T = x.size(0);
  if (T == 0) return out;

  // rmsnorm(x) * g @ w1.T == (x / rms(x)) @ (w1 * g).T: fold g into w1 once.
  const auto w = w1.to(at::kFloat).mul(norm_weight.to(at::kFloat).unsqueeze(0)).t().contiguous();  // [D, H]
  const auto bias1 = b1.to(at::kFloat).contiguous();
  const auto w2f = w2.to(at::kFloat).contiguous();
  const float bias2 = b2.to(at::kFloat).reshape({}).item<float>();
  const auto out_flat = out.view({T});
  for (int64_t t0 = 0; t0 < T; t0 += kTokensPerBlock) {
    const int64_t n = std::min(kTokensPerBlock, T - t0);
    const auto xb = x.narrow(0, t0, n).to(at::kFloat);  // [n, D]
    const auto inv_rms = at::rsqrt(xb.square().mean(1, /*keepdim=*/true).add(eps));
    auto y = at::mm(xb, w);  // [n, H], un-normalised
    y.mul_(inv_rms).add_(bias1);
    at::gelu_(y);  // erf form
    auto scores = out_flat.narrow(0, t0, n);
    at::mv_out(scores, y, w2f).add_(bias2);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(sdtp, CPU, m) { m.impl("saliency_score", &saliency_score_cpu); }

}  // namespace sdtp
