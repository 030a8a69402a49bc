"""Where the competitive step's time goes: hsc.CompetitiveHSC on the GAN players, per data set.

Plain script (not collected by pytest)::

    python bench/profile_competitive.py                    # bench/results/profile_competitive.{md,json}
    python bench/profile_competitive.py --source /tmp/old --data ring8   # another checkout's hsc
    python bench/profile_competitive.py --append           # add rows (say, after a change) to the json

For each data set (its players and batch, ``hsc gan --optim competitive``'s defaults; one torch
thread), in one process:

- Adam's step and the competitive step, each the mean of ``--steps`` steps after a warm-up, the
  competitive step's curvature refreshes included (so its steps per second are the training
  loop's);
- per competitive step: CG iterations, mixed products (D_yx v or D_xy w), HVPs, from the
  optimizer's counters;
- the pieces, timed alone at one point (medians of 20): f and both gradients with
  ``create_graph``; one mixed product each way; one B^1/2 application per player;
- the share of the step the products take: products a step x their mean time / the step.

Each row records the commit of the hsc it measured (``--source``: another checkout, e.g. a
``git worktree`` of an earlier commit with its built extension), so a before/after pair sits in
one table: run the earlier checkout first, then this one with ``--append``.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DATA = ("ring8", "digits")


def _arguments():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=",".join(DATA))
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--source", default=str(HERE.parent), help="the checkout whose hsc is measured")
    parser.add_argument("--append", action="store_true", help="add the rows to profile_competitive.json")
    return parser.parse_args()


def profile(data: str, steps: int) -> dict:
    import torch

    from hsc.gan.train import Trainer, default_config
    from profile_gan_step import mean_step, median_seconds

    adam_step = mean_step(Trainer(default_config(data, method="adam", steps=1)), steps)
    trainer = Trainer(default_config(data, method="competitive", steps=1))
    game = trainer.game
    for _ in range(3):
        trainer.train_step()
    before = dict(game.counters)
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    step = (time.perf_counter() - t0) / steps
    per_step = {k: (game.counters[k] - before[k]) / steps for k in ("cg_iterations", "mixed_products", "hvps")}

    real, z = trainer.draw()
    x, y = game.x, game.y

    def gradients():
        loss = trainer.zero_sum(real, z)
        return (list(torch.autograd.grad(loss, x.params, create_graph=True)),
                list(torch.autograd.grad(loss, y.params, create_graph=True)))

    gx, gy = gradients()
    v, w = torch.randn(x.numel), torch.randn(y.numel)
    game._products = 0
    pieces = {"gradients": median_seconds(gradients),
              "D_yx v": median_seconds(lambda: game._mixed(gx, y.params, v)),
              "D_xy w": median_seconds(lambda: game._mixed(gy, x.params, w)),
              "B_x^1/2": median_seconds(lambda: x.half(v)), "B_y^1/2": median_seconds(lambda: y.half(w))}
    product = (pieces["D_yx v"] + pieces["D_xy w"]) / 2
    return {"data": data, "parameters": {"x (G)": x.numel, "y (D)": y.numel}, "adam_step": adam_step,
            "step": step, "steps_per_second": 1 / step, "per_step": per_step, "pieces": pieces,
            "products_share": per_step["mixed_products"] * product / step}


def markdown(report: dict) -> str:
    ms = lambda s: f"{1000 * s:.2f}"  # noqa: E731
    md = ["# Where the competitive step's time goes", "", f"- machine: {report['machine']}",
          "- commands: " + "; ".join(f"`{c}`" for c in report["commands"]),
          "- one torch thread; each data set's players and batch, `hsc gan --optim competitive`'s defaults; "
          "steps are means over the run (refreshes included), pieces medians of 20 at one point; times in ms", "",
          "| data | hsc commit | Adam step | competitive step | steps/s | ÷ first row's | CG iterations / step | "
          "mixed products / step | HVPs / step | f and gradients | D_yx v | D_xy w | B_x^½ / B_y^½ | products' share |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    first = {}
    for r in report["rows"]:
        first.setdefault(r["data"], r["steps_per_second"])
        p, s = r["pieces"], r["per_step"]
        md.append(f"| {r['data']} | {r['commit']} | {ms(r['adam_step'])} | {ms(r['step'])} | "
                  f"{r['steps_per_second']:.1f} | {r['steps_per_second'] / first[r['data']]:.2f}× | "
                  f"{s['cg_iterations']:.2f} | {s['mixed_products']:.2f} | {s['hvps']:.2f} | {ms(p['gradients'])} | "
                  f"{ms(p['D_yx v'])} | {ms(p['D_xy w'])} | {ms(p['B_x^1/2'])} / {ms(p['B_y^1/2'])} | "
                  f"{100 * r['products_share']:.0f} % |")
    notes = RESULTS / "profile_competitive_notes.md"
    if notes.exists():
        md += ["", notes.read_text()]
    return "\n".join(md) + "\n"


def main() -> None:
    args = _arguments()
    source = Path(args.source).resolve()
    sys.path[:0] = [str(source), str(HERE)]
    import torch

    from hsc.apps import machine, write_json

    torch.set_num_threads(1)
    commit = subprocess.run(["git", "-C", str(source), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown"
    rows = []
    for data in args.data.split(","):
        row = profile(data, args.steps)
        row["commit"] = commit
        rows.append(row)
        print(f"{data} ({commit}): competitive {1000 * row['step']:.1f} ms a step, "
              f"{row['per_step']['mixed_products']:.2f} products; Adam {1000 * row['adam_step']:.1f} ms", flush=True)
    command = " ".join(["python"] + sys.argv)
    path = RESULTS / "profile_competitive.json"
    report = json.loads(path.read_text()) if args.append and path.exists() else {"commands": [], "rows": []}
    report.update(machine=machine(), commands=report["commands"] + [command], rows=report["rows"] + rows)
    RESULTS.mkdir(exist_ok=True)
    write_json(path, report)
    (RESULTS / "profile_competitive.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
