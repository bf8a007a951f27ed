// The ops under autograd (the Autograd dispatch key, docs/ARCHITECTURE.md §3.5), for every device:
//   compact, compact_varlen  gathers, differentiable in x: the backward adds each output row's gradient into the
//                            row of x it came from (a pruned forward run with gradients on keeps its graph);
//   saliency_score           no backward: an input that requires grad is refused by name, where the kernels would
//                            otherwise fail inside (CPU) or return scores cut from the graph (CUDA).
// select_tokens returns integers, which autograd leaves alone. Calls that record nothing go straight to the kernels.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <vector>

namespace sdtp {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

bool records(const at::Tensor& t) { return at::GradMode::is_enabled() && t.requires_grad(); }

// The op's kernels, below autograd; each caller keeps its own handle.
template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

at::Tensor compact_kernel(const at::Tensor& x, const at::Tensor& index, int64_t dim, bool check) {
  static const auto op = find_op<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, bool)>("sdtp::compact");
  const at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(x, index, dim, check);
}

std::tuple<at::Tensor, at::Tensor, c10::SymInt> compact_varlen_kernel(const at::Tensor& x, const at::Tensor& index) {
  static const auto op = find_op<std::tuple<at::Tensor, at::Tensor, c10::SymInt>(const at::Tensor&, const at::Tensor&)>(
      "sdtp::compact_varlen");
  const at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(x, index);
}

class CompactFunction : public torch::autograd::Function<CompactFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& index, int64_t dim,
                            bool check) {
    at::Tensor out = compact_kernel(x, index, dim, check);  // checks dim
    ctx->save_for_backward({index});
    ctx->saved_data["dim"] = dim < 0 ? dim + x.dim() : dim;
    ctx->saved_data["sizes"] = x.sizes().vec();
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor index = ctx->get_saved_variables()[0];
    const int64_t d = ctx->saved_data["dim"].toInt();
    const at::Tensor& grad = grads[0];
    // index [B, K] along the gradient's dims 0 and d; -1 entries (zeros in the output) add nothing.
    std::vector<int64_t> shape(grad.dim(), 1);
    shape[0] = index.size(0);
    shape[d] = index.size(1);
    const at::Tensor rows = index.reshape(shape).expand(grad.sizes());
    at::Tensor grad_x = at::zeros(ctx->saved_data["sizes"].toIntVector(), grad.options());
    grad_x.scatter_add_(d, rows.clamp_min(0), grad.masked_fill(rows.lt(0), 0));
    return {grad_x, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

class CompactVarlenFunction : public torch::autograd::Function<CompactVarlenFunction> {
 public:
  // A Function returns tensors only: max_seqlen comes back through `max_seqlen`.
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& index,
                               c10::SymInt* max_seqlen) {
    auto [packed, cu_seqlens, longest] = compact_varlen_kernel(x, index);
    *max_seqlen = longest;
    ctx->save_for_backward({index});
    ctx->saved_data["sizes"] = x.sizes().vec();
    ctx->mark_non_differentiable({cu_seqlens});
    return {packed, cu_seqlens};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor index = ctx->get_saved_variables()[0];
    const std::vector<int64_t> sizes = ctx->saved_data["sizes"].toIntVector();
    const int64_t N = sizes[1];
    // The rows of x, flattened over [B, N], that the packed rows came from, in packing order (row-major).
    const at::Tensor batch = at::arange(index.size(0), index.options()).unsqueeze(1);
    const at::Tensor rows = (batch * N + index).masked_select(index.ge(0));
    at::Tensor grad_x = at::zeros(sizes, grads[0].options());
    grad_x.flatten(0, 1).index_add_(0, rows, grads[0]);
    return {grad_x, at::Tensor(), at::Tensor()};
  }
};

at::Tensor compact_autograd(const at::Tensor& x, const at::Tensor& index, int64_t dim, bool check) {
  if (!records(x)) return compact_kernel(x, index, dim, check);
  return CompactFunction::apply(x, index, dim, check);
}

std::tuple<at::Tensor, at::Tensor, c10::SymInt> compact_varlen_autograd(const at::Tensor& x,
                                                                        const at::Tensor& index) {
  if (!records(x)) return compact_varlen_kernel(x, index);
  c10::SymInt max_seqlen;
  const variable_list out = CompactVarlenFunction::apply(x, index, &max_seqlen);
  return {out[0], out[1], max_seqlen};
}

at::Tensor saliency_score_autograd(const at::Tensor& hidden, const at::Tensor& norm_weight, const at::Tensor& w1,
                                   const at::Tensor& b1, const at::Tensor& w2, const at::Tensor& b2, double eps) {
  const std::pair<const at::Tensor*, const char*> inputs[] = {
      {&hidden, "hidden"}, {&norm_weight, "norm_weight"}, {&w1, "w1"}, {&b1, "b1"}, {&w2, "w2"}, {&b2, "b2"}};
  for (const auto& [t, name] : inputs) {
    TORCH_CHECK(!records(*t), "sdtp.saliency_score: argument '", name, "' requires grad, but the op has no ",
                "gradient: call it under torch.no_grad() (SaliencyPredictor's forward is the differentiable form)");
  }
  using Signature = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                               const at::Tensor&, const at::Tensor&, double);
  static const auto op = find_op<Signature>("sdtp::saliency_score");
  const at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(hidden, norm_weight, w1, b1, w2, b2, eps);
}

}  // namespace

TORCH_LIBRARY_IMPL(sdtp, Autograd, m) {
  m.impl("compact", &compact_autograd);
  m.impl("compact_varlen", &compact_varlen_autograd);
  m.impl("saliency_score", &saliency_score_autograd);
}

}  // namespace sdtp
