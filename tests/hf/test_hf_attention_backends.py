"""The SDPA order of the pruned layers (docs/ARCHITECTURE.md §4.6): FlashAttention and memory-efficient attention ahead
of cuDNN in decoding forwards by default, restored when the forward ends. The order is process-wide state that
torch keeps whatever the device, so its handling is checked here on the CPU (a "cuda" device object needs no GPU);
which kernels then run is checked on a GPU."""
import contextlib
import functools

import pytest
import torch
from conftest import NEEDS_CUDA
from hf_tiny import LAYERS, PRUNING, prompts, tiny_model
from torch.nn.attention import SDPBackend, _cur_sdpa_kernel_backends, sdpa_kernel

from sdtp_kernels.hf import apply_sdtp, runtime, sdtp_disabled
from sdtp_kernels.hf.attention_backends import AVOID_CUDNN_ENV, avoid_cudnn_when, cudnn_last_order, pruned_layer_sdpa

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # past_key_values, renamed in transformers 5.24
CUDA = torch.device("cuda")
FLASH, EFFICIENT, CUDNN, MATH = (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                                 SDPBackend.CUDNN_ATTENTION, SDPBackend.MATH)


def order():
    """The enabled backends, first choice first."""
    return [b for b in _cur_sdpa_kernel_backends(with_priority=True) if b != SDPBackend.OVERRIDEABLE]


def hopper_order():
    """torch's own order on Hopper and Blackwell: cuDNN first."""
    return sdpa_kernel([CUDNN, FLASH, EFFICIENT, MATH], set_priority=True)


@pytest.mark.parametrize("value, expected", [(None, "decode"), ("", "decode"), ("decode", "decode"),
                                             ("always", "always"), ("never", "never")])
