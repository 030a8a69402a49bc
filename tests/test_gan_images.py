"""The image GANs: MNIST and Stacked MNIST data, the DCGAN players, the classifier that judges them
(trained on a small slice here: its full training takes a minute and is the benchmark's), the
metrics on constructed samples, short runs, resume and the command line."""
from __future__ import annotations

import json
import math

import matplotlib.image as plt_image
import pytest
import torch
from torch import nn

from hsc import config
from hsc.__main__ import main as hsc_main
from hsc.gan import classifier as classifier_module
from hsc.gan.data import DATASETS, make_dataset, mnist_arrays
from hsc.gan.metrics import PROTOCOLS, TrainedClassifier, mnist_metrics, stacked_mnist_metrics
from hsc.gan.models import make_players
from hsc.gan.train import HSCSettings, TrainConfig, Trainer

SLICE = classifier_module.Recipe(epochs=1, train_size=400)


# ---- data ---------------------------------------------------------------------------------------

def test_mnist_split_is_stratified_and_disjoint():
    images, labels, held_out, held_labels = mnist_arrays()
    assert images.shape == (4000, 1, 28, 28) and held_out.shape == (1000, 1, 28, 28)
    assert labels.bincount().tolist() == [400] * 10 and held_labels.bincount().tolist() == [100] * 10
    assert images.min() == -1 and images.max() == 1
    train_rows = {bytes(row.numpy().tobytes()) for row in images.flatten(1)}
    assert not any(bytes(row.numpy().tobytes()) in train_rows for row in held_out.flatten(1))


def test_stacked_mnist_draws_three_independent_training_digits():
    data = make_dataset("stacked-mnist")
    a = data.sample(64, torch.Generator().manual_seed(5))
    assert torch.equal(a, data.sample(64, torch.Generator().manual_seed(5))) and a.shape == (64, 3, 28, 28)
    train = {bytes(row.numpy().tobytes()) for row in data.images.flatten(1)}
    assert all(bytes(ch.numpy().tobytes()) in train for ch in a.reshape(-1, 784))
    _, labels = data.sample_with_labels(20000, torch.Generator().manual_seed(0))
    modes = labels[:, 0] * 100 + labels[:, 1] * 10 + labels[:, 2]
    assert labels.shape == (20000, 3) and len(modes.unique()) > 990  # 1 - e^-20 of 1,000 expected
    assert abs(float((labels[:, 0] == labels[:, 1]).double().mean()) - 0.1) < 0.015  # independent channels


@pytest.mark.parametrize("name,batch_norm", [("dcgan", True), ("dcgan-plain", False)])
def test_dcgan_players_shapes_and_sizes(name, batch_norm):
    for data, channels in (("mnist", 1), ("stacked-mnist", 3)):
        players = make_players(name, make_dataset(data))
        G, D = players.generator, players.discriminator
        fake = G(torch.randn(5, players.latent_dim))
        assert fake.shape == (5, channels, 28, 28) and fake.abs().max() <= 1
        assert D(fake).shape == (5, 1)
        assert any(isinstance(m, nn.BatchNorm2d) for m in G.modules()) == batch_norm
        assert not any(isinstance(m, nn.BatchNorm2d) for m in D.modules())
        g_params = sum(p.numel() for p in G.parameters())
        assert g_params == 539841 + 64 * (channels - 1) * 16 + (channels - 1) + (384 if batch_norm else 0)
        assert sum(p.numel() for p in D.parameters()) == 138561 + (channels - 1) * 64 * 16


def test_registry_entries_name_known_players_and_protocols():
    from hsc.gan.models import PLAYERS

    for name, spec in DATASETS.items():
        assert spec.players in PLAYERS and spec.protocol in PROTOCOLS, name


# ---- the classifier -------------------------------------------------------------------------------

def test_classifier_training_is_deterministic_and_cached_by_its_inputs(tmp_path, monkeypatch):
    monkeypatch.setenv("HSC_CACHE", str(tmp_path))
    first = classifier_module.train_classifier(SLICE)
    again = classifier_module.train_classifier(SLICE)
    for (k, a), b in zip(first.model.state_dict().items(), again.model.state_dict().values()):
        assert torch.equal(a, b), k
    assert 30 < first.held_out_accuracy < classifier_module.REQUIRED_ACCURACY  # one epoch on 400 digits
    # Below 97 % the classifier is refused, but the model is saved under its inputs' hash ...
    classifier_module.mnist_classifier.cache_clear()
    with pytest.raises(RuntimeError, match="below the 97 %"):
        classifier_module.mnist_classifier(SLICE)
    saved = list(tmp_path.glob("mnist-classifier-*.pt"))
    assert [p.name for p in saved] == [f"mnist-classifier-{classifier_module.cache_key(SLICE)}.pt"]
    # ... and loads from there (the same weights) instead of training again.
    monkeypatch.setattr(classifier_module, "train_classifier", lambda recipe: pytest.fail("trained again"))
    classifier_module.mnist_classifier.cache_clear()
    with pytest.raises(RuntimeError, match=f"{first.held_out_accuracy:.1f} %"):
        classifier_module.mnist_classifier(SLICE)
    assert classifier_module.cache_key(SLICE) != classifier_module.cache_key(
        classifier_module.Recipe(epochs=2, train_size=400))
    classifier_module.mnist_classifier.cache_clear()


