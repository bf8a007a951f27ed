// CUDA compact / compact_varlen (docs/ARCHITECTURE.md §3.3): row gathers along the sequence dim. A contiguous x is
// viewed as [B, outer, N, row_bytes]; each output row is one source row (or zeros for index -1), copied with the
// widest vector (16, 8, 4, 2 or 1 bytes) that the row length and both base pointers allow. All offsets are 64-bit.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>

#include "../host_common.h"
#include "../validate.h"
#include "common.cuh"
#include "ops.h"

namespace sdtp {
namespace {

using cuda::ceil_div;

constexpr int kThreads = 256;
constexpr int kUnroll = 4;  // vectors in flight per thread and loop trip

struct GatherArgs {
  const char* src;
  char* dst;
  const int64_t* index;      // [B, K]
  const int64_t* dest_rows;  // [B, K] packed destination rows (compact_varlen), or nullptr (compact)
  int64_t rows;              // B * outer * K work rows
  int64_t outer, K, N;
  int64_t row_bytes;
  int64_t vectors;  // vectors per row
  int tpr_log2;     // threads per row = 1 << tpr_log2 (<= kThreads)
};

// Work row r = ((b * outer + o) * K + j): source row (b * outer + o) * N + index[b, j].
// compact: destination row r, zeros where index == -1. compact_varlen (outer == 1): destination dest_rows[b, j],
// nothing written where index == -1.
template <typename V>
__global__ void __launch_bounds__(kThreads) gather_rows_kernel(GatherArgs a) {
  const int tpr = 1 << a.tpr_log2;
  const int lane = threadIdx.x & (tpr - 1);
  const int64_t rows_per_block = kThreads >> a.tpr_log2;
  const int64_t stride = int64_t(gridDim.x) * rows_per_block;
  for (int64_t r = int64_t(blockIdx.x) * rows_per_block + (threadIdx.x >> a.tpr_log2); r < a.rows; r += stride) {
    const int64_t bo = cuda::div_nonneg(r, a.K), j = r - bo * a.K;
    const int64_t b = a.outer == 1 ? bo : cuda::div_nonneg(bo, a.outer);
    const int64_t idx = a.index[b * a.K + j];
    SDTP_KERNEL_ASSERT(idx >= -1 && idx < a.N);   // checked on the host, except under capture or check=False
    const bool in_range = idx >= 0 && idx < a.N;  // out-of-range entries (asserts disabled) never read
    int64_t dst_row = r;
    if (a.dest_rows != nullptr) {
      if (!in_range) continue;
      dst_row = a.dest_rows[b * a.K + j];
    }
    V* dst = reinterpret_cast<V*>(a.dst + dst_row * a.row_bytes);
    if (in_range) {
      const V* src = reinterpret_cast<const V*>(a.src + (bo * a.N + idx) * a.row_bytes);
      for (int64_t c = lane; c < a.vectors; c += int64_t(tpr) * kUnroll) {
        V v[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u)
          if (c + int64_t(u) * tpr < a.vectors) v[u] = src[c + int64_t(u) * tpr];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u)
          if (c + int64_t(u) * tpr < a.vectors) dst[c + int64_t(u) * tpr] = v[u];
      }
    } else {
      const V zero{};
      for (int64_t c = lane; c < a.vectors; c += tpr) dst[c] = zero;
    }
  }
}

// Launches the gather with the widest vector that row_bytes and both base pointers allow.
void launch_gather(GatherArgs a) {
  if (a.rows == 0 || a.row_bytes == 0) return;
  const auto align = reinterpret_cast<uintptr_t>(a.src) | reinterpret_cast<uintptr_t>(a.dst) |
                     static_cast<uintptr_t>(a.row_bytes);
  int width = 16;
  while (width > 1 && (align % width) != 0) width >>= 1;
  a.vectors = a.row_bytes / width;
  // Enough threads per row to cover it in one trip of kUnroll vectors each (a power of two, at most a block).
  const int64_t want = ceil_div<int64_t>(a.vectors, kUnroll);
  int tpr_log2 = 0;
  while ((int64_t{1} << tpr_log2) < want && (1 << tpr_log2) < kThreads) ++tpr_log2;
  a.tpr_log2 = tpr_log2;
  const int64_t rows_per_block = kThreads >> tpr_log2;
  const int64_t blocks = std::min<int64_t>(ceil_div<int64_t>(a.rows, rows_per_block), int64_t{1} << 30);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  switch (width) {
    case 16: gather_rows_kernel<uint4><<<blocks, kThreads, 0, stream>>>(a); break;
    case 8: gather_rows_kernel<uint2><<<blocks, kThreads, 0, stream>>>(a); break;
    case 4: gather_rows_kernel<uint32_t><<<blocks, kThreads, 0, stream>>>(a); break;
    case 2: gather_rows_kernel<uint16_t><<<blocks, kThreads, 0, stream>>>(a); break;
    default: gather_rows_kernel<uint8_t><<<blocks, kThreads, 0, stream>>>(a); break;
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

at::Tensor compact_cuda(const at::Tensor& x_in, const at::Tensor& index_in, int64_t dim, bool check) {
  const int64_t d = check_compact_inputs(x_in, index_in, dim, "sdtp.compact");
  TORCH_CHECK(x_in.is_cuda(), "sdtp.compact: argument 'x' must be a CUDA tensor here");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto x = x_in.contiguous();
  const auto index = index_in.contiguous();
  const int64_t B = x.size(0), N = x.size(d), K = index.size(1);
  // One host read of index's extremes, as on the CPU; waived (check=False) or under graph capture, the kernel asserts.
  if (check && !cuda::capturing(c10::cuda::getCurrentCUDAStream())) check_index_range(index, N, "sdtp.compact");
  auto out = at::empty(compact_sizes(x, d, K), x.options());
  if (out.numel() == 0) return out;
  GatherArgs a{};
  a.src = static_cast<const char*>(x.data_ptr());
  a.dst = static_cast<char*>(out.data_ptr());
  a.index = index.data_ptr<int64_t>();
  a.dest_rows = nullptr;
  a.outer = size_prod(x, 1, d);
  a.K = K;
  a.N = N;
  a.rows = B * a.outer * K;
  a.row_bytes = size_prod(x, d + 1, x.dim()) * static_cast<int64_t>(x.element_size());
  launch_gather(a);
  return out;
}

std::tuple<at::Tensor, at::Tensor, c10::SymInt> compact_varlen_cuda(const at::Tensor& x_in,
                                                                    const at::Tensor& index_in) {
  check_compact_inputs(x_in, index_in, 1, "sdtp.compact_varlen");
  TORCH_CHECK(x_in.is_cuda(), "sdtp.compact_varlen: argument 'x' must be a CUDA tensor here");
  const c10::cuda::CUDAGuard guard(x_in.device());
  // Before any work is queued: a refused call leaves nothing in the graph being captured.
  TORCH_CHECK(!cuda::capturing(c10::cuda::getCurrentCUDAStream()),
              "sdtp.compact_varlen cannot run under CUDA graph capture: the size of its output is read back to the "
              "host");
  const auto x = x_in.contiguous();
  const auto index = index_in.contiguous();
  const int64_t B = x.size(0), N = x.size(1), K = index.size(1);
  // The one device-to-host read (none when B == 0): total tokens, the longest row and index's range.
  const SeqLens s = seqlens_from_index(index, N, "sdtp.compact_varlen");
  const auto& cu_seqlens = s.cu_seqlens;
  const int64_t max_seqlen = s.max_seqlen;
  auto packed = at::empty(compact_varlen_sizes(x, s.total), x.options());
  if (packed.numel() == 0) return {packed, cu_seqlens, c10::SymInt(max_seqlen)};
  // Rows keep their non-negative entries in order: row b's j-th kept entry goes to packed row cu_seqlens[b] + j.
  const auto dest_rows = s.kept.cumsum(1).sub_(1).add_(s.ends.sub(s.counts).unsqueeze(1)).contiguous();  // int64 [B, K]
  GatherArgs a{};
  a.src = static_cast<const char*>(x.data_ptr());
  a.dst = static_cast<char*>(packed.data_ptr());
  a.index = index.data_ptr<int64_t>();
  a.dest_rows = dest_rows.data_ptr<int64_t>();
  a.outer = 1;
  a.K = K;
  a.N = N;
  a.rows = B * K;
  a.row_bytes = size_prod(x, 2, x.dim()) * static_cast<int64_t>(x.element_size());
  launch_gather(a);
  return {packed, cu_seqlens, c10::SymInt(max_seqlen)};
}

}  // namespace sdtp
