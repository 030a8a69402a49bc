"""Options as small dataclasses, and the command-line flags generated from them.

Every option of every config an application exposes is a field declared with :func:`option`
(its help text, its parser) or, for a config inside a config, :func:`nested`. From those fields:

- :func:`add_arguments` / :func:`from_arguments`: a ``--<prefix>-<field>`` flag per field, with
  the field's help and the defaults' value, and the config back from the parsed flags;
- :func:`replace`: a copy with changes given by field name, routed into nested configs;
- :func:`from_dict`: a config from :func:`dataclasses.asdict`'s form (a checkpoint, a JSON file).

:class:`PreconditionerConfig` is the preconditioner's; ``hsc.GameConfig``, ``hsc.StepControl``
and the applications' run settings are declared the same way.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Optional, Tuple, TypeVar

from . import ops

ESTIMATORS = ("probe", "coloured", "exact", "gauss_newton")
SCALE_RULES = ("absolute", "relative")

Config = TypeVar("Config")


def _optional_int(text: str) -> Optional[int]:
    return None if text.lower() == "none" else int(text)


def on_off(text: str) -> bool:
    """A boolean flag's value: on/off (also true/false, yes/no, 1/0)."""
    value = text.lower()
    if value in ("on", "true", "yes", "1"):
        return True
    if value in ("off", "false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected on or off, got {text!r}")


def int_pair(text: str) -> Optional[Tuple[int, int]]:
    """Two ints ``a,b``, or none."""
    if text.lower() == "none":
        return None
    try:
        a, b = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two ints ph,pw or none, got {text!r}") from None
    return (a, b)


def float_pair(text: str) -> Tuple[float, float]:
    """Two floats ``a,b``."""
    try:
        a, b = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two floats a,b, got {text!r}") from None
    return (a, b)


