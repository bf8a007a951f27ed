"""`sdtp eval`: how much answer quality SDTP keeps, against blind and training-free pruning (issue 5, DESIGN §5).

On held-out prompts whose answer is the next token after the prompt, every method runs the same physically pruned
prefill (`apply_sdtp`: score -> `select_tokens` -> `compact` at each stage layer), so all of them keep exactly the
same number of tokens per stage and the same protected tokens (the first `num_sink`, the last
ceil(local_ratio * L)); only the scores that rank the other tokens differ:

- ``none``: the unpruned model;
- ``sdtp``: the trained predictors;
- ``random``: uniform random scores (a seeded generator);
- ``attention``: a training-free baseline (FastV style): the attention that the last prompt token paid to every token
  in the decoder layer just before the stage layer (the most recent attention map the pruned forward computed over
  exactly the tokens this stage ranks), averaged over heads. Needs eager attention, which the command loads.

Reported per method and keep ratio: answer accuracy (arg-max of the last-token logits = the answer), agreement of the
last-token logits with the unpruned model (top-1 agreement and KL(unpruned || pruned)), and, where the prompts say
where their answer sits in the context (the retrieval task's ``answer_position``), how often that token survives every
stage. Separately: the Spearman correlation, on held-out prompts, between the predictors' scores and the marked
saliency (`train.saliency.token_saliency`, the training target) of the tokens each stage ranks (prompt tokens that
are not protected), per row and stage on the unpruned sequence, averaged; for the trained predictors and, as the
baseline, the mean over several freshly initialised sets.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import math
import os
import platform
import sys
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
from torch import nn

from .config import SDTPConfig

METHODS = ("sdtp", "random", "attention")
DEFAULT_KEEP_RATIOS = (0.9, 0.7)

# scorer(stage, hidden [B, N, D]) -> [B, N] float32 scores; higher = keep.
Scorer = Callable[[int, torch.Tensor], torch.Tensor]


@dataclasses.dataclass(frozen=True)
class Prompt:
    input_ids: list[int]
    answer: int  # the token that should follow the prompt
    answer_position: Optional[int] = None  # where the answer sits in the prompt's context, if known
    labels: Optional[list[int]] = None  # per prompt token: labelled tokens inside the prompt (-100 = none), if any


# --------------------------------------------------------------------------------------------------------- prompts
def read_task(task_json: str):
    """(RetrievalTaskConfig, held-out seed) of a task.json: its ``heldout_seed``, or without one the task seed +
    1000003, so never the training examples."""
    from .tasks.retrieval import RetrievalTaskConfig

    with open(task_json) as f:
        description = json.load(f)
    config = RetrievalTaskConfig.from_dict(description.get("task", description))
    return config, int(description.get("heldout_seed", config.seed + 1000003))


def task_prompts(task_json: str, count: int, start: int = 0, seq_len: Optional[int] = None) -> list[Prompt]:
    """Held-out prompts of the retrieval task described by a task.json (`read_task`); `seq_len` overrides the task's
    prompt length."""
    from .tasks.retrieval import RetrievalTask

    config, seed = read_task(task_json)
    task = RetrievalTask(config, seed=seed, **({"seq_len": seq_len} if seq_len else {}))
    return [Prompt(e.input_ids, e.answer[0], e.answer_position, e.labels) for e in task.examples(start, count)]


def file_prompts(path: str, count: Optional[int] = None, start: int = 0) -> list[Prompt]:
    """Prompts of a JSON Lines file: ``input_ids`` (the prompt) and ``answer`` (a token id, or a list whose first
    entry is the next token); ``answer_position`` and ``labels`` (one per prompt token, for marking) optional."""
    from .train.data import IGNORE_INDEX

    if not os.path.isfile(path):
        raise FileNotFoundError(f"data file {path} does not exist")
    prompts = []
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path} line {number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where} is not valid JSON: {e}") from None
            if not isinstance(record, dict) or "input_ids" not in record or "answer" not in record:
                raise ValueError(f"{where}: an evaluation record needs `input_ids` and `answer`")
            answer = record["answer"]
            answer = answer[0] if isinstance(answer, list) and answer else answer
            ids = record["input_ids"]
            if not isinstance(answer, int) or not isinstance(ids, list) or not ids:
                raise ValueError(f"{where}: `input_ids` must be a non-empty list of ints and `answer` an int")
            position = record.get("answer_position")
            labels = record.get("labels")
            if labels is not None and not (isinstance(labels, list) and len(labels) == len(ids)
                                           and all(isinstance(t, int) and t >= IGNORE_INDEX for t in labels)):
                raise ValueError(f"{where}: `labels` must be a list of token ids (or -100) with one entry per "
                                 "`input_ids` token")
            prompts.append(Prompt(ids, answer, None if position is None or position < 0 else int(position), labels))
    prompts = prompts[start:]
    return prompts if count is None else prompts[:count]


@dataclasses.dataclass
class _Batch:
    input_ids: torch.Tensor  # [B, N], left-padded with 0
    attention_mask: torch.Tensor  # [B, N]
    answers: torch.Tensor  # [B]
    answer_columns: Optional[torch.Tensor]  # [B] column of the answer's context token in the padded row


def _batches(prompts: Sequence[Prompt], batch_size: int, device: torch.device) -> Iterator[_Batch]:
    for first in range(0, len(prompts), batch_size):
        chunk = prompts[first : first + batch_size]
        width = max(len(p.input_ids) for p in chunk)
        ids = torch.zeros(len(chunk), width, dtype=torch.int64)
        mask = torch.zeros(len(chunk), width, dtype=torch.int64)
        for row, p in enumerate(chunk):
            ids[row, width - len(p.input_ids) :] = torch.tensor(p.input_ids)
            mask[row, width - len(p.input_ids) :] = 1
        columns = None
        if all(p.answer_position is not None for p in chunk):
            columns = torch.tensor([width - len(p.input_ids) + p.answer_position for p in chunk])
        answers = torch.tensor([p.answer for p in chunk])
        yield _Batch(ids.to(device), mask.to(device), answers.to(device), None if columns is None else columns.to(device))


# ------------------------------------------------------------------------------------------------------- scorers
def _decoder_layers(model: nn.Module) -> nn.ModuleList:
    from .hf.families import family_of

    return family_of(model).decoder_layers(model)


def _unwrapped(layer: nn.Module) -> nn.Module:
    from .hf.layer import SDTPDecoderLayer

    return layer.layer if isinstance(layer, SDTPDecoderLayer) else layer


@contextlib.contextmanager
def scoring(model: nn.Module, scorer: Optional[Scorer]) -> Iterator[None]:
    """Inside, each stage of the SDTP model ranks its tokens by `scorer(stage, hidden)` instead of its predictor
    (None: the predictors). Only the scores change: kept counts, protected tokens, selection and compaction are the
    pruned forward's own."""
    from .hf.patch import sdtp_predictors

    predictors = list(sdtp_predictors(model))
    if scorer is None:
        yield
        return
    for stage, predictor in enumerate(predictors, start=1):
        # An instance attribute shadows SaliencyPredictor.score for this module only; removed on exit.
        object.__setattr__(predictor, "score", lambda hidden, stage=stage: scorer(stage, hidden))
    try:
        yield
    finally:
        for predictor in predictors:
            predictor.__dict__.pop("score", None)


