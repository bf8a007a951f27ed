// CPU compact / compact_varlen (docs/ARCHITECTURE.md §3.3): whole-row copies (memcpy of the contiguous tail behind
// the sequence dim), zero rows where index == -1.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cstring>

#include "../host_common.h"
#include "../validate.h"

namespace sdtp {
namespace {

// A contiguous x viewed as [B, outer, N, row_bytes]: the rows that compact moves are row_bytes long.
struct RowCopy {
  const char* src;
  int64_t outer, N, row_bytes;
};

// Copies one row: x[b, o, i] to dst, or zeros when i == -1.
inline void copy_row(const RowCopy& c, int64_t b, int64_t o, int64_t i, char* dst) {
  if (i < 0)
    std::memset(dst, 0, c.row_bytes);
  else
    std::memcpy(dst, c.src + ((b * c.outer + o) * c.N + i) * c.row_bytes, c.row_bytes);
}

// `check` only spares a device-to-host read (docs/ARCHITECTURE.md §3.4): here the index is always checked.
at::Tensor compact_cpu(const at::Tensor& x_in, const at::Tensor& index_in, int64_t dim, bool /*check*/) {
  const int64_t d = check_compact_inputs(x_in, index_in, dim, "sdtp.compact");
  const auto x = x_in.contiguous();
  const auto index = index_in.contiguous();
  const int64_t B = x.size(0), N = x.size(d), K = index.size(1);
  check_index_range(index, N, "sdtp.compact");
  auto out = at::empty(compact_sizes(x, d, K), x.options());
  if (out.numel() == 0) return out;
  const int64_t outer = size_prod(x, 1, d);
  const RowCopy c{static_cast<const char*>(x.data_ptr()), outer, N, size_prod(x, d + 1, x.dim()) * x.element_size()};
  char* dst = static_cast<char*>(out.data_ptr());
  const int64_t* idx = index.data_ptr<int64_t>();
  // Parallel over every output row (not per batch row, so that B = 1 uses all threads), in chunks of >= 64 KiB.
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / c.row_bytes);
  at::parallel_for(0, B * outer * K, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t bo = r / K, j = r % K, b = bo / outer;
      copy_row(c, b, bo % outer, idx[b * K + j], dst + r * c.row_bytes);
    }
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, c10::SymInt> compact_varlen_cpu(const at::Tensor& x_in, const at::Tensor& index_in) {
  check_compact_inputs(x_in, index_in, 1, "sdtp.compact_varlen");
  const auto x = x_in.contiguous();
  const auto index = index_in.contiguous();
  const int64_t B = x.size(0), N = x.size(1), K = index.size(1);
  const SeqLens s = seqlens_from_index(index, N, "sdtp.compact_varlen");
  const auto& cu_seqlens = s.cu_seqlens;
  const int64_t max_seqlen = s.max_seqlen;
  auto packed = at::empty(compact_varlen_sizes(x, s.total), x.options());
  if (packed.numel() == 0) return {packed, cu_seqlens, c10::SymInt(max_seqlen)};
  const RowCopy c{static_cast<const char*>(x.data_ptr()), 1, N, size_prod(x, 2, x.dim()) * x.element_size()};
  char* dst = static_cast<char*>(packed.data_ptr());
  const int64_t* idx = index.data_ptr<int64_t>();
  const int32_t* cu = cu_seqlens.data_ptr<int32_t>();
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      // Right-aligned or not, a row's kept entries are its non-negative ones, copied in order.
      char* row_dst = dst + int64_t(cu[b]) * c.row_bytes;
      const int64_t* row_idx = idx + b * K;
      for (int64_t j = 0; j < K; ++j) {
        if (row_idx[j] < 0) continue;
        copy_row(c, b, 0, row_idx[j], row_dst);
        row_dst += c.row_bytes;
      }
    }
  });
  return {packed, cu_seqlens, c10::SymInt(max_seqlen)};
}

}  // namespace

TORCH_LIBRARY_IMPL(sdtp, CPU, m) {
  m.impl("compact", &compact_cpu);
  m.impl("compact_varlen", &compact_varlen_cpu);
}

}  // namespace sdtp
