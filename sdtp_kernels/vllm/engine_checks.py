"""Engine-start checks of an SDTP model (docs/ARCHITECTURE.md §7.4): vLLM's internals are where the plugin expects
them, the schedule loads, and every feature pruning cannot serve yet is refused with a message saying what to
pass instead. Runs from vLLM's per-architecture config hook, when the engine's configuration is made."""
from __future__ import annotations

import dataclasses
import logging
import os

from .architectures import TESTED_VLLM_VERSIONS
from .defaults import WRAPPED
from .schedule import served_schedule

logger = logging.getLogger(__name__)

# What the plugin reads of vLLM: (module, attribute path).
_INTERNALS = [
    ("vllm.v1.worker.gpu_model_runner", "GPUModelRunner._model_forward"),
    ("vllm.v1.engine.input_processor", "InputProcessor.process_inputs"),
    ("vllm.v1.worker.gpu_input_batch", "CachedRequestState"),
    ("vllm.v1.worker.gpu_input_batch", "InputBatch"),
    ("vllm.v1.worker.utils", "AttentionGroup.build_metadata"),
    ("vllm.v1.worker.block_table", "BlockTable.get_device_tensor"),
    ("vllm.forward_context", "get_forward_context"),
    ("vllm.model_executor.layers.attention", "Attention"),
    ("vllm.model_executor.models.config", "MODELS_CONFIG_MAP"),
    ("vllm.config", "VllmConfig.use_v2_model_runner"),
    *(("vllm.config", f"ModelConfig.{name}") for name in WRAPPED),
]
# vLLM's switch between its model runners; the pruned step runs in the V1 runner (runner_link.py).
V2_RUNNER_ENV = "VLLM_USE_V2_MODEL_RUNNER"
_COMMON_FIELDS = {"query_start_loc", "query_start_loc_cpu", "seq_lens", "seq_lens_cpu_upper_bound", "num_reqs",
                  "num_actual_tokens", "max_query_len", "max_seq_len", "block_table_tensor", "slot_mapping",
                  "causal", "positions", "is_prefilling"}
_FORWARD_CONTEXT_FIELDS = {"attn_metadata", "slot_mapping"}
_REQUEST_FIELDS = {"req_id", "prompt_token_ids", "num_computed_tokens"}


def _missing_internals() -> list[str]:
    import importlib

    missing = []
    for module_name, path in _INTERNALS:
        try:
            target = importlib.import_module(module_name)
            for part in path.split("."):
                target = getattr(target, part)
        except (ImportError, AttributeError):
            missing.append(f"{module_name}.{path}")
    from vllm.forward_context import ForwardContext
    from vllm.v1.attention.backend import CommonAttentionMetadata
    from vllm.v1.worker.gpu_input_batch import CachedRequestState

    for cls, needed in ((CommonAttentionMetadata, _COMMON_FIELDS), (ForwardContext, _FORWARD_CONTEXT_FIELDS),
                        (CachedRequestState, _REQUEST_FIELDS)):
        have = {f.name for f in dataclasses.fields(cls)}
        missing += [f"{cls.__name__}.{name}" for name in sorted(needed - have)]
    return missing


def check_internals() -> None:
    """Refuse a vLLM whose internals moved, naming its version and the tested ones."""
    import vllm

    missing = _missing_internals()
    if missing:
        raise RuntimeError(f"SDTP's vLLM plugin is tested with vLLM {', '.join(TESTED_VLLM_VERSIONS)}; the "
                           f"installed vLLM {vllm.__version__} lacks what it relies on: {missing}")
    if vllm.__version__ not in TESTED_VLLM_VERSIONS:
        logger.warning("SDTP's vLLM plugin is tested with vLLM %s, this is %s; its internals checks passed",
                       ", ".join(TESTED_VLLM_VERSIONS), vllm.__version__)