def random_scorer(seed: int) -> Scorer:
    generator = torch.Generator().manual_seed(seed)

    def score(stage: int, hidden: torch.Tensor) -> torch.Tensor:
        return torch.rand(hidden.shape[:2], generator=generator).to(hidden.device)

    return score


@contextlib.contextmanager
def attention_scorer(model: nn.Module, stage_layers: Sequence[int]) -> Iterator[Scorer]:
    """The training-free baseline: stage s ranks its tokens by the head-averaged attention that the last token paid
    to them in decoder layer stage_layers[s - 1] - 1, the layer that ran just before the prune on the same tokens.
    The model must run eager attention (the only implementation that returns the attention probabilities)."""
    attn = model.config._attn_implementation
    if attn != "eager":
        raise ValueError(f"the attention baseline reads attention probabilities: load the model with "
                         f"attn_implementation='eager' (it runs {attn!r})")
    layers = _decoder_layers(model)
    captured: dict[int, torch.Tensor] = {}
    hooks = []
    for stage, index in enumerate(stage_layers, start=1):
        if index < 1:
            raise ValueError("the attention baseline needs a decoder layer before every stage layer")

        def hook(module, args, output, stage=stage):
            weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if weights is None:
                raise RuntimeError("the attention layer returned no attention probabilities (not eager attention?)")
            captured[stage] = weights[:, :, -1, :].float().mean(1)  # [B, keys]: the last query row, head mean

        hooks.append(_unwrapped(layers[index - 1]).self_attn.register_forward_hook(hook))

    def score(stage: int, hidden: torch.Tensor) -> torch.Tensor:
        weights = captured.pop(stage, None)
        if weights is None or weights.shape != hidden.shape[:2]:
            raise RuntimeError(f"stage {stage}: no attention map over its {tuple(hidden.shape[:2])} tokens was captured")
        return weights

    try:
        yield score
    finally:
        for h in hooks:
            h.remove()
        captured.clear()


