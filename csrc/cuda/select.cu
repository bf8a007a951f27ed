// CUDA select_tokens (docs/ARCHITECTURE.md §3.2). Per row b, the unprotected valid tokens compete by the unique
// rank key (score_key << 32 | ~position); the m-th largest key is the pivot. It is found without sorting:
//   plan      one CTA per row: valid count L, plan_row(), the positions that bound the protected sinks/locals,
//             counts[b], and zeroes the row's radix histograms. K = max counts is worked out on the host when it
//             can be (no mask, keep/num_local on the CPU); else the host reads it back together with the smallest
//             device keep/num_local, in one copy, and raises the CPU op's errors before any other kernel (§3.4);
//   radix x3  several CTAs per row: histograms of 11/11/10-bit digits of the 32-bit score key (shared-memory
//             histogram per CTA, integer atomics into a per-row global histogram; each pass resolves the digit
//             of the previous one). The result is the pivot's score key k* and how many of the tokens whose key
//             equals k* are kept: the ones at the lowest positions, which is the position half of the rank key;
//   count     several CTAs per row: per chunk, kept tokens that are not ties (protected, or key > k*) and ties;
//   emit      several CTAs per row: one order-preserving block scan per tile, starting from the earlier chunks'
//             totals, writes the kept positions ascending and right-aligned; -1 fills index[b, :K - c].
// Everything is integer arithmetic, so the result is bitwise the CPU one and the same run to run.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>

#include "../host_common.h"
#include "../select_plan.h"
#include "../validate.h"
#include "common.cuh"
#include "ops.h"

