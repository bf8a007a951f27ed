// The ops under autograd (the Autograd dispatch key, docs/ARCHITECTURE.md §3.5), for every device:
//   compact, compact_varlen  gathers, differentiable in x: the backward adds each output row's gradient into the
//                            row of x it came from (a pruned forward run with gradients on keeps its graph);
//   saliency_score           no backward: an input that requires grad is refused by name, where the kernels would
//                            otherwise fail inside (CPU) or return scores cut from the graph (CUDA).
// select_tokens returns integers, which autograd leaves alone. Calls that record nothing go straight to the kernels.
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
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
    // Symbolic sizes here and below: under torch.compile concrete ones would specialise every dim (a graph per shape).
    ctx->saved_data["sizes"] = x.sym_sizes();
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor index = ctx->get_saved_variables()[0];
    const int64_t d = ctx->saved_data["dim"].toInt();
    const std::vector<c10::SymInt> sizes = ctx->saved_data["sizes"].toSymIntVector();
    // x as rows [B * outer * N, inner...], the gradient as [B * outer * K, inner...]: output row (b, o, j) adds into
    // row (b * outer + o) * N + index[b, j]. -1 entries go to one scratch row past the end, which is dropped: no
    // gradient-sized temporaries (a mask, an expanded index, a masked copy), only grad_x and index-sized row ids.
    c10::SymInt outer = 1;
    for (int64_t i = 1; i < d; ++i) outer *= sizes[i];
    const c10::SymInt B = sizes[0], N = sizes[d], rows = B * outer * N;
    const at::Tensor starts = at::arange(c10::Scalar(B * outer), index.options()).mul_(c10::Scalar(N));
    const at::Tensor dest = starts.view_symint({B, outer, 1}).add(index.unsqueeze(1))
                                .masked_fill_(index.lt(0).unsqueeze(1), c10::Scalar(rows));
    std::vector<c10::SymInt> padded(sizes.begin() + d, sizes.end());
    padded[0] = rows + 1;
    at::Tensor grad_x = at::zeros_symint(padded, grads[0].options());
    grad_x.index_add_(0, dest.flatten(), grads[0].flatten(0, d));
    return {grad_x.narrow_symint(0, 0, rows).view_symint(sizes), at::Tensor(), at::Tensor(), at::Tensor()};
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
    ctx->saved_data["sizes"] = x.sym_sizes();  // symbolic, as in CompactFunction
    ctx->mark_non_differentiable({cu_seqlens});
    return {packed, cu_seqlens};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor index = ctx->get_saved_variables()[0];
    const std::vector<c10::SymInt> sizes = ctx->saved_data["sizes"].toSymIntVector();
    const c10::SymInt total = grads[0].sym_size(0);
    // The rows of x, flattened over [B, N], that the packed rows came from: a kept entry's packed row is the number
    // of kept entries before it (row-major, the packing order); the others write to a scratch slot past the end.
    // Not masked_select, whose size is read back to the host (a sync on CUDA, a data-dependent size when traced).
    const at::Tensor kept = index.ge(0).flatten();
    const at::Tensor slot = kept.cumsum(0).sub_(1).masked_fill_(kept.logical_not(), c10::Scalar(total));
    const at::Tensor starts = at::arange(c10::Scalar(sizes[0]), index.options()).mul_(c10::Scalar(sizes[1]));
    const at::Tensor rows = at::empty_symint({total + 1}, index.options())
                                .scatter_(0, slot, starts.unsqueeze(1).add(index).flatten())
                                .narrow_symint(0, 0, total);
    at::Tensor grad_x = at::zeros_symint(sizes, grads[0].options());
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