# ---------------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def _run(model: nn.Module, batch: _Batch, want_kept: bool) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Last-token logits [B, V] float32, and [B, K] the columns of the tokens that reached the last layer (-1: an
    empty slot) when asked and something was pruned."""
    from .hf.cache_state import key_positions
    from .hf.model_call import output_cache

    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=want_kept,
                logits_to_keep=1)
    logits = out.logits[:, -1].float()
    if not want_kept:
        return logits, None
    pruned = [k for k in key_positions(output_cache(out)) if k is not None]
    return logits, (pruned[-1] if pruned else None)


class _Tally:
    """Running sums of one method at one keep ratio."""

    def __init__(self):
        self.n = 0
        self.correct = 0
        self.top1 = 0
        self.kl = 0.0
        self.answer_kept = 0
        self.answer_known = 0
        self.kept_tokens = 0
        self.prompt_tokens = 0

    def add(self, logits, reference, batch: _Batch, kept: Optional[torch.Tensor]) -> None:
        self.n += logits.shape[0]
        self.correct += int((logits.argmax(-1) == batch.answers).sum())
        if reference is not None:
            self.top1 += int((logits.argmax(-1) == reference.argmax(-1)).sum())
            ref_log = torch.log_softmax(reference, -1)
            self.kl += float((ref_log.exp() * (ref_log - torch.log_softmax(logits, -1))).sum(-1).clamp_min(0).sum())
        lengths = batch.attention_mask.sum(1)
        self.prompt_tokens += int(lengths.sum())
        if kept is None:
            self.kept_tokens += int(lengths.sum())
        else:
            self.kept_tokens += int((kept >= 0).sum())
        if batch.answer_columns is not None:
            self.answer_known += logits.shape[0]
            if kept is None:
                self.answer_kept += logits.shape[0]
            else:
                self.answer_kept += int((kept == batch.answer_columns[:, None]).any(1).sum())

    def summary(self) -> dict[str, Optional[float]]:
        return {
            "accuracy": self.correct / self.n,
            "top1_agreement": self.top1 / self.n,
            "kl": self.kl / self.n,
            "answer_kept": self.answer_kept / self.answer_known if self.answer_known else None,
            "kept_fraction": self.kept_tokens / self.prompt_tokens,
        }


def _key(ratio: float) -> str:
    return repr(float(ratio))


def evaluate_pruning(
    model: nn.Module,
    config: SDTPConfig,
    predictor_state: Optional[dict[str, torch.Tensor]],
    prompts: Sequence[Prompt],
    keep_ratios: Sequence[float] = DEFAULT_KEEP_RATIOS,
    methods: Sequence[str] = METHODS,
    batch_size: int = 32,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Accuracy, agreement with the unpruned model and answer survival of each method at each keep ratio.
    `model`: an unpatched causal LM (patched and restored here); `config`: the schedule (its keep_ratio is replaced
    by each of `keep_ratios`); `predictor_state`: the trained predictors' state dict (ModuleList keys "0.fc1.weight",
    ...), needed for "sdtp" only. Returns {"none": summary, method: {ratio: summary}}."""
    from .hf.patch import apply_sdtp, remove_sdtp, sdtp_predictors

    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; known: {list(METHODS)}")
    if "sdtp" in methods and predictor_state is None:
        raise ValueError("the sdtp method needs trained predictors")
    device = next(model.parameters()).device
    batches = list(_batches(prompts, batch_size, device))
    reference, none = [], _Tally()
    for batch in batches:
        logits, _ = _run(model, batch, want_kept=False)
        reference.append(logits)
        none.add(logits, logits, batch, None)
    results: dict[str, Any] = {"none": none.summary()}
    for method in methods:
        results[method] = {}
    stage_layers = config.stage_layers(len(_decoder_layers(model)))
    for ratio in keep_ratios:
        apply_sdtp(model, dataclasses.replace(config, keep_ratio=float(ratio)))
        try:
            if predictor_state is not None:
                sdtp_predictors(model).load_state_dict(predictor_state)
            for method in methods:
                tally = _Tally()
                with contextlib.ExitStack() as stack:
                    if method == "random":
                        scorer: Optional[Scorer] = random_scorer(seed)
                    elif method == "attention":
                        scorer = stack.enter_context(attention_scorer(model, stage_layers))
                    else:
                        scorer = None
                    stack.enter_context(scoring(model, scorer))
                    for batch, ref in zip(batches, reference):
                        logits, kept = _run(model, batch, want_kept=True)
                        tally.add(logits, ref, batch, kept)
                results[method][_key(ratio)] = tally.summary()
                if progress:
                    s = results[method][_key(ratio)]
                    print(f"  keep_ratio {ratio} {method:9s} accuracy {s['accuracy']:.3f} top1 "
                          f"{s['top1_agreement']:.3f} kl {s['kl']:.4f} answer_kept {s['answer_kept']}",
                          file=sys.stderr, flush=True)
        finally:
            remove_sdtp(model)
    return results