namespace sdtp {
namespace {

using cuda::block_exclusive_scan;
using cuda::block_sum;
using cuda::ceil_div;

constexpr int kThreads = 256;
constexpr int kItems = 8;                 // positions per thread per tile in the emit scan
constexpr int kTile = kThreads * kItems;  // positions per tile
constexpr int kPasses = 3;
constexpr int kBins = 2048;                 // digits of up to 11 bits
constexpr int kBinsPerThread = kBins / kThreads;
constexpr int kSlots = kPasses + 1;         // radix states: before each pass, and the final one
constexpr int64_t kMaxGridY = 65535;

// Pass p histograms key bits [shift, shift + bits): 31..21, 20..10, 9..0.
__host__ __device__ constexpr int pass_shift(int p) { return p == 0 ? 21 : (p == 1 ? 10 : 0); }
__host__ __device__ constexpr int pass_bits(int p) { return p == 2 ? 10 : 11; }

enum RowMode : int32_t {
  kRadix = 0,       // 0 < m < R: a pivot must be found
  kNoneRanked = 1,  // m == 0: only protected tokens are kept
  kAllRanked = 2,   // m == R: every valid token is kept
};

struct RowInfo {
  int64_t p_s;   // valid positions < p_s are the protected sinks
  int64_t p_l;   // valid positions >= p_l are the protected locals; valid positions in [p_s, p_l) compete
  int64_t kept;  // c
  int32_t mode;
};

// Before radix pass p (slot p): among the competing tokens whose key >> (shift(p) + bits(p)) == prefix, the
// rank-th largest (1-based) is wanted. Final slot: prefix = k*, rank = how many ties (key == k*) are kept.
struct RadixState {
  uint32_t prefix;
  int64_t rank;
};

struct SelectArgs {
  const bool* mask;  // [B, N] or nullptr
  int64_t N, K;
  const int64_t* keep;  // [B] or nullptr (then keep_scalar)
  int64_t keep_scalar;
  const int64_t* num_local;  // [B] or nullptr (then num_local_scalar)
  int64_t num_local_scalar;
  int64_t num_sink;
  bool device_asserts;     // under graph capture or check=False: values asserted here, not checked on the host
  bool width_given;
  RowInfo* info;           // [B]
  RadixState* state;       // [B][kSlots]
  uint32_t* hist;          // [B][kPasses][kBins], zeroed by the plan kernel
  uint64_t* chunk_counts;  // [B][chunks]: (kept non-ties << 32) | ties
  int64_t* index;          // [B, K]
  int64_t* counts;         // [B]
  int64_t chunk_len;       // positions per CTA in the chunked kernels, a multiple of kTile
  int64_t chunks;          // ceil(N / chunk_len)
};

template <typename T>
__device__ __forceinline__ uint32_t key_at(const T* row, int64_t i) {
  return score_key(static_cast<float>(row[i]));
}

// ---------------------------------------------------------------------------------------------------------------
// plan: grid [B], one CTA per row.
__global__ void __launch_bounds__(kThreads) plan_kernel(SelectArgs a) {
  __shared__ int64_t scratch[kThreads / cuda::kWarpSize];
  __shared__ int64_t found[2];
  const int64_t b = blockIdx.x;
  const int64_t N = a.N;
  const bool* mask = a.mask ? a.mask + b * N : nullptr;
  int64_t keep = a.keep ? a.keep[b] : a.keep_scalar;
  int64_t num_local = a.num_local ? a.num_local[b] : a.num_local_scalar;
  if (a.device_asserts) {
    SDTP_KERNEL_ASSERT(keep >= 0);
    SDTP_KERNEL_ASSERT(num_local >= 0);
  }
  // Negative values (an error the host raises after this kernel) are clamped, so the plan stays in bounds.
  keep = keep < 0 ? 0 : keep;
  num_local = num_local < 0 ? 0 : num_local;

  int64_t L = N;
  if (mask != nullptr) {
    int64_t c = 0;
    for (int64_t i = threadIdx.x; i < N; i += kThreads) c += mask[i] ? 1 : 0;
    L = block_sum<kThreads>(c, scratch);
  }
  const RowPlan p = plan_row(L, keep, a.num_sink, num_local);
  int64_t p_s = p.sink_end, p_l = p.local_begin;  // without a mask, ranks are positions
  if (mask != nullptr) {
    // Positions of valid ranks sink_end and local_begin (N where the rank is L).
    if (threadIdx.x == 0) found[0] = found[1] = N;
    const int64_t last = p.local_begin < L ? p.local_begin : (p.sink_end < L ? p.sink_end : -1);
    int64_t base = 0;  // valid tokens before the tile
    for (int64_t t0 = 0; t0 < N && base <= last; t0 += kTile) {
      const int64_t begin = t0 + int64_t(threadIdx.x) * kItems;
      int64_t c = 0;
#pragma unroll
      for (int k = 0; k < kItems; ++k) c += (begin + k < N && mask[begin + k]) ? 1 : 0;
      int64_t total;
      int64_t r = base + block_exclusive_scan<kThreads>(c, scratch, total);
      for (int k = 0; k < kItems && c > 0; ++k) {
        if (begin + k < N && mask[begin + k]) {
          if (r == p.sink_end) found[0] = begin + k;
          if (r == p.local_begin) found[1] = begin + k;
          ++r;
          --c;
        }
      }
      base += total;
    }
    __syncthreads();
    p_s = found[0];
    p_l = found[1];
  }
  if (a.device_asserts && a.width_given) SDTP_KERNEL_ASSERT(p.kept <= a.K);
  uint32_t* hist = a.hist + b * kPasses * kBins;  // zeroed here for the radix passes
  for (int i = threadIdx.x; i < kPasses * kBins; i += kThreads) hist[i] = 0u;
  if (threadIdx.x == 0) {
    const int64_t m = p.ranked_kept();
    const int64_t R = p.local_begin - p.sink_end;
    RowInfo info;
    info.p_s = p_s;
    info.p_l = p_l;
    info.kept = p.kept;
    info.mode = m <= 0 ? kNoneRanked : (m >= R ? kAllRanked : kRadix);
    a.info[b] = info;
    a.counts[b] = p.kept;
    RadixState* st = a.state + b * kSlots;
    st[0].prefix = 0u;
    st[0].rank = m;
    if (info.mode == kNoneRanked) {
      st[kPasses].prefix = 0xFFFFFFFFu;  // no key is above it, and no tie is kept
      st[kPasses].rank = 0;
    } else if (info.mode == kAllRanked) {
      st[kPasses].prefix = 0u;  // every key is >= 0, and all ties are kept
      st[kPasses].rank = R;
    }
  }
}

// Given the state before pass p and that pass's histogram, the state after it (every thread gets it).
__device__ RadixState resolve(RadixState st, const uint32_t* __restrict__ hist, int p, int64_t* scratch,
                              RadixState* shared_out) {
  const int nbins = 1 << pass_bits(p);
  // Thread t owns the digit group kThreads - 1 - t, so threads in order hold descending digits and the
  // exclusive scan gives each thread the count of tokens with a larger digit.
  const int group = kThreads - 1 - int(threadIdx.x);
  uint32_t h[kBinsPerThread];
  int64_t sum = 0;
#pragma unroll
  for (int k = 0; k < kBinsPerThread; ++k) {
    const int d = group * kBinsPerThread + k;
    h[k] = d < nbins ? hist[d] : 0u;
    sum += h[k];
  }
  int64_t total;
  int64_t above = block_exclusive_scan<kThreads>(sum, scratch, total);
#pragma unroll
  for (int k = kBinsPerThread - 1; k >= 0; --k) {
    if (above < st.rank && st.rank <= above + int64_t(h[k])) {  // exactly one thread, one digit
      shared_out->prefix = (st.prefix << pass_bits(p)) | uint32_t(group * kBinsPerThread + k);
      shared_out->rank = st.rank - above;
    }
    above += h[k];
  }
  __syncthreads();
  return *shared_out;
}

// radix pass p: grid [chunks, rows]; CTA x histograms the competing tokens in [p_s + x * chunk_len, ...) ∩ [p_s, p_l).
template <typename T>
__global__ void __launch_bounds__(kThreads) radix_pass_kernel(SelectArgs a, const T* __restrict__ scores, int pass,
                                                              int64_t row0) {
  __shared__ uint32_t sh_hist[kBins];
  __shared__ int64_t scratch[kThreads / cuda::kWarpSize];
  __shared__ RadixState sh_state;
  const int64_t b = row0 + blockIdx.y;
  const RowInfo info = a.info[b];
  if (info.mode != kRadix) return;  // uniform over the CTA
  RadixState st;
  if (pass == 0) {
    st = a.state[b * kSlots];
  } else {
    st = resolve(a.state[b * kSlots + pass - 1], a.hist + (b * kPasses + pass - 1) * kBins, pass - 1, scratch,
                 &sh_state);
    if (blockIdx.x == 0 && threadIdx.x == 0) a.state[b * kSlots + pass] = st;
  }
  const int64_t begin = info.p_s + int64_t(blockIdx.x) * a.chunk_len;
  const int64_t end = min(begin + a.chunk_len, info.p_l);
  if (begin >= end) return;  // uniform
  const int nbins = 1 << pass_bits(pass);
  for (int d = threadIdx.x; d < nbins; d += kThreads) sh_hist[d] = 0u;
  __syncthreads();
  const int shift = pass_shift(pass);
  const int prefix_shift = shift + pass_bits(pass);  // < 32 for passes > 0
  const uint32_t digit_mask = uint32_t(nbins - 1);
  const T* row = scores + b * a.N;
  const bool* mask = a.mask ? a.mask + b * a.N : nullptr;
  for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) {
    if (mask != nullptr && !mask[i]) continue;
    const uint32_t key = key_at(row, i);
    if (pass > 0 && (key >> prefix_shift) != st.prefix) continue;
    atomicAdd(&sh_hist[(key >> shift) & digit_mask], 1u);
  }
  __syncthreads();
  uint32_t* g = a.hist + (b * kPasses + pass) * kBins;
  for (int d = threadIdx.x; d < nbins; d += kThreads) {
    const uint32_t c = sh_hist[d];
    if (c != 0u) atomicAdd(&g[d], c);
  }
}

enum TokenClass : uint8_t { kDropped = 0, kTie = 1, kKeptNonTie = 2 };

template <typename T>
__device__ __forceinline__ uint8_t classify(const T* row, const bool* mask, int64_t i, const RowInfo& info,
                                            uint32_t pivot) {
  if (mask != nullptr && !mask[i]) return kDropped;
  if (i < info.p_s || i >= info.p_l) return kKeptNonTie;  // protected
  const uint32_t key = key_at(row, i);
  return key > pivot ? kKeptNonTie : (key == pivot ? kTie : kDropped);
}

__device__ __forceinline__ uint64_t class_count(uint8_t c) {
  return c == kKeptNonTie ? (uint64_t{1} << 32) : (c == kTie ? uint64_t{1} : uint64_t{0});
}

// count: grid [chunks, rows]; resolves the last pass (final state) and counts chunk x of [0, N).
template <typename T>
__global__ void __launch_bounds__(kThreads) count_kernel(SelectArgs a, const T* __restrict__ scores, int64_t row0) {
  __shared__ int64_t scratch[kThreads / cuda::kWarpSize];
  __shared__ uint64_t scratch_u[kThreads / cuda::kWarpSize];
  __shared__ RadixState sh_state;
  const int64_t b = row0 + blockIdx.y;
  const RowInfo info = a.info[b];
  RadixState st;
  if (info.mode == kRadix) {
    st = resolve(a.state[b * kSlots + kPasses - 1], a.hist + (b * kPasses + kPasses - 1) * kBins, kPasses - 1,
                 scratch, &sh_state);
    if (blockIdx.x == 0 && threadIdx.x == 0) a.state[b * kSlots + kPasses] = st;
  } else {
    st = a.state[b * kSlots + kPasses];
  }
  const int64_t begin = int64_t(blockIdx.x) * a.chunk_len;
  const int64_t end = min(begin + a.chunk_len, a.N);
  const T* row = scores + b * a.N;
  const bool* mask = a.mask ? a.mask + b * a.N : nullptr;
  uint64_t c = 0;
  for (int64_t i = begin + threadIdx.x; i < end; i += kThreads)
    c += class_count(classify(row, mask, i, info, st.prefix));
  c = block_sum<kThreads>(c, scratch_u);
  if (threadIdx.x == 0) a.chunk_counts[b * a.chunks + blockIdx.x] = c;
}

// emit: grid [chunks, rows]; writes the kept positions of chunk x in order, and its share of the -1 fill.
template <typename T>
__global__ void __launch_bounds__(kThreads) emit_kernel(SelectArgs a, const T* __restrict__ scores, int64_t row0) {
  __shared__ uint64_t scratch_u[kThreads / cuda::kWarpSize];
  const int64_t b = row0 + blockIdx.y;
  const RowInfo info = a.info[b];
  const RadixState st = a.state[b * kSlots + kPasses];
  const uint32_t pivot = st.prefix;
  const int64_t ties_kept = st.rank;
  int64_t* out = a.index + b * a.K;
  const int64_t left = a.K - info.kept;  // index[b, :left] = -1; kept positions start at column left

  // -1 fill, split evenly over the row's CTAs.
  if (left > 0) {
    const int64_t share = ceil_div<int64_t>(left, gridDim.x);
    const int64_t f0 = int64_t(blockIdx.x) * share, f1 = min(f0 + share, left);
    for (int64_t j = f0 + threadIdx.x; j < f1; j += kThreads) out[j] = -1;
  }

  // Kept non-ties and ties in the chunks before this one.
  uint64_t before = 0;
  for (int64_t c = threadIdx.x; c < blockIdx.x; c += kThreads) before += a.chunk_counts[b * a.chunks + c];
  before = block_sum<kThreads>(before, scratch_u);
  int64_t nontie_base = int64_t(before >> 32), tie_base = int64_t(before & 0xFFFFFFFFu);

  const int64_t begin = int64_t(blockIdx.x) * a.chunk_len;
  const int64_t end = min(begin + a.chunk_len, a.N);
  const T* row = scores + b * a.N;
  const bool* mask = a.mask ? a.mask + b * a.N : nullptr;
  for (int64_t t0 = begin; t0 < end; t0 += kTile) {  // uniform
    const int64_t p0 = t0 + int64_t(threadIdx.x) * kItems;
    uint8_t cls[kItems];
    uint64_t local = 0;
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      cls[k] = p0 + k < end ? classify(row, mask, p0 + k, info, pivot) : uint8_t(kDropped);
      local += class_count(cls[k]);
    }
    uint64_t total;
    const uint64_t excl = block_exclusive_scan<kThreads>(local, scratch_u, total);
    // A token's output column: left + (kept non-ties before it) + min(ties before it, ties_kept).
    int64_t nt = nontie_base + int64_t(excl >> 32), ti = tie_base + int64_t(excl & 0xFFFFFFFFu);
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      int64_t col = -1;
      if (cls[k] == kKeptNonTie) {
        col = left + nt + min(ti, ties_kept);
        ++nt;
      } else if (cls[k] == kTie) {
        if (ti < ties_kept) col = left + nt + ti;
        ++ti;
      }
      if (col >= 0 && col < a.K) out[col] = p0 + k;
    }
    nontie_base += int64_t(total >> 32);
    tie_base += int64_t(total & 0xFFFFFFFFu);
  }
}

