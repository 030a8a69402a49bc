"""The options of a :class:`~hsc.preconditioner.Preconditioner`, in one dataclass, and the
command-line flags the applications generate from it.

An application that embeds the preconditioner sets its own defaults with
``dataclasses.replace(PreconditionerConfig(), ...)`` and exposes the fields as ``--hsc-<field>``
flags with :func:`add_arguments`; each field's help text below is the flag's help.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Optional, Tuple

from . import ops

ESTIMATORS = ("probe", "coloured", "exact")
SCALE_RULES = ("absolute", "relative")


def _optional_int(text: str) -> Optional[int]:
    return None if text.lower() == "none" else int(text)


def _patch(text: str) -> Optional[Tuple[int, int]]:
    if text.lower() == "none":
        return None
    try:
        ph, pw = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two ints ph,pw or none, got {text!r}") from None
    return (ph, pw)


def _show(value) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


def option(default, help: str, parse: Callable[[str], object], choices: Optional[Tuple[str, ...]] = None):
    """A config field with the help text and parser of its command-line flag."""
    return field(default=default, metadata={"help": help, "parse": parse, "choices": choices})


@dataclass
class PreconditionerConfig:
    """Options of a :class:`~hsc.preconditioner.Preconditioner` (docs/contract.md §2, §4)."""

    block_size: int = option(32, "b, parameter entries per block", int)
    estimator: str = option("probe", "curvature estimator: probe (b HVPs a sign draw), coloured (b C "
                            "HVPs a draw: blocks that couple strongly never share a probe) or exact "
                            "(one HVP per parameter; small models)", str, ESTIMATORS)
    samples: int = option(1, "sign draws averaged per refresh (probe, coloured)", int)
    colour_radius: int = option(1, "coloured: blocks of image tiles within this many tiles of each "
                                "other get different colours ((r + 1)^2 colours per block of a tile)", int)
    ema: float = option(0.9, "weight of the previous estimate at each refresh, in [0, 1)", float)
    update_every: int = option(10, "refresh the estimate and the factors once every this many steps", int)
    damping: float = option(1e-4, "delta, the damping the search starts from (cholesky) or adds "
                            "(singular_safe)", float)
    scale: float = option(1.0, "mu, the scale of the correction M = A + mu^2 A^-1 (scale_rule "
                          "absolute), or rho in mu = rho median|lambda| (relative)", float)
    scale_rule: str = option("absolute", "absolute: mu = scale; relative (spectral modes): mu = scale "
                             "times the median |eigenvalue| over the preconditioner's blocks, at each "
                             "refresh", str, SCALE_RULES)
    mode: str = option("cholesky", "how M^-1 is formed (docs/contract.md §2)", str, ops.MODES)
    max_tries: int = option(32, "dampings tried per block (cholesky)", int)
    max_sweeps: int = option(ops.MAX_SWEEPS, "the eigensolver's sweep limit (spectral modes)", int)
    factor_power: float = option(1.0, "the factor holds M^-factor_power: 1 (the step M^-1 g) or 0.5 "
                                 "(M^-1/2, for a coupled solve split symmetrically; modes saddle_free "
                                 "and saddle_free_root)", float)
    chunk_size: Optional[int] = option(None, "probe vectors per batched HVP (memory bound); none: "
                                       "chosen by device", _optional_int)
    patch: Optional[Tuple[int, int]] = option(None, "cut image-like tensors into spatial patches "
                                              "ph,pw (or none)", _patch)
    seed: int = option(0, "seed of the probe signs", int)

    def validate(self) -> "PreconditionerConfig":
        def need(ok: bool, name: str, expected: str):
            if not ok:
                raise ValueError(f"hsc: {name} must be {expected}, got {getattr(self, name)!r}")

        def is_int(x) -> bool:
            return isinstance(x, int) and not isinstance(x, bool)

        need(is_int(self.block_size) and self.block_size >= 1, "block_size", "an int >= 1")
        need(self.estimator in ESTIMATORS, "estimator", f"one of {ESTIMATORS}")
        need(is_int(self.samples) and self.samples >= 1, "samples", "an int >= 1")
        need(is_int(self.colour_radius) and self.colour_radius >= 0, "colour_radius", "an int >= 0")
        need(0 <= self.ema < 1, "ema", "in [0, 1)")
        need(is_int(self.update_every) and self.update_every >= 1, "update_every", "an int >= 1")
        need(self.damping >= 0 and self.damping != float("inf"), "damping", "a finite float >= 0")
        need(0 < self.scale < float("inf"), "scale", "a finite float > 0")
        need(self.mode in ops.MODES, "mode", f"one of {ops.MODES}")
        need(self.scale_rule in SCALE_RULES, "scale_rule", f"one of {SCALE_RULES}")
        need(self.scale_rule == "absolute" or self.mode in ops.EIGH_MODES, "scale_rule",
             f"'absolute' in mode {self.mode!r} (the relative scale needs the eigenvalues of a "
             f"spectral mode: {ops.EIGH_MODES})")
        need(is_int(self.max_tries) and self.max_tries >= 1, "max_tries", "an int >= 1")
        need(is_int(self.max_sweeps) and 1 <= self.max_sweeps <= 1000, "max_sweeps", "an int in [1, 1000]")
        need(self.factor_power == 1.0 or (self.factor_power == 0.5 and self.mode in ("saddle_free", "saddle_free_root")),
             "factor_power", "1, or 0.5 in mode saddle_free or saddle_free_root")
        need(self.chunk_size is None or (is_int(self.chunk_size) and self.chunk_size >= 1),
             "chunk_size", "None or an int >= 1")
        need(self.patch is None or (isinstance(self.patch, (tuple, list)) and len(self.patch) == 2
                                    and all(is_int(p) and p >= 1 for p in self.patch)),
             "patch", "None or two ints (ph, pw) >= 1")
        need(is_int(self.seed), "seed", "an int")
        return self


CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(PreconditionerConfig))


def _dest(prefix: str, name: str) -> str:
    return f"{prefix.replace('-', '_')}_{name}"


def add_arguments(parser: argparse._ActionsContainer, defaults: PreconditionerConfig, *,
                  skip: Iterable[str] = (), notes: Optional[Mapping[str, str]] = None,
                  prefix: str = "hsc") -> None:
    """Adds a ``--<prefix>-<field>`` flag for every field of :class:`PreconditionerConfig` not in
    ``skip``, with ``defaults``' value as its default and the field's help (plus ``notes[field]``,
    where an application reads the field its own way)."""
    notes = notes or {}
    for f in dataclasses.fields(PreconditionerConfig):
        if f.name in skip:
            continue
        default = getattr(defaults, f.name)
        text = f.metadata["help"] + (f"; {notes[f.name]}" if f.name in notes else "")
        parser.add_argument(f"--{prefix}-{f.name.replace('_', '-')}", dest=_dest(prefix, f.name),
                            type=f.metadata["parse"], choices=f.metadata["choices"], default=default,
                            metavar=None if f.metadata["choices"] else f.name.upper(),
                            help=f"{text} (default: {_show(default)})")


def from_arguments(args: argparse.Namespace, defaults: PreconditionerConfig, *,
                   prefix: str = "hsc") -> PreconditionerConfig:
    """``defaults`` with every field that :func:`add_arguments` gave a flag taken from ``args``."""
    given = {f.name: getattr(args, _dest(prefix, f.name)) for f in dataclasses.fields(PreconditionerConfig)
             if hasattr(args, _dest(prefix, f.name))}
    return dataclasses.replace(defaults, **given)