def test_shifts_move_each_image_within_the_border():
    images = mnist_arrays()[0][:50]
    moved = classifier_module.shifted(images, torch.Generator().manual_seed(0), 2)
    assert moved.shape == images.shape
    for a, b in zip(images, moved):  # b is a translated by (dy, dx) in [-2, 2]^2, background filled
        assert any(torch.equal(torch.nn.functional.pad(a, (2, 2, 2, 2), value=-1)[:, 2 + dy:30 + dy, 2 + dx:30 + dx], b)
                   for dy in range(-2, 3) for dx in range(-2, 3))


# ---- metrics on constructed samples ---------------------------------------------------------------

# A stand-in classifier: an image whose pixels all equal CODES[d] is digit d, with certainty;
# a value half-way between two codes is either, at probability 1/2. Its features are pixel
# statistics, enough for the Frechet distance's plumbing.
CODES = torch.linspace(-0.9, 0.9, 10)


class CodeClassifier(nn.Module):
    num_features = 4

    def features(self, x):
        x = x.reshape(len(x), -1)
        return torch.stack([x.mean(1), x.std(1), x[:, :392].mean(1), x[:, 392:].mean(1)], 1)

    def head(self, features):  # the metrics label from the features, as the real classifier does
        return -1e4 * (features[:, :1] - CODES) ** 2

    def forward(self, x):
        return self.head(self.features(x))


@pytest.fixture
def code_classifier(monkeypatch):
    monkeypatch.setattr(classifier_module, "mnist_classifier", lambda recipe=None: TrainedClassifier(CodeClassifier(), 99.0))


def _coded(digits: torch.Tensor) -> torch.Tensor:
    """Samples [n, C, 28, 28] whose channel c is digit digits[:, c]'s code."""
    return CODES[digits][:, :, None, None].expand(*digits.shape, 28, 28).clone()


def test_stacked_metrics_count_modes_and_kl_of_constructed_samples(code_classifier):
    data = make_dataset("stacked-mnist")
    every = torch.cartesian_prod(torch.arange(10), torch.arange(10), torch.arange(10))
    m = stacked_mnist_metrics(_coded(every.repeat(2, 1)), data)
    assert m["modes"] == 1000 and m["reverse_kl"] == pytest.approx(0.0, abs=1e-12) and m["confident"] == 100.0
    collapsed = stacked_mnist_metrics(_coded(torch.tensor([[3, 1, 4]]).repeat(50, 1)), data)
    assert collapsed["modes"] == 1 and collapsed["reverse_kl"] == pytest.approx(math.log(1000))
    # two modes, 3:1, and a third of the channels half-way between two codes
    digits = torch.tensor([[1, 2, 3]] * 30 + [[4, 5, 6]] * 10)
    samples = _coded(digits)
    samples[:, 2] = (CODES[0] + CODES[1]) / 2
    m = stacked_mnist_metrics(samples, data)
    p = torch.tensor([0.75, 0.25], dtype=torch.float64)
    assert m["modes"] <= 4 and m["confident"] == pytest.approx(100 * 2 / 3)
    # the per-channel Frechet distance: real held-out digits as channels score far below codes
    real = data.held_out[torch.randperm(1000, generator=torch.Generator().manual_seed(0))[:900]]
    as_channels = real.reshape(300, 3, 28, 28)
    assert stacked_mnist_metrics(as_channels, data)["frechet"] < 0.05 * m["frechet"]
    two = stacked_mnist_metrics(_coded(digits), data)
    assert two["modes"] == 2 and two["reverse_kl"] == pytest.approx(float((p * (p * 1000).log()).sum()))