struct Workspace {
  at::Tensor storage;
  RowInfo* info;
  RadixState* state;
  uint32_t* hist;
  uint64_t* chunk_counts;
};

Workspace make_workspace(int64_t B, int64_t chunks, const at::TensorOptions& options) {
  auto align = [](size_t n) { return (n + 255) & ~size_t{255}; };
  const size_t info_bytes = align(sizeof(RowInfo) * B);
  const size_t state_bytes = align(sizeof(RadixState) * B * kSlots);
  const size_t hist_bytes = sizeof(uint32_t) * B * kPasses * kBins;
  const size_t chunk_bytes = sizeof(uint64_t) * B * chunks;
  Workspace w;
  w.storage = at::empty({int64_t(info_bytes + state_bytes + align(hist_bytes) + chunk_bytes)},
                        options.dtype(at::kByte));
  char* base = static_cast<char*>(w.storage.data_ptr());
  w.info = reinterpret_cast<RowInfo*>(base);
  w.state = reinterpret_cast<RadixState*>(base + info_bytes);
  w.hist = reinterpret_cast<uint32_t*>(base + info_bytes + state_bytes);
  w.chunk_counts = reinterpret_cast<uint64_t*>(base + info_bytes + state_bytes + align(hist_bytes));
  return w;
}

