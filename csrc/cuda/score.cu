// CUDA saliency_score (docs/ARCHITECTURE.md §3.1): the op, which picks the fused kernels below or the gemm path
// (score_gemm.cu) per call (score_paths.h). Fused:
//   s = gelu_erf((x / rms(x)) @ (w1 * g).T + b1) @ w2 + b2.
// The RMSNorm weight g is folded into w1 once per call (score_weights.cu, in the input dtype; zero-padded to a
// multiple of 8 columns for the tensor-core kernel). The main kernel multiplies a 128-token x 128-hidden tile of x by
// the folded weights on tensor cores (mma.sync m16n8k16, bf16/fp16 in, fp32 accumulate; cp.async 3-stage pipeline,
// swizzled shared memory, ldmatrix), sums the squares of each token's inputs from the same A fragments, and in the
// epilogue applies 1/rms, b1, GELU (erf) and the w2 dot. Neither the normalised x nor the [tokens, H] intermediate is
// ever stored. Each CTA writes one partial score per token for its H tile ([nHtiles, T] fp32) and a second tiny kernel
// adds them in a fixed order plus b2, so results are deterministic (no atomics); with one H tile the main kernel
// writes the score directly. float32 input runs a SIMT kernel (64 x 64 tiles) with the same epilogue in true fp32
// (TF32 would not meet the float32 tolerance).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "../validate.h"
#include "common.cuh"
#include "ops.h"
#include "score_paths.h"

