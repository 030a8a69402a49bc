"""hsc.gan: metrics on constructed samples, short runs of each optimizer, the CLI, resume."""
from __future__ import annotations

import dataclasses
import json
import math
import sys

import pytest
import torch

from conftest import FakeClock
from hsc.__main__ import main as hsc_main
from hsc.gan.data import make_dataset
from hsc.gan.metrics import digits_classifier, digits_metrics, kl_to_uniform, mixture_metrics
from hsc.gan.train import HSCOptions, TrainConfig, Trainer, train

FAST_HSC = HSCOptions().with_changes(block_size=8, update_every=3)


# ---- metrics --------------------------------------------------------------------------------

def test_kl_to_uniform_known_values():
    assert kl_to_uniform(torch.tensor([5, 5, 5, 5])) == pytest.approx(0.0)
    assert kl_to_uniform(torch.tensor([7, 0, 0, 0])) == pytest.approx(math.log(4))
    assert kl_to_uniform(torch.tensor([1, 1, 0, 0])) == pytest.approx(math.log(2))
    assert kl_to_uniform(torch.tensor([0, 0, 0])) == pytest.approx(math.log(3))  # no sample: log K


def test_mixture_metrics_on_constructed_samples():
    data = make_dataset("ring8")
    sigma = data.sigma
    means = data.means
    # 3 modes hit: mode 0 twice (one at 2.9 sigma), mode 2 and mode 5 once; mode 1 only at 3.1 sigma
    # (not high quality); 3 samples far from every mean.
    hits = torch.stack([means[0], means[0] + torch.tensor([2.9 * sigma, 0.0]), means[2], means[5],
                        means[1] + torch.tensor([0.0, 3.1 * sigma])])
    far = torch.tensor([[0.0, 0.0], [5.0, 5.0], [0.5, 0.5]])
    m = mixture_metrics(torch.cat([hits, far]), means, sigma)
    assert m["modes"] == 3
    assert m["high_quality"] == pytest.approx(100 * 4 / 8)
    p = torch.tensor([2, 1, 1]) / 4
    assert m["reverse_kl"] == pytest.approx(float((p * (p * 8).log()).sum()))


def test_mixture_metrics_on_the_data_itself():
    data = make_dataset("grid25")
    real = data.sample(2500, torch.Generator().manual_seed(0))
    m = mixture_metrics(real, data.means, data.sigma)
    assert m["modes"] == 25 and m["high_quality"] > 98 and m["reverse_kl"] < 0.02


def test_digits_classifier_and_metrics_on_real_digits():
    clf = digits_classifier()
    assert clf.held_out_accuracy >= 95.0
    data = make_dataset("digits")
    real = data.sample(2000, torch.Generator().manual_seed(0))
    m = digits_metrics(real)
    assert m["classes"] == 10 and m["class_kl"] < 0.02
    assert m["frechet"] < 1.0
    ones = data.images[data.labels == 1]
    collapsed = digits_metrics(ones)
    assert collapsed["classes"] <= 3 and collapsed["class_kl"] > 1.5 and collapsed["frechet"] > m["frechet"] + 10


# ---- training -------------------------------------------------------------------------------

def _flat(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()])


@pytest.mark.parametrize("method,update", [("adam", "simultaneous"), ("adam", "alternating"),
                                           ("hsc", "simultaneous"), ("hsc", "alternating"),
                                           ("acgd", "simultaneous")])
def test_short_run_changes_parameters_and_stays_finite(method, update):
    cfg = TrainConfig(method=method, update=update, steps=8, batch_size=64, eval_samples=200, hsc=FAST_HSC)
    trainer = Trainer(cfg)
    g0, d0 = _flat(trainer.G), _flat(trainer.D)
    result = trainer.run()
    for before, module in ((g0, trainer.G), (d0, trainer.D)):
        after = _flat(module)
        assert torch.isfinite(after).all()
        assert not torch.equal(before, after)
    assert result.steps == 8 and torch.isfinite(result.samples).all()
    if method == "hsc":
        assert result.stats["G_preconditioner"]["refreshes"] == 3


@pytest.mark.parametrize("players", ["G", "D"])
def test_hsc_one_player_preconditioned(players):
    cfg = TrainConfig(method="hsc", steps=3, batch_size=32, eval_samples=100,
                      hsc=dataclasses.replace(FAST_HSC, players=players))
    result = train(cfg)
    assert ("G_preconditioner" in result.stats) == (players == "G")
    assert ("D_preconditioner" in result.stats) == (players == "D")


def test_digits_short_run():
    cfg = TrainConfig(data="digits", method="hsc", steps=3, batch_size=32, eval_samples=300,
                      hsc=FAST_HSC.with_changes(block_size=32))
    result = train(cfg)
    assert result.samples.shape == (300, 64) and set(result.final) >= {"classes", "class_kl", "frechet"}