def show(value) -> str:
    """A value as its flag would be written."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


def _parser_for(default) -> Callable[[str], object]:
    if isinstance(default, bool):
        return on_off
    for kind in (int, float, str):
        if isinstance(default, kind):
            return kind
    raise TypeError(f"hsc: option with default {default!r} needs parse=")


def option(default, help: str, parse: Optional[Callable[[str], object]] = None,
           choices: Optional[Tuple[str, ...]] = None, *, flag: Optional[str] = None):
    """A config field with the help text and parser of its command-line flag (the parser is
    taken from the default's type when not given; ``flag`` names the flag when the field's name
    would not read well as one)."""
    return field(default=default, metadata={"help": help, "parse": parse or _parser_for(default),
                                            "choices": choices, "flag": flag})


def nested(factory: Callable[[], Any], help: str, *, flatten: bool = True, switch: Optional[str] = None):
    """A config inside a config. ``flatten``: its flags take the outer prefix
    (``--hsc-block-size`` for the preconditioner inside the GAN's hsc settings); otherwise the
    field's name extends the prefix (``--hsc-step-control-shrink``). ``switch``: the config is
    optional (None allowed) and the flag of its field ``switch`` also takes ``none``."""
    return field(default_factory=factory, metadata={"help": help, "nested": True, "flatten": flatten,
                                                    "switch": switch})


def _flag_name(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or f.name.replace("_", "-")


def _dest(prefix: str, name: str) -> str:
    return f"{prefix}-{name}".strip("-").replace("-", "_")


def _flag(prefix: str, name: str) -> str:
    return "--" + f"{prefix}-{name}".strip("-")


def _nested_prefix(prefix: str, f: dataclasses.Field) -> str:
    return prefix if f.metadata["flatten"] else f"{prefix}-{_flag_name(f)}".strip("-")


def add_arguments(parser: argparse._ActionsContainer, defaults, *, skip: Iterable[str] = (),
                  notes: Optional[Mapping[str, str]] = None, prefix: str = "hsc",
                  only_given: bool = False) -> None:
    """Adds a ``--<prefix>-<field>`` flag for every option of the dataclass ``defaults`` (and of
    the configs nested in it) not named in ``skip``, with ``defaults``' value as its default and
    the field's help, plus ``notes[key]`` where an application reads a field its own way (key: the
    field's name, or its path through the nested configs, e.g. ``"hsc.preconditioner.scale"``).
    Each nested config's flags form an argument group titled by its help. ``only_given``: a flag
    not given leaves no value in the parsed arguments, so that :func:`from_arguments` changes only
    what was given (for an application whose defaults depend on another flag)."""
    _add(parser, parser, defaults, set(skip), notes or {}, prefix, "", None, only_given)


def _add(parser, group, defaults, skip, notes, prefix, path, switch, only_given=False):
    for f in dataclasses.fields(defaults):
        if f.name in skip or "help" not in f.metadata:
            continue
        value = getattr(defaults, f.name)
        if f.metadata.get("nested"):
            inner = value if value is not None else f.default_factory()
            sub = parser.add_argument_group(f.metadata["help"]) \
                if isinstance(parser, argparse.ArgumentParser) else group
            _add(parser, sub, inner, skip, notes, _nested_prefix(prefix, f), f"{path}{f.name}.",
                 (f.metadata["switch"], value is None) if f.metadata["switch"] else None, only_given)
            continue
        parse, choices, name = f.metadata["parse"], f.metadata["choices"], _flag_name(f)
        if switch is not None and f.name == switch[0]:
            # an optional config: its switch field's flag is the config's own, and "none" is off
            choices, name = tuple(choices) + ("none",), ""
            value = "none" if switch[1] else value
        note = notes.get(path + f.name, notes.get(f.name))
        text = f.metadata["help"] + (f"; {note}" if note else "")
        group.add_argument(_flag(prefix, name), dest=_dest(prefix, name), type=parse, choices=choices,
                           default=argparse.SUPPRESS if only_given else value,
                           metavar=None if choices else f.name.upper(), help=f"{text} (default: {show(value)})")


def from_arguments(args: argparse.Namespace, defaults: Config, *, prefix: str = "hsc") -> Config:
    """``defaults`` with every option that :func:`add_arguments` gave a flag taken from ``args``."""
    return _from(args, defaults, prefix, None)


def _from(args, defaults, prefix, switch):
    given: dict = {}
    for f in dataclasses.fields(defaults):
        if "help" not in f.metadata:
            continue
        value = getattr(defaults, f.name)
        if f.metadata.get("nested"):
            inner_prefix, on = _nested_prefix(prefix, f), f.metadata["switch"]
            if on is not None and getattr(args, _dest(inner_prefix, ""), None) == "none":
                given[f.name] = None
                continue
            given[f.name] = _from(args, value if value is not None else f.default_factory(), inner_prefix, on)
            continue
        dest = _dest(prefix, "" if f.name == switch else _flag_name(f))
        if hasattr(args, dest):
            given[f.name] = getattr(args, dest)
    return dataclasses.replace(defaults, **given)


def replace(config: Config, **changes) -> Config:
    """A copy of ``config`` with ``changes`` applied by field name: its own fields, or those of
    the configs nested in it (each name goes to the first config that has it)."""
    own, rest = {}, dict(changes)
    for f in dataclasses.fields(config):
        if f.name in rest:
            own[f.name] = rest.pop(f.name)
    for f in dataclasses.fields(config):
        if not rest or not f.metadata.get("nested") or f.name in own:
            continue
        inner = getattr(config, f.name)
        if inner is None:
            continue
        names = all_names(inner)
        mine = {k: rest.pop(k) for k in list(rest) if k in names}
        if mine:
            own[f.name] = replace(inner, **mine)
    if rest:
        raise TypeError(f"hsc: {type(config).__name__} has no option(s) {sorted(rest)}; expected some "
                        f"of {sorted(all_names(config))}")
    return dataclasses.replace(config, **own)


def all_names(config) -> set:
    """The field names of ``config`` and of the configs nested in it."""
    names = set()
    for f in dataclasses.fields(config):
        names.add(f.name)
        inner = getattr(config, f.name)
        if f.metadata.get("nested") and inner is not None:
            names |= all_names(inner)
    return names


def from_dict(cls: type, data: Mapping[str, Any]) -> Any:
    """A ``cls`` from :func:`dataclasses.asdict`'s form of one (JSON's lists become tuples;
    nested configs are rebuilt; a missing field takes its default)."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        if f.metadata.get("nested") and value is not None:
            value = from_dict(type(f.default_factory()), value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)


