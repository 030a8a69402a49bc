"""hsc style-net: the stylising network, its perceptual loss, the photo sampler, a few training
steps of each method, bit-exact resume and the command line (no speed or quality asserted)."""
from __future__ import annotations

import json

import pytest
import torch

from hsc import config
from hsc.__main__ import main as hsc_main
from hsc.style.features import make_extractor
from hsc.style.images import load_image
from hsc.style.network import PerceptualLoss, TransformNet
from hsc.style.network_train import NetConfig, NetHSCSettings, NetTrainer, load_network
from hsc.style.objective import LossWeights, StyleObjective
from hsc.style.photos import HELD_OUT, TRAIN, PhotoSampler, held_out_images, split_sources

TINY = dict(size=32, eval_size=32, batch_size=2, width=4, blocks=1)


def test_network_maps_photos_to_images_of_the_same_size_in_the_unit_range():
    net = TransformNet(width=4, blocks=2)
    x = torch.rand(3, 3, 24, 40)
    y = net(x)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    assert sum(isinstance(m, torch.nn.InstanceNorm2d) for m in net.modules()) == 5 + 2 * 2  # 3 down, 2 up, 2 a block
    with pytest.raises(ValueError, match="multiples of 4"):
        net(torch.rand(1, 3, 30, 32))


def test_perceptual_loss_of_one_photo_is_the_pixel_objective_at_the_output():
    """The network trains on the loss hsc style minimises: for a batch of one, the value of
    StyleObjective (content = the photograph) at the network's output."""
    extractor = make_extractor("random", seed=3)
    photo, style = load_image("coffee", 32), load_image("brick", 48)
    weights = LossWeights(content=2.0, style=5e3, tv=0.5, range=10.0)
    output = torch.rand(1, 3, 32, 32) * 1.2 - 0.1  # some pixels outside [0, 1]
    ours = PerceptualLoss(extractor, style, weights)(output, photo)
    theirs = StyleObjective(extractor, photo, style, weights)(output)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=0)
    # a batch is the mean of its photographs' losses
    photos, outputs = torch.cat([photo, load_image("rocket", 32)]), torch.cat([output, torch.rand(1, 3, 32, 32)])
    each = [PerceptualLoss(extractor, style, weights)(o[None], p[None]) for o, p in zip(outputs, photos)]
    torch.testing.assert_close(PerceptualLoss(extractor, style, weights)(outputs, photos), sum(each) / 2,
                               rtol=1e-6, atol=0)


def test_perceptual_loss_is_the_sum_of_its_residuals_squares():
    """The Gauss-Newton estimator's view of the loss: every term's residuals, scaled so that
    their squares sum to the loss (batch of two, pixels outside [0, 1])."""
    extractor = make_extractor("random", seed=2)
    loss = PerceptualLoss(extractor, load_image("brick", 48), LossWeights(content=2.0, style=5e3, tv=0.5, range=10.0))
    photos = torch.cat([load_image("coffee", 32), load_image("rocket", 32)]).double()
    outputs = torch.rand(2, 3, 32, 32, dtype=torch.float64) * 1.4 - 0.2
    extractor.double()
    loss.style_targets = {n: t.double() for n, t in loss.style_targets.items()}
    r = loss.residuals(outputs, photos)
    maps = extractor(outputs)  # one residual per entry of each term's difference
    counts = (sum(maps[n].numel() for n in extractor.content_layers)
              + sum(2 * maps[n].shape[1] ** 2 for n in extractor.style_layers)
              + 2 * 3 * (31 * 32) * 2 + 2 * outputs.numel())
    assert r.shape == (counts,)
    torch.testing.assert_close(r.square().sum(), loss(outputs, photos), rtol=1e-12, atol=0)


def test_sampler_is_deterministic_resumable_and_draws_crops_of_the_photographs():
    train, held = split_sources()
    assert set(train).isdisjoint(held) and tuple(held) == HELD_OUT and tuple(train) == TRAIN
    a, b = PhotoSampler(train[:3], 32, seed=4), PhotoSampler(train[:3], 32, seed=4)
    first = a.draw(5)
    assert first.shape == (5, 3, 32, 32) and 0 <= float(first.min()) and float(first.max()) <= 1
    assert torch.equal(first, b.draw(5))
    state = a.state_dict()
    after = a.draw(3)
    b.load_state_dict(state)
    assert torch.equal(after, b.draw(3)) and not torch.equal(after, first[:3])
    assert held_out_images(held, 32).shape == (len(held), 3, 32, 32)


def test_a_folder_of_photographs_is_split_every_fifth_held_out(tmp_path):
    from hsc.style.images import save_image

    for i in range(6):
        save_image(torch.rand(1, 3, 40, 40), str(tmp_path / f"p{i}.png"))
    (tmp_path / "notes.txt").write_text("not an image")
    train, held = split_sources(str(tmp_path))
    assert [p.split("/")[-1] for p in held] == ["p0.png", "p5.png"] and len(train) == 4
    with pytest.raises(FileNotFoundError, match="--photos"):
        split_sources(str(tmp_path / "missing"))


@pytest.mark.parametrize("method,estimator", [("adam", {}), ("hsc", {"sketches": 4}),
                                              ("hsc", {"estimator": "probe", "sketches": None, "factor_power": 1.0})])
