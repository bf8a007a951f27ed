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
//  - everything else: gemm. It runs the same GEMM as the unfused PyTorch composition with one epilogue pass in place
//    of its six element-wise passes, so it is never the slower of the two; the fused kernel is picked only where
//    bench/cuda_micro.py (section `score`, both paths) measures it faster, and no such figure exists yet.
ScorePath choose_score_path(at::ScalarType dtype);

// wf[h, d] = w1[h, d] * g[d] for d < D, 0 for D <= d < Dp, in Tout (float, at::Half or at::BFloat16).
template <typename Tout>
void fold_weights(const at::Tensor& w1, const at::Tensor& g, at::Tensor& wf, int64_t D, int64_t Dp,
                  cudaStream_t stream);

// The gemm path: x [T, D] contiguous (T > 0), g/b1/w2 float32 [D]/[H]/[H], b2 float32 [1]; writes out [T] float32.
void score_gemm(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& g, const at::Tensor& b1,
                const at::Tensor& w2, const at::Tensor& b2, float eps, at::Tensor& out, cudaStream_t stream);

}  // namespace sdtp
