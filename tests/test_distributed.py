"""Data-parallel hsc on torch.distributed (gloo on loopback, spawned processes).

Each world size is spawned once (module fixtures) and runs every scenario in
tests/distributed_workers.py; the tests compare the ranks' results with one process training on
the concatenated batch.

Tolerance: the runs differ only in float64 reduction order (a mean of per-rank means against one
mean over the batch; sums over ranks in the collectives), about 1e-16 relative per value. Six
steps through factors with cond(M) below about 1e3 amplify that to well under 1e-10; 1e-9
relative leaves an order of magnitude of headroom and still fails on any real difference
(a wrong block owner, a missing average, different probe signs: all of order 1e-2 or more).
"""
from __future__ import annotations

import multiprocessing
import pathlib
import socket
import time
import warnings

import pytest
import torch

import hsc
from hsc.distributed import BlockShards, RankGroup

import distributed_workers as work

RTOL, ATOL = 1e-9, 1e-12
JOIN_TIMEOUT_S = 180  # a hang fails the test instead of the CI job


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(world_size: int, scenarios: list, out_dir: pathlib.Path) -> list:
    """Runs ``scenarios`` on ``world_size`` spawned ranks; returns each rank's results."""
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = multiprocessing.get_context("spawn")
    init = f"tcp://127.0.0.1:{_free_port()}"
    procs = [ctx.Process(target=work.worker, args=(r, world_size, init, str(out_dir), scenarios))
             for r in range(world_size)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    hung = [r for r, p in enumerate(procs) if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
    assert not hung, f"ranks {hung} of {world_size} still running after {JOIN_TIMEOUT_S} s"
    errors = {r: (out_dir / f"rank{r}.error").read_text() for r in range(world_size)
              if (out_dir / f"rank{r}.error").exists()}
    codes = [p.exitcode for p in procs]
    saved = all((out_dir / f"rank{r}.pt").exists() for r in range(world_size))
    assert not errors and saved, f"ranks failed: exit codes {codes}, errors {errors}"
    if any(codes):  # every rank finished, left the group and saved: an abort in interpreter teardown
        warnings.warn(f"hsc test: ranks exited with codes {codes} after saving their results")
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(world_size)]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> pathlib.Path:
    return tmp_path_factory.mktemp("distributed")


@pytest.fixture(scope="module")
def two_ranks(workdir):
    return spawn(2, ["exact", "probe", "spectral", "ddp", "save", "failure", "subsampled_curvature", "nan_loss",
                     "more_ranks_than_blocks", "gan", "gan_sketches", "gan_batch_norm"], workdir / "r2")


@pytest.fixture(scope="module")
def three_ranks(workdir, two_ranks):  # loads the checkpoint two_ranks saved
    return spawn(3, ["exact", "probe", "spectral", "load", "subsampled_curvature"], workdir / "r3")


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("estimator", ["exact", "probe"])
@pytest.mark.parametrize("ranks", ["two_ranks", "three_ranks"])
def test_ranks_match_one_process_on_the_concatenated_batch(estimator, ranks, request):
    results = request.getfixturevalue(ranks)
    single = work.hsc_run(estimator)
    start = work.flat_params(work.make_model())
    assert (single - start).abs().max() > 1e-2  # the run moves the parameters
    for rank, result in enumerate(results):
        _close(result[estimator], single)
    # every rank holds the same parameters, bit for bit (they apply the same update)
    for result in results[1:]:
        assert torch.equal(result[estimator], results[0][estimator])


@pytest.mark.parametrize("ranks", ["two_ranks", "three_ranks"])
def test_relative_scale_is_one_mu_over_all_ranks(ranks, request):
    """saddle_free_root with mu relative to the median |eigenvalue| of every block: each rank owns
    part of the blocks, yet every rank uses the mu of all of them, as one process does."""
    results = request.getfixturevalue(ranks)
    single = work.spectral_run()
    start = work.flat_params(work.make_model())
    assert (single["params"] - start).abs().max() > 1e-2
    for result in results:
        _close(result["spectral"]["params"], single["params"])
        assert result["spectral"]["scale"] == pytest.approx(single["scale"], rel=RTOL)
        assert result["spectral"]["scale"] == results[0]["spectral"]["scale"]  # one mu, bit for bit
    # stats() describe this rank's view of every block's spectrum: the same summary everywhere
    assert results[0]["spectral"]["spectrum"]["eigenvalues"] == single["spectrum"]["eigenvalues"]


@pytest.mark.parametrize("ranks", ["two_ranks", "three_ranks"])
def test_subsampled_curvature_matches_one_process(ranks, request):
    # Each rank's curvature_closure takes the first half of its share; one process takes the
    # same rows of the whole batch.
    single = work.hsc_run("probe", subsampled_curvature=True)
    assert (single - work.hsc_run("probe")).abs().max() > 1e-4  # the option changes the run
    for result in request.getfixturevalue(ranks):
        _close(result["subsampled_curvature"], single)


def test_nan_loss_on_one_rank_skips_the_step_on_every_rank(two_ranks):
    single = work.nan_loss_run()
    assert single["counters"]["skipped_non_finite_loss"] == 1
    for result in two_ranks:
        r = result["nan_loss"]
        assert r["counters"] == single["counters"] and r["calls"] == single["calls"]
        _close(r["params"], single["params"])


def test_more_ranks_than_blocks(two_ranks):
    single = work.more_ranks_than_blocks_run()
    assert [r["more_ranks_than_blocks"]["owned"] for r in two_ranks] == [(0, 1), (1, 1)]
    for result in two_ranks:
        r = result["more_ranks_than_blocks"]
        _close(r["params"], single["params"])
        _close(r["estimate"], single["estimate"])


def test_estimators_differ_so_the_comparison_has_teeth():
    assert (work.hsc_run("exact") - work.hsc_run("probe")).abs().max() > 1e-4


def test_ddp_gradients_with_sharded_preconditioner_match_one_process(two_ranks):
    single = work.ddp_preconditioner_run()
    for result in two_ranks:
        _close(result["ddp"], single)


def test_checkpoint_saved_on_two_ranks_resumes_on_one_and_three(workdir, two_ranks, three_ranks):
    # one process without interruption
    model = work.make_model()
    opt = hsc.HSC(model.parameters(), estimator="probe", **work.OPTIONS)
    work.train_hsc(model, opt, range(work.STEPS))
    reference = work.flat_params(model)

    saved = torch.load(workdir / "checkpoint.pt", weights_only=False)
    pre_state = saved["opt"]["preconditioners"][0]
    assert pre_state["ranges"] == [(0, 5), (5, 10)]          # recorded split of the saving run
    assert pre_state["estimate"].shape == (10, 5, 5)         # every block, rank-independent

    resumed_on_one = work.checkpoint_run(str(workdir / "checkpoint.pt"), save=False)["params"]
    _close(resumed_on_one, reference)
    for result in two_ranks:
        _close(result["save"]["params"], reference)
    for result in three_ranks:
        _close(result["load"]["params"], reference)


def test_a_rank_that_raises_is_reported_on_every_rank(two_ranks):
    for rank, result in enumerate(two_ranks):
        caught = result["failure"]
        assert "closure" in caught and "refresh" in caught, f"rank {rank} caught {caught}"
        assert "rank 1: ValueError: closure of step 2 cannot read its data" in caught["closure"]
        assert "rank 0" not in caught["closure"]
        assert "rank 0: RuntimeError: loss_fn ran out of memory" in caught["refresh"]
        assert caught["params_finite"] == "True"
    # After the failed refresh the ranks still probe with the same signs as one process would.
    model = work.make_model()
    opt = hsc.HSC(model.parameters(), estimator="probe", **work.OPTIONS)
    work.train_hsc(model, opt, range(2))  # the steps before the closure failed
    single = work.refresh_failure_then_refresh(model)
    assert single["refresh"] == "loss_fn ran out of memory"
    for result in two_ranks:
        _close(result["failure"]["estimate_after_failure"], single["estimate_after_failure"])


def test_without_a_group_nothing_is_sharded():
    model = work.make_model()
    pre = hsc.Preconditioner(model.parameters(), block_size=5)
    assert (pre.shards.start, pre.shards.end) == (0, 10) and not pre.ranks.distributed
    blocks = torch.randn(10, 5, 5)
    assert pre.shards.reduce_scatter_mean(blocks) is blocks
    assert pre.shards.all_gather(blocks) is blocks


def test_process_group_without_init_is_a_named_error():
    with pytest.raises(ValueError, match="process_group"):
        RankGroup(object())


@pytest.mark.parametrize("numel,world_size", [(38, 3), (21, 3), (16, 3), (5, 2), (40, 2), (38, 1)])
def test_padded_pieces_and_real_rows_invert_each_other(numel, world_size):
    # The local halves of the collectives: rank r's piece of padded() holds its range then zeros,
    # and the concatenated pieces indexed by _real_rows give back every block in order.
    layout = hsc.BlockLayout([torch.zeros(numel)], 5)
    blocks = torch.randn(layout.num_blocks, 5, 5)
    pieces = []
    for rank in range(world_size):
        ranks = RankGroup()
        ranks.world_size, ranks.rank = world_size, rank  # the arithmetic only; no collective is issued
        shards = BlockShards(layout, ranks)
        padded = shards.padded(blocks) if world_size > 1 else blocks
        C = shards.chunk
        assert padded.shape[0] == (world_size * C if world_size > 1 else layout.num_blocks)
        start, end = shards.ranges[rank]
        piece = padded[rank * C:(rank + 1) * C]
        assert torch.equal(piece[:end - start], blocks[start:end])
        assert bool((piece[end - start:] == 0).all())
        assert torch.equal(shards.owned(blocks), blocks[start:end])
        pieces.append(torch.cat([blocks[start:end], blocks.new_zeros(C - (end - start), 5, 5)]))
    assert torch.equal(torch.cat(pieces)[shards._real_rows], blocks)


def test_image_gan_on_two_ranks_follows_one_process_on_the_whole_batch(two_ranks, monkeypatch):
    """hsc.gan.Trainer data-parallel (MNIST, the DCGAN players without batch norm, the hsc method):
    each rank trains on its half of the batch with averaged gradients and sharded preconditioners;
    in float32 the players stay within rounding of the one-process run on the whole batch."""
    single = work.gan_run()
    for result in two_ranks:
        r = result["gan"]
        assert r["refreshes"] == single["refreshes"] == [2, 2]  # steps 0 and 2, on every rank
        for player in ("G", "D"):
            torch.testing.assert_close(r[player], single[player], rtol=1e-4, atol=1e-6)
    assert torch.equal(two_ranks[0]["gan"]["G"], two_ranks[1]["gan"]["G"])  # one update on every rank
    # the comparison has teeth: half of the batch alone trains elsewhere
    from hsc.gan.train import Trainer

    draw = Trainer.draw

    def first_half(self):
        real, z = draw(self)
        return real[:4], z[:4]

    monkeypatch.setattr(Trainer, "draw", first_half)
    half = work.gan_run()
    assert (half["G"] - single["G"]).abs().max() > 100 * (1e-6 + 1e-4 * single["G"].abs().max())


def test_gauss_newton_sketches_on_two_ranks_keep_the_ranks_in_step(two_ranks):
    """Each rank sketches its own half of the batch from a generator of its own (seeded from the
    shared one): the ranks' shared generators stay equal and their averaged blocks give every rank
    the same update."""
    a, b = (result["gan_sketches"] for result in two_ranks)
    assert a["refreshes"] == b["refreshes"] == [2, 2]
    assert torch.equal(a["G"], b["G"]) and torch.equal(a["D"], b["D"]) and torch.isfinite(a["G"]).all()
    assert len(a["generators"]) >= 1
    assert all(torch.equal(x, y) for x, y in zip(a["generators"], b["generators"]))


def test_image_gan_with_batch_norm_keeps_the_ranks_identical(two_ranks):
    """With batch norm each rank normalises by its own half's statistics (so the run is not the
    one-process run), yet the averaged gradients keep the ranks' players bit for bit equal."""
    a, b = (result["gan_batch_norm"] for result in two_ranks)
    assert torch.equal(a["G"], b["G"]) and torch.equal(a["D"], b["D"])
    single = work.gan_run(architecture="dcgan", method="adam")
    assert not torch.equal(a["G"], single["G"])


def test_hsc_gan_distributed_runs_under_torchrun(tmp_path):
    import os
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port",
           str(_free_port()), "-m", "hsc", "gan", "--distributed", "--data", "ring8", "--optim", "hsc",
           "--steps", "60", "--seeds", "0", "--batch-size", "16", "--eval-samples", "500", "--checkpoint",
           "--out", str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=JOIN_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("| hsc |") == 1  # rank 0 reports, once
    import json

    report = json.loads((out / "metrics.json").read_text())
    assert report["runs"][0]["steps"] == 60
    state = torch.load(out / "checkpoint-hsc-seed0.pt", weights_only=False)
    g_state = state["players"]["G"]["preconditioner"]
    assert g_state["counters"]["refreshes"] == 2  # steps 0 and 50 (update_every 50)
    assert g_state["estimate"].shape[0] == g_state["num_blocks"]  # every block, gathered
    n = g_state["num_blocks"]
    assert g_state["ranges"] == [(0, (n + 1) // 2), ((n + 1) // 2, n)]  # the run's split over the two ranks
