"""SDTPConfig (fields, validation, schedule, JSON) and SaliencyPredictor (score vs logits)."""
import math

import pytest
import torch

from sdtp_kernels.config import SDTPConfig
from sdtp_kernels.predictor import SaliencyPredictor


def test_defaults_are_the_design_ones():
    c = SDTPConfig()
    assert (c.start_layer, c.layer_step, c.num_stages) == (4, 3, None)
    assert (c.keep_ratio, c.num_sink, c.local_ratio, c.predictor_hidden) == (0.9, 4, 0.1, None)
    assert c.predictor_width(512) == 128


@pytest.mark.parametrize(
    "field, value",
    [
        ("keep_ratio", 0.0), ("keep_ratio", 1.5), ("keep_ratio", float("nan")), ("keep_ratio", True),
        ("start_layer", 0), ("start_layer", 2.0), ("layer_step", 0), ("num_stages", 0), ("num_sink", -1),
        ("local_ratio", -0.1), ("local_ratio", 1.1), ("predictor_hidden", 0), ("predictor_hidden", "8"),
    ],
)
def test_invalid_fields_raise_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"SDTPConfig.{field}"):
        SDTPConfig(**{field: value})


def test_stage_layers():
    assert SDTPConfig().stage_layers(16) == [4, 7, 10, 13]
    assert SDTPConfig().stage_layers(32) == list(range(4, 32, 3))
    assert SDTPConfig(num_stages=2).stage_layers(16) == [4, 7]
    with pytest.raises(ValueError, match="start_layer = 4 is beyond the model: it has 4 decoder layers"):
        SDTPConfig().stage_layers(4)
    with pytest.raises(ValueError, match="num_stages = 5 does not fit.*room for 4"):
        SDTPConfig(num_stages=5).stage_layers(16)


def test_counts_are_exact_ceilings_of_the_written_ratios():
    c = SDTPConfig(num_sink=0, local_ratio=0.0)
    assert c.kept_count(100, 2) == 81  # 0.9**2 * 100 is 81.00000000000001 in floating point
    assert c.kept_count(100, 0) == 100
    assert [c.kept_count(10, s) for s in (1, 2, 3)] == [9, 9, 8]
    assert SDTPConfig().local_count(30) == 3  # 0.1 * 30 is 3.0000000000000004
    assert SDTPConfig().local_count(31) == 4


def test_kept_count_never_below_the_protected_tokens():
    c = SDTPConfig(keep_ratio=0.1, num_sink=4, local_ratio=0.1)
    assert c.kept_count(100, 3) == 4 + 10
    assert c.kept_count(5, 3) == 5  # sink and local cover the whole row
    assert c.kept_count(0, 1) == 0


def test_numpy_ratios_count_as_the_decimal_they_print():
    """np.float32(0.1) is 0.10000000149011612: stored as it was, ceil(local_ratio * 30) would be 4."""
    np = pytest.importorskip("numpy")
    c = SDTPConfig(keep_ratio=np.float32(0.3), num_sink=0, local_ratio=np.float32(0.1))
    assert (c.keep_ratio, c.local_ratio) == (0.3, 0.1) and type(c.keep_ratio) is float
    assert c.local_count(30) == 3 and c.kept_count(10, 1) == 3


@pytest.mark.parametrize("call, name", [
    (lambda c: c.kept_count(100, -1), "stage"), (lambda c: c.kept_count(-5, 1), "length"),
    (lambda c: c.kept_count(5, True), "stage"), (lambda c: c.local_count(5, -1), "tail"),
])
def test_counts_refuse_impossible_arguments(call, name):
    with pytest.raises(ValueError, match=f"argument '{name}' must be an int >= 0"):
        call(SDTPConfig())


def test_json_round_trip_and_unknown_fields():
    c = SDTPConfig(start_layer=2, num_stages=3, keep_ratio=0.7, predictor_hidden=32)
    assert SDTPConfig.from_json(c.to_json()) == c
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['keep'\]"):
        SDTPConfig.from_dict({"keep": 0.5})
    for not_an_object in (None, [1], "3"):
        with pytest.raises(ValueError, match="expected a dict of its fields"):
            SDTPConfig.from_dict(not_an_object) if not isinstance(not_an_object, str) else SDTPConfig.from_json("3")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_predictor_score_is_keep_minus_drop_logit(dtype):
    torch.manual_seed(0)
    p = SaliencyPredictor(32, 8)
    with torch.no_grad():
        p.norm_weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 5, 32).to(dtype)
    logits = p.logits(x)
    score = p.score(x)
    assert logits.shape == (2, 5, 2) and logits.dtype == torch.float32
    assert score.shape == (2, 5) and score.dtype == torch.float32
    expected = logits[..., SaliencyPredictor.KEEP] - logits[..., SaliencyPredictor.DROP]
    torch.testing.assert_close(score, expected, atol=1e-5, rtol=1e-5)
    assert not math.isnan(score.sum().item())


@pytest.mark.parametrize("weights", [torch.float16, torch.bfloat16])
def test_predictor_score_folds_the_second_layer_in_float32(weights):
    """score's keep-minus-drop row is taken in float32, as logits compute it: no rounding of its own in the weights'
    dtype. A float64 x is read as float32, as logits read it."""
    torch.manual_seed(1)
    p = SaliencyPredictor(64, 16).to(weights)
    x = torch.randn(3, 7, 64, dtype=torch.float64)
    expected = SaliencyPredictor.log_odds(p.logits(x))
    torch.testing.assert_close(p.score(x), expected, atol=2e-6, rtol=1e-5)