def test_the_environment_variable(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv(AVOID_CUDNN_ENV, raising=False)
    else:
        monkeypatch.setenv(AVOID_CUDNN_ENV, value)
    assert avoid_cudnn_when() == expected


def test_a_wrong_value_is_refused_by_name_on_every_device(monkeypatch):
    monkeypatch.setenv(AVOID_CUDNN_ENV, "sometimes")
    with pytest.raises(ValueError, match=f"{AVOID_CUDNN_ENV} must be one of decode, always, never, got 'sometimes'"):
        avoid_cudnn_when()
    model = apply_sdtp(tiny_model("llama", "sdpa"), PRUNING)
    ids, mask = prompts()
    with torch.no_grad(), pytest.raises(ValueError, match=AVOID_CUDNN_ENV):
        model(ids, attention_mask=mask)


@pytest.mark.parametrize("enabled, expected", [
    ([CUDNN, FLASH, EFFICIENT, MATH], [FLASH, EFFICIENT, CUDNN, MATH]),
    ([CUDNN, EFFICIENT], [EFFICIENT, CUDNN]),
    ([FLASH, EFFICIENT, MATH], None),  # cuDNN off: nothing to avoid
    ([CUDNN, MATH], None),  # nothing to put ahead of it
])
def test_cudnn_last_order(enabled, expected):
    with sdpa_kernel(enabled, set_priority=True):
        assert cudnn_last_order() == expected


@pytest.mark.parametrize("when, decoding, reordered", [
    ("decode", True, True), ("decode", False, False), ("always", False, True), ("always", True, True),
    ("never", True, False),
])
def test_when_the_order_changes_and_that_it_is_restored(monkeypatch, when, decoding, reordered):
    monkeypatch.setenv(AVOID_CUDNN_ENV, when)
    with hopper_order():
        before = order()
        with pruned_layer_sdpa(CUDA, decoding, "sdpa"):
            assert order() == ([FLASH, EFFICIENT, CUDNN, MATH] if reordered else before)
        assert order() == before
        for device, attn in ((torch.device("cpu"), "sdpa"), (CUDA, "eager")):  # no SDPA on CUDA: nothing to do
            with pruned_layer_sdpa(device, decoding, attn):
                assert order() == before


@contextlib.contextmanager
def as_if_on_cuda(monkeypatch):
    """The runtime's forwards on the CPU take the path of a CUDA device."""
    real = runtime.pruned_layer_sdpa
    monkeypatch.setattr(runtime, "pruned_layer_sdpa", lambda device, *args: real(CUDA, *args))
    yield


def test_a_generate_reorders_only_the_pruned_layers_of_decoding_forwards(monkeypatch):
    monkeypatch.delenv(AVOID_CUDNN_ENV, raising=False)
    model = tiny_model("llama", "sdpa")
    seen = []  # (decoding, layer, first choice) of every attention call
    forwards = []  # SDTP's state of each forward, kept alive: the order must not wait for it to be collected

    def note(module, args, kwargs, index):
        seen.append((kwargs["hidden_states"].shape[1] == 1, index, order()[0]))
        forwards.append(model._sdtp_runtime.forward)

    for index, layer in enumerate(model.model.layers):
        layer.self_attn.register_forward_pre_hook(functools.partial(note, index=index), with_kwargs=True)
    apply_sdtp(model, PRUNING)
    ids, mask = prompts()
    with as_if_on_cuda(monkeypatch), hopper_order(), torch.no_grad():
        model.generate(ids, attention_mask=mask, max_new_tokens=3, do_sample=False)
        assert order()[0] == CUDNN  # restored after every forward
    assert len(seen) == 3 * LAYERS  # a prefill and two decoding forwards
    for decoding, index, first in seen:
        assert first == (FLASH if decoding and index >= PRUNING.start_layer else CUDNN), (decoding, index)


def test_a_forward_that_raises_restores_the_order(monkeypatch):
    monkeypatch.delenv(AVOID_CUDNN_ENV, raising=False)
    model = apply_sdtp(tiny_model("llama", "sdpa"), PRUNING)
    ids, mask = prompts()
    with as_if_on_cuda(monkeypatch), hopper_order(), torch.no_grad():
        cache = model(ids, attention_mask=mask, use_cache=True).past_key_values

        forwards = []  # kept alive, as a traceback may keep it

        def fail(*args):
            forwards.append(model._sdtp_runtime.forward)
            raise RuntimeError("a layer failed")

        model.model.layers[-1].register_forward_pre_hook(fail)
        with pytest.raises(RuntimeError, match="a layer failed"):
            model(ids[:, -1:], attention_mask=torch.cat([mask, mask[:, -1:]], 1), past_key_values=cache)
        assert order()[0] == CUDNN


@pytest.mark.parametrize("when", [pytest.param(when, marks=NEEDS_CUDA) for when in ("decode", "never")])
def test_pruned_layers_decode_without_cudnn_on_a_gpu(monkeypatch, when):
    """On a GPU whose torch prefers cuDNN attention (Hopper, Blackwell) the dense model's decoding calls it in every
    layer; an SDTP model's only in the layers before the first stage (with `never`: in every layer)."""
    monkeypatch.setenv(AVOID_CUDNN_ENV, when)
    # As many key/value heads as query heads: grouped queries would keep cuDNN out of it on some versions.
    model = apply_sdtp(tiny_model("llama", "sdpa", num_key_value_heads=4).to("cuda", torch.bfloat16), PRUNING)
    ids = prompts(batch=1)[0].cuda()

    def cudnn_calls(new_tokens):
        with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as p:
            model.generate(ids, max_new_tokens=new_tokens, do_sample=False)
        return sum(e.count for e in p.key_averages() if e.key == "aten::_scaled_dot_product_cudnn_attention")

    steps = 4
    decoding = cudnn_calls(1 + steps) - cudnn_calls(1)  # the attention calls of `steps` decoding forwards
    with sdtp_disabled(model):
        dense = cudnn_calls(1 + steps) - cudnn_calls(1)
    if dense == 0:
        pytest.skip(f"torch does not choose cuDNN attention on {torch.cuda.get_device_name()}")
    assert dense == steps * LAYERS
    assert decoding == steps * (LAYERS if when == "never" else PRUNING.start_layer)
