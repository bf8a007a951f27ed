// The CUDA ops' entry points. registration.cpp beside them registers them for the CUDA dispatch key: compiled by the
// host compiler, so that nvcc, which parses every header once per target architecture, never parses torch/library.h.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/core/SymInt.h>
#include <c10/util/Optional.h>

#include <tuple>

namespace sdtp {

at::Tensor saliency_score_cuda(const at::Tensor& hidden, const at::Tensor& norm_weight, const at::Tensor& w1,
                               const at::Tensor& b1, const at::Tensor& w2, const at::Tensor& b2, double eps);

std::tuple<at::Tensor, at::Tensor> select_tokens_cuda(const at::Tensor& scores, const at::Tensor& keep,
                                                       const c10::optional<at::Tensor>& valid, int64_t num_sink,
                                                       const c10::optional<at::Tensor>& num_local,
                                                       c10::optional<int64_t> width, bool check);

at::Tensor compact_cuda(const at::Tensor& x, const at::Tensor& index, int64_t dim, bool check);

std::tuple<at::Tensor, at::Tensor, c10::SymInt> compact_varlen_cuda(const at::Tensor& x, const at::Tensor& index);

}  // namespace sdtp