def _rankdata(a: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n of a 1-D tensor, ties averaged (scipy.stats.rankdata's 'average')."""
    sorter = torch.argsort(a, stable=True)
    inverse = torch.empty_like(sorter)
    inverse[sorter] = torch.arange(len(a), device=a.device)
    ordered = a[sorter]
    new = torch.cat([torch.ones(1, dtype=torch.bool, device=a.device), ordered[1:] != ordered[:-1]])
    dense = new.cumsum(0)[inverse]
    bounds = torch.cat([new.nonzero().squeeze(1), torch.tensor([len(a)], device=a.device)])
    return 0.5 * (bounds[dense] + bounds[dense - 1] + 1).double()


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman rank correlation of two 1-D tensors (NaN when either is constant or shorter than 2)."""
    if x.numel() < 2:
        return float("nan")
    rx, ry = _rankdata(x.double()), _rankdata(y.double())
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = (rx.norm() * ry.norm()).item()
    return float((rx * ry).sum() / denominator) if denominator > 0 else float("nan")


def _stage_inputs(model: nn.Module, stage_layers: Sequence[int], batch) -> list[torch.Tensor]:
    """The hidden states entering each stage layer on the unpruned sequence (what the marking differentiates)."""
    from .hf.patch import sdtp_disabled

    layers = _decoder_layers(model)
    inputs: dict[int, torch.Tensor] = {}

    def capture(index):
        def pre_hook(module, args, kwargs):
            inputs[index] = (args[0] if args else kwargs["hidden_states"]).detach()

        return pre_hook

    with contextlib.ExitStack() as stack, torch.no_grad():
        stack.enter_context(sdtp_disabled(model))
        for index in stage_layers:
            stack.enter_context(layers[index].register_forward_pre_hook(capture(index), with_kwargs=True))
        model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, logits_to_keep=1, use_cache=False)
    return [inputs[index] for index in stage_layers]


@dataclasses.dataclass(frozen=True)
class MarkedBatch:
    """A batch of prompts as a stage predictor sees them, with its training target."""

    saliency: torch.Tensor  # [S, B, N] marked saliency (`train.saliency.token_saliency`)
    stage_inputs: list[torch.Tensor]  # S x [B, N, D]: the hidden states entering each stage layer, unpruned
    ranked: torch.Tensor  # [B, N] bool: the tokens a stage ranks (prompt tokens that are not protected)


def mark_prompts(
    model: nn.Module, config: SDTPConfig, prompts: Sequence[Prompt], saliency_options=None, batch_size: int = 16
) -> list[MarkedBatch]:
    """Each prompt followed by its answer, marked with the loss on the answer and on the prompt's own labelled
    tokens (what training on the same records marks)."""
    from .hf.patch import apply_sdtp, remove_sdtp
    from .train.data import IGNORE_INDEX, Example, collate
    from .train.options import SaliencyOptions
    from .train.saliency import token_saliency
    from .train.schedule import protected_tokens

    options = saliency_options or SaliencyOptions()
    device = next(model.parameters()).device
    layers = config.stage_layers(len(_decoder_layers(model)))
    examples = [Example(p.input_ids + [p.answer], (p.labels or [IGNORE_INDEX] * len(p.input_ids)) + [p.answer],
                        len(p.input_ids)) for p in prompts]
    marked = []
    apply_sdtp(model, config)
    try:
        for first in range(0, len(examples), batch_size):
            batch = collate(examples[first : first + batch_size], range(first, first + batch_size)).to(device)
            real = batch.attention_mask.bool()
            marked.append(MarkedBatch(
                token_saliency(model, config, batch, options).detach(),
                _stage_inputs(model, layers, batch),
                batch.prompt_mask & ~protected_tokens(config, batch.prompt_mask, real),
            ))
    finally:
        remove_sdtp(model)
    return marked


def mean_spearman(score_fn: Scorer, marked: Sequence[MarkedBatch]) -> list[float]:
    """Per stage: the mean over rows of Spearman(score_fn(stage, stage input) [B, N], marked saliency) over the
    tokens that stage ranks (rows where either side is constant are left out)."""
    per_stage: list[list[float]] = [[] for _ in marked[0].stage_inputs] if marked else []
    with torch.no_grad():
        for batch in marked:
            for s, hidden in enumerate(batch.stage_inputs):
                scores = score_fn(s, hidden)
                for row in range(scores.shape[0]):
                    ranked = batch.ranked[row]
                    rho = spearman(scores[row][ranked], batch.saliency[s, row][ranked])
                    if not math.isnan(rho):
                        per_stage[s].append(rho)
    return [_mean(v) for v in per_stage]


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def evaluate_spearman(
    model: nn.Module,
    config: SDTPConfig,
    trained_state: dict[str, torch.Tensor],
    prompts: Sequence[Prompt],
    saliency_options=None,
    batch_size: int = 16,
    untrained_seeds: Sequence[int] = range(8),
) -> dict[str, Any]:
    """Mean Spearman correlation (over rows, per stage and over all stages) between predictor scores and the marked
    saliency of the tokens a stage ranks: for the trained predictors, and for freshly initialised ones of each seed
    in `untrained_seeds` (one random initialisation can correlate with anything that differs between token kinds,
    with either sign; their mean is the untrained baseline)."""
    from .hf.patch import apply_sdtp, remove_sdtp, sdtp_predictors
    from .train.options import SaliencyOptions

    options = saliency_options or SaliencyOptions()
    layers = config.stage_layers(len(_decoder_layers(model)))
    marked = mark_prompts(model, config, prompts, options, batch_size)
    seeds = list(untrained_seeds)

    def stage_means(state: Optional[dict[str, torch.Tensor]], seed: int = 0) -> list[float]:
        torch.manual_seed(seed)
        apply_sdtp(model, config)
        try:
            predictors = sdtp_predictors(model)
            if state is not None:
                predictors.load_state_dict(state)
            return mean_spearman(lambda s, hidden: predictors[s].log_odds(predictors[s].logits(hidden)), marked)
        finally:
            remove_sdtp(model)

    trained = stage_means(trained_state)
    untrained = [_mean(stage_means(None, seed)) for seed in seeds]
    return {
        "trained": _mean(trained),
        "trained_per_stage": trained,
        "untrained": _mean(untrained),
        "untrained_per_seed": untrained,
        "untrained_seeds": seeds,
        "prompts": len(prompts),
        "stage_layers": list(layers),
        "saliency": options.describe(),
    }


# ------------------------------------------------------------------------------------------------------ the files
def load_predictors(directory: str) -> tuple[SDTPConfig, dict[str, torch.Tensor], Optional[Any]]:
    """(schedule, predictor state dict with ModuleList keys, saliency options they were trained with or None) of a
    directory written by save_sdtp (and `sdtp train`)."""
    from safetensors.torch import load_file

    from .hf.patch import CONFIG_FILE, WEIGHTS_FILE
    from .train.options import SaliencyOptions

    with open(os.path.join(directory, CONFIG_FILE)) as f:
        config = SDTPConfig.from_dict(json.load(f)["config"])
    state = {}
    for key, value in load_file(os.path.join(directory, WEIGHTS_FILE)).items():
        stage, _, name = key.partition(".")
        state[f"{int(stage[len('stage'):]) - 1}.{name}"] = value
    saliency = None
    options_file = os.path.join(directory, "train_options.json")
    if os.path.exists(options_file):
        with open(options_file) as f:
            trained = json.load(f).get("saliency")
        if trained:
            saliency = SaliencyOptions(**trained)
    return config, state, saliency


def machine() -> dict[str, Any]:
    import transformers

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def results_json(pruning: dict[str, Any], spearman_result: Optional[dict[str, Any]], config: dict[str, Any],
                 command: str) -> dict[str, Any]:
    """The quality.json layout: {"accuracy": {"none": a, method: {ratio: a}}, "agreement": ..., ...}."""
    methods = [m for m in METHODS if m in pruning]

    def table(field: str, with_none: bool = False) -> dict[str, Any]:
        out = {"none": pruning["none"][field]} if with_none else {}
        out.update({m: {r: s[field] for r, s in pruning[m].items()} for m in methods})
        return out

    return {
        "accuracy": table("accuracy", with_none=True),
        "agreement": {"top1": table("top1_agreement"), "kl": table("kl")},
        "answer_kept": table("answer_kept"),
        "kept_fraction": {r: s["kept_fraction"] for r, s in pruning[methods[0]].items()} if methods else {},
        "spearman": spearman_result,
        "config": config,
        "command": command,
        "machine": machine(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def plot(results: dict[str, Any], path: str) -> None:
    """Bar charts: answer accuracy, top-1 agreement and answer survival per method and keep ratio."""
    try:
        import matplotlib
    except ImportError:
        raise ValueError("--plot needs matplotlib (pip install matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in METHODS if m in results["accuracy"]]
    ratios = list(results["accuracy"][methods[0]]) if methods else []
    panels = [("answer accuracy", results["accuracy"], True), ("top-1 agreement with unpruned",
              results["agreement"]["top1"], False)]
    if all(v is not None for m in methods for v in results["answer_kept"][m].values()):
        panels.append(("answer token survives all stages", results["answer_kept"], False))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6))
    width = 0.8 / max(1, len(methods))
    colors = {"sdtp": "tab:green", "random": "tab:gray", "attention": "tab:orange"}
    for ax, (title, data, with_none) in zip(axes, panels):
        for i, method in enumerate(methods):
            xs = [j + (i - (len(methods) - 1) / 2) * width for j in range(len(ratios))]
            values = [data[method][r] for r in ratios]
            bars = ax.bar(xs, values, width, label=method, color=colors.get(method))
            ax.bar_label(bars, fmt="%.2f", fontsize=7)
        if with_none:
            ax.axhline(data["none"], color="k", linestyle="--", linewidth=1, label="unpruned")
        ax.set_xticks(range(len(ratios)), [f"keep_ratio {r}" for r in ratios])
        ax.set_ylim(0, 1.08)
        ax.set_title(title, fontsize=10)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)  # below, off the bars
    config = results.get("config", {})
    fig.suptitle(f"SDTP quality, {config.get('prompts', '?')} held-out prompts, stages before layers "
                 f"{config.get('stage_layers', '?')}", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------- CLI
def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _ratios(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(not 0 < v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"keep ratios must lie in (0, 1], got {text!r}")
    return values


def _eval(args: argparse.Namespace) -> int:
    from transformers import AutoModelForCausalLM

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.task:
        prompts = task_prompts(args.task, args.count, args.start)
        source = {"task": args.task}
    else:
        prompts = file_prompts(args.data, args.count or None, args.start)
        source = {"data": args.data}
    if not prompts:
        raise ValueError("no prompts to evaluate")
    config, state, saliency_options = load_predictors(args.predictors)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=getattr(torch, args.dtype),
                                                 attn_implementation="eager")
    model = model.to(device).eval().requires_grad_(False)
    stage_layers = config.stage_layers(len(_decoder_layers(model)))
    print(f"sdtp eval: {len(prompts)} prompts, stages before layers {stage_layers}, keep ratios {args.keep_ratios}",
          file=sys.stderr, flush=True)
    pruning = evaluate_pruning(model, config, state, prompts, args.keep_ratios, METHODS, args.batch_size, args.seed,
                               progress=True)
    spearman_result = None
    if args.spearman_count > 0:
        spearman_result = evaluate_spearman(
            model, config, state, prompts[: args.spearman_count], saliency_options,
            batch_size=min(args.batch_size, 16), untrained_seeds=range(args.seed, args.seed + args.untrained_seeds),
        )
        print(f"  spearman trained {spearman_result['trained']:.3f} untrained {spearman_result['untrained']:.3f}",
              file=sys.stderr, flush=True)
    run_config = {
        "sdtp": config.to_dict(),
        "stage_layers": stage_layers,
        "keep_ratios": [float(r) for r in args.keep_ratios],
        "model": args.model,
        "predictors": args.predictors,
        **source,
        "prompts": len(prompts),
        "first_prompt": args.start,
        "dtype": args.dtype,
        "attn_implementation": "eager",
        "seed": args.seed,
        "attention_baseline": "head-mean attention of the last prompt token in the decoder layer before each stage "
                              "layer, over the tokens that stage ranks (FastV style)",
        "random_baseline": "uniform random scores through the same select_tokens (same kept counts, same protected "
                           "tokens)",
        "agreement": "top1: arg-max of the last-token logits equals the unpruned one; kl: mean KL(unpruned || "
                     "pruned) of the last-token distributions (nats)",
    }
    command = args.command_line or "sdtp " + " ".join(sys.argv[1:])
    results = results_json(pruning, spearman_result, run_config, command)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
        f.write("\n")
    if args.plot:
        plot(results, args.plot)
    print(format_table(results))
    print(f"wrote {args.out}" + (f" and {args.plot}" if args.plot else ""))
    return 0


def format_table(results: dict[str, Any]) -> str:
    """A Markdown table of the results (for notes and the README)."""
    acc, top1, kl, kept = (results["accuracy"], results["agreement"]["top1"], results["agreement"]["kl"],
                           results["answer_kept"])
    lines = ["| method | keep_ratio | accuracy | top-1 agreement | KL (nats) | answer token kept |",
             "|---|---|---|---|---|---|",
             f"| none | 1.0 | {acc['none']:.3f} | 1.000 | 0.0000 | 1.000 |"]
    for method in METHODS:
        for ratio in acc.get(method, {}):
            k = kept[method][ratio]
            lines.append(f"| {method} | {ratio} | {acc[method][ratio]:.3f} | {top1[method][ratio]:.3f} | "
                         f"{kl[method][ratio]:.4f} | {'-' if k is None else f'{k:.3f}'} |")
    sp = results.get("spearman")
    if sp:
        lines.append("")
        lines.append(f"Spearman(predictor score, marked saliency), {sp['prompts']} held-out prompts: trained "
                     f"{sp['trained']:.3f} (per stage {', '.join(f'{v:.3f}' for v in sp['trained_per_stage'])}), "
                     f"untrained {sp['untrained']:.3f} (mean of {len(sp['untrained_per_seed'])} initialisations: "
                     f"{min(sp['untrained_per_seed']):.3f} to {max(sp['untrained_per_seed']):.3f})")
    return "\n".join(lines)


def add_commands(subparsers) -> None:
    """Add `eval` to an argparse subparsers object."""
    parser = subparsers.add_parser(
        "eval", help="answer accuracy of SDTP against random and attention-score pruning",
        description="Answer accuracy and last-token agreement of held-out prompts unpruned, with SDTP's trained "
        "predictors, with random scores and with last-token attention scores (same kept counts and protected "
        "tokens), and the Spearman correlation of predictor scores with marked saliency.",
    )
    parser.add_argument("--model", required=True, help="local model directory (transformers save_pretrained)")
    parser.add_argument("--predictors", required=True, help="directory written by save_sdtp / `sdtp train`")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="JSONL records with `input_ids` (prompt) and `answer` (next token)")
    source.add_argument("--task", help="a retrieval task.json (models/reference/task.json): its held-out prompts")
    parser.add_argument("--out", required=True, help="results JSON (e.g. bench/results/quality.json)")
    parser.add_argument("--plot", default=None, help="bar chart PNG")
    parser.add_argument("--keep-ratios", type=_ratios, default=list(DEFAULT_KEEP_RATIOS),
                        help="comma-separated (default: 0.9,0.7)")
    parser.add_argument("--count", type=int, default=500, help="prompts (default: 500; --data: all if 0)")
    parser.add_argument("--start", type=int, default=0, help="first held-out prompt index")
    parser.add_argument("--spearman-count", type=int, default=200,
                        help="prompts for the saliency correlation (0: skip; default 200)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0, help="random baseline and first untrained predictors' seed")
    parser.add_argument("--untrained-seeds", type=_positive, default=8,
                        help="freshly initialised predictor sets averaged for the untrained Spearman (default 8)")
    parser.add_argument("--command-line", default=None, help=argparse.SUPPRESS)
    parser.set_defaults(run=_eval)
