"""What pruning cannot serve yet is refused when the engine's configuration is made, before any process starts,
each with a message naming the feature and what to pass instead (docs/ARCHITECTURE.md §7.4)."""
import os

import pytest

from engine import ENGINE, start
from tiny import write_exported_model


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_exported_model(tmp_path_factory.mktemp("sdtp"))


def _refused(folder, match, error=ValueError, **engine):
    with pytest.raises(error, match=match):
        start(folder, **engine)


def test_prefix_caching(folder):
    _refused(folder, "prefix caching.*--no-enable-prefix-caching", enable_prefix_caching=True)


def test_chunked_prefill(folder):
    _refused(folder, "chunked prefill.*--no-enable-chunked-prefill", enable_chunked_prefill=True)


def test_speculative_decoding(folder):
    _refused(folder, "speculative decoding",
             speculative_config={"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_max": 3})


def test_pooling(folder):
    _refused(folder, "pooling", runner="pooling")


def test_lora(folder):
    _refused(folder, "LoRA.*enable_lora", enable_lora=True)


def test_predictor_width_override(folder):
    _refused(folder, "predictor_hidden = 8; the width of saved predictors cannot be changed",
             hf_overrides={"sdtp_predictor_hidden": 8})


def test_unknown_schedule_override(folder):
    _refused(folder, "unknown schedule override.*sdtp_keep_rate", hf_overrides={"sdtp_keep_rate": 0.5})


def test_moved_vllm_internals_name_the_version(folder, monkeypatch):
    import vllm

    from sdtp_kernels.vllm import engine_checks

    moved = engine_checks._INTERNALS + [("vllm.v1.worker.gpu_model_runner", "GPUModelRunner._no_such_method")]
    monkeypatch.setattr(engine_checks, "_INTERNALS", moved)
    _refused(folder, f"tested with vLLM 0.32.0; the installed vLLM {vllm.__version__} lacks .*_no_such_method",
             error=RuntimeError)


def test_the_v2_model_runner(folder, monkeypatch):
    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "1")
    _refused(folder, "V2 model runner .VLLM_USE_V2_MODEL_RUNNER=1.*leave VLLM_USE_V2_MODEL_RUNNER unset")


def test_the_v1_model_runner_is_chosen_where_vllm_would_pick_v2(folder, monkeypatch):
    """vLLM picks its V2 runner wherever Triton is installed (every CUDA machine), where the pruned step, which runs in
    the V1 runner, would never run: SDTP sets VLLM_USE_V2_MODEL_RUNNER=0 unless the user set it."""
    import vllm.config.vllm
    from vllm.engine.arg_utils import EngineArgs

    monkeypatch.setattr(vllm.config.vllm, "HAS_TRITON", True)  # as on a CUDA machine
    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "")  # recorded as unset, so that the test leaves it unset
    monkeypatch.delenv("VLLM_USE_V2_MODEL_RUNNER")
    config = EngineArgs(model=str(folder), **ENGINE).create_engine_config()
    assert not config.use_v2_model_runner
    assert os.environ["VLLM_USE_V2_MODEL_RUNNER"] == "0"


def test_a_long_prefill_threshold(folder):
    """The scheduler cuts a prompt to the threshold whenever several requests wait, chunked prefill or not."""
    _refused(folder, "long_prefill_token_threshold = 64.*leave it 0", long_prefill_token_threshold=64)


@pytest.mark.parametrize("engine", [
    {"kv_transfer_config": {"kv_connector": "ExampleConnector", "kv_role": "kv_both"}},
    {"kv_offloading_size": 1.0},
])
def test_kv_connectors_and_offloading(folder, engine):
    _refused(folder, "KV connector or KV offloading.*leave kv_transfer_config and kv_offloading_size unset", **engine)


def test_streaming_input_is_refused_per_request(folder):
    """A streaming session resumes its request chunk by chunk over pruned layers' compacted KV: refused as the request
    is made (the engine serves the others), never a worker error that stops the engine."""
    from vllm import SamplingParams
    from vllm.engine.arg_utils import EngineArgs
    from vllm.v1.engine.input_processor import InputProcessor

    processor = InputProcessor(EngineArgs(model=str(folder), **ENGINE).create_engine_config())
    request = dict(request_id="r", prompt={"prompt_token_ids": [1, 2, 3]}, params=SamplingParams(max_tokens=1),
                   supported_tasks=("generate",))
    with pytest.raises(ValueError, match="cannot serve streaming input.*send the whole prompt in one request"):
        processor.process_inputs(**request, resumable=True)
    assert processor.process_inputs(**request).request_id == "r"
