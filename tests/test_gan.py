"""hsc.gan: metrics on constructed samples, short runs of each optimizer, the CLI, resume."""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import sys

import matplotlib.image as plt_image
import pytest
import torch
from torch.nn import functional as F

from conftest import FakeClock
from hsc.__main__ import main as hsc_main
from hsc import config
from hsc.gan.data import make_dataset
from hsc.gan.metrics import digits_classifier, digits_metrics, kl_to_uniform, mixture_metrics
from hsc.gan.train import HSCSettings, TrainConfig, Trainer, train

FAST_HSC = config.replace(HSCSettings(), block_size=8, update_every=3)


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
    """Three steps from a random generator: tanh samples in [-1, 1], and far from the real digits
    by every metric (real digits score about 0 on each, see the classifier test)."""
    cfg = TrainConfig(data="digits", method="hsc", steps=3, batch_size=32, eval_samples=300,
                      hsc=config.replace(FAST_HSC, block_size=32))
    result = train(cfg)
    assert result.samples.shape == (300, 64) and result.samples.abs().max() <= 1
    final = result.final
    assert 1 <= final["classes"] <= 10 and 0 <= final["class_kl"] <= math.log(10) + 1e-9
    assert final["frechet"] > 10
    # the snapshot's metrics are those of the samples it returned
    assert digits_metrics(result.samples) == final


@pytest.mark.parametrize("method", ["adam", "hsc", "hsc optimism", "adam average", "hsc lookahead", "acgd",
                                    "competitive"])
