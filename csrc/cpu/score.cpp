// CPU saliency_score (DESIGN §3.1): tokens in blocks, each block normalised in fp32 and multiplied by w1 with the
// RMSNorm weight folded in; bias, GELU and the w2 dot run on the block, so no [tokens, H] tensor is ever whole.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>

#include "../validate.h"

namespace sdtp {
namespace {

constexpr int64_t kTokensPerBlock = 128;

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
  const auto w = (w1.to(at::kFloat) * norm_weight.to(at::kFloat).unsqueeze(0)).t().contiguous();  // [D, H]
  const auto bias1 = b1.to(at::kFloat).contiguous();
  const auto w2f = w2.to(at::kFloat).contiguous();
  const float bias2 = b2.to(at::kFloat).reshape({}).item<float>();
  float* dst = out.data_ptr<float>();
  const int64_t blocks = (T + kTokensPerBlock - 1) / kTokensPerBlock;
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t t0 = blk * kTokensPerBlock, n = std::min(kTokensPerBlock, T - t0);
      const auto xb = x.narrow(0, t0, n).to(at::kFloat);  // [n, D]
      const auto inv_rms = at::rsqrt(xb.square().mean(1, /*keepdim=*/true) + eps);
      auto y = at::mm(xb, w);  // [n, H], un-normalised
      y.mul_(inv_rms).add_(bias1);
      at::gelu_(y);  // erf form
      const auto s = at::mv(y, w2f);
      const float* sp = s.data_ptr<float>();
      for (int64_t i = 0; i < n; ++i) dst[t0 + i] = sp[i] + bias2;
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(sdtp, CPU, m) { m.impl("saliency_score", &saliency_score_cpu); }

}  // namespace sdtp
