"""What the applications (``hsc gan``, ``hsc style``, ``hsc style-net``) and the benchmarks share:
the machine's description, strict JSON, comma lists and budgets on the command line, progress
bars, the histogram of block eigenvalues, the training loop under a budget and the moving average
of a network's weights.

tqdm and matplotlib are imported where they are used: the library itself does not need them.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch


def machine_info() -> dict:
    """The CPU model, cores, torch threads, torch and hsc versions and the SIMD level built."""
    import hsc
    from hsc import _C

    model = platform.processor() or platform.machine()
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    info = {"cpu": model, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "hsc": hsc.__version__, "hsc_simd": _C.simd,
            "python": platform.python_version()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def machine() -> str:
    """:func:`machine_info` in one line, for reports."""
    m = machine_info()
    gpu = f", {m['gpu']}" if "gpu" in m else ""
    return (f"{m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch thread(s), torch {m['torch']}, "
            f"hsc {m['hsc']} ({m['hsc_simd']}){gpu}")


def finite_or_none(obj):
    """``obj`` with every non-finite float replaced by None and tensors by lists, so that the JSON
    is strict."""
    if isinstance(obj, torch.Tensor):
        obj = obj.tolist()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    return obj


def write_json(path: Path, obj) -> None:
    """``obj`` as strict JSON (no NaN or Infinity)."""
    Path(path).write_text(json.dumps(finite_or_none(obj), indent=1, allow_nan=False))


def comma_list(text: str, flag: str, allowed: Optional[Sequence[str]] = None,
               parse: Callable[[str], object] = str) -> list:
    """The items of a comma list given to ``flag``, each parsed; with ``allowed``, each must be one
    of them, and none may repeat. A bad list raises ValueError naming the flag."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ValueError(f"hsc: {flag} needs at least one item, got {text!r}")
    if allowed is not None:
        unknown = [t for t in items if t not in allowed]
        if unknown:
            raise ValueError(f"hsc: {flag} must name items among {tuple(allowed)}, got {', '.join(unknown)}")
        if len(set(items)) != len(items):
            raise ValueError(f"hsc: {flag} must not repeat an item, got {text!r}")
    try:
        return [parse(t) for t in items]
    except ValueError:
        raise ValueError(f"hsc: {flag} must be a comma list of {parse.__name__}s, got {text!r}") from None


def add_budget(parser: argparse.ArgumentParser, units: Mapping[str, Tuple[type, str]]) -> None:
    """Mutually exclusive budget flags, one per unit: ``units[name] = (type, help)``."""
    group = parser.add_mutually_exclusive_group()
    for name, (kind, text) in units.items():
        group.add_argument(f"--{name}", type=kind, help=text)


def progress_bar(total: float, unit: str, desc: str = "", disable: bool = False):
    """The applications' tqdm bar over a budget (steps, evaluations or seconds)."""
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, desc=desc, disable=disable, dynamic_ncols=True, mininterval=0.5,
                bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} {unit} [{elapsed}<{remaining}]")


