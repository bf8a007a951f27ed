// Input validation shared by the CPU and CUDA kernels: every op rejects bad input with an error that names the
// argument and what was expected, before any kernel runs.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

namespace sdtp {

// Checks hidden/weights of saliency_score; returns D.
int64_t check_score_inputs(const at::Tensor& hidden, const at::Tensor& norm_weight, const at::Tensor& w1,
                           const at::Tensor& b1, const at::Tensor& w2, const at::Tensor& b2, double eps);

// Checks select_tokens arguments. `keep` and `num_local` may be 0-d or [B], integer, on the CPU or on scores'
// device; `valid` is [B, N] bool or integer on scores' device.
void check_select_inputs(const at::Tensor& scores, const at::Tensor& keep, const c10::optional<at::Tensor>& valid,
                         int64_t num_sink, const c10::optional<at::Tensor>& num_local,
                         c10::optional<int64_t> width, bool check);

// Checks compact arguments; returns the normalised (non-negative) dim.
int64_t check_compact_inputs(const at::Tensor& x, const at::Tensor& index, int64_t dim, const char* op);

// select_tokens: a per-row argument's smallest value must be >= 0. The CPU checks it where it validates; the CUDA op
// checks device values after its one host read, with the same message.
void check_row_min(const char* name, int64_t min_value);

// compact / compact_varlen: index values lie in [-1, N); lo and hi are its smallest and largest value.
void check_index_bounds(int64_t lo, int64_t hi, int64_t N, const char* op);

// Per-row [B] int64 view of a 0-d or [B] integer argument, on `device`.
at::Tensor per_row(const at::Tensor& t, int64_t B, at::Device device);

}  // namespace sdtp
