#include "validate.h"

#include <ATen/core/Tensor.h>

#include <cmath>

namespace sdtp {
namespace {

void check_same_device(const at::Tensor& t, const char* name, const at::Tensor& ref, const char* ref_name,
                       const char* op) {
  TORCH_CHECK(t.device() == ref.device(), op, ": argument '", name, "' must be on the same device as '", ref_name,
              "' (", ref.device(), "), got ", t.device());
}

void check_floating(const at::Tensor& t, const char* name, const char* op) {
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), op, ": argument '", name,
                   "' must be a floating-point tensor, got ", t.scalar_type());
}

void check_row_argument(const at::Tensor& t, const char* name, int64_t B, const at::Tensor& scores) {
  const char* op = "sdtp.select_tokens";
  // Wider unsigned types are refused: CPU reductions have no kernels for them, and a uint64 would wrap in int64.
  const auto type = t.scalar_type();
  TORCH_CHECK_TYPE(type == at::kByte || (at::isIntegralType(type, /*includeBool=*/false) && at::isSignedType(type)),
                   op, ": argument '", name, "' must be an integer tensor (int8 to int64, or uint8), got ", type);
  TORCH_CHECK_VALUE(t.dim() == 0 || (t.dim() == 1 && t.size(0) == B), op, ": argument '", name,
                    "' must be a scalar or of shape [B] = [", B, "], got ", t.sizes());
  TORCH_CHECK(t.device().is_cpu() || t.device() == scores.device(), op, ": argument '", name,
              "' must be on the CPU or on the device of 'scores' (", scores.device(), "), got ", t.device());
  // Values in host memory are checked here, for free; the CUDA op checks device values after its one host read.
  if (t.device().is_cpu() && t.numel() > 0) check_row_min(name, t.min().item<int64_t>());
}

}  // namespace

int64_t check_score_inputs(const at::Tensor& hidden, const at::Tensor& norm_weight, const at::Tensor& w1,
                           const at::Tensor& b1, const at::Tensor& w2, const at::Tensor& b2, double eps) {
  const char* op = "sdtp.saliency_score";
  auto dt = hidden.scalar_type();
  TORCH_CHECK_TYPE(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16, op,
                   ": argument 'hidden' must be float32, float16 or bfloat16, got ", dt);
  TORCH_CHECK_VALUE(hidden.dim() >= 1, op, ": argument 'hidden' must have shape [..., D], got a 0-d tensor");
  const int64_t D = hidden.size(-1);
  TORCH_CHECK_VALUE(D >= 1, op, ": argument 'hidden' must have D >= 1 features, got shape ", hidden.sizes());
  TORCH_CHECK_VALUE(w1.dim() == 2 && w1.size(1) == D && w1.size(0) >= 1, op,
                    ": argument 'w1' must have shape [H, D] with D = ", D, ", got ", w1.sizes());
  const int64_t H = w1.size(0);
  TORCH_CHECK_VALUE(norm_weight.dim() == 1 && norm_weight.size(0) == D, op,
                    ": argument 'norm_weight' must have shape [D] = [", D, "], got ", norm_weight.sizes());
  TORCH_CHECK_VALUE(b1.dim() == 1 && b1.size(0) == H, op, ": argument 'b1' must have shape [H] = [", H, "], got ",
                    b1.sizes());
  TORCH_CHECK_VALUE(w2.dim() == 1 && w2.size(0) == H, op, ": argument 'w2' must have shape [H] = [", H, "], got ",
                    w2.sizes());
  TORCH_CHECK_VALUE(b2.numel() == 1 && b2.dim() <= 1, op, ": argument 'b2' must be a scalar tensor, got shape ",
                    b2.sizes());
  TORCH_CHECK_VALUE(eps >= 0 && std::isfinite(eps), op, ": argument 'eps' must be finite and >= 0, got ", eps);
  const std::pair<const at::Tensor*, const char*> weights[] = {
      {&norm_weight, "norm_weight"}, {&w1, "w1"}, {&b1, "b1"}, {&w2, "w2"}, {&b2, "b2"}};
  for (const auto& [t, name] : weights) {
    check_floating(*t, name, op);
    check_same_device(*t, name, hidden, "hidden", op);
  }
  return D;
}

