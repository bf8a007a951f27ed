// The CUDA kernels of the `sdtp` ops (ops.h), registered from a host-compiled file (see ops.h).
#include <torch/library.h>

#include "ops.h"

namespace sdtp {

TORCH_LIBRARY_IMPL(sdtp, CUDA, m) {
  m.impl("saliency_score", &saliency_score_cuda);
  m.impl("select_tokens", &select_tokens_cuda);
  m.impl("compact", &compact_cuda);
  m.impl("compact_varlen", &compact_varlen_cuda);
}

}  // namespace sdtp