namespace sdtp {
namespace {

using cuda::ceil_div;

// What both fused kernels read. E: float (SIMT) or the 16-bit patterns of bf16 / fp16 (tensor cores).
template <typename E>
struct FusedArgs {
  const E* x;       // [T, ld]
  const E* w;       // [H, ld] folded weights, zero past D
  const float* b1;  // [H]
  const float* w2;  // [H]
  const float* b2;  // [1]
  float* out;       // [T] (one H tile)
  float* partial;   // [n_htiles, T] (several H tiles)
  int64_t T, H, ld;
  int n_htiles;
  float inv_d, eps;
};

// ---------------------------------------------------------------------------------------------------------------
// out[t] = b2 + sum_j partial[j, t], j ascending.
__global__ void reduce_partials_kernel(const float* __restrict__ partial, const float* __restrict__ b2,
                                       float* __restrict__ out, int64_t T, int n_tiles) {
  const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= T) return;
  float s = 0.0f;
  for (int j = 0; j < n_tiles; ++j) s += partial[int64_t(j) * T + t];
  out[t] = s + b2[0];
}

// ---------------------------------------------------------------------------------------------------------------
// Tensor-core kernel (bf16 / fp16).
namespace mma {

constexpr int kBM = 128;  // tokens per CTA
constexpr int kBN = 128;  // hidden units per CTA
constexpr int kBK = 64;   // reduction slice per stage
constexpr int kStages = 3;
constexpr int kThreads = 128;  // 4 warps: 2 along M x 2 along N, 64 x 64 each
constexpr int kWarpM = 64, kWarpN = 64;
constexpr int kMFrags = kWarpM / 16;  // m16 fragments per warp
constexpr int kNFrags = kWarpN / 8;   // n8 fragments per warp
constexpr int kChunks = kBK / 8;      // 16-byte chunks per tile row
constexpr int kStageElems = (kBM + kBN) * kBK;
constexpr size_t kSmemBytes = size_t(kStages) * kStageElems * 2;
static_assert(kChunks == 8, "the swizzle assumes 8 chunks (128 bytes) per tile row");
static_assert((kBM * kChunks) % kThreads == 0 && kBM == kBN, "load mapping");

// Element offset of 16-byte chunk `ch` of tile row `row`: XOR swizzle over the 8 chunks of a 128-byte row, so
// that ldmatrix (8 rows, one chunk) and the cp.async stores touch 8 distinct bank groups.
__device__ __forceinline__ int swz(int row, int ch) { return row * kBK + ((ch ^ (row & 7)) << 3); }

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte async copy; src_bytes == 0 writes zeros (the source is not read).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(src_bytes)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

template <bool kBF16>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (kBF16) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// Sum of squares of the two 16-bit values packed in r.
template <bool kBF16>
__device__ __forceinline__ float sq2(uint32_t r) {
  float2 v;
  if constexpr (kBF16) {
    __nv_bfloat162 h;
    memcpy(&h, &r, sizeof(h));
    v = __bfloat1622float2(h);
  } else {
    __half2 h;
    memcpy(&h, &r, sizeof(h));
    v = __half22float2(h);
  }
  return v.x * v.x + v.y * v.y;
}

using Args = FusedArgs<uint16_t>;  // x and w as bf16/fp16 bits, ld = D padded to a multiple of 8

// Issues the cp.async copies of reduction slice k0 into one stage (A: tokens, B: hidden units).
__device__ __forceinline__ void load_stage(uint16_t* sA, uint16_t* sB, const Args& a, int64_t m0, int64_t n0,
                                           int64_t k0) {
#pragma unroll
  for (int i = 0; i < (kBM * kChunks) / kThreads; ++i) {
    const int c = threadIdx.x + i * kThreads;
    const int row = c / kChunks, ch = c % kChunks;
    const int64_t k = k0 + ch * 8;
    const bool k_ok = k < a.ld;
    const int64_t gm = m0 + row, gn = n0 + row;
    const bool a_ok = k_ok && gm < a.T, b_ok = k_ok && gn < a.H;
    cp_async16(sA + swz(row, ch), a_ok ? a.x + gm * a.ld + k : a.x, a_ok);
    cp_async16(sB + swz(row, ch), b_ok ? a.w + gn * a.ld + k : a.w, b_ok);
  }
}

template <bool kBF16>
__global__ void __launch_bounds__(kThreads, 2) score_mma_kernel(const Args a) {
  extern __shared__ __align__(128) uint16_t smem[];
  __shared__ float red[2][kBM];  // per-row partial scores of the two N-warps

  // H tiles vary fastest, so the CTAs sharing a token tile run together and its x slice is read from L2.
  const int64_t bid = blockIdx.x;
  const int htile = int(bid % a.n_htiles);
  const int64_t m0 = (bid / a.n_htiles) * kBM;
  const int64_t n0 = int64_t(htile) * kBN;

  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int warp_m = warp / 2, warp_n = warp % 2;
  const int g = lane / 4, t = lane % 4;

  float acc[kMFrags][kNFrags][4];
#pragma unroll
  for (int i = 0; i < kMFrags; ++i)
#pragma unroll
    for (int j = 0; j < kNFrags; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;
  float ss[kMFrags][2];  // sum of squares of rows g and g + 8 of each m fragment (this lane's columns)
#pragma unroll
  for (int i = 0; i < kMFrags; ++i) ss[i][0] = ss[i][1] = 0.0f;

  const int k_tiles = int(ceil_div<int64_t>(a.ld, kBK));
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < k_tiles) {
      uint16_t* sA = smem + s * kStageElems;
      load_stage(sA, sA + kBM * kBK, a, m0, n0, int64_t(s) * kBK);
    }
    cp_async_commit();
  }

