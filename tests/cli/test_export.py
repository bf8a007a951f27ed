"""`sdtp export` refuses, before it writes anything, a model folder vLLM could not serve from the export (it needs
no vLLM: the export is plain files)."""
import pytest
import torch
from hf_tiny import PRUNING, tiny_model

from sdtp_kernels.hf import apply_sdtp, save_sdtp
from sdtp_kernels.vllm.export import export


def test_a_model_with_only_bin_weights_is_refused(tmp_path):
    """vLLM loads *.safetensors when a folder has any, and the export holds the predictors' file: the model's .bin
    weights would be left unloaded."""
    model = tiny_model("llama")
    model.save_pretrained(tmp_path / "model")
    (tmp_path / "model" / "model.safetensors").unlink()  # an older checkpoint's layout: pytorch_model.bin only
    torch.save(model.state_dict(), tmp_path / "model" / "pytorch_model.bin")
    save_sdtp(apply_sdtp(tiny_model("llama"), PRUNING), tmp_path / "predictors")
    with pytest.raises(ValueError, match=r"holds no \*\.safetensors weights.*save_pretrained"):
        export(str(tmp_path / "model"), str(tmp_path / "predictors"), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    model.save_pretrained(tmp_path / "model")  # the same model as safetensors exports
    assert export(str(tmp_path / "model"), str(tmp_path / "predictors"), str(tmp_path / "out"))