def choose_v1_runner() -> None:
    """Where V2_RUNNER_ENV is unset, set it to 0. vLLM picks its V2 model runner wherever Triton is installed (every
    CUDA machine), and that runner never calls the V1 runner's _model_forward that runner_link wraps, so SDTP models
    would serve every request unpruned. Set here, while the engine's configuration is made: its processes start later
    and inherit it."""
    if os.environ.get(V2_RUNNER_ENV) is None:
        os.environ[V2_RUNNER_ENV] = "0"
        logger.info("SDTP: using vLLM's V1 model runner (%s=0), the one its pruned step runs in", V2_RUNNER_ENV)


def refusals(vllm_config) -> list[str]:
    """What in this configuration pruning cannot serve, each with what to pass instead."""
    model, cache = vllm_config.model_config, vllm_config.cache_config
    scheduler, parallel = vllm_config.scheduler_config, vllm_config.parallel_config
    found = []
    if cache.enable_prefix_caching:
        found.append("prefix caching (a cached prefix would hold K/V of pruned layers for tokens another prompt "
                     "keeps): leave it unset, off by default for SDTP models (or --no-enable-prefix-caching)")
    if getattr(scheduler, "long_prefill_token_threshold", 0):
        found.append(f"long_prefill_token_threshold = {scheduler.long_prefill_token_threshold} (the scheduler cuts "
                     "a prompt to it whenever several requests wait, chunked prefill or not): leave it 0")
    if scheduler.enable_chunked_prefill:
        found.append("chunked prefill (a prompt split over steps cannot be ranked as a whole): leave it unset, off by "
                     "default for SDTP models (or --no-enable-chunked-prefill, with max_num_batched_tokens >= "
                     f"max_model_len = {model.max_model_len})")
    if vllm_config.speculative_config is not None:
        found.append("speculative decoding (draft tokens are verified several at a time): leave "
                     "speculative_config unset")
    if model.runner_type == "pooling":
        found.append("pooling (it reads the hidden states of every prompt token): serve the model for generation")
    if vllm_config.kv_transfer_config is not None or getattr(cache, "kv_offloading_size", None) is not None:
        found.append("a KV connector or KV offloading (an external cache hit resumes a prompt part-way, and the K/V "
                     "of pruned layers it would save is compacted, in no dense engine's order): leave "
                     "kv_transfer_config and kv_offloading_size unset")
    if parallel.pipeline_parallel_size > 1:
        found.append("pipeline parallelism: use pipeline_parallel_size=1 (tensor parallelism is supported)")
    if parallel.decode_context_parallel_size > 1:
        found.append("decode context parallelism: use decode_context_parallel_size=1")
    if vllm_config.use_v2_model_runner:
        found.append(f"vLLM's V2 model runner ({V2_RUNNER_ENV}=1, or a feature that needs it): SDTP's pruned step runs "
                     f"in the V1 runner; leave {V2_RUNNER_ENV} unset (SDTP then sets it to 0) or set it to 0")
    if vllm_config.lora_config is not None:
        found.append("LoRA (its kernels index the step's tokens, which pruned layers no longer hold): serve without "
                     "enable_lora")
    if model.get_sliding_window() is not None:
        found.append(f"a sliding window ({model.get_sliding_window()} tokens) counts compacted KV entries, not "
                     "positions: serve the model without one (disable_sliding_window=True)")
    return found


class SDTPEngineChecks:
    """vLLM's per-architecture config hook (`VerifyAndUpdateConfig`'s interface) for the SDTP architectures."""

    @staticmethod
    def verify_and_update_config(vllm_config) -> None:
        check_internals()
        model = vllm_config.model_config
        served_schedule(model.model, model.hf_config)  # a bad folder or override fails here, not in a worker
        choose_v1_runner()
        refused = refusals(vllm_config)
        if refused:
            raise ValueError(f"SDTP ({model.architecture}) cannot serve with " + "; ".join(refused))
        if not model.enforce_eager:
            # Kept counts differ per step and the layers' metadata is replaced inside forward(): neither a compiled
            # graph nor a captured CUDA graph can follow.
            logger.info("SDTP: running the model eagerly (enforce_eager=True): no torch.compile, no CUDA graphs")
            model.enforce_eager = True

    @staticmethod
    def verify_and_update_model_config(model_config) -> None:
        return