@pytest.mark.parametrize("method", ["adam", "hsc", "acgd"])
def test_resume_equals_uninterrupted_run(method, tmp_path):
    cfg = TrainConfig(method=method, steps=10, batch_size=64, eval_samples=100, eval_every_steps=5,
                      hsc=FAST_HSC)
    whole = Trainer(cfg)
    whole.run()
    first = Trainer(dataclasses.replace(cfg, steps=5))
    first.run()
    first.save(tmp_path / "ckpt.pt")
    resumed = Trainer.load(tmp_path / "ckpt.pt", steps=10)
    resumed.run()
    assert torch.equal(_flat(whole.G), _flat(resumed.G))
    assert torch.equal(_flat(whole.D), _flat(resumed.D))
    assert [s.metrics for s in whole.history] == [s.metrics for s in resumed.history]
    if method == "hsc":
        for name in ("G", "D"):
            a = whole.players[name].preconditioner.state_dict()
            b = resumed.players[name].preconditioner.state_dict()
            assert torch.equal(a["estimate"], b["estimate"]) and a["calls"] == b["calls"]


def test_same_seed_same_run_other_seed_other_run():
    cfg = TrainConfig(method="hsc", steps=4, batch_size=32, eval_samples=100, hsc=FAST_HSC)
    a, b = Trainer(cfg), Trainer(cfg)
    c = Trainer(dataclasses.replace(cfg, seed=1))
    for t in (a, b, c):
        t.run()
    assert torch.equal(_flat(a.G), _flat(b.G)) and not torch.equal(_flat(a.G), _flat(c.G))


# ---- CLI ------------------------------------------------------------------------------------