  for (int kt = 0; kt < k_tiles; ++kt) {
    cp_async_wait<kStages - 2>();  // slice kt has landed (this thread's copies) ...
    __syncthreads();               // ... and everyone's; the stage refilled below was last read in kt - 1
    {
      const int nk = kt + kStages - 1;
      if (nk < k_tiles) {
        uint16_t* sA = smem + (nk % kStages) * kStageElems;
        load_stage(sA, sA + kBM * kBK, a, m0, n0, int64_t(nk) * kBK);
      }
      cp_async_commit();
    }
    const uint16_t* sA = smem + (kt % kStages) * kStageElems;
    const uint16_t* sB = sA + kBM * kBK;
#pragma unroll
    for (int kk = 0; kk < kBK / 16; ++kk) {
      uint32_t af[kMFrags][4];
      uint32_t bf[kNFrags][2];
#pragma unroll
      for (int i = 0; i < kMFrags; ++i) {
        const int row = warp_m * kWarpM + i * 16 + (lane & 15);
        ldmatrix_x4(af[i], sA + swz(row, kk * 2 + (lane >> 4)));
      }
#pragma unroll
      for (int jj = 0; jj < kNFrags / 2; ++jj) {
        const int row = warp_n * kWarpN + jj * 16 + (lane & 7) + ((lane >> 4) << 3);
        uint32_t r[4];
        ldmatrix_x4(r, sB + swz(row, kk * 2 + ((lane >> 3) & 1)));
        bf[2 * jj][0] = r[0];
        bf[2 * jj][1] = r[1];
        bf[2 * jj + 1][0] = r[2];
        bf[2 * jj + 1][1] = r[3];
      }
#pragma unroll
      for (int i = 0; i < kMFrags; ++i) {
        ss[i][0] += sq2<kBF16>(af[i][0]) + sq2<kBF16>(af[i][2]);
        ss[i][1] += sq2<kBF16>(af[i][1]) + sq2<kBF16>(af[i][3]);
      }
#pragma unroll
      for (int i = 0; i < kMFrags; ++i)
#pragma unroll
        for (int j = 0; j < kNFrags; ++j) mma_16816<kBF16>(acc[i][j], af[i], bf[j][0], bf[j][1]);
    }
  }
  cp_async_wait<0>();

  // Epilogue. Rows: warp_m * 64 + i * 16 + g + 8 * h; columns: n0 + warp_n * 64 + j * 8 + 2 * t + e.
  float inv_rms[kMFrags][2], part[kMFrags][2];
#pragma unroll
  for (int i = 0; i < kMFrags; ++i)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float s = ss[i][h];
      s += __shfl_xor_sync(0xFFFFFFFFu, s, 1);
      s += __shfl_xor_sync(0xFFFFFFFFu, s, 2);
      inv_rms[i][h] = rsqrtf(s * a.inv_d + a.eps);
      part[i][h] = 0.0f;
    }
#pragma unroll
  for (int j = 0; j < kNFrags; ++j)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int64_t col = n0 + warp_n * kWarpN + j * 8 + 2 * t + e;
      if (col < a.H) {
        const float bias = a.b1[col], w = a.w2[col];
#pragma unroll
        for (int i = 0; i < kMFrags; ++i)
#pragma unroll
          for (int h = 0; h < 2; ++h) part[i][h] += cuda::gelu_erf(acc[i][j][2 * h + e] * inv_rms[i][h] + bias) * w;
      }
    }
#pragma unroll
  for (int i = 0; i < kMFrags; ++i)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float p = part[i][h];
      p += __shfl_xor_sync(0xFFFFFFFFu, p, 1);
      p += __shfl_xor_sync(0xFFFFFFFFu, p, 2);
      if (t == 0) red[warp_n][warp_m * kWarpM + i * 16 + g + 8 * h] = p;
    }
  __syncthreads();
  for (int r = threadIdx.x; r < kBM; r += kThreads) {
    const int64_t row = m0 + r;
    if (row >= a.T) continue;
    const float v = red[0][r] + red[1][r];
    if (a.n_htiles == 1)
      a.out[row] = v + a.b2[0];
    else
      a.partial[int64_t(htile) * a.T + row] = v;
  }
}

}  // namespace mma