def test_resume_equals_uninterrupted_run(method, tmp_path):
    # "hsc optimism": the optimistic step's last direction is part of the checkpoint; "adam average":
    # the generator's moving average (the snapshots' metrics are its samples'); "hsc lookahead": the
    # slow weights, saved at step 5 between the pull-backs of steps 3 and 6
    hsc = config.replace(FAST_HSC, optimism=1.0) if method == "hsc optimism" else FAST_HSC
    average = 0.9 if method == "adam average" else 0.0
    lookahead = 3 if method == "hsc lookahead" else 0
    method = method.split()[0]
    cfg = TrainConfig(method=method, steps=10, batch_size=64, eval_samples=100, eval_every_steps=5, hsc=hsc,
                      generator_average=average, lookahead=lookahead)
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
    if average:
        assert torch.equal(_flat(whole.G_average.module), _flat(resumed.G_average.module))
    if method == "competitive":
        assert whole.game.stats()["steps"] == resumed.game.stats()["steps"] == 10
        assert torch.equal(whole.game.warm, resumed.game.warm)
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
    rc = hsc_main(["gan", "--data", "ring8", "--optim", "hsc,adam,acgd,competitive", "--steps", "6",
                   "--seeds", "0,1", "--batch-size", "32", "--out", str(out), "--hsc-block-size", "8",
                   "--game-cg-tol", "0.05", "--game-solve-side", "y", "--checkpoint"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| hsc |" in printed and "| acgd |" in printed and "| competitive |" in printed and "±" in printed
    report = json.loads((out / "metrics.json").read_text())
    assert set(report["summary"]) == {"hsc", "adam", "acgd", "competitive"}
    assert len(report["runs"]) == 8
    # the flags reached the runs, and the summary is the mean over the seeds' final metrics
    competitive = [r for r in report["runs"] if r["method"] == "competitive"]
    assert all(r["stats"]["game"]["solve_side"] == "y" and r["steps"] == 6 for r in competitive)
    assert all(c["game"]["cg_tol"] == 0.05 and c["hsc"]["preconditioner"]["block_size"] == 8
               for c in report["configs"])
    for method, row in report["summary"].items():
        finals = [r["final"]["modes"] for r in report["runs"] if r["method"] == method]
        assert row["modes"]["values"] == finals and row["modes"]["mean"] == pytest.approx(sum(finals) / 2)
    for name in ("samples-hsc.png", "samples-adam.png", "samples-acgd.png", "samples-competitive.png",
                 "metrics-vs-time.png"):
        picture = plt_image.imread(out / name)
        assert picture.ndim == 3 and picture.shape[0] > 100 and picture[..., :3].std() > 0.01, name
    resumed = Trainer.load(out / "checkpoint-competitive-seed1.pt")
    assert resumed.step_count == 6 and resumed.config.game.cg_tol == 0.05


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
    import hsc.apps

    train_module = sys.modules[Trainer.__module__]
    clock = FakeClock()
    monkeypatch.setattr(hsc.apps, "time", clock)  # the budgeted loop's clock (hsc.apps.BudgetedTraining)
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


# ---- spectral modes in the CLI, HSCSettings --------------------------------------------------

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


def test_cli_factor_power_makes_each_player_step_with_the_root_of_its_inverse():
    """--hsc-factor-power 0.5 reaches both players: their factor applied twice is the default
    run's M^-1 (both runs refresh from the same first batch, so they hold the same estimate), and
    the competitive step's preconditioner, which needs M^-1/2, refuses 1 with a message naming it."""
    from hsc.gan.cli import add_arguments, build_configs

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    common = ["--steps", "1", "--optim", "hsc", "--seeds", "0", "--hsc-block-size", "8", "--batch-size", "32"]
    root, full = (Trainer(build_configs(parser.parse_args(common + extra))[0])
                  for extra in (["--hsc-factor-power", "0.5"], []))
    root.train_step()
    full.train_step()
    for name in ("G", "D"):
        half, whole = root.players[name].preconditioner, full.players[name].preconditioner
        assert (half.config.factor_power, whole.config.factor_power) == (0.5, 1.0)
        g = torch.randn(whole.layout.numel, generator=torch.Generator().manual_seed(3))
        twice, once = half.solve_flat(half.solve_flat(g)), whole.solve_flat(g)
        # float32 rounding of two applications, relative to the vector (a few entries sit on tiny ones)
        assert float((twice - once).norm() / once.norm()) < 1e-4, name
        assert float((half.solve_flat(g) - once).norm() / once.norm()) > 0.1, name
    with pytest.raises(ValueError, match="factor_power"):
        Trainer(build_configs(parser.parse_args(common[:2] + ["--optim", "competitive", "--game-factor-power", "1"]))[0])


def test_hsc_settings_replace_and_preconditioner_config():
    base = HSCSettings()
    changed = config.replace(base, players="G", lr=1e-3, block_size=8, mode="spectral", colour_radius=2)
    assert (changed.players, changed.lr, changed.preconditioner.block_size, changed.preconditioner.mode,
            changed.preconditioner.colour_radius) == ("G", 1e-3, 8, "spectral", 2)
    assert base == HSCSettings()  # a copy: the original is untouched
    assert changed.preconditioner_config(7) == dataclasses.replace(changed.preconditioner, seed=7)
    with pytest.raises(TypeError, match="blocksize"):
        config.replace(base, blocksize=8)


def test_train_config_from_dict_of_asdict_and_of_json():
    cfg = config.replace(TrainConfig(data="digits", method="competitive", steps=3), players="D", base="sgd",
                         graft=False, block_size=8, estimator="coloured", mode="saddle_free", chunk_size=4,
                         patch=(2, 2), max_sweeps=12, betas=(0.4, 0.9))
    cfg = dataclasses.replace(cfg, game=config.replace(cfg.game, cg_tol=0.05, solve_side="y", warm_start=False))
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    # a checkpoint's config goes through JSON-like forms: tuples come back as lists
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


# ---- the competitive, graft-adam and optimistic steps -------------------------------------------

def _first_draws(cfg: TrainConfig, trainer: Trainer):
    sampler = torch.Generator().manual_seed(cfg.seed + 1)
    real = trainer.dataset.sample(trainer.batch_size, sampler)
    return real, torch.randn(trainer.batch_size, trainer.latent, generator=sampler)


def test_competitive_step_is_the_game_with_g_minimising_the_zero_sum_loss():
    """A training step of ``competitive`` equals hsc.CompetitiveHSC with G as the minimising
    player of f = log D(real) + log(1 - D(G(z))) and D as the maximising one, written here from
    the log-sigmoid form on the run's own draws: a wrong sign or player order moves elsewhere."""
    from hsc import CompetitiveHSC

    cfg = TrainConfig(method="competitive", steps=2, batch_size=32, eval_samples=100, seed=3)
    trainer = Trainer(cfg)
    G, D = copy.deepcopy(trainer.G), copy.deepcopy(trainer.D)
    start = [_flat(G), _flat(D)]
    real, z = _first_draws(cfg, trainer)
    game = CompetitiveHSC(G.parameters(), D.parameters(), dataclasses.replace(
        cfg.game, preconditioner=dataclasses.replace(cfg.game.preconditioner, seed=2 * cfg.seed)))

    def f():
        return torch.log(torch.sigmoid(D(real))).mean() + torch.log(1 - torch.sigmoid(D(G(z)))).mean()

    game.step(f)
    trainer.train_step()
    for mine, theirs, before in ((G, trainer.G, start[0]), (D, trainer.D, start[1])):
        assert float((_flat(mine) - before).abs().max()) > 1e-4  # it moved: the comparison has teeth
        torch.testing.assert_close(_flat(theirs), _flat(mine), rtol=1e-4, atol=1e-6)


def test_graft_adam_moves_each_tensor_by_adams_length_along_the_preconditioned_gradient():
    """base graft-adam: after the first step each tensor of G has moved by Adam's first-step length
    lr ||g / (|g| + eps)|| (Adam's bias-corrected moments at step 1 are g and g^2) along -M^-1 g."""
    cfg = config.replace(TrainConfig(method="hsc", steps=1, batch_size=32, eval_samples=100),
                         base="graft-adam", graft=False, block_size=8, update_every=5)
    trainer = Trainer(cfg)
    G0, D0 = copy.deepcopy(trainer.G), copy.deepcopy(trainer.D)
    real, z = _first_draws(cfg, trainer)
    trainer.train_step()
    with torch.enable_grad():  # the generator's loss at the start point (simultaneous update)
        grads = torch.autograd.grad(F.softplus(-D0(G0(z))).mean(), list(G0.parameters()))
    directions = trainer.players["G"].preconditioner.solve(grads)
    lr, eps = cfg.hsc.lr, 1e-8
    for p, b, g, d in zip(trainer.G.parameters(), G0.parameters(), grads, directions):
        step = (p - b).detach()
        assert float(step.norm()) == pytest.approx(lr * float((g / (g.abs() + eps)).norm()), rel=1e-4)
        cosine = float(-(step * d).sum() / (step.norm() * d.norm()))
        assert cosine == pytest.approx(1.0, abs=1e-5)
    # M^-1 g is not g's direction here, so the check above tells grafting from plain Adam
    assert min(float((g * d).sum() / (g.norm() * d.norm())) for g, d in zip(grads, directions)) < 0.99


def test_optimism_steps_along_the_direction_plus_gamma_times_its_change():
    """optimism gamma: the base optimizer sees u_t + gamma (u_t - u_(t-1)). With plain SGD and no
    preconditioner (u = g) the first step is -lr g1 and the second -lr (g2 + gamma (g2 - g1))."""
    from hsc.gan.train import Player

    w = torch.nn.Linear(3, 1, bias=False)
    start = w.weight.detach().clone()
    player = Player(w, torch.optim.SGD(w.parameters(), lr=0.1), optimism=0.5)
    g1, g2 = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.3, 0.7, -1.0])
    player.prepare(lambda: (w.weight * g1).sum())
    player.apply()
    after_one = w.weight.detach().clone()
    player.prepare(lambda: (w.weight * g2).sum())
    player.apply()
    torch.testing.assert_close(after_one, start - 0.1 * g1)
    torch.testing.assert_close(w.weight.detach(), after_one - 0.1 * (g2 + 0.5 * (g2 - g1)))
    with pytest.raises(ValueError, match="optimism"):
        config.replace(HSCSettings(), optimism=-1.0).validate()


