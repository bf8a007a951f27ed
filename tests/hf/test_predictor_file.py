"""The saved-predictor format (docs/ARCHITECTURE.md §5.3): what is written reads back, a damaged or mismatched
directory is refused by `read_predictors` with the file and the field named (not at a later strict load, nor as a
bare TypeError), and a failed write leaves the directory as it was."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from sdtp_kernels import predictor_file
from sdtp_kernels.config import SDTPConfig
from sdtp_kernels.predictor import SaliencyPredictor
from sdtp_kernels.predictor_file import CONFIG_FILE, TRAIN_OPTIONS_FILE, WEIGHTS_FILE, read_predictors, write_predictors

CONFIG = SDTPConfig(start_layer=1, layer_step=1, num_stages=2, predictor_hidden=4)


def _write(directory, predictors=None):
    torch.manual_seed(0)
    predictors = predictors or [SaliencyPredictor(8, 4) for _ in range(2)]
    write_predictors(directory, CONFIG, 8, [1, 2], "llama", predictors)
    return predictors


def test_written_predictors_read_back(tmp_path):
    np = pytest.importorskip("numpy")
    predictors = _write(tmp_path)
    saved = read_predictors(tmp_path)
    assert (saved.config, saved.hidden_size, saved.stage_layers, saved.model_type) == (CONFIG, 8, [1, 2], "llama")
    expected = torch.nn.ModuleList(predictors).state_dict()
    assert saved.state.keys() == expected.keys()
    assert all(torch.equal(saved.state[k], expected[k]) for k in expected)
    # One module for two stages (tensors that share memory) and numpy sizes are written too.
    shared = SaliencyPredictor(8, 4)
    write_predictors(tmp_path / "shared", CONFIG, np.int64(8), [np.int64(1), 2], None, [shared, shared])
    assert read_predictors(tmp_path / "shared").hidden_size == 8
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == [CONFIG_FILE, WEIGHTS_FILE]  # no .tmp left


def _saved_config(directory):
    return json.loads((directory / CONFIG_FILE).read_text())


@pytest.mark.parametrize("change, message", [
    (lambda saved: [1, 2], "must hold a JSON object, got list"),
    (lambda saved: {**saved, "config": None}, "'config' must be an object of SDTPConfig fields"),
    (lambda saved: {**saved, "hidden_size": 7.9}, "'hidden_size' must be an int >= 1, got 7.9"),
    (lambda saved: {**saved, "hidden_size": True}, "'hidden_size' must be an int >= 1, got True"),
    (lambda saved: {**saved, "stage_layers": "12"}, "'stage_layers' must be a non-empty list"),
    (lambda saved: {**saved, "stage_layers": None}, "'stage_layers' must be a non-empty list"),
    (lambda saved: {**saved, "model_type": 5}, "'model_type' must be a string or null"),
    (lambda saved: {key: v for key, v in saved.items() if key != "hidden_size"}, r"lacks the field\(s\)"),
])
def test_a_damaged_config_file_is_refused_naming_it(tmp_path, change, message):
    _write(tmp_path)
    (tmp_path / CONFIG_FILE).write_text(json.dumps(change(_saved_config(tmp_path))))
    with pytest.raises(ValueError, match=f"{CONFIG_FILE}.*{message}"):
        read_predictors(tmp_path)


@pytest.mark.parametrize("name", [CONFIG_FILE, TRAIN_OPTIONS_FILE])
def test_broken_json_is_refused_naming_the_file(tmp_path, name):
    _write(tmp_path)
    (tmp_path / name).write_text('{"config": ')
    with pytest.raises(ValueError, match=f"{name} is not valid JSON"):
        read_predictors(tmp_path)
    (tmp_path / name).write_text("[1]")
    with pytest.raises(ValueError, match=f"{name} must hold a JSON object"):
        read_predictors(tmp_path)


def _without(tensors, key):
    return {k: v for k, v in tensors.items() if k != key}


@pytest.mark.parametrize("change, message", [
    (lambda t: _without(t, "stage2.fc2.bias"), r"lacks the tensor\(s\) \['stage2.fc2.bias'\]"),
    (lambda t: {**t, "stage1.norm_weight": torch.ones(5)}, "'stage1.norm_weight' is torch.float32 of shape .5."),
    (lambda t: {**t, "stage1.fc1.bias": torch.zeros(4, dtype=torch.int64)}, "expected a floating-point tensor"),
    (lambda t: {**t, "stage3.fc1.bias": torch.zeros(4)}, "unexpected tensor 'stage3.fc1.bias'.*2 stage"),
    (lambda t: {**t, "stage1.fc3.bias": torch.zeros(4)}, "unexpected tensor 'stage1.fc3.bias'"),
    # stage01 would have been read as stage 1, one of the two tensors dropped without a word
    (lambda t: {**t, "stage01.fc1.bias": torch.zeros(4)}, "unexpected tensor 'stage01.fc1.bias'"),
    (lambda t: {**t, "stage2.fc1.weight": torch.full((4, 8), float("nan"))}, r"\['stage2.fc1.weight'\] hold NaN"),
])
def test_weights_that_do_not_match_the_config_are_refused(tmp_path, change, message):
    _write(tmp_path)
    save_file(change(load_file(tmp_path / WEIGHTS_FILE)), tmp_path / WEIGHTS_FILE)
    with pytest.raises(ValueError, match=message):
        read_predictors(tmp_path)


def test_a_corrupt_weights_file_is_refused_naming_it(tmp_path):
    _write(tmp_path)
    (tmp_path / WEIGHTS_FILE).write_bytes(b"garbage")
    with pytest.raises(ValueError, match=f"{WEIGHTS_FILE} is not a readable safetensors file"):
        read_predictors(tmp_path)


def test_a_failed_write_leaves_the_directory_as_it_was(tmp_path, monkeypatch):
    _write(tmp_path)
    before = {name: (tmp_path / name).read_bytes() for name in (CONFIG_FILE, WEIGHTS_FILE)}
    bad = [SaliencyPredictor(8, 4) for _ in range(2)]
    with torch.no_grad():
        bad[1].fc1.bias.fill_(float("inf"))
    with pytest.raises(ValueError, match="hold NaN or infinite values"):
        write_predictors(tmp_path, CONFIG, 8, [1, 2], "llama", bad)
    with pytest.raises(ValueError, match="1 predictors for 2 stage layers"):
        write_predictors(tmp_path, CONFIG, 8, [1, 2], "llama", bad[:1])

    def disk_full(tensors, path):
        open(path, "wb").write(b"partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(predictor_file, "save_safetensors", disk_full)
    with pytest.raises(OSError, match="No space"):
        _write(tmp_path)
    assert {name: (tmp_path / name).read_bytes() for name in (CONFIG_FILE, WEIGHTS_FILE)} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]
