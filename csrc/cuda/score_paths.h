// The two CUDA implementations of saliency_score (docs/ARCHITECTURE.md §3.1) and the rule that picks one per call.
//   fused  score.cu: one tensor-core (bf16/fp16) or SIMT (fp32) kernel; nothing [tokens, H] is ever stored.
//   gemm   score_gemm.cu: the library GEMM (cuBLAS, through ATen) of x @ (w1 * g).T in chunks of tokens, fp32 out,
//          then one fused epilogue kernel per chunk (1/rms, + b1, GELU, . w2, + b2).
#pragma once
#include <ATen/ATen.h>
#include <cuda_runtime.h>

namespace sdtp {

enum class ScorePath { kFused, kGemm };

// SDTP_SCORE_PATH = auto (default) | fused | gemm. `auto`:
//  - float32 while cuBLAS may use TF32 (torch.backends.cuda.matmul.allow_tf32): fused, because TF32 does not meet
//    the float32 tolerance;
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
//    The gemm path is up to 1.2x slower than the unfused composition below 64K tokens (it folds g into w1 on every
//    call and writes a float32 intermediate where the composition writes bf16), even with it from 64K on.
ScorePath choose_score_path(at::ScalarType dtype);

// wf[h, d] = w1[h, d] * g[d] for d < D, 0 for D <= d < Dp, in Tout (float, at::Half or at::BFloat16).
template <typename Tout>
void fold_weights(const at::Tensor& w1, const at::Tensor& g, at::Tensor& wf, int64_t D, int64_t Dp,
                  cudaStream_t stream);

// The gemm path: x [T, D] contiguous (T > 0), g/b1/w2 float32 [D]/[H]/[H], b2 float32 [1]; writes out [T] float32.
void score_gemm(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& g, const at::Tensor& b1,
                const at::Tensor& w2, const at::Tensor& b2, float eps, at::Tensor& out, cudaStream_t stream);

}  // namespace sdtp