@dataclass
class PreconditionerConfig:
    """Options of a :class:`~hsc.preconditioner.Preconditioner` (docs/contract.md §2, §4).

    The defaults are the configuration the benchmarks found best across the applications
    (docs/contract.md §5, "Defaults"): the saddle-free root 1/sqrt(lambda^2 + mu^2) on blocks of 16
    with mu the median |eigenvalue| of the preconditioner's blocks, refreshed every 50 steps."""

    block_size: int = option(16, "b, parameter entries per block", int)
    estimator: str = option("probe", "curvature estimator: probe (b HVPs a sign draw), coloured (b C "
                            "HVPs a draw: blocks that couple strongly never share a probe), exact "
                            "(one HVP per parameter; small models) or gauss_newton (the Gauss-Newton "
                            "matrix's exact blocks from one backward per output row; the loss closure "
                            "returns (outputs, loss))", str, ESTIMATORS)
    samples: int = option(1, "sign draws averaged per refresh (probe, coloured)", int)
    sketches: Optional[int] = option(None, "gauss_newton (the others ignore it): random combinations of "
                                     "the output rows a refresh, one backward each (for outputs with too "
                                     "many rows for one product a row: images, a perceptual loss's "
                                     "residuals); none: one product per row", _optional_int)
    colour_radius: int = option(1, "coloured: blocks of image tiles within this many tiles of each "
                                "other get different colours ((r + 1)^2 colours per block of a tile)", int)
    ema: float = option(0.9, "weight of the previous estimate at each refresh, in [0, 1)", float)
    update_every: int = option(50, "refresh the estimate and the factors once every this many steps", int)
    damping: float = option(1e-4, "delta, the damping the search starts from (cholesky) or adds "
                            "(singular_safe)", float)
    scale: float = option(1.0, "mu, the scale of the correction M = A + mu^2 A^-1 (scale_rule "
                          "absolute), or rho in mu = rho median|lambda| (relative)", float)
    scale_rule: str = option("relative", "absolute: mu = scale; relative (spectral modes): mu = scale "
                             "times the median |eigenvalue| over the preconditioner's blocks, at each "
                             "refresh", str, SCALE_RULES)
    mode: str = option("saddle_free_root", "how M^-1 is formed (docs/contract.md §2)", str, ops.MODES)
    max_tries: int = option(32, "dampings tried per block (cholesky)", int)
    max_sweeps: int = option(ops.MAX_SWEEPS, "the eigensolver's sweep limit (spectral modes)", int)
    factor_power: float = option(1.0, "the factor holds M^-factor_power: 1 (the step M^-1 g) or 0.5 "
                                 "(M^-1/2, for a coupled solve split symmetrically; the modes whose "
                                 "M^-1 is positive definite)", float)
    chunk_size: Optional[int] = option(None, "vectors per batched backward (HVP probes, unit vectors, "
                                       "Gauss-Newton products; memory bound); none: chosen by device "
                                       "and estimator", _optional_int)
    patch: Optional[Tuple[int, int]] = option(None, "cut image-like tensors into spatial patches "
                                              "ph,pw (or none)", int_pair)
    seed: int = option(0, "seed of the probe signs and the Gauss-Newton sketches", int)

    def validate(self) -> "PreconditionerConfig":
        def need(ok: bool, name: str, expected: str):
            if not ok:
                raise ValueError(f"hsc: {name} must be {expected}, got {getattr(self, name)!r}")

        def is_int(x) -> bool:
            return isinstance(x, int) and not isinstance(x, bool)

        need(is_int(self.block_size) and self.block_size >= 1, "block_size", "an int >= 1")
        need(self.estimator in ESTIMATORS, "estimator", f"one of {ESTIMATORS}")
        need(is_int(self.samples) and self.samples >= 1, "samples", "an int >= 1")
        need(self.sketches is None or (is_int(self.sketches) and self.sketches >= 1), "sketches",
             "None or an int >= 1")
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
        need(self.factor_power == 1.0 or (self.factor_power == 0.5 and self.mode in ops.NONNEGATIVE_MODES),
             "factor_power", f"1, or 0.5 in a mode whose M^-1 is positive definite: {ops.NONNEGATIVE_MODES}")
        need(self.chunk_size is None or (is_int(self.chunk_size) and self.chunk_size >= 1),
             "chunk_size", "None or an int >= 1")
        need(self.patch is None or (isinstance(self.patch, (tuple, list)) and len(self.patch) == 2
                                    and all(is_int(p) and p >= 1 for p in self.patch)),
             "patch", "None or two ints (ph, pw) >= 1")
        need(is_int(self.seed), "seed", "an int")
        return self


CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(PreconditionerConfig))
