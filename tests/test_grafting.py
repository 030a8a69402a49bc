"""hsc.GraftedAdam: Adam's step length along the momentum of a preconditioned direction."""
from __future__ import annotations

import copy

import pytest
import torch

from hsc import GraftedAdam

DT = torch.float64


def _problem(seed: int):
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(5, 3, generator=g, dtype=DT)),
              torch.nn.Parameter(torch.randn(7, generator=g, dtype=DT))]
    raws = [[torch.randn(p.shape, generator=g, dtype=DT) for p in params] for _ in range(6)]
    turned = [[torch.randn(p.shape, generator=g, dtype=DT) for p in params] for _ in range(6)]
    return params, raws, turned


def test_each_tensor_moves_by_adams_length_along_the_directions_momentum():
    """Against torch.optim.Adam on the same raw gradients: every step of every tensor has Adam's
    length, and its direction is the beta1-momentum of the preconditioned gradients (by hand)."""
    params, raws, turned = _problem(0)
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    lr, betas = 0.01, (0.5, 0.999)
    grafted = GraftedAdam(params, lr=lr, betas=betas)
    adam = torch.optim.Adam(twins, lr=lr, betas=betas)
    momentum = [torch.zeros_like(p) for p in params]
    for raw, direction in zip(raws, turned):
        before, twin_before = [p.detach().clone() for p in params], [t.detach().clone() for t in twins]
        for p, d, t, g in zip(params, direction, twins, raw):
            p.grad, t.grad = d.clone(), g.clone()
        grafted.set_raw(raw)
        grafted.step()
        adam.step()
        for i, (p, b, t, tb, d) in enumerate(zip(params, before, twins, twin_before, direction)):
            momentum[i] = 0.5 * momentum[i] + 0.5 * d
            step, adam_step = p.detach() - b, t.detach() - tb
            assert float(step.norm()) == pytest.approx(float(adam_step.norm()), rel=1e-12)
            torch.testing.assert_close(step / step.norm(), -momentum[i] / momentum[i].norm(), rtol=1e-10, atol=1e-12)


def test_zero_direction_does_not_move_and_missing_grad_is_skipped():
    params, raws, _ = _problem(1)
    opt = GraftedAdam(params, lr=0.1)
    before = [p.detach().clone() for p in params]
    params[0].grad = torch.zeros_like(params[0])
    params[1].grad = None
    opt.set_raw(raws[0])
    opt.step()
    assert torch.equal(params[0].detach(), before[0]) and torch.equal(params[1].detach(), before[1])
    assert params[1] not in opt.state


def test_state_dict_resumes_bit_for_bit():
    params, raws, turned = _problem(2)
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    a, b = GraftedAdam(params, lr=0.05), GraftedAdam(copies, lr=0.05)
    for k, (raw, direction) in enumerate(zip(raws, turned)):
        if k == 3:
            b = GraftedAdam(copies, lr=0.05)
            b.load_state_dict(copy.deepcopy(a.state_dict()))
        for opt, ps in ((a, params), (b, copies)):
            for p, d in zip(ps, direction):
                p.grad = d.clone()
            opt.set_raw(raw)
            opt.step()
    for p, q in zip(params, copies):
        assert torch.equal(p.detach(), q.detach())


def test_misuse_is_a_named_error():
    params, raws, _ = _problem(3)
    opt = GraftedAdam(params)
    with pytest.raises(RuntimeError, match="set_raw"):
        opt.step()
    with pytest.raises(ValueError, match="one gradient per parameter"):
        opt.set_raw(raws[0][:1])
    for kwargs, name in (({"lr": 0.0}, "lr"), ({"betas": (1.0, 0.9)}, "betas"), ({"eps": 0.0}, "eps")):
        with pytest.raises(ValueError, match=name):
            GraftedAdam(params, **kwargs)
