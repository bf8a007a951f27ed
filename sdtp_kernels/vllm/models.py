"""SDTP variants of vLLM's own model classes (docs/ARCHITECTURE.md §7.3): subclasses that add the stage predictors,
prune each request's first pass at the stage layers (forward pre-hooks on vLLM's decoder layers, so the module
tree and weight names stay vLLM's), and return every request's last token in its original row."""
from __future__ import annotations

import functools
from typing import Iterable, Optional

import torch
from torch import nn
from vllm.distributed import get_tensor_model_parallel_world_size, get_tp_group
from vllm.forward_context import get_forward_context
from vllm.model_executor.layers.attention import Attention
from vllm.model_executor.models.llama import LlamaForCausalLM
from vllm.model_executor.models.mistral import MistralForCausalLM
from vllm.model_executor.models.qwen2 import Qwen2ForCausalLM
from vllm.model_executor.models.qwen3 import Qwen3ForCausalLM

from ..predictor import SaliencyPredictor
from ..predictor_file import key_stage
from .pruned_step import PrunedStep
from .runner_link import current_runner
from .schedule import served_schedule
from .step_plan import StepPlan, kept_counts


class SDTPModelMixin:
    """Put before a vLLM causal LM class; needs its `model.layers` decoder layers called as
    `layer(positions, hidden_states, residual)`."""

    def __init__(self, *, vllm_config, prefix: str = ""):
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        model_config = vllm_config.model_config
        self.sdtp_saved, self.sdtp_config = served_schedule(model_config.model, model_config.hf_config)
        layers = self.model.layers
        hidden_size = model_config.hf_config.hidden_size
        self.sdtp_stage_layers = self.sdtp_config.stage_layers(len(layers))
        width = self.sdtp_config.predictor_width(hidden_size)
        self.sdtp_predictors = nn.ModuleList(
            SaliencyPredictor(hidden_size, width).to(model_config.dtype) for _ in self.sdtp_stage_layers)
        # Per stage: the attention layers of the decoder layers that hold its tokens (up to the next stage).
        bounds = self.sdtp_stage_layers + [len(layers)]
        self._sdtp_stage_attention = [
            [m.layer_name for i in range(bounds[s], bounds[s + 1]) for m in layers[i].modules()
             if isinstance(m, Attention)]
            for s in range(len(self.sdtp_stage_layers))
        ]
        self._sdtp_step: Optional[PrunedStep] = None
        for index in range(self.sdtp_config.start_layer, len(layers)):
            layers[index].register_forward_pre_hook(functools.partial(self._sdtp_layer_inputs, index),
                                                    with_kwargs=True)

    def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None):
        step = self._sdtp_begin(positions)
        self._sdtp_step = step
        try:
            hidden = super().forward(input_ids, positions, intermediate_tensors, inputs_embeds)
        finally:
            self._sdtp_step = None
        return hidden if step is None else step.restore(hidden, positions.shape[0])

    def _sdtp_begin(self, positions: torch.Tensor) -> Optional[PrunedStep]:
        runner = current_runner()
        if runner is None:  # a dummy or profiling run: no requests
            return None
        plan = StepPlan(runner, self.sdtp_config, len(self.sdtp_stage_layers), positions.shape[0])
        if not plan.active:
            return None
        tp_group = get_tp_group() if get_tensor_model_parallel_world_size() > 1 else None
        return PrunedStep(runner, plan, self.sdtp_config, get_forward_context(), positions,
                          self._sdtp_stage_attention, tp_group)

    def _sdtp_layer_inputs(self, index: int, module: nn.Module, args: tuple, kwargs: dict):
        step = self._sdtp_step
        if step is None:
            return None
        if len(args) < 3:
            raise RuntimeError(f"SDTP: decoder layer {index} was called with {len(args)} positional arguments; "
                               "expected (positions, hidden_states, residual)")
        if index in self.sdtp_stage_layers:
            stage = self.sdtp_stage_layers.index(index) + 1
            hidden, residual, positions = step.enter_stage(stage, self.sdtp_predictors[stage - 1], args[1], args[2])
            return (positions, hidden, residual, *args[3:]), kwargs
        return (step.positions, *args[1:]), kwargs

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        # The predictor file (docs/ARCHITECTURE.md §5.3) sits beside the weights, and vLLM reads every *.safetensors
        # of a folder without an index; the predictors load from their own file instead.
        loaded = super().load_weights((name, w) for name, w in weights if key_stage(name) is None)
        self.sdtp_predictors.load_state_dict(self.sdtp_saved.state, strict=True)
        return set(loaded) | {f"sdtp_predictors.{name}" for name in self.sdtp_saved.state}

    def sdtp_kept_counts(self, runner) -> dict[str, Optional[list[int]]]:
        """Kept counts of stages 0..S of every request the runner holds (None: run unpruned)."""
        return {req_id: kept_counts(request) for req_id, request in runner.requests.items()}


class SDTPLlamaForCausalLM(SDTPModelMixin, LlamaForCausalLM):
    pass


class SDTPMistralForCausalLM(SDTPModelMixin, MistralForCausalLM):
    pass


class SDTPQwen2ForCausalLM(SDTPModelMixin, Qwen2ForCausalLM):
    pass


class SDTPQwen3ForCausalLM(SDTPModelMixin, Qwen3ForCausalLM):
    pass