// ---------------------------------------------------------------------------------------------------------------
// float32 kernel: SIMT fp32 FMAs (64 tokens x 64 hidden units per CTA, 4 x 4 per thread).
namespace simt {

constexpr int kBM = 64, kBN = 64, kBK = 16, kThreads = 256;

using Args = FusedArgs<float>;  // ld = D

__global__ void __launch_bounds__(kThreads) score_simt_kernel(const Args a) {
  __shared__ __align__(16) float xs[kBK][kBM + 4];  // [k][token]
  __shared__ __align__(16) float ws[kBK][kBN + 4];  // [k][hidden unit]
  __shared__ float inv_rms[kBM];
  const int64_t bid = blockIdx.x;
  const int htile = int(bid % a.n_htiles);
  const int64_t m0 = (bid / a.n_htiles) * kBM;
  const int64_t n0 = int64_t(htile) * kBN;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;  // columns tx*4.., rows ty*4..

  float acc[4][4] = {};
  float ss = 0.0f;  // threads < kBM: sum of squares of token m0 + threadIdx.x
  for (int64_t k0 = 0; k0 < a.ld; k0 += kBK) {
#pragma unroll
    for (int i = 0; i < (kBM * kBK) / kThreads; ++i) {
      const int e = threadIdx.x + i * kThreads;
      const int r = e / kBK, kk = e % kBK;
      const int64_t k = k0 + kk;
      const int64_t gm = m0 + r, gn = n0 + r;
      xs[kk][r] = (gm < a.T && k < a.ld) ? a.x[gm * a.ld + k] : 0.0f;
      ws[kk][r] = (gn < a.H && k < a.ld) ? a.w[gn * a.ld + k] : 0.0f;
    }
    __syncthreads();
    if (threadIdx.x < kBM) {
#pragma unroll
      for (int kk = 0; kk < kBK; ++kk) ss = fmaf(xs[kk][threadIdx.x], xs[kk][threadIdx.x], ss);
    }
#pragma unroll
    for (int kk = 0; kk < kBK; ++kk) {
      const float4 av = *reinterpret_cast<const float4*>(&xs[kk][ty * 4]);
      const float4 bv = *reinterpret_cast<const float4*>(&ws[kk][tx * 4]);
      const float am[4] = {av.x, av.y, av.z, av.w}, bn[4] = {bv.x, bv.y, bv.z, bv.w};
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(am[i], bn[j], acc[i][j]);
    }
    __syncthreads();
  }
  if (threadIdx.x < kBM) inv_rms[threadIdx.x] = rsqrtf(ss * a.inv_d + a.eps);
  __syncthreads();
  float part[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const int64_t col = n0 + tx * 4 + j;
    if (col < a.H) {
      const float bias = a.b1[col], w = a.w2[col];
#pragma unroll
      for (int i = 0; i < 4; ++i) part[i] += cuda::gelu_erf(acc[i][j] * inv_rms[ty * 4 + i] + bias) * w;
    }
  }
  // The 16 threads of a row group are 16 consecutive lanes of one warp.
#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int off = 8; off > 0; off >>= 1) part[i] += __shfl_xor_sync(0xFFFFFFFFu, part[i], off);
  }
  if (tx == 0) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t row = m0 + ty * 4 + i;
      if (row >= a.T) continue;
      if (a.n_htiles == 1)
        a.out[row] = part[i] + a.b2[0];
      else
        a.partial[int64_t(htile) * a.T + row] = part[i];
    }
  }
}

}  // namespace simt

}  // namespace