def test_lookahead_pulls_both_players_back_towards_the_slow_weights_every_k_steps(tmp_path):
    """lookahead k, alpha: the weights run as without it for k steps, then become slow + alpha (fast -
    slow) for both players, slow the weights k steps before; the optimizers' state is kept."""
    cfg = TrainConfig(method="adam", steps=6, batch_size=32, eval_samples=50)
    plain, pulled = Trainer(cfg), Trainer(dataclasses.replace(cfg, lookahead=3, lookahead_alpha=0.4))
    start = torch.cat([_flat(pulled.G), _flat(pulled.D)])

    def steps(trainer, n):
        for _ in range(n):
            trainer.train_step()
            trainer.step_count += 1
        return torch.cat([_flat(trainer.G), _flat(trainer.D)])

    assert torch.equal(steps(plain, 2), steps(pulled, 2))  # no pull-back before step 3
    fast, after = steps(plain, 1), steps(pulled, 1)
    torch.testing.assert_close(after, start + 0.4 * (fast - start))
    assert float((after - fast).abs().max()) > 1e-6 and float((after - start).abs().max()) > 1e-6
    for name in ("G", "D"):  # Adam's moments are the fast run's
        a, b = plain.players[name].optimizer.state_dict(), pulled.players[name].optimizer.state_dict()
        assert all(torch.equal(a["state"][i]["exp_avg"], b["state"][i]["exp_avg"]) for i in a["state"])
    # the next pull-back, at step 6, from the weights of step 3: against the same three steps
    # without lookahead from the checkpoint of step 3
    pulled.save(tmp_path / "step3.pt")
    free = Trainer.load(tmp_path / "step3.pt", lookahead=0)
    fast = steps(free, 3)
    torch.testing.assert_close(steps(pulled, 3), after + 0.4 * (fast - after))
    with pytest.raises(ValueError, match="lookahead"):
        TrainConfig(steps=1, lookahead=-1).validate()
    with pytest.raises(ValueError, match="lookahead_alpha"):
        TrainConfig(steps=1, lookahead=2, lookahead_alpha=0.0).validate()


