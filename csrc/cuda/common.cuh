// Small device helpers shared by the CUDA kernels (csrc/cuda/*.cu).
#pragma once
#include <c10/cuda/CUDAException.h>
#include <c10/macros/Macros.h>
#include <cuda_runtime.h>

#include <cstdint>

// CUDA_KERNEL_ASSERT expands to a bare `if`; keep it from capturing a following `else`.
#define SDTP_KERNEL_ASSERT(cond) \
  do {                           \
    CUDA_KERNEL_ASSERT(cond);    \
  } while (0)

namespace sdtp {
namespace cuda {

constexpr int kWarpSize = 32;

template <typename T>
__host__ __device__ __forceinline__ T ceil_div(T a, T b) {
  return (a + b - 1) / b;
}

// Multiprocessor count of the current device. (ATen/cuda/CUDAContext.h is avoided on purpose: it needs the
// cuSPARSE/cuBLAS headers, which a bare toolkit may lack.)
inline int device_sm_count() {
  int device = 0, sms = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  return sms;
}

// True while `stream` is being captured into a CUDA graph. Then no value can be read back to the host, so the ops
// skip their host-side value checks and the kernels assert instead (docs/ARCHITECTURE.md §3.4).
inline bool capturing(cudaStream_t stream) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(stream, &status));
  return status != cudaStreamCaptureStatusNone;
}

// a / b for a >= 0, b > 0: 32-bit division when both fit (64-bit division is a long software sequence).
__device__ __forceinline__ int64_t div_nonneg(int64_t a, int64_t b) {
  if (((a | b) >> 32) == 0) return int64_t(uint32_t(a) / uint32_t(b));
  return a / b;
}

// GELU in its erf form (torch's default), in float32: the saliency_score epilogues of both CUDA paths.
__device__ __forceinline__ float gelu_erf(float y) { return 0.5f * y * (1.0f + erff(y * 0.70710678118654752440f)); }

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int off = kWarpSize / 2; off > 0; off >>= 1) v += __shfl_xor_sync(0xFFFFFFFFu, v, off);
  return v;
}

// Sum over a block of kThreads threads (a multiple of 32, at most 1024); every thread gets the total.
// `scratch` holds at least kThreads / 32 values. Fixed order, so the result is deterministic.
template <int kThreads, typename T>
__device__ __forceinline__ T block_sum(T v, T* scratch) {
  static_assert(kThreads % kWarpSize == 0 && kThreads <= 1024, "block size");
  constexpr int kWarps = kThreads / kWarpSize;
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  T total = scratch[0];
#pragma unroll
  for (int w = 1; w < kWarps; ++w) total += scratch[w];
  return total;
}

// Exclusive prefix sum over a block of kThreads threads in threadIdx order; `total` receives the block total.
// `scratch` holds at least kThreads / 32 values.
template <int kThreads, typename T>
__device__ __forceinline__ T block_exclusive_scan(T v, T* scratch, T& total) {
  static_assert(kThreads % kWarpSize == 0 && kThreads <= 1024, "block size");
  constexpr int kWarps = kThreads / kWarpSize;
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  T inc = v;
#pragma unroll
  for (int off = 1; off < kWarpSize; off <<= 1) {
    const T up = __shfl_up_sync(0xFFFFFFFFu, inc, off);
    if (lane >= off) inc += up;
  }
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == kWarpSize - 1) scratch[warp] = inc;
  __syncthreads();
  T warp_base = T(0);
  total = T(0);
#pragma unroll
  for (int w = 0; w < kWarps; ++w) {
    const T s = scratch[w];
    if (w < warp) warp_base += s;
    total += s;
  }
  return warp_base + inc - v;
}

}  // namespace cuda
}  // namespace sdtp
