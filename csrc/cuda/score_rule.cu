// The rule that picks a saliency_score path on CUDA (csrc/cuda/score_paths.h, docs/ARCHITECTURE.md §3.1): host
// code only, reading SDTP_SCORE_PATH and torch's matmul settings, so that it also answers without a device
// (sdtp_kernels.ops.cuda_score_path).
#include <ATen/Context.h>
#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>

#include "score_paths.h"

namespace sdtp {
namespace {

// Whether cuBLAS may run float32 matmuls in TF32: the precision torch resolves for CUDA matmuls from
// torch.backends.cuda.matmul.allow_tf32, torch.set_float32_matmul_precision and the fp32_precision settings, in
// whatever mix they were set (the older queries refuse to answer once the newer settings are used).
bool cublas_may_use_tf32() {
  return at::globalContext().float32Precision(at::Float32Backend::CUDA, at::Float32Op::MATMUL) ==
         at::Float32Precision::TF32;
}

}  // namespace

ScorePath choose_score_path(at::ScalarType dtype) {
  // ATen's mm has no float32 result for float16 inputs while float16 accumulation is allowed
  // (torch.backends.cuda.matmul.allow_fp16_accumulation), so the gemm path cannot run them then.
  const bool gemm_refused = dtype == at::kHalf && at::globalContext().allowFP16AccumulationCuBLAS();
  const char* env = std::getenv("SDTP_SCORE_PATH");
  if (env != nullptr && *env != '\0' && std::strcmp(env, "auto") != 0) {
    if (std::strcmp(env, "fused") == 0) return ScorePath::kFused;
    TORCH_CHECK_VALUE(std::strcmp(env, "gemm") == 0, "sdtp.saliency_score: environment variable SDTP_SCORE_PATH ",
                      "must be auto, fused or gemm, got '", env, "'");
    TORCH_CHECK_VALUE(!gemm_refused, "sdtp.saliency_score: SDTP_SCORE_PATH=gemm cannot score float16 while "
                      "torch.backends.cuda.matmul.allow_fp16_accumulation is set (ATen's mm has no float32 result "
                      "then); use auto or fused");
    return ScorePath::kGemm;
  }
  if (gemm_refused || (dtype == at::kFloat && cublas_may_use_tf32())) return ScorePath::kFused;
  return ScorePath::kGemm;
}

}  // namespace sdtp
