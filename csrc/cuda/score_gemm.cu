// saliency_score on CUDA, gemm path (csrc/cuda/score_paths.h, docs/ARCHITECTURE.md §3.1):
//   pre = x @ (w1 * g).T      ATen's mm with a float32 result (cuBLAS, fp32 accumulate), a chunk of tokens at a time
//   s   = gelu_erf(pre / rms(x) + b1) . w2 + b2      one warp per token, in a fixed order (deterministic)
// Chunks bound the [tokens, H] intermediate (kChunkBytes) so that it stays in L2 between the GEMM and the epilogue.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <c10/cuda/CUDAException.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>

#include "../host_common.h"
#include "common.cuh"
#include "score_paths.h"

namespace sdtp {
namespace {

using cuda::ceil_div;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / cuda::kWarpSize;
constexpr int64_t kChunkBytes = int64_t{32} << 20;  // fp32 intermediate per chunk: 32 MiB, within an H100/H200 L2

// kVec: every row read in 16-byte loads (x: 16 / sizeof(T) elements, pre / b1 / w2: 4 floats), which the host
// chooses when D and H divide evenly and every base is 16-byte aligned; else one element per load. Both read each
// row once, in a fixed order per lane (deterministic).
template <typename T, bool kVec>
__global__ void __launch_bounds__(kThreads)
    score_epilogue_kernel(const T* __restrict__ x, const float* __restrict__ pre, const float* __restrict__ b1,
                          const float* __restrict__ w2, const float* __restrict__ b2, float* __restrict__ out,
                          int64_t T_, int64_t D, int64_t H, float inv_d, float eps) {
  constexpr int kX = 16 / sizeof(T);  // elements of x per 16-byte load
  const int lane = threadIdx.x % cuda::kWarpSize;
  const int64_t first = int64_t(blockIdx.x) * kWarps + threadIdx.x / cuda::kWarpSize;
  const int64_t stride = int64_t(gridDim.x) * kWarps;
  for (int64_t t = first; t < T_; t += stride) {  // warp-uniform
    const T* xr = x + t * D;
    const float* pr = pre + t * H;
    float ss = 0.0f, acc = 0.0f;
    if constexpr (kVec) {
      // kXBatch loads of x per lane in flight before any is summed, as for pre below. 2: registers on sm_90 (nvcc
      // 13.0) go from 55 to 64, still 4 CTAs (32 warps) per SM; 4 takes 70 and leaves 3. Summed in a plain loop's
      // order.
      constexpr int kXBatch = 2;
      const uint4* xv = reinterpret_cast<const uint4*>(xr);
      const int64_t nv = D / kX;
      for (int64_t v0 = lane; v0 < nv; v0 += kXBatch * cuda::kWarpSize) {
        uint4 u[kXBatch];
#pragma unroll
        for (int b = 0; b < kXBatch; ++b) {
          const int64_t v = v0 + b * cuda::kWarpSize;
          if (v < nv) u[b] = xv[v];
        }
#pragma unroll
        for (int b = 0; b < kXBatch; ++b) {
          if (v0 + b * cuda::kWarpSize >= nv) continue;
          const T* e = reinterpret_cast<const T*>(&u[b]);
#pragma unroll
          for (int k = 0; k < kX; ++k) {
            const float f = static_cast<float>(e[k]);
            ss += f * f;
          }
        }
      }
    } else {
      for (int64_t d = lane; d < D; d += cuda::kWarpSize) {
        const float v = static_cast<float>(xr[d]);
        ss += v * v;
      }
    }
    const float inv_rms = rsqrtf(cuda::warp_sum(ss) * inv_d + eps);
    if constexpr (kVec) {
      const float4* pv = reinterpret_cast<const float4*>(pr);
      const float4* bv = reinterpret_cast<const float4*>(b1);
      const float4* wv = reinterpret_cast<const float4*>(w2);
      // kBatch rows of pre per lane loaded before any is used: with a warp per token the epilogue is bound by load
      // latency. 2, not 4: registers on sm_90 go from 40 (no batch) to 56, where 4 takes 80 and halves the warps an SM
      // holds. The sum runs in the same order as a plain loop over j.
      constexpr int kBatch = 2;
      const int64_t n4 = H / 4;
      for (int64_t j0 = lane; j0 < n4; j0 += kBatch * cuda::kWarpSize) {
        float4 p[kBatch], b[kBatch], w[kBatch];
#pragma unroll
        for (int u = 0; u < kBatch; ++u) {
          const int64_t j = j0 + u * cuda::kWarpSize;
          if (j < n4) {
            p[u] = pv[j];
            b[u] = bv[j];
            w[u] = wv[j];
          }
        }
#pragma unroll
        for (int u = 0; u < kBatch; ++u) {
          if (j0 + u * cuda::kWarpSize < n4)
            acc += w[u].x * cuda::gelu_erf(p[u].x * inv_rms + b[u].x) +
                   w[u].y * cuda::gelu_erf(p[u].y * inv_rms + b[u].y) +
                   w[u].z * cuda::gelu_erf(p[u].z * inv_rms + b[u].z) +
                   w[u].w * cuda::gelu_erf(p[u].w * inv_rms + b[u].w);
        }
      }
    } else {
      for (int64_t j = lane; j < H; j += cuda::kWarpSize) acc += w2[j] * cuda::gelu_erf(pr[j] * inv_rms + b1[j]);
    }
    acc = cuda::warp_sum(acc);
    if (lane == 0) out[t] = acc + b2[0];
  }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

void score_gemm(const at::Tensor& x, const ScoreWeights& weights, float eps, at::Tensor& out, cudaStream_t stream) {
  const int64_t T = x.size(0), D = x.size(1), H = weights.H;
  const auto wt = weights.wf.t();  // [D, H] view: cuBLAS reads it transposed, no copy
  const int64_t chunk = std::min(T, std::max<int64_t>(128, kChunkBytes / (H * int64_t(sizeof(float))) / 128 * 128));
  auto pre = at::empty({chunk, H}, x.options().dtype(at::kFloat));
  const float inv_d = static_cast<float>(1.0 / static_cast<double>(D));
  const int sms = cuda::device_sm_count();
  for (int64_t t0 = 0; t0 < T; t0 += chunk) {
    const int64_t n = std::min(chunk, T - t0);
    const auto xc = x.narrow(0, t0, n);
    auto pc = pre.narrow(0, 0, n);
    if (x.scalar_type() == at::kFloat)
      at::mm_out(pc, xc, wt);
    else
      at::mm_out(pc, xc, wt, at::kFloat);  // bf16/fp16 in, fp32 accumulate and out
    const int64_t blocks = std::min<int64_t>(ceil_div<int64_t>(n, kWarps), int64_t{8} * sms);
    SDTP_DISPATCH_FLOATING(x.scalar_type(), "sdtp_score_epilogue", [&] {
      const bool vec = D % (16 / int64_t(sizeof(scalar_t))) == 0 && H % 4 == 0 && aligned16(xc.data_ptr()) &&
                       aligned16(pc.data_ptr()) && aligned16(weights.b1()) && aligned16(weights.w2());
      auto kernel = vec ? score_epilogue_kernel<scalar_t, true> : score_epilogue_kernel<scalar_t, false>;
      kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
          xc.data_ptr<scalar_t>(), pc.data_ptr<float>(), weights.b1(), weights.w2(), weights.b2(),
          out.data_ptr<float>() + t0, n, D, H, inv_d, eps);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

}  // namespace sdtp
