"""``GraftedAdam``: Adam's step length on a preconditioned direction (grafting, as Shampoo does).

A curvature preconditioner is good at turning a gradient and poor at sizing the step (its scale
changes at every refresh); Adam is the reverse. Grafting keeps each one's strength: each tensor
moves by the length of Adam's step on the raw gradient g, along the momentum of the
preconditioned gradient p = M^-1 g (Agarwal et al., "Disentangling adaptive gradient methods from
learning rates", 2020; Shampoo's "grafting").
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch


class GraftedAdam(torch.optim.Optimizer):
    """Per tensor: ``update = -lr * ||m_g^ / (sqrt(v_g^) + eps)|| * m_p / ||m_p||``, with m_g, v_g
    Adam's bias-corrected moments of the raw gradient g and m_p the momentum (beta1) of the
    preconditioned gradient p.

    ``.grad`` holds p; hand the raw gradients over with :meth:`set_raw` before each ``step()``
    (copies are kept, since a preconditioner usually rewrites ``.grad`` in place afterwards). A
    tensor whose p momentum is zero does not move. Parameters without a ``.grad`` are skipped, as
    torch's optimizers skip them.
    """

    def __init__(self, params, lr: float = 2e-4, betas: Tuple[float, float] = (0.5, 0.999), eps: float = 1e-8):
        if not 0 < lr < float("inf"):
            raise ValueError(f"hsc: lr must be a finite number > 0, got {lr!r}")
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"hsc: betas must be in [0, 1), got {betas!r}")
        if not eps > 0:
            raise ValueError(f"hsc: eps must be > 0, got {eps!r}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps))
        self._raw: Optional[list] = None

    def set_raw(self, raw: Sequence[torch.Tensor]) -> None:
        """The raw gradients of every parameter (in ``param_groups`` order) for the next step."""
        params = [p for group in self.param_groups for p in group["params"]]
        if len(raw) != len(params):
            raise ValueError(f"hsc: set_raw needs one gradient per parameter ({len(params)}), got {len(raw)}")
        self._raw = [g.detach().clone() for g in raw]

    @torch.no_grad()
    def step(self, closure=None):
        if self._raw is None:
            raise RuntimeError("hsc: GraftedAdam.step needs the raw gradients first (set_raw)")
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        raw = iter(self._raw)
        for group in self.param_groups:
            (b1, b2), lr, eps = group["betas"], group["lr"], group["eps"]
            for p in group["params"]:
                g, d = next(raw), p.grad
                if d is None:
                    continue
                st = self.state[p]
                if not st:
                    st["step"] = 0
                    st["m_g"], st["v_g"], st["m_p"] = (torch.zeros_like(p) for _ in range(3))
                st["step"] += 1
                st["m_g"].mul_(b1).add_(g, alpha=1 - b1)
                st["v_g"].mul_(b2).addcmul_(g, g, value=1 - b2)
                st["m_p"].mul_(b1).add_(d, alpha=1 - b1)
                t = st["step"]
                adam = (st["m_g"] / (1 - b1 ** t)) / ((st["v_g"] / (1 - b2 ** t)).sqrt() + eps)
                length = adam.norm() / st["m_p"].norm().clamp_min(1e-30)
                p.sub_(lr * length * st["m_p"])
        self._raw = None
        return loss
