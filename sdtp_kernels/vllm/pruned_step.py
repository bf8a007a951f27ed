"""The device side of one engine step of an SDTP model (docs/ARCHITECTURE.md §7.3): at a stage layer, score and
select each request's tokens and compact hidden states and positions; for every stage's layers, attention metadata
that describes only the tokens they hold, built by the attention backend's own metadata builder, and KV slots
that write those tokens into a compact prefix of each request's blocks."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from .. import ops
from ..config import SDTPConfig
from ..devices import to_device
from ..predictor import SaliencyPredictor
from .step_plan import StepPlan


def _device(array: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A step's host array on the device, without synchronising the stream (a decode step makes several)."""
    return to_device(torch.from_numpy(np.ascontiguousarray(array)).to(dtype), device)


class PrunedStep:
    """One forward of the model: the plan, the current token set, and the metadata it installs."""

    def __init__(self, runner, plan: StepPlan, config: SDTPConfig, forward_context, positions: torch.Tensor,
                 stage_attention_layers: list[list[str]], tp_group):
        self.runner = runner
        self.plan = plan
        self.config = config
        self.context = forward_context
        self.positions = positions
        self.stage_attention_layers = stage_attention_layers  # per stage 1..S: the attention layers it feeds
        self.tp_group = tp_group  # None without tensor parallelism
        self.device = positions.device
        # The original rows of the tokens the current stage holds (None: all of them, in order).
        self.rows: Optional[torch.Tensor] = None
        # The runner's dicts stay as they are; this forward reads copies whose later layers' entries change.
        forward_context.attn_metadata = dict(forward_context.attn_metadata)
        forward_context.slot_mapping = dict(forward_context.slot_mapping)

    def enter_stage(self, stage: int, predictor: SaliencyPredictor, hidden: torch.Tensor,
                    residual: Optional[torch.Tensor]) -> tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
        """At stage layer `stage`: (hidden, residual, positions) for the stage's tokens, and the metadata of the
        stage's layers installed. A step that prunes hands on the layer's input (hidden + residual, as the layer
        itself would add them) compacted, with no residual; a decode step hands on its inputs as they are."""
        if self.plan.prunes:
            x = hidden if residual is None else hidden + residual
            keep = self._select(stage, predictor, x)
            # keep indexes x by construction: no host read of its range (docs/ARCHITECTURE.md §3.4).
            hidden, residual = ops.compact(x.unsqueeze(0), keep.unsqueeze(0), check=False)[0], None
            self.positions = ops.compact(self.positions.unsqueeze(0), keep.unsqueeze(0), check=False)[0]
            self.rows = keep if self.rows is None else self.rows[keep]
        self._install_metadata(stage)
        return hidden, residual, self.positions

    def _select(self, stage: int, predictor: SaliencyPredictor, x: torch.Tensor) -> torch.Tensor:
        """Flat indices (into x) of the tokens stage `stage` keeps, every row's in order."""
        plan = self.plan
        held, keep = plan.query[stage - 1], plan.query[stage]
        starts = plan.query_starts(stage - 1)
        width = int(held.max())
        # Rows of different lengths side by side, right-padded: [rows, width] flat indices and validity.
        columns = np.arange(width)[None, :]
        valid = columns < held[:, None]
        flat = _device(np.where(valid, starts[:-1, None] + columns, 0), self.device, torch.int64)
        scores = predictor.score(x)[flat]
        index, counts = ops.select_tokens(
            scores, _device(keep, self.device, torch.int64), _device(valid, self.device, torch.bool),
            self.config.num_sink, _device(plan.local, self.device, torch.int64), width=int(keep.max()),
            check=False)  # the plan's own counts and width: no read back of them (the counts are read below)
        if self.tp_group is not None:
            # Every rank scores the same all-reduced hidden states (docs/ARCHITECTURE.md §7.3), yet a near tie may
            # fall either way on ranks whose reductions differ in the last bit: rank 0's choice is everyone's.
            index = self.tp_group.broadcast(index, src=0)
        realized = counts.tolist()
        if realized != keep.tolist():
            raise RuntimeError(f"SDTP stage {stage}: select_tokens kept {realized} tokens per request, the plan "
                               f"{keep.tolist()}")
        # Right-aligned index -> packed flat positions, as FlashAttention's varlen layout (docs/ARCHITECTURE.md §3.3).
        kept, _, _ = ops.compact_varlen(flat.unsqueeze(-1), index)
        return kept.squeeze(-1)

    def _install_metadata(self, stage: int) -> None:
        """Metadata and KV slots of the layers that hold stage `stage`'s tokens, from the backend's own builder."""
        plan, runner = self.plan, self.runner
        query, context = plan.query[stage], plan.context[stage]
        starts = plan.query_starts(stage)
        rows, within = plan.kv_indices(stage)
        n = plan.num_reqs
        names = set(self.stage_attention_layers[stage - 1])
        for group_id, groups in enumerate(runner.attn_groups):
            block_table = runner.input_batch.block_table[group_id]
            table = block_table.get_device_tensor(n)
            size = block_table.block_size
            row_t, within_t = _device(rows, table.device, torch.int64), _device(within, table.device, torch.int64)
            slots = table[row_t, within_t // size].to(torch.int64) * size + within_t % size
            common = _common_metadata(runner, n, starts, query, context, table, slots, self.positions)
            for group in groups:
                layers = [name for name in group.layer_names if name in names]
                if not layers:
                    continue
                metadata = group.build_metadata(common)
                for name in layers:
                    self.context.attn_metadata[name] = metadata
                    self.context.slot_mapping[name] = slots

    def restore(self, hidden: torch.Tensor, num_tokens: int) -> torch.Tensor:
        """The final hidden states in the runner's rows: kept tokens at their own row, and each request's last
        row holds its last kept token (where the runner reads the logits)."""
        if self.rows is None:
            return hidden
        out = hidden.new_zeros((num_tokens, hidden.shape[-1]))
        out[self.rows] = hidden
        ends = self.plan.starts[1:] - 1
        last_kept = self.plan.query_starts(self.plan.num_stages)[1:] - 1
        out[_device(ends, self.device, torch.int64)] = hidden[_device(last_kept, self.device, torch.int64)]
        return out


def _common_metadata(runner, n: int, starts: np.ndarray, query: np.ndarray, context: np.ndarray,
                     block_table: torch.Tensor, slots: torch.Tensor, positions: torch.Tensor):
    from vllm.v1.attention.backend import CommonAttentionMetadata

    device = block_table.device
    batch = runner.input_batch
    seq_lens_cpu = torch.from_numpy(context.astype(np.int32))
    query_start_cpu = torch.from_numpy(starts.astype(np.int32))
    fields = dict(
        query_start_loc=to_device(query_start_cpu, device), query_start_loc_cpu=query_start_cpu,
        seq_lens=to_device(seq_lens_cpu, device), seq_lens_cpu_upper_bound=seq_lens_cpu,
        num_reqs=n, num_actual_tokens=int(query.sum()), max_query_len=int(query.max()),
        max_seq_len=int(context.max()), block_table_tensor=block_table, slot_mapping=slots, causal=True,
        positions=positions,
        is_prefilling=batch.num_computed_tokens_cpu_tensor[:n] < batch.num_prompt_tokens_cpu_tensor[:n],
    )
    return CommonAttentionMetadata(**fields)
