"""What pruning cannot serve yet is refused when the engine's configuration is made, before any process starts,
each with a message naming the feature and what to pass instead (docs/ARCHITECTURE.md §7.4)."""
import pytest

from engine import start
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
