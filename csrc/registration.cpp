// Op schemas of the `sdtp` library (defined once here; CPU and CUDA kernels register implementations
// in csrc/cpu and csrc/cuda) and, when built as a Python extension, the build-info module.
#include <torch/library.h>

TORCH_LIBRARY(sdtp, m) {
  m.def(
      "saliency_score(Tensor hidden, Tensor norm_weight, Tensor w1, Tensor b1, Tensor w2, Tensor b2, "
      "float eps=1e-06) -> Tensor");
  m.def(
      "select_tokens(Tensor scores, Tensor keep, Tensor? valid=None, int num_sink=4, Tensor? num_local=None, "
      "int? width=None, *, bool check=True) -> (Tensor, Tensor)");
  m.def("compact(Tensor x, Tensor index, int dim=1, *, bool check=True) -> Tensor");
  m.def("compact_varlen(Tensor x, Tensor index) -> (Tensor, Tensor, SymInt)");
}

#ifdef TORCH_EXTENSION_NAME
#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>
#include <pybind11/pybind11.h>

#include <string>

#ifdef SDTP_WITH_CUDA
#include "cuda/score_paths.h"
#endif

#ifndef SDTP_CUDA_ARCHS
#define SDTP_CUDA_ARCHS ""
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "sdtp_kernels native ops (registered as torch.ops.sdtp.*)";
#ifdef SDTP_WITH_CUDA
  m.attr("cuda_compiled") = true;
  // The saliency_score path CUDA takes for hidden states of a dtype under the current settings (no device needed).
  m.def("cuda_score_path", [](const std::string& dtype) {
    const at::ScalarType type = dtype == "float32"    ? at::kFloat
                                : dtype == "float16"  ? at::kHalf
                                : dtype == "bfloat16" ? at::kBFloat16
                                                      : at::ScalarType::Undefined;
    TORCH_CHECK_VALUE(type != at::ScalarType::Undefined,
                      "cuda_score_path: dtype must be float32, float16 or bfloat16, got ", dtype);
    return std::string(sdtp::choose_score_path(type) == sdtp::ScorePath::kFused ? "fused" : "gemm");
  });
#else
  m.attr("cuda_compiled") = false;
#endif
  m.attr("cuda_archs") = SDTP_CUDA_ARCHS;
}
#endif
