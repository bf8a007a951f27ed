// The two CUDA implementations of saliency_score (docs/ARCHITECTURE.md §3.1) and the rule that picks one per call.
//   fused  score.cu: one tensor-core (bf16/fp16) or SIMT (fp32) kernel; nothing [tokens, H] is ever stored.
//   gemm   score_gemm.cu: the library GEMM (cuBLAS, through ATen) of x @ (w1 * g).T in chunks of tokens, fp32 out,
//          then one fused epilogue kernel per chunk (1/rms, + b1, GELU, . w2, + b2).
// Both read the weights that score_weights.cu prepares in one launch per call.
#pragma once
#include <ATen/core/Tensor.h>
#include <cuda_runtime.h>

namespace sdtp {

enum class ScorePath { kFused, kGemm };

// SDTP_SCORE_PATH = auto (default) | fused | gemm; the rule is in score_rule.cu. `auto`:
//  - float32 while cuBLAS may use TF32 (allow_tf32, set_float32_matmul_precision, fp32_precision): fused, because
//    TF32 does not meet the float32 tolerance;
//  - float16 while torch.backends.cuda.matmul.allow_fp16_accumulation is set: fused (ATen's mm then has no float32
//    result, which the gemm path needs);
//  - everything else: gemm, the faster path at every shape measured. bench/cuda_micro.py on one H200 (torch 2.11,
//    D = 4096, H = 1024, median ms; bench/results/cuda-micro-h200.json):
//        tokens  dtype  fused   gemm    unfused PyTorch
//           512  bf16   0.178   0.160   0.139
//          4096  bf16   0.247   0.182   0.166
//         16384  bf16   0.653   0.391   0.322
//         32768  bf16   1.199   0.648   0.602
//         65536  bf16   2.320   1.195   1.173
//        131072  bf16   5.233   2.280   2.287
//         16384  fp32   5.287   3.004   2.979
//    The gemm path was up to 1.21x slower than the unfused composition below 64K tokens, even with it from 64K on.
//    A profile at 4K tokens: cuBLAS 46 us, epilogue 28 us, fold 18 us, four dtype conversions of the small weights,
//    160 us in all, so launches and latency-bound kernels, not the GEMM. Since then (not yet measured on a GPU): one
//    launch prepares all the weights (score_weights.cu, was five), its loads and the epilogue's are batched.
ScorePath choose_score_path(at::ScalarType dtype);

// The weights both paths read, made once per call in one launch (score_weights.cu): wf [H, Dp] = w1 * g in the
// GEMM's input dtype, zero past column D; vec float32 [2H + 1] = b1 | w2 | b2.
struct ScoreWeights {
  at::Tensor wf, vec;
  int64_t H = 0;
  const float* b1() const { return vec.data_ptr<float>(); }
  const float* w2() const { return vec.data_ptr<float>() + H; }
  const float* b2() const { return vec.data_ptr<float>() + 2 * H; }
};
ScoreWeights prepare_score_weights(const at::Tensor& w1, const at::Tensor& g, const at::Tensor& b1,
                                   const at::Tensor& w2, const at::Tensor& b2, int64_t Dp, at::ScalarType gemm_dtype,
                                   cudaStream_t stream);

// The gemm path: x [T, D] contiguous (T > 0), weights prepared with Dp = D; writes out [T] float32.
void score_gemm(const at::Tensor& x, const ScoreWeights& weights, float eps, at::Tensor& out, cudaStream_t stream);

}  // namespace sdtp
