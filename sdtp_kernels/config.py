"""`SDTPConfig`: where the predictors sit and how many tokens each stage keeps (docs/ARCHITECTURE.md §4)."""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
from fractions import Fraction
from typing import Any, Optional


def _exact(ratio: float) -> Fraction:
    # The decimal the user wrote (0.9, not the binary 0.9000000000000000222), so that ceil(0.9**2 * 100) is 81 and
    # ceil(0.1 * 30) is 3 rather than one more through rounding noise.
    return Fraction(repr(float(ratio)))


def _plain(value: Any, cast: type) -> Any:
    # numpy's float32 0.1 prints as 0.1 but is 0.10000000149011612: keep the decimal it prints, as for Python floats.
    if cast is int or isinstance(value, float):
        return cast(value)
    try:
        return float(str(value))
    except ValueError:  # a Fraction's "1/10"
        return float(value)


def _check_int(what: str, value: Any, minimum: int) -> None:
    """`what`: a field ("SDTPConfig.num_sink") or a method's argument ("SDTPConfig: argument 'length'")."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{what} must be an int >= {minimum}, got {value!r}")


def _check_ratio(name: str, value: Any, low_open: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"SDTPConfig.{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"SDTPConfig.{name} must be finite, got {value!r}")
    if not ((0 < value if low_open else 0 <= value) and value <= 1):
        interval = "(0, 1]" if low_open else "[0, 1]"
        raise ValueError(f"SDTPConfig.{name} must lie in {interval}, got {value}")


@dataclasses.dataclass(frozen=True)
class SDTPConfig:
    """Pruning schedule. Stage s = 1, 2, ... sits before decoder layer `start_layer + (s - 1) * layer_step` and keeps
    ceil(keep_ratio**s * L) of a row's L real prompt tokens, never fewer than its protected ones: the first `num_sink`
    and the last ceil(local_ratio * L), at least the last one (generation reads its logits)."""

    start_layer: int = 4
    """0-based index of the first decoder layer that receives a pruned sequence (>= 1: layer 0 sees the prompt)."""
    layer_step: int = 3
    num_stages: Optional[int] = None
    """None: as many stages as fit in the model."""
    keep_ratio: float = 0.9
    num_sink: int = 4
    local_ratio: float = 0.1
    predictor_hidden: Optional[int] = None
    """Hidden width of each predictor MLP; None: hidden_size // 4."""

    def __post_init__(self) -> None:
        # Layer 0 keeps the unpruned prompt: transformers reads the sequence length (new tokens' positions, the
        # decode mask of the unpruned layers) from layer 0's KV cache.
        _check_int("SDTPConfig.start_layer", self.start_layer, 1)
        _check_int("SDTPConfig.layer_step", self.layer_step, 1)
        if self.num_stages is not None:
            _check_int("SDTPConfig.num_stages", self.num_stages, 1)
        _check_ratio("keep_ratio", self.keep_ratio, low_open=True)
        _check_int("SDTPConfig.num_sink", self.num_sink, 0)
        _check_ratio("local_ratio", self.local_ratio, low_open=False)
        if self.predictor_hidden is not None:
            _check_int("SDTPConfig.predictor_hidden", self.predictor_hidden, 1)
        # numpy and other numeric types stored as Python ones: JSON, repr and exact ratios take them as they are.
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is not None:
                cast = float if field.name.endswith("_ratio") else int
                object.__setattr__(self, field.name, _plain(value, cast))

    def stage_layers(self, num_layers: int) -> list[int]:
        """Indices of the decoder layers that a predictor sits before, stage 1 first."""
        if self.start_layer >= num_layers:
            raise ValueError(
                f"SDTPConfig.start_layer = {self.start_layer} is beyond the model: it has {num_layers} decoder layers "
                f"(0..{num_layers - 1})"
            )
        fit = len(range(self.start_layer, num_layers, self.layer_step))
        if self.num_stages is not None and self.num_stages > fit:
            raise ValueError(
                f"SDTPConfig.num_stages = {self.num_stages} does not fit: with start_layer = {self.start_layer} and "
                f"layer_step = {self.layer_step}, a {num_layers}-layer model has room for {fit}"
            )
        count = fit if self.num_stages is None else self.num_stages
        return [self.start_layer + s * self.layer_step for s in range(count)]

    def predictor_width(self, hidden_size: int) -> int:
        return self.predictor_hidden if self.predictor_hidden is not None else max(1, hidden_size // 4)

    def local_count(self, length: int, tail: int = 0) -> int:
        """The last tokens of a row's prompt that every stage keeps: ceil(local_ratio * L), or `tail` if more (a
        caller's protected tail, e.g. the continuation a log-likelihood scores), and at least the last token, whose
        logits generation reads (also with local_ratio = 0)."""
        _check_int("SDTPConfig: argument 'length'", length, 0)
        _check_int("SDTPConfig: argument 'tail'", tail, 0)
        return max(math.ceil(_exact(self.local_ratio) * length), min(tail, length), min(1, length))

    def kept_count(self, length: int, stage: int, tail: int = 0) -> int:
        """Tokens stage `stage` (1-based; 0 = the unpruned prompt) keeps of a row with `length` real tokens:
        ceil(keep_ratio**stage * L), raised to the protected count. This is what `select_tokens` keeps when given
        keep = ceil(keep_ratio**stage * L), num_sink and num_local = local_count(L, tail)."""
        _check_int("SDTPConfig: argument 'stage'", stage, 0)
        protected = min(length, self.num_sink + self.local_count(length, tail))
        return max(math.ceil(_exact(self.keep_ratio) ** stage * length), protected)

    def replace(self, **fields: Any) -> "SDTPConfig":
        """A copy with `fields` changed (checked like any SDTPConfig)."""
        return self.from_dict({**self.to_dict(), **fields}) if fields else self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SDTPConfig":
        if not isinstance(data, dict):
            raise ValueError(f"SDTPConfig: expected a dict of its fields, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"SDTPConfig: unknown field(s) {unknown}; known fields are {sorted(known)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "SDTPConfig":
        return cls.from_dict(json.loads(text))
