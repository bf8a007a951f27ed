// saliency_score under torch.autocast (docs/ARCHITECTURE.md §3.5): the op computes in float32 whatever the dtype of
// its inputs, so autocast is switched off for the call. Left on, it reached the matmuls inside the kernels: the CPU
// kernel's GEMM came back in bfloat16 and its float32 epilogue refused it. The other ops gather and rank; autocast
// casts nothing they call.
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

namespace sdtp {
namespace {

at::Tensor saliency_score_without_autocast(const at::Tensor& hidden, const at::Tensor& norm_weight,
                                           const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
                                           const at::Tensor& b2, double eps) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("sdtp::saliency_score", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                               const at::Tensor&, const at::Tensor&, const at::Tensor&, double)>();
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  return op.call(hidden, norm_weight, w1, b1, w2, b2, eps);
}

}  // namespace

TORCH_LIBRARY_IMPL(sdtp, AutocastCPU, m) { m.impl("saliency_score", saliency_score_without_autocast); }
TORCH_LIBRARY_IMPL(sdtp, AutocastCUDA, m) { m.impl("saliency_score", saliency_score_without_autocast); }

}  // namespace sdtp