def plot_spectra(spectra: Dict[str, Tuple[torch.Tensor, float]], path: Path, title: str) -> None:
    """One panel per entry ``name -> (eigenvalues, mu)`` (``Preconditioner.spectrum()``): a
    histogram of the eigenvalues on a symmetric logarithmic axis (linear within mu of 0), with
    -mu and +mu marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(spectra), figsize=(5 * len(spectra), 3.5), squeeze=False)
    for ax, (name, (values, mu)) in zip(axes[0], spectra.items()):
        v = values.double().cpu()
        top = float(v.abs().max()) if v.numel() else 1.0
        # Bins uniform in the symlog coordinate: linear within mu, logarithmic beyond.
        edges = torch.logspace(torch.log10(torch.tensor(mu)), torch.log10(torch.tensor(max(top, 2 * mu))), 40)
        bins = torch.cat([-edges.flip(0), torch.linspace(-mu, mu, 9)[1:-1], edges]).numpy()
        ax.hist(v.numpy(), bins=bins, color="tab:blue")
        ax.set_xscale("symlog", linthresh=mu)
        ax.set_yscale("log")
        for x in (-mu, mu):
            ax.axvline(x, color="tab:red", lw=1, ls="--")
        negative = float((v < 0).double().mean()) if v.numel() else 0.0
        ax.set_title(f"{name}: {v.numel()} eigenvalues, {100 * negative:.0f} % negative, mu = {mu:.3g}",
                     fontsize=9)
        ax.set_xlabel("eigenvalue (symlog; dashed: ±mu)")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def mean_std(values: List[float]) -> Dict[str, object]:
    """{mean, std (sample; 0 for one value), values}."""
    import statistics

    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": list(values)}


class WeightAverage:
    """An exponential moving average of a network's weights (the averaged iterate), for sampling
    or evaluating a network whose iterates oscillate: ``module`` is the averaged copy. At step t
    ``update`` sets average <- d average + (1 - d) weights with d = min(``decay``, (1 + t) / (10 + t)):
    early on it follows the network, later it spans about 1 / (1 - ``decay``) steps. Buffers (batch
    norm's statistics) are the network's own."""

    def __init__(self, network: torch.nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"hsc: the average's decay must be in (0, 1), got {decay!r}")
        self.decay = decay
        self.module = copy.deepcopy(network).requires_grad_(False)

    @torch.no_grad()
    def update(self, network: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for mean, p in zip(self.module.parameters(), network.parameters()):
            mean.lerp_(p, 1.0 - d)
        for mean, b in zip(self.module.buffers(), network.buffers()):
            mean.copy_(b)

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state)


class Lookahead:
    """Lookahead over the weights of one or more networks (Zhang et al., 2019), which for the two
    players of a game is lookahead-minmax (Chavdarova et al., ICLR 2021): slow copies of the
    weights; after every ``steps``-th training step the slow weights move a fraction ``alpha`` of the
    way to the fast ones, slow <- slow + alpha (fast - slow), and the fast weights restart there.
    Simultaneous play rotates around an equilibrium; the joint pull back towards where the players
    stood ``steps`` steps ago damps the rotation while keeping the optimizers' state. Buffers (batch
    norm's statistics) are the networks' own."""

    def __init__(self, networks: Sequence[torch.nn.Module], steps: int, alpha: float):
        if not (isinstance(steps, int) and steps >= 1):
            raise ValueError(f"hsc: lookahead steps must be an int >= 1, got {steps!r}")
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"hsc: lookahead alpha must be in (0, 1], got {alpha!r}")
        self.steps, self.alpha = steps, alpha
        self.params = [p for network in networks for p in network.parameters()]
        self.slow = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self, steps_taken: int) -> None:
        """Call after each training step with the number of steps taken so far."""
        if steps_taken % self.steps:
            return
        for slow, fast in zip(self.slow, self.params):
            slow.lerp_(fast, self.alpha)
            fast.copy_(slow)

    def state_dict(self) -> dict:
        return {"slow": [s.clone() for s in self.slow]}

    def load_state_dict(self, state: dict) -> None:
        for slow, saved in zip(self.slow, state["slow"], strict=True):
            slow.copy_(saved)


class BudgetedTraining:
    """The loop of a training run under a budget of ``config.steps`` or ``config.seconds`` of
    training time (snapshots excluded), with a snapshot at the start, every
    ``config.eval_every_steps`` / ``config.eval_every_seconds`` (default: a tenth of a step budget,
    a fifteenth of a seconds budget) and at the end. Subclasses hold ``config``, ``history`` (whose
    entries have ``step`` and ``seconds``), ``step_count`` and ``train_seconds``, and define
    ``train_step``, ``snapshot`` and ``result``; a data-parallel one overrides :meth:`agree`, a GPU
    one :meth:`synchronize`."""

    def agree(self, flag: bool) -> bool:
        """Whether ``flag`` holds everywhere it must (data-parallel: on every rank)."""
        return flag

    def synchronize(self) -> None:
        """Waits for the device before a step's time is read."""

    def done(self) -> bool:
        cfg = self.config
        spent = self.step_count >= cfg.steps if cfg.steps is not None else self.train_seconds >= cfg.seconds
        return self.agree(spent)

    def snapshot_due(self) -> bool:
        cfg, last = self.config, self.history[-1]
        if cfg.steps is not None:
            return self.step_count - last.step >= (cfg.eval_every_steps or max(1, cfg.steps // 10))
        every = cfg.eval_every_seconds or max(0.5, cfg.seconds / 15)
        return self.agree(self.train_seconds - last.seconds >= every)

    def run(self, progress: Optional[Callable[[float], None]] = None):
        """Trains until the budget is spent; ``progress`` gets the budget units (steps or seconds)
        done since its last call. Returns :meth:`result`."""
        if not self.history:
            self.snapshot()
        while not self.done():
            t0 = time.perf_counter()
            self.train_step()
            self.synchronize()
            dt = time.perf_counter() - t0
            self.train_seconds += dt
            self.step_count += 1
            if progress is not None:
                progress(1 if self.config.steps is not None else dt)
            if self.snapshot_due():
                self.snapshot()
        if self.history[-1].step != self.step_count:
            self.snapshot()
        return self.result()