at::Tensor saliency_score_cuda(const at::Tensor& hidden, const at::Tensor& norm_weight, const at::Tensor& w1,
                               const at::Tensor& b1, const at::Tensor& w2, const at::Tensor& b2, double eps) {
  const int64_t D = check_score_inputs(hidden, norm_weight, w1, b1, w2, b2, eps);
  TORCH_CHECK(hidden.is_cuda(), "sdtp.saliency_score: argument 'hidden' must be a CUDA tensor here");
  const c10::cuda::CUDAGuard guard(hidden.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  auto out_sizes = hidden.sizes().vec();
  out_sizes.pop_back();
  auto out = at::empty(out_sizes, hidden.options().dtype(at::kFloat));
  const auto x = hidden.reshape({-1, D}).contiguous();
  const int64_t T = x.size(0);
  if (T == 0) return out;
  const int64_t H = w1.size(0);
  const float inv_d = static_cast<float>(1.0 / static_cast<double>(D));
  const float eps_f = static_cast<float>(eps);
  const auto dtype = x.scalar_type();
  const ScorePath path = choose_score_path(dtype);
  // The tensor-core kernel reads rows in 16-byte chunks: its rows of x and of the folded weights are padded to a
  // multiple of 8 elements.
  const bool mma_path = path == ScorePath::kFused && dtype != at::kFloat;
  const int64_t Dp = mma_path ? ceil_div<int64_t>(D, 8) * 8 : D;
  const ScoreWeights weights = prepare_score_weights(w1, norm_weight, b1, w2, b2, Dp, dtype, stream);
  if (path == ScorePath::kGemm) {
    auto out_flat = out.view({T});
    score_gemm(x, weights, eps_f, out_flat, stream);
    return out;
  }

  // Both fused kernels: a CTA per (token tile, H tile); with several H tiles each CTA leaves partial scores, which
  // reduce_partials_kernel adds in a fixed order.
  at::Tensor partial;
  auto fused_args = [&](auto x_bits, auto w_bits, int64_t ld, int64_t tile_n) {
    FusedArgs<std::remove_const_t<std::remove_pointer_t<decltype(x_bits)>>> a{};
    a.x = x_bits;
    a.w = w_bits;
    a.b1 = weights.b1();
    a.w2 = weights.w2();
    a.b2 = weights.b2();
    a.out = out.data_ptr<float>();
    a.n_htiles = static_cast<int>(ceil_div<int64_t>(H, tile_n));
    if (a.n_htiles > 1) partial = at::empty({a.n_htiles, T}, x.options().dtype(at::kFloat));
    a.partial = a.n_htiles > 1 ? partial.data_ptr<float>() : nullptr;
    a.T = T;
    a.H = H;
    a.ld = ld;
    a.inv_d = inv_d;
    a.eps = eps_f;
    return a;
  };
  auto grid = [&](int64_t tile_m, int n_htiles) {
    const int64_t blocks = ceil_div<int64_t>(T, tile_m) * n_htiles;
    TORCH_CHECK(blocks < (int64_t{1} << 31), "sdtp.saliency_score: too many tokens (", T, ")");
    return static_cast<unsigned>(blocks);
  };

  int n_htiles = 0;
  if (!mma_path) {
    const auto a = fused_args(x.data_ptr<float>(), weights.wf.data_ptr<float>(), D, simt::kBN);
    n_htiles = a.n_htiles;
    simt::score_simt_kernel<<<grid(simt::kBM, n_htiles), simt::kThreads, 0, stream>>>(a);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  } else {
    // x is copied into a zero-padded buffer when its rows are not padded already or its base is not 16-byte
    // aligned (only D not a multiple of 8, or misaligned views, pay this).
    at::Tensor xa = x;
    if (Dp != D || reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 != 0) {
      xa = at::zeros({T, Dp}, x.options());
      xa.narrow(1, 0, D).copy_(x);
    }
    const auto a = fused_args(reinterpret_cast<const uint16_t*>(xa.data_ptr()),
                              reinterpret_cast<const uint16_t*>(weights.wf.data_ptr()), Dp, mma::kBN);
    n_htiles = a.n_htiles;
    auto kernel = dtype == at::kBFloat16 ? mma::score_mma_kernel<true> : mma::score_mma_kernel<false>;
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(mma::kSmemBytes)));
    kernel<<<grid(mma::kBM, n_htiles), mma::kThreads, mma::kSmemBytes, stream>>>(a);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  if (n_htiles > 1) {
    const int threads = 256;
    reduce_partials_kernel<<<static_cast<unsigned>(ceil_div<int64_t>(T, threads)), threads, 0, stream>>>(
        partial.data_ptr<float>(), weights.b2(), out.data_ptr<float>(), T, n_htiles);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return out;
}

}  // namespace sdtp
