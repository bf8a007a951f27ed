"""Argument types shared by the `sdtp` commands, so that a flag is checked the same way wherever it appears."""
from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Callable

import torch


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help with each option's default where it has one worth saying: not for a default of None or "" (unset: its
    help says what happens then), a help text that names its default itself, a required option or a switch."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, "") or action.required or action.nargs == 0 or "(default" in text:
            return text
        return super()._get_help_string(action)


class RawHelpFormatter(argparse.RawDescriptionHelpFormatter, HelpFormatter):
    """HelpFormatter that prints the description as written (command examples keep their lines)."""


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _int_at_least(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(text, 0, "an integer >= 0")


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    return _float_in(text, 0.0, "a finite number >= 0")


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    value = _float_in(text, 0.0, "a finite number > 0")
    if value == 0:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def _float_in(text: str, minimum: float, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not minimum <= value < math.inf:  # NaN fails too
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def _int_at_least(text: str, minimum: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def existing_file(text: str) -> str:
    """argparse type: the path of a file that exists (checked as parsed, so that the error names the flag)."""
    if not os.path.isfile(text):
        raise argparse.ArgumentTypeError(f"expected an existing file, got {text!r}")
    return text


def device_name(text: str) -> str:
    """argparse type: a torch device (cpu, cuda, cuda:1, ...); a CUDA one must exist on this machine."""
    try:
        parsed = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"expected a device such as cpu, cuda or cuda:1, got {text!r}") from None
    if parsed.type not in ("cpu", "cuda"):  # the kernels and the measurements know these two
        raise argparse.ArgumentTypeError(f"expected a device such as cpu, cuda or cuda:1, got {text!r}")
    if parsed.type == "cuda":
        count = torch.cuda.device_count()
        if count == 0:
            raise argparse.ArgumentTypeError(f"{text!r}: this machine has no CUDA device")
        if parsed.index is not None and parsed.index >= count:
            raise argparse.ArgumentTypeError(f"{text!r}: this machine has {count} CUDA device(s)")
    return text


def reporting_bad_input(prog: str, run: Callable[[], int]) -> int:
    """run(), with bad input (data, files, options the parser could not check) ending in one line that names it and
    exit status 2, as argparse's own errors do, instead of a traceback."""
    try:
        return run()
    except (ValueError, FileNotFoundError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
