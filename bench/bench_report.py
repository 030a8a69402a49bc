"""Turns collected benchmark medians into bench/results/*.json and Markdown tables."""
from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

# HSC_BENCH_RESULTS: another folder for the results (a quick check must not overwrite the committed ones).
RESULTS = Path(os.environ.get("HSC_BENCH_RESULTS") or Path(__file__).parent / "results")


def useful_flops(b: int) -> float:
    """Flops of one block of the corrected preconditioner: 4b^3/3 (docs/contract.md §2, two Cholesky
    factorisations, a triangular inverse and a triangular product)."""
    return 4 * b ** 3 / 3


OPS_LIMITS = """
## What limits the CPU kernels

Each lane group holds four b×b workspaces of 64-byte vectors (b = 64: 4 × 260 KB), so from b = 32
up the dot-product loops stream from L2 rather than L1: four accumulators share each load, about
1.25 loads per FMA, which keeps the fused op near half of the large-GEMM rate there. H comes into
lane order through in-register W×W transposes (W log2 W shuffles for W² entries). Below b = 16 the
per-block work is small against reading H and the status bookkeeping. Next steps, in order of
expected gain: 2-D register tiles (8 FMAs per 6 loads) and cache blocking of the b = 128 workspace.
"""


def ops_report(rows: list[dict], machine: dict) -> str:
    rows = sorted(rows, key=lambda r: (r["dtype"], r["b"]))
    out = []
    for r in rows:
        s, N, b = r["seconds"], r["N"], r["b"]
        us = {m: t / N * 1e6 for m, t in s.items()}
        ceiling = 2 * b ** 3 * N / s["matmul"] / 1e9 if "matmul" in s else None
        fused_gflops = useful_flops(b) * N / s["fused"] / 1e9 if "fused" in s else None
        out.append({
            "dtype": r["dtype"], "b": b, "N": N, "MB_of_blocks": N * b * b * r["itemsize"] / 2 ** 20,
            "us_per_block": us,
            "fused_gflops": fused_gflops,
            "chain_gflops": useful_flops(b) * N / s["chain"] / 1e9 if "chain" in s else None,
            "matmul_ceiling_gflops": ceiling,
            "speedup_fused_vs_chain": s["chain"] / s["fused"] if {"chain", "fused"} <= s.keys() else None,
            "speedup_correct_solve_vs_chain": (s["chain"] / s["correct_solve"]
                                               if {"chain", "correct_solve"} <= s.keys() else None),
            "fused_pct_of_ceiling": 100 * fused_gflops / ceiling if fused_gflops and ceiling else None,
            "fused_pct_of_gemm": (100 * fused_gflops / machine["gemm_gflops"][r["dtype"]]
                                  if fused_gflops and r["dtype"] in machine.get("gemm_gflops", {}) else None),
        })
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cpu_ops.json").write_text(json.dumps({"machine": machine, "rows": out}, indent=2) + "\n")

    def f(x, fmt):
        return "-" if x is None else format(x, fmt)

    mib = max(o["MB_of_blocks"] for o in out) if out else 0
    lines = [
        "# hsc ops on the CPU: fused `precondition` against the unfused torch chain",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']} with "
        f"{machine['torch_threads']} threads, hsc SIMD {machine['hsc_simd']}.",
        f"Command: `{machine['command']}`. Medians of pytest-benchmark rounds; about {mib:.0f} MiB of "
        "blocks per case (SPD blocks, damping 1e-4, mu = 1).",
        "Useful GFLOP/s count 4b³/3 flops per block. The ceiling is a batched b×b matmul "
        "(torch.bmm, 2b³ flops per block) on the same blocks in the same run; torch's small batched "
        "products are far from the machine's limit, so the last column also compares with a large "
        f"GEMM (2048², same run: {', '.join(f'{k} {v:.0f} GFLOP/s' for k, v in machine.get('gemm_gflops', {}).items())}).",
        "Speed-up: the chain's time per block divided by the compiled op's (above 1: the compiled op is "
        "faster). The last two columns divide the fused op's useful GFLOP/s by the ceiling's, in %.",
        "",
        "| dtype | b | N | fused µs/block | correct+solve µs/block | chain µs/block | fused GFLOP/s "
        "| chain GFLOP/s | bmm ceiling GFLOP/s | speed-up: chain ÷ fused | speed-up: chain ÷ correct+solve "
        "| fused ÷ bmm ceiling GFLOP/s | fused ÷ GEMM GFLOP/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for o in out:
        u = o["us_per_block"]
        lines.append(
            f"| {o['dtype']} | {o['b']} | {o['N']} | {f(u.get('fused'), '.3f')} | "
            f"{f(u.get('correct_solve'), '.3f')} | {f(u.get('chain'), '.3f')} | "
            f"{f(o['fused_gflops'], '.1f')} | {f(o['chain_gflops'], '.1f')} | "
            f"{f(o['matmul_ceiling_gflops'], '.1f')} | {f(o['speedup_fused_vs_chain'], '.1f')}× | "
            f"{f(o['speedup_correct_solve_vs_chain'], '.1f')}× | {f(o['fused_pct_of_ceiling'], '.0f')} % | "
            f"{f(o['fused_pct_of_gemm'], '.0f')} % |")
    text = "\n".join(lines) + "\n" + OPS_LIMITS
    (RESULTS / "cpu_ops.md").write_text(text)
    return text


REPORTERS = {"ops": ops_report}


def optim_report(rows: list[dict], machine: dict) -> str:
    adam = next((r for r in rows if r["key"] == ("adam",)), None)
    hsc_rows = sorted((r for r in rows if r["key"][0] == "hsc"), key=lambda r: (r["mode"] != "cholesky", r["mode"], r["b"]))
    if adam is None or not hsc_rows:
        return ""
    adam_step = adam["seconds"]["step"]
    out = []
    for r in hsc_rows:
        step = r["seconds"]["step"]
        variants = ((adam["batch"], r["split"]), (r["curvature_rows"], r["split_subsampled"]))
        for (curvature_rows, split), every in itertools.product(variants, (1, 10, 50, 100)):
            refresh = sum(split.values())
            amortised = step + refresh / every
            fact_apply = split["factorisation"] / every + r["apply"]
            out.append({
                "mode": r["mode"], "b": r["b"], "blocks": r["blocks"], "curvature_rows": curvature_rows,
                "update_every": every,
                "adam_step_ms": adam_step * 1e3, "hsc_step_ms": step * 1e3,
                "refresh_ms": refresh * 1e3,
                "refresh_split_ms": {k: v * 1e3 for k, v in split.items()},
                "apply_ms": r["apply"] * 1e3,
                "amortised_step_ms": amortised * 1e3,
                "amortised_over_adam": amortised / adam_step,
                "factorisation_plus_apply_pct": 100 * fact_apply / amortised,
                "torch_path_ms": {k: v * 1e3 for k, v in r["torch_split"].items()},
                "compiled_solve_ms": r["compiled_solve"] * 1e3,
            })
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cpu_optim.json").write_text(json.dumps(
        {"machine": machine, "params": adam["params"], "rows": out}, indent=2) + "\n")
    lines = [
        "# HSC optimizer step time against Adam (CPU)",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']} with "
        f"{machine['torch_threads']} threads. Command: `{machine['command']}`.",
        f"MLP 256-1024-512-256-10 ({adam['params']:,} parameters), batch {adam['batch']}, cross-entropy; "
        "probe estimator, 1 sign draw. Amortised step = ordinary step + refresh / update_every. "
        "Curvature rows: the HVPs on the whole batch, or on its first rows (`HSC.step(closure, "
        "curvature_closure=...)`, subsampled curvature); the step's gradient always uses the whole batch.",
        "",
        "| mode | b | curvature rows | update_every | Adam step ms | HSC step ms | refresh ms (HVP + assembly + "
        "factorisation) | amortised ms | amortised ÷ Adam step | factorisation + apply, % of amortised |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for o in out:
        s = o["refresh_split_ms"]
        lines.append(
            f"| {o['mode']} | {o['b']} | {o['curvature_rows']} | {o['update_every']} | {o['adam_step_ms']:.1f} | "
            f"{o['hsc_step_ms']:.1f} | "
            f"{o['refresh_ms']:.0f} ({s['hvp']:.0f} + {s['assembly']:.1f} + {s['factorisation']:.1f}) | "
            f"{o['amortised_step_ms']:.1f} | {o['amortised_over_adam']:.2f}× | "
            f"{o['factorisation_plus_apply_pct']:.1f} % |")
    lines += ["", "Compiled ops against the pure-torch path on the same data (ms per refresh, or per apply "
              "for the solve; each cell holds two times, not a ratio):", "",
              "| mode | b | assembly ms: compiled vs torch | factorisation ms: compiled vs torch "
              "| solve ms: compiled vs torch bmm |",
              "|---|---|---|---|---|"]
    for o in out:
        if o["update_every"] != 10 or o["curvature_rows"] != adam["batch"]:
            continue
        s, t = o["refresh_split_ms"], o["torch_path_ms"]
        lines.append(f"| {o['mode']} | {o['b']} | {s['assembly']:.1f} vs {t['assembly']:.1f} | "
                     f"{s['factorisation']:.1f} vs {t['factorisation']:.1f} | "
                     f"{o['compiled_solve_ms']:.2f} vs {t['solve']:.2f} |")
    by_key = {(o["mode"], o["b"], o["curvature_rows"], o["update_every"]): o for o in out}
    lines += ["", "The spectral mode's refresh (eigen-decomposition) against the Cholesky mode's, amortised at "
              "update_every = 50 (ratio of amortised step times, same run; target 1.2 or less):", "",
              "| b | curvature rows | cholesky amortised ms | saddle_free_root amortised ms | ratio |",
              "|---|---|---|---|---|"]
    for (mode, b, rows_, every), o in sorted(by_key.items(), key=lambda kv: (kv[0][1], kv[0][2])):
        other = by_key.get(("cholesky", b, rows_, every))
        if mode == "cholesky" or every != 50 or other is None:
            continue
        lines.append(f"| {b} | {rows_} | {other['amortised_step_ms']:.1f} | {o['amortised_step_ms']:.1f} | "
                     f"{o['amortised_step_ms'] / other['amortised_step_ms']:.2f} |")
    text = "\n".join(lines) + "\n"
    (RESULTS / "cpu_optim.md").write_text(text)
    return text


REPORTERS["optim"] = optim_report


def eigh_report(rows: list[dict], machine: dict) -> str:
    """bench_eigh.py: the eigensolver and the fused spectral correct against torch.linalg.eigh plus
    forming V f(Lambda) V^T with torch ops."""
    rows = sorted(rows, key=lambda r: (r["dtype"], r["b"]))
    out = []
    for r in rows:
        s, N, b = r["seconds"], r["N"], r["b"]
        if not {"torch", "eigh", "spectral_correct", "cholesky_correct"} <= s.keys():
            continue
        us = {m: t / N * 1e6 for m, t in s.items()}
        # Nominal flops of a symmetric eigen-decomposition with vectors (about 9 b^3, Golub & Van
        # Loan 8.3) plus forming V f V^T (b^3 with symmetry): the same count for every method, so
        # GFLOP/s compare like with like whatever the algorithm does.
        flops = 10 * b ** 3
        gemm = machine.get("gemm_gflops", {}).get(r["dtype"])
        out.append({
            "dtype": r["dtype"], "b": b, "N": N, "us_per_block": us,
            "speedup_torch_over_spectral_correct": s["torch"] / s["spectral_correct"],
            "speedup_torch_over_eigh": s["torch"] / s["eigh"],
            "spectral_over_cholesky_correct": s["spectral_correct"] / s["cholesky_correct"],
            "spectral_correct_gflops": flops * N / s["spectral_correct"] / 1e9,
            "spectral_correct_pct_of_gemm": (100 * flops * N / s["spectral_correct"] / 1e9 / gemm) if gemm else None,
        })
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cpu_eigh.json").write_text(json.dumps({"machine": machine, "rows": out}, indent=2) + "\n")

    def f(x, fmt):
        return "-" if x is None else format(x, fmt)

    lines = [
        "# The eigensolver and the spectral modes on the CPU: against torch.linalg.eigh",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']} with "
        f"{machine['torch_threads']} threads, hsc SIMD {machine['hsc_simd']}. Command: `{machine['command']}`.",
        "Medians of pytest-benchmark rounds on random symmetric (indefinite) blocks, the same blocks for "
        "every method. Baseline (torch): torch.linalg.eigh of the batch, then M^-1 = V f(Lambda) V^T "
        "(saddle_free_root, mu = 1) with torch ops. hsc: `ops.eigh` alone, and `ops.correct(mode="
        "\"saddle_free_root\")` (eigen-decomposition and M^-1, packed), the op that replaces the baseline. "
        "Speed-ups are baseline time ÷ hsc time (above 1: hsc is faster). GFLOP/s count a nominal 10 b³ "
        "flops a block (eigen-decomposition with vectors about 9 b³, plus forming M^-1), whatever the "
        f"algorithm; large GEMM, same run: {', '.join(f'{k} {v:.0f} GFLOP/s' for k, v in machine.get('gemm_gflops', {}).items())}.",
        "",
        "| dtype | b | N | torch µs/block | hsc eigh µs/block | hsc spectral correct µs/block | hsc cholesky "
        "correct µs/block | speed-up: torch ÷ spectral correct | speed-up: torch ÷ eigh | spectral ÷ cholesky "
        "correct (time) | spectral correct GFLOP/s | % of GEMM |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for o in out:
        u = o["us_per_block"]
        lines.append(
            f"| {o['dtype']} | {o['b']} | {o['N']} | {u['torch']:.2f} | {u['eigh']:.2f} | {u['spectral_correct']:.2f} | "
            f"{u['cholesky_correct']:.2f} | {o['speedup_torch_over_spectral_correct']:.1f}× | "
            f"{o['speedup_torch_over_eigh']:.1f}× | {o['spectral_over_cholesky_correct']:.1f}× | "
            f"{o['spectral_correct_gflops']:.1f} | {f(o['spectral_correct_pct_of_gemm'], '.0f')} % |")
    text = "\n".join(lines) + "\n"
    (RESULTS / "cpu_eigh.md").write_text(text)
    return text


REPORTERS["eigh"] = eigh_report