def test_mnist_metrics_of_constructed_samples(code_classifier):
    data = make_dataset("mnist")
    m = mnist_metrics(_coded(torch.arange(10).repeat(20)[:, None]), data)
    assert m["classes"] == 10 and m["class_kl"] == pytest.approx(0.0, abs=1e-12) and m["confident"] == 100.0
    ones = mnist_metrics(_coded(torch.ones(40, 1, dtype=torch.long)), data)
    assert ones["classes"] == 1 and ones["class_kl"] == pytest.approx(math.log(10))
    assert mnist_metrics(data.held_out, data)["frechet"] < 1e-6 < ones["frechet"]


# ---- training -------------------------------------------------------------------------------------

FAST = config.replace(HSCSettings(), block_size=16, update_every=2, curvature_batch=4)


@pytest.mark.parametrize("data", ["mnist", "stacked-mnist"])
@pytest.mark.parametrize("method", ["adam", "hsc"])
def test_short_image_run_moves_both_players_and_stays_finite(data, method, code_classifier):
    trainer = Trainer(TrainConfig(data=data, method=method, steps=3, batch_size=8, eval_samples=40, hsc=FAST))
    before = [torch.cat([p.detach().flatten() for p in m.parameters()]) for m in (trainer.G, trainer.D)]
    result = trainer.run()
    for b, m in zip(before, (trainer.G, trainer.D)):
        after = torch.cat([p.detach().flatten() for p in m.parameters()])
        assert torch.isfinite(after).all() and not torch.equal(b, after)
    assert result.samples.shape == (40, 3 if data == "stacked-mnist" else 1, 28, 28)
    assert set(result.final) >= set(PROTOCOLS[DATASETS[data].protocol].names)
    if method == "hsc":  # the refreshes took their HVPs on 4 of the 8 samples
        assert result.stats["D_preconditioner"]["refreshes"] == 2


def test_curvature_batch_feeds_the_refresh_only_the_first_samples(code_classifier, monkeypatch):
    """The refresh sees d_loss on the batch's first curvature_batch samples: the preconditioner's
    estimate equals the one of a run whose whole batch is those samples (players without batch
    norm, whose statistics would differ between the two batches)."""
    a = Trainer(TrainConfig(data="mnist", method="hsc", steps=1, batch_size=8, hsc=FAST, architecture="dcgan-plain"))
    b = Trainer(TrainConfig(data="mnist", method="hsc", steps=1, batch_size=4, architecture="dcgan-plain",
                            hsc=config.replace(FAST, curvature_batch=None)))
    real, z = a.draw()
    monkeypatch.setattr(b, "draw", lambda: (real[:4], z[:4]))
    monkeypatch.setattr(a, "draw", lambda: (real, z))
    a.train_step()
    b.train_step()
    for name in ("G", "D"):
        ea, eb = a.players[name].preconditioner.estimate, b.players[name].preconditioner.estimate
        torch.testing.assert_close(ea, eb, rtol=1e-5, atol=1e-7)


def test_image_run_resumes_bit_for_bit(tmp_path, code_classifier):
    cfg = TrainConfig(data="mnist", method="hsc", steps=4, batch_size=8, eval_samples=40, eval_every_steps=2, hsc=FAST)
    whole = Trainer(cfg)
    whole.run()
    first = Trainer(config.replace(cfg, steps=2))
    first.run()
    first.save(tmp_path / "ckpt.pt")
    resumed = Trainer.load(tmp_path / "ckpt.pt", steps=4)
    resumed.run()
    for m, n in ((whole.G, resumed.G), (whole.D, resumed.D)):
        for (k, x), y in zip(m.state_dict().items(), n.state_dict().values()):  # batch norm's statistics too
            assert torch.equal(x, y), k


def test_cli_stacked_mnist_writes_the_table_metrics_and_colour_samples(tmp_path, capsys, code_classifier):
    out = tmp_path / "run"
    assert hsc_main(["gan", "--data", "stacked-mnist", "--optim", "hsc,adam", "--steps", "2", "--seeds", "0",
                     "--batch-size", "8", "--eval-samples", "30", "--hsc-curvature-batch", "4",
                     "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| real (held out) |" in printed and "modes of 1,000" in printed
    report = json.loads((out / "metrics.json").read_text())
    assert set(report["summary"]) == {"hsc", "adam"} and report["configs"][0]["hsc"]["curvature_batch"] == 4
    # the real row: held-out digits through the same metrics (here the stand-in classifier's)
    assert set(report["reference"]) >= set(PROTOCOLS["stacked-mnist"].names)
    assert report["reference"] == PROTOCOLS["stacked-mnist"].reference(make_dataset("stacked-mnist"))
    picture = plt_image.imread(out / "samples-hsc.png")
    assert picture.ndim == 3 and picture[..., :3].std() > 0.01