def test_generator_average_is_the_moving_average_of_the_iterates_and_what_snapshots_sample():
    """generator_average a: after step t (from 0) the average is d G_avg + (1 - d) G with d =
    min(a, (1 + t) / (10 + t)), computed here from G's own iterates; generate() samples it, not G."""
    cfg = TrainConfig(method="adam", steps=12, batch_size=32, eval_samples=50, generator_average=0.54)
    trainer = Trainer(cfg)
    expected = [p.detach().clone() for p in trainer.G.parameters()]
    for t in range(12):
        trainer.train_step()
        trainer.step_count += 1
        d = min(0.54, (1 + t) / (10 + t))
        expected = [d * e + (1 - d) * p.detach() for e, p in zip(expected, trainer.G.parameters())]
    assert (1 + 9) / (10 + 9) < 0.54 < (1 + 10) / (10 + 10)  # both the ramp and the cap were used
    for e, a, p in zip(expected, trainer.G_average.module.parameters(), trainer.G.parameters()):
        torch.testing.assert_close(a, e)
        assert float((a - p.detach()).abs().max()) > 1e-5  # the average is not the last iterate
    z = torch.randn(50, trainer.latent, generator=torch.Generator().manual_seed(10_000 + cfg.seed))
    with torch.no_grad():
        torch.testing.assert_close(trainer.generate(50), trainer.G_average.module.eval()(z))
    with pytest.raises(ValueError, match="generator_average"):
        TrainConfig(steps=1, generator_average=1.0).validate()
