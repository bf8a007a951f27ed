// saliency_score on CUDA: the weights both paths read (csrc/cuda/score_paths.h, docs/ARCHITECTURE.md §3.1), made in
// one launch per call: wf = w1 * g in the GEMM's input dtype (zero-padded to Dp columns) and b1, w2, b2 as float32.
// One kernel instead of a fold plus four dtype conversions: at a few thousand tokens the op is bound by its launches.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <vector>

#include "../host_common.h"
#include "common.cuh"
#include "score_paths.h"

namespace sdtp {
namespace {

constexpr int kThreads = 256;

// A strided 1-d tensor of float32, float16, bfloat16 or float64, read as float32. Other floating dtypes (float8)
// are converted to float32 by a separate conversion first (as_float_vector).
struct FloatVector {
  enum Kind { kF32, kF16, kBF16, kF64 };
  const void* data;
  int64_t stride;
  Kind kind;

  // f(p, stride) with p the data as a typed pointer: a loop inside f is compiled once per dtype with no switch in it.
  template <typename F>
  __device__ __forceinline__ void visit(F&& f) const {
    switch (kind) {
      case kF16: return f(static_cast<const at::Half*>(data), stride);
      case kBF16: return f(static_cast<const at::BFloat16*>(data), stride);
      case kF64: return f(static_cast<const double*>(data), stride);
      default: return f(static_cast<const float*>(data), stride);
    }
  }
  __device__ __forceinline__ float operator[](int64_t i) const {
    float v = 0.0f;
    visit([&](const auto* p, int64_t s) { v = static_cast<float>(p[i * s]); });
    return v;
  }
};

// The dtypes the kernel reads in place (FloatVector's kinds and prepare_kernel's instantiations for w1).
c10::optional<FloatVector::Kind> kind_of(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat: return FloatVector::kF32;
    case at::kHalf: return FloatVector::kF16;
    case at::kBFloat16: return FloatVector::kBF16;
    case at::kDouble: return FloatVector::kF64;
    default: return c10::nullopt;
  }
}

FloatVector as_float_vector(const at::Tensor& t, std::vector<at::Tensor>& converted) {
  const at::Tensor v = t.reshape({-1});  // b2 may be 0-d; a view for every 1-d or 0-d input
  if (const auto kind = kind_of(v.scalar_type())) return {v.data_ptr(), v.stride(0), *kind};
  converted.push_back(v.to(at::kFloat));
  return {converted.back().data_ptr(), 1, FloatVector::kF32};
}

// One block per row h of w1 (grid-stride over rows): wf[h, :] = w1[h, :] * g, zero past D; then the grid copies b1
// and w2, and block 0 b2. Each thread loads kBatch elements before it stores any, so that several
// loads are in flight (a store between them would make every iteration wait for its own load).
template <typename Tw, typename Tout>
__global__ void __launch_bounds__(kThreads)
    prepare_kernel(const Tw* __restrict__ w1, FloatVector g, FloatVector b1, FloatVector w2, FloatVector b2,
                   Tout* __restrict__ wf, float* __restrict__ vec, int64_t H, int64_t D, int64_t Dp) {
  constexpr int kBatch = 4;
  g.visit([&](const auto* __restrict__ gp, int64_t gs) {
    for (int64_t h = blockIdx.x; h < H; h += gridDim.x) {
      const Tw* row = w1 + h * D;
      Tout* out = wf + h * Dp;
      for (int64_t d0 = threadIdx.x; d0 < Dp; d0 += kBatch * kThreads) {
        float v[kBatch];
#pragma unroll
        for (int u = 0; u < kBatch; ++u) {
          const int64_t d = d0 + int64_t{u} * kThreads;
          v[u] = d < D ? static_cast<float>(row[d]) * static_cast<float>(gp[d * gs]) : 0.0f;
        }
#pragma unroll
        for (int u = 0; u < kBatch; ++u) {
          const int64_t d = d0 + int64_t{u} * kThreads;
          if (d < Dp) out[d] = static_cast<Tout>(v[u]);
        }
      }
    }
  });
  for (int64_t h = int64_t(blockIdx.x) * kThreads + threadIdx.x; h < H; h += int64_t(gridDim.x) * kThreads) {
    vec[h] = b1[h];
    vec[H + h] = w2[h];
  }
  if (blockIdx.x == 0 && threadIdx.x == 0) vec[2 * H] = b2[0];
}

}  // namespace

ScoreWeights prepare_score_weights(const at::Tensor& w1, const at::Tensor& g, const at::Tensor& b1,
                                   const at::Tensor& w2, const at::Tensor& b2, int64_t Dp, at::ScalarType gemm_dtype,
                                   cudaStream_t stream) {
  // w1 in its own dtype when the kernel reads it in place, else float32.
  const auto w = (kind_of(w1.scalar_type()) ? w1 : w1.to(at::kFloat)).contiguous();
  const int64_t H = w.size(0), D = w.size(1);
  ScoreWeights out;
  out.H = H;
  out.wf = at::empty({H, Dp}, w.options().dtype(gemm_dtype));
  out.vec = at::empty({2 * H + 1}, w.options().dtype(at::kFloat));
  std::vector<at::Tensor> converted;  // keeps converted inputs alive until the launch is queued
  const FloatVector gv = as_float_vector(g, converted), b1v = as_float_vector(b1, converted),
                    w2v = as_float_vector(w2, converted), b2v = as_float_vector(b2, converted);
  const auto blocks = static_cast<unsigned>(std::min<int64_t>(H, int64_t{1} << 16));
  float* vec = out.vec.data_ptr<float>();
  SDTP_DISPATCH_FLOATING(gemm_dtype, "sdtp_prepare_score_weights", [&] {
    using Tout = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "sdtp_prepare_score_weights", [&] {
      prepare_kernel<scalar_t, Tout><<<blocks, kThreads, 0, stream>>>(
          w.data_ptr<scalar_t>(), gv, b1v, w2v, b2v, out.wf.data_ptr<Tout>(), vec, H, D, Dp);
    });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace sdtp