def test_cli_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    rc = hsc_main(["gan", "--data", "ring8", "--optim", "hsc,adam,acgd", "--steps", "6", "--seeds", "0,1",
                   "--batch-size", "32", "--out", str(out), "--hsc-block-size", "8", "--checkpoint"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| hsc |" in printed and "| acgd |" in printed and "±" in printed
    report = json.loads((out / "metrics.json").read_text())
    assert set(report["summary"]) == {"hsc", "adam", "acgd"}
    assert len(report["runs"]) == 6 and report["summary"]["adam"]["modes"]["values"]
    for name in ("samples-hsc.png", "samples-adam.png", "samples-acgd.png", "metrics-vs-time.png",
                 "checkpoint-hsc-seed1.pt"):
        assert (out / name).stat().st_size > 0


def test_cli_seconds_budget_counts_training_time_only(tmp_path):
    """The run stops at the first step at or past the budget: every snapshot before the last is
    below it, the last is taken at that step; snapshots come every --eval-every seconds of
    training. No upper bound in seconds: how far the last step overshoots is the machine's speed."""
    out = tmp_path / "run"
    assert hsc_main(["gan", "--optim", "adam", "--seconds", "0.5", "--seeds", "0", "--batch-size", "32",
                     "--eval-every", "0.1", "--out", str(out)]) == 0
    run = json.loads((out / "metrics.json").read_text())["runs"][0]
    history = run["history"]
    assert run["seconds"] >= 0.5 and run["steps"] >= 1
    assert history[0]["step"] == 0 and history[0]["seconds"] == 0.0
    assert history[-1]["step"] == run["steps"] and history[-1]["seconds"] == run["seconds"]
    assert all(snap["seconds"] < 0.5 for snap in history[:-1])
    steps = [snap["step"] for snap in history]
    assert steps == sorted(set(steps))
    assert all(b["seconds"] - a["seconds"] >= 0.1 for a, b in zip(history[:-2], history[1:-1]))


def test_seconds_budget_on_a_fake_clock(tmp_path, monkeypatch):
    """The budget logic on a clock that moves 1/8 s per training step and 1000 s per metric
    snapshot (binary fractions: the sums are exact): training time counts the steps only, so a
    0.5 s budget with a snapshot every 0.25 s stops after exactly 4 steps, at 0.5 s, with
    snapshots at steps 0, 2 and 4."""
    train_module = sys.modules[Trainer.__module__]
    clock = FakeClock()
    monkeypatch.setattr(train_module, "time", clock)
    train_step, evaluate = Trainer.train_step, train_module.evaluate

    def timed_step(self):
        train_step(self)
        clock.advance(0.125)

    def slow_evaluate(*args, **kwargs):
        clock.advance(1000.0)
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(Trainer, "train_step", timed_step)
    monkeypatch.setattr(train_module, "evaluate", slow_evaluate)
    out = tmp_path / "run"
    assert hsc_main(["gan", "--optim", "adam", "--seconds", "0.5", "--seeds", "0", "--batch-size", "32",
                     "--eval-every", "0.25", "--out", str(out)]) == 0
    run = json.loads((out / "metrics.json").read_text())["runs"][0]
    assert run["steps"] == 4 and run["seconds"] == 0.5
    assert [(snap["step"], snap["seconds"]) for snap in run["history"]] == [(0, 0.0), (2, 0.25),
                                                                          (4, 0.5)]


def test_info_still_works(capsys):
    assert hsc_main(["info"]) == 0
    assert "hsc" in capsys.readouterr().out


# ---- spectral modes in the CLI, HSCOptions --------------------------------------------------

def test_cli_spectral_mode_with_relative_scale_writes_the_spectrum(tmp_path, capsys):
    out = tmp_path / "run"
    assert hsc_main(["gan", "--optim", "hsc", "--steps", "40", "--seeds", "0", "--batch-size", "16", "--out", str(out),
                     "--hsc-mode", "saddle_free_root", "--hsc-scale-rule", "relative", "--spectrum"]) == 0
    assert "spectrum-hsc.png" in capsys.readouterr().out
    assert (out / "spectrum-hsc.png").stat().st_size > 0
    report = json.loads((out / "metrics.json").read_text())
    pre = report["configs"][0]["hsc"]["preconditioner"]
    assert pre["mode"] == "saddle_free_root" and pre["scale_rule"] == "relative"
    for player in ("G", "D"):
        stats = report["runs"][0]["stats"][f"{player}_preconditioner"]
        # mu is rho times the median |eigenvalue| (rho = 1 here), so it lies within the spectrum's range
        spectrum = stats["spectrum"]
        assert spectrum["scale"] == stats["scale"] > 0
        assert 0 < spectrum["fraction_below_scale"] < 1


def test_cli_spectrum_outside_the_spectral_modes_says_so(tmp_path, capsys):
    out = tmp_path / "run"
    assert hsc_main(["gan", "--optim", "hsc", "--steps", "2", "--seeds", "0", "--batch-size", "16", "--out", str(out),
                     "--hsc-mode", "cholesky", "--hsc-scale-rule", "absolute", "--spectrum"]) == 0
    assert "no spectrum to draw" in capsys.readouterr().out
    assert not (out / "spectrum-hsc.png").exists()


def test_hsc_options_with_changes_and_preconditioner_config():
    base = HSCOptions()
    changed = base.with_changes(players="G", lr=1e-3, block_size=8, mode="spectral", colour_radius=2)
    assert (changed.players, changed.lr, changed.preconditioner.block_size, changed.preconditioner.mode,
            changed.preconditioner.colour_radius) == ("G", 1e-3, 8, "spectral", 2)
    assert base == HSCOptions()  # a copy: the original is untouched
    assert changed.preconditioner_config(7) == dataclasses.replace(changed.preconditioner, seed=7)
    with pytest.raises(TypeError):
        base.with_changes(blocksize=8)


def test_hsc_options_from_dict_of_asdict_and_of_json():
    options = HSCOptions().with_changes(players="D", base="sgd", graft=False, block_size=8, estimator="coloured",
                                        mode="saddle_free", scale_rule="relative", chunk_size=4, patch=(2, 2),
                                        max_sweeps=12)
    assert HSCOptions.from_dict(dataclasses.asdict(options)) == options
    # a checkpoint's config goes through JSON-like forms: the patch comes back as a list
    assert HSCOptions.from_dict(json.loads(json.dumps(dataclasses.asdict(options)))) == options


# The flat form of the HSCOptions before PreconditionerConfig (older checkpoints), in a spectral mode.
FLAT_OPTIONS = {"players": "D", "block_size": 8, "update_every": 5, "scale": 0.5, "damping": 1e-3,
                "estimator": "exact", "samples": 2, "ema": 0.5, "mode": "saddle_free", "base": "sgd",
                "lr": 1e-3, "momentum": 0.5, "graft": False}


def test_hsc_options_from_a_flat_dict():
    """The flat form is an older checkpoint's: its missing fields take the GAN defaults of its time
    (the library's, with b = 16 and update_every = 50), not today's."""
    from hsc import PreconditionerConfig

    options = HSCOptions.from_dict(FLAT_OPTIONS)
    assert (options.players, options.base, options.lr, options.momentum, options.graft) == ("D", "sgd", 1e-3, 0.5,
                                                                                             False)
    inner = {k: v for k, v in FLAT_OPTIONS.items() if k in dataclasses.asdict(options.preconditioner)}
    then = dataclasses.replace(PreconditionerConfig(), block_size=16, update_every=50)
    assert options.preconditioner == dataclasses.replace(then, **inner)


def test_hsc_options_from_an_old_cholesky_checkpoint_is_valid():
    options = HSCOptions.from_dict({**FLAT_OPTIONS, "mode": "cholesky", "scale": 1.0})
    options.validate()
    assert options.preconditioner.mode == "cholesky" and options.preconditioner.scale_rule == "absolute"