def test_a_few_steps_move_the_network_and_record_the_held_out_loss(method, estimator):
    trainer = NetTrainer(config.replace(NetConfig(method=method, steps=3, eval_every_steps=1, **TINY),
                                        update_every=2, curvature_batch=1, **estimator))
    before = torch.cat([p.detach().flatten() for p in trainer.net.parameters()])
    result = trainer.run()
    after = torch.cat([p.detach().flatten() for p in trainer.net.parameters()])
    assert torch.isfinite(after).all() and not torch.equal(before, after)
    assert [s.step for s in result.history] == [0, 1, 2, 3] and not result.diverged
    assert result.final_loss == pytest.approx(trainer.held_out_loss())
    if method == "hsc":
        assert result.stats["preconditioner"]["refreshes"] == 2  # steps 0 and 2
        if "sketches" in estimator and estimator["sketches"]:  # the default, Gauss-Newton sketches: one
            # product each, a positive semi-definite estimate
            assert result.stats["preconditioner"]["hvps"] == 2 * 4
            spectrum = result.stats["preconditioner"]["spectrum"]  # rank 4 of 16: zeros up to rounding
            assert spectrum["min"] >= -1e-5 * spectrum["max"]


@pytest.mark.parametrize("average", [0.0, 0.6])
def test_resume_equals_an_uninterrupted_run(tmp_path, average):
    cfg = config.replace(NetConfig(method="hsc", steps=4, eval_every_steps=2, average=average, **TINY),
                         update_every=3)
    whole = NetTrainer(cfg)
    whole.run()
    first = NetTrainer(config.replace(cfg, steps=2))
    first.run()
    first.save(tmp_path / "ckpt.pt")
    resumed = NetTrainer.load(tmp_path / "ckpt.pt", steps=4)
    resumed.run()
    for (k, x), y in zip(whole.net.state_dict().items(), resumed.net.state_dict().values()):
        assert torch.equal(x, y), k
    assert [s.held_out_loss for s in whole.history] == [s.held_out_loss for s in resumed.history]
    assert [s.iterate_loss for s in whole.history] == [s.iterate_loss for s in resumed.history]
    if average:
        for (k, x), y in zip(whole.applied.state_dict().items(), resumed.applied.state_dict().values()):
            assert torch.equal(x, y), k


def test_average_is_the_moving_average_of_the_iterates_and_what_is_evaluated_and_saved(tmp_path):
    """average a: after step t (from 0) the averaged weights are d avg + (1 - d) w with d =
    min(a, (1 + t) / (10 + t)), computed here from the network's own iterates; the held-out loss,
    stylise and the checkpoint's network are the average's, the iterate's loss is recorded beside."""
    cfg = NetConfig(method="adam", steps=12, average=0.54, **TINY)
    trainer = NetTrainer(cfg)
    expected = [p.detach().clone() for p in trainer.net.parameters()]
    for t in range(12):
        trainer.train_step()
        trainer.step_count += 1
        d = min(0.54, (1 + t) / (10 + t))
        expected = [d * e + (1 - d) * p.detach() for e, p in zip(expected, trainer.net.parameters())]
    assert (1 + 9) / (10 + 9) < 0.54 < (1 + 10) / (10 + 10)  # both the ramp and the cap were used
    for e, a, p in zip(expected, trainer.applied.parameters(), trainer.net.parameters()):
        torch.testing.assert_close(a, e)
        assert float((a - p.detach()).abs().max()) > 1e-5  # the average is not the last iterate
    snap = trainer.snapshot()
    photos = trainer.held_out
    with torch.no_grad():
        of = lambda net: float(torch.stack([trainer.loss(net(x[None]), x[None]) for x in photos]).mean())  # noqa: E731
        assert snap.held_out_loss == of(trainer.applied) and snap.iterate_loss == of(trainer.net)
        assert snap.held_out_loss != snap.iterate_loss
        torch.testing.assert_close(trainer.stylise(photos), trainer.applied(photos))
    trainer.save(tmp_path / "ckpt.pt")
    for x, y in zip(load_network(tmp_path / "ckpt.pt").state_dict().values(), trainer.applied.state_dict().values()):
        assert torch.equal(x, y)
    assert NetTrainer(NetConfig(method="adam", steps=1, average=0.0, **TINY)).snapshot().iterate_loss is None
    with pytest.raises(ValueError, match="average"):
        NetConfig(steps=1, average=1.0).validate()


def test_curvature_batch_beyond_the_batch_is_the_whole_batch():
    """The default refresh sees two photographs; a batch of one is then the whole batch, not an error."""
    assert NetConfig(steps=1).hsc.curvature_batch == 2
    NetConfig(steps=1, batch_size=1).validate()
    with pytest.raises(ValueError, match="curvature_batch"):
        NetConfig(steps=1, hsc=NetHSCSettings(curvature_batch=0)).validate()


def test_cli_train_then_apply(tmp_path, capsys):
    out = tmp_path / "run"
    assert hsc_main(["style-net", "train", "--style", "gravel", "--optim", "hsc,adam", "--steps", "2",
                     "--size", "32", "--eval-size", "32", "--batch-size", "2", "--width", "4", "--blocks", "1",
                     "--hsc-curvature-batch", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| hsc | 0 | 2 |" in printed and "| adam | 0 | 2 |" in printed
    report = json.loads((out / "metrics.json").read_text())
    assert [r["method"] for r in report["runs"]] == ["hsc", "adam"]
    assert all(len(r["history"]) >= 2 and r["history"][0]["step"] == 0 for r in report["runs"])
    assert report["configs"][0]["hsc"]["curvature_batch"] == 1
    checkpoint = out / "gravel-hsc-seed0.pt"
    net = load_network(checkpoint)
    image = tmp_path / "stylised.png"
    assert hsc_main(["style-net", "apply", "--checkpoint", str(checkpoint), "--input", "chelsea", "--size", "48",
                     "-o", str(image), "--repeats", "1"]) == 0
    assert "ms a pass" in capsys.readouterr().out
    with torch.no_grad():
        expected = net(load_image("chelsea", 48))
    written = load_image(str(image), 48)
    assert (written - expected).abs().max() <= 1 / 255 + 1e-6  # the network's pass, in 8 bits