void check_select_inputs(const at::Tensor& scores, const at::Tensor& keep, const c10::optional<at::Tensor>& valid,
                         int64_t num_sink, const c10::optional<at::Tensor>& num_local,
                         c10::optional<int64_t> width, bool check) {
  const char* op = "sdtp.select_tokens";
  TORCH_CHECK_VALUE(scores.dim() == 2, op, ": argument 'scores' must have shape [B, N], got ", scores.sizes());
  auto dt = scores.scalar_type();
  TORCH_CHECK_TYPE(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16, op,
                   ": argument 'scores' must be float32, float16 or bfloat16, got ", dt);
  TORCH_CHECK_VALUE(scores.size(1) < (int64_t{1} << 31), op, ": argument 'scores' has N = ", scores.size(1),
                    " tokens; at most 2^31 - 1 are supported");
  const int64_t B = scores.size(0);
  check_row_argument(keep, "keep", B, scores);
  if (num_local.has_value()) check_row_argument(*num_local, "num_local", B, scores);
  TORCH_CHECK_VALUE(num_sink >= 0, op, ": argument 'num_sink' must be >= 0, got ", num_sink);
  if (width.has_value()) {
    TORCH_CHECK_VALUE(*width >= 0, op, ": argument 'width' must be >= 0, got ", *width);
  }
  TORCH_CHECK_VALUE(check || width.has_value(), op,
                    ": argument 'width' is required with check=False (the output width is not read back then)");
  if (valid.has_value()) {
    const auto& v = *valid;
    TORCH_CHECK_TYPE(v.scalar_type() == at::kBool || at::isIntegralType(v.scalar_type(), false), op,
                     ": argument 'valid' must be a bool or integer mask, got ", v.scalar_type());
    TORCH_CHECK_VALUE(v.sizes() == scores.sizes(), op, ": argument 'valid' must have the shape of 'scores' ",
                      scores.sizes(), ", got ", v.sizes());
    check_same_device(v, "valid", scores, "scores", op);
  }
}

int64_t check_compact_inputs(const at::Tensor& x, const at::Tensor& index, int64_t dim, const char* op) {
  TORCH_CHECK_VALUE(x.dim() >= 2, op, ": argument 'x' must have at least 2 dims [B, N, ...], got ", x.sizes());
  TORCH_CHECK_TYPE(index.scalar_type() == at::kLong, op, ": argument 'index' must be int64, got ",
                   index.scalar_type());
  TORCH_CHECK_VALUE(index.dim() == 2 && index.size(0) == x.size(0), op,
                    ": argument 'index' must have shape [B, K] with B = ", x.size(0), ", got ", index.sizes());
  check_same_device(index, "index", x, "x", op);
  const int64_t d = dim < 0 ? dim + x.dim() : dim;
  TORCH_CHECK_VALUE(d >= 1 && d < x.dim(), op, ": argument 'dim' must name a sequence dim in [1, ", x.dim() - 1,
                    "] (or its negative), got ", dim);
  return d;
}

void check_row_min(const char* name, int64_t min_value) {
  TORCH_CHECK_VALUE(min_value >= 0, "sdtp.select_tokens: argument '", name, "' must be >= 0, got ", min_value);
}

void check_index_bounds(int64_t lo, int64_t hi, int64_t N, const char* op) {
  TORCH_CHECK_INDEX(lo >= -1 && hi < N, op, ": argument 'index' values must lie in [-1, ", N, "), got [", lo, ", ",
                    hi, "]");
}

at::Tensor per_row(const at::Tensor& t, int64_t B, at::Device device) {
  return t.to(device, at::kLong).expand({B}).contiguous();
}

}  // namespace sdtp