// A per-row argument as the kernels take it: a one-element CPU tensor by value (no copy to the device), anything
// else as a [B] int64 tensor on the device. `host` gets the [B] values when they are on the CPU (else undefined).
// [B] values on the CPU go to the device from pinned memory without waiting for the stream, always from a staging
// copy of our own: `host` may be the caller's tensor, and pin_memory() returns a pinned tensor itself, which the
// caller may refill before the stream has read it. Under graph capture no copy from the host can be captured, so
// they are refused there with the argument's name.
void row_argument(const at::Tensor& t, const char* name, int64_t B, at::Device device, bool captured,
                  at::Tensor& holder, const int64_t** ptr, int64_t* scalar, at::Tensor& host) {
  if (t.device().is_cpu()) host = per_row(t, B, at::kCPU);
  if (t.device().is_cpu() && t.numel() == 1) {
    *ptr = nullptr;
    *scalar = t.to(at::kLong).reshape({}).item<int64_t>();
    return;
  }
  if (t.device().is_cpu()) {
    TORCH_CHECK_VALUE(!captured, "sdtp.select_tokens: argument '", name, "' must be an int, a 0-d tensor or a ",
                      "tensor on scores' device under CUDA graph capture (a copy from the host cannot be captured)");
    const at::Tensor staged = at::empty(host.sizes(), host.options().pinned_memory(true)).copy_(host);
    holder = staged.to(device, /*non_blocking=*/true);
  } else {
    holder = per_row(t, B, device);
  }
  *ptr = holder.data_ptr<int64_t>();
  *scalar = 0;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> select_tokens_cuda(const at::Tensor& scores_in, const at::Tensor& keep_in,
                                                       const c10::optional<at::Tensor>& valid_in, int64_t num_sink,
                                                       const c10::optional<at::Tensor>& num_local_in,
                                                       c10::optional<int64_t> width, bool check) {
  check_select_inputs(scores_in, keep_in, valid_in, num_sink, num_local_in, width, check);
  TORCH_CHECK(scores_in.is_cuda(), "sdtp.select_tokens: argument 'scores' must be a CUDA tensor here");
  const c10::cuda::CUDAGuard guard(scores_in.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t B = scores_in.size(0), N = scores_in.size(1);
  const auto long_opts = scores_in.options().dtype(at::kLong);
  auto counts = at::empty({B}, long_opts);
  if (B == 0) return {at::empty({0, width.value_or(0)}, long_opts), counts};
  const auto scores = scores_in.contiguous();

  SelectArgs a{};
  const bool captured = cuda::capturing(stream);
  at::Tensor keep_holder, local_holder, valid, keep_host, local_host;
  row_argument(keep_in, "keep", B, scores.device(), captured, keep_holder, &a.keep, &a.keep_scalar, keep_host);
  if (num_local_in.has_value()) {
    row_argument(*num_local_in, "num_local", B, scores.device(), captured, local_holder, &a.num_local,
                 &a.num_local_scalar, local_host);
  } else {
    a.num_local = nullptr;
    a.num_local_scalar = 0;
    local_host = at::zeros({B}, at::kLong);
  }
  if (valid_in.has_value()) {
    valid = valid_in->to(at::kBool).contiguous();
    a.mask = valid.data_ptr<bool>();
  } else {
    a.mask = nullptr;
  }
  a.N = N;
  a.num_sink = num_sink;
  a.width_given = width.has_value();
  a.K = width.value_or(0);
  // Values on the device are checked on the host after the plan kernel, with one read; none can be read while the
  // stream is captured into a CUDA graph, and the caller may waive the read (check=False): the plan kernel asserts
  // them then (docs/ARCHITECTURE.md §3.4).
  a.device_asserts = !check || captured;
  TORCH_CHECK_VALUE(!a.device_asserts || width.has_value(),
                    "sdtp.select_tokens: argument 'width' is required under CUDA graph capture (the output width "
                    "cannot be read back to the host while capturing)");
  a.counts = counts.data_ptr<int64_t>();

  // Chunks: enough CTAs over all rows to fill the device a few times over, each a whole number of tiles.
  const int64_t target_ctas = 4 * int64_t(cuda::device_sm_count());
  const int64_t per_cta = std::max<int64_t>(1, ceil_div<int64_t>(B * std::max<int64_t>(N, 1), target_ctas));
  a.chunk_len = ceil_div<int64_t>(per_cta, kTile) * kTile;
  a.chunks = std::max<int64_t>(1, ceil_div<int64_t>(N, a.chunk_len));
  Workspace ws = make_workspace(B, a.chunks, scores.options());
  a.info = ws.info;
  a.state = ws.state;
  a.hist = ws.hist;
  a.chunk_counts = ws.chunk_counts;

  // Without a mask every row has L = N valid tokens, so with keep / num_local on the CPU the kept counts (and K)
  // are known here: no device-to-host read, and a too-small `width` is a clean error as on the CPU.
  int64_t K = -1;  // the output width, once known
  if (!valid.defined() && keep_host.defined() && local_host.defined()) {
    int64_t kept_max = 0;
    const int64_t* kp = keep_host.data_ptr<int64_t>();
    const int64_t* lp = local_host.data_ptr<int64_t>();
    for (int64_t b = 0; b < B; ++b) kept_max = std::max(kept_max, plan_row(N, kp[b], num_sink, lp[b]).kept);
    K = check_width(width, kept_max);
  }

  plan_kernel<<<B, kThreads, 0, stream>>>(a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (K < 0) {
    if (a.device_asserts) {
      K = *width;
    } else {
      // The one device-to-host read: the largest kept count and the smallest device keep / num_local, checked
      // with the CPU op's messages before any other kernel runs.
      std::vector<at::Tensor> stats = {counts.max()};
      const bool keep_on_device = !keep_host.defined(), local_on_device = !local_host.defined();
      if (keep_on_device) stats.push_back(keep_holder.min());
      if (local_on_device) stats.push_back(local_holder.min());
      const auto host = at::stack(stats).cpu();
      const int64_t* v = host.data_ptr<int64_t>();
      int64_t next = 1;
      if (keep_on_device) check_row_min("keep", v[next++]);
      if (local_on_device) check_row_min("num_local", v[next++]);
      K = check_width(width, v[0]);
    }
  }
  auto index = at::empty({B, K}, long_opts);
  if (K == 0) return {index, counts};
  if (N == 0) return {index.fill_(-1), counts};
  a.K = K;
  a.index = index.data_ptr<int64_t>();

  SDTP_DISPATCH_FLOATING(scores.scalar_type(), "sdtp_select_tokens_cuda", [&] {
    const scalar_t* s = scores.data_ptr<scalar_t>();
    for (int64_t row0 = 0; row0 < B; row0 += kMaxGridY) {
      const dim3 grid(static_cast<unsigned>(a.chunks), static_cast<unsigned>(std::min(kMaxGridY, B - row0)));
      for (int pass = 0; pass < kPasses; ++pass) {
        radix_pass_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(a, s, pass, row0);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
      count_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(a, s, row0);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      emit_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(a, s, row0);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {index, counts};
}

}  // namespace sdtp
