"""The compute floor of one LAM forward on this CPU: how fast could fast mode be at best?

    .venv/bin/python bench/bench_cpu_floor.py [--points 20018]

Counts the work of the full-size LAM-20K forward from its config (GEMM FLOPs per part: encoder, transformer
linears, attention scores q k^T, attention probabilities x values, heads; softmax elements), measures what
this machine sustains on each kind of op in isolation (bf16 GEMMs at the forward's shapes, PyTorch's bf16
softmax, PyTorch's fused bf16 SDPA, and int8 GEMMs through ``torch._int_mm`` for comparison), and prints the
resulting lower bound on the forward time: the sum of work / rate, as if every op ran back to back at its
isolated speed. The real forward (bench_network.py) cannot be faster than the bound of the kinds of op it runs:
``gemm_bf16`` attention is GEMMs plus a separate softmax, ``sdpa_bf16`` the fused kernel (scores, softmax and
values in one pass, so its rate counts the GEMM FLOPs of both products).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.network.config import lam20k_config, parse_config  # noqa: E402


def forward_work(n_points: int) -> dict[str, float]:
    """GEMM FLOPs per part and softmax elements of one LAM-20K forward at ``n_points`` query points."""
    cfg = parse_config(lam20k_config())
    dino = cfg.dino
    grid = 504 // dino.patch_size
    t = 1 + dino.num_register_tokens + grid * grid  # encoder tokens
    e = dino.embed_dim
    enc = dino.depth * (2 * t * (4 * e * e + 2 * e * dino.mlp_hidden) + 4 * t * t * e)
    enc += 2 * grid * grid * (4 * e * e + 4 * e * e)  # fusion: four 1x1 convs, then 4E -> E
    d, m, n = cfg.transformer_dim, grid * grid, n_points
    linears = scores = pv = 0.0
    softmax = float(dino.depth * dino.num_heads * t * t)
    for i in range(cfg.transformer_layers):
        last = i == cfg.transformer_layers - 1
        queries = n if last else n + m
        linears += 2 * n * (4 * d * d + 8 * d * d)  # q, k, v, out and the 4x feed-forward of the points
        linears += 2 * m * (2 * d * d if last else 12 * d * d)  # image tokens (last block: k, v only)
        scores += 2 * queries * (n + m) * d
        pv += 2 * queries * (n + m) * d
        softmax += cfg.transformer_heads * queries * (n + m)
    linears += 2 * m * cfg.encoder_feat_dim * d  # linear_cond_proj
    q = cfg.gs_query_dim
    heads = 2 * n * (q * cfg.mlp_neurons + cfg.mlp_neurons**2 + cfg.mlp_neurons * q + q * 14)
    return {"encoder": enc, "linears": linears, "scores": scores, "pv": pv, "heads": heads, "softmax": softmax}


def _rate(fn, work: float, repeats: int = 5) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return work * repeats / (time.perf_counter() - start)


def _attention_rates(rows: int, n_keys: int, head_dim: int, g: torch.Generator) -> dict[str, float]:
    """One head, one block of query rows, preallocated outputs as in attention.py."""
    bf = torch.bfloat16
    k_t = torch.randn(n_keys, head_dim, generator=g).to(bf).t()
    v = torch.randn(n_keys, head_dim, generator=g).to(bf)
    q = torch.randn(rows, head_dim, generator=g).to(bf)
    s = torch.randn(rows, n_keys, generator=g).to(bf)
    p = torch.empty_like(s)
    o = torch.empty(rows, head_dim, dtype=bf)
    k8 = torch.randint(-127, 128, (n_keys, head_dim), dtype=torch.int8, generator=g)
    v8t = torch.randint(-127, 128, (head_dim, n_keys), dtype=torch.int8, generator=g)
    q8 = torch.randint(-127, 128, (rows, head_dim), dtype=torch.int8, generator=g)
    p8 = torch.randint(0, 128, (rows, n_keys), dtype=torch.int8, generator=g)
    s32 = torch.empty(rows, n_keys, dtype=torch.int32)
    o32 = torch.empty(rows, head_dim, dtype=torch.int32)
    gemm = 2.0 * rows * n_keys * head_dim
    return {
        "bf16 scores": _rate(lambda: torch.matmul(q, k_t, out=s), gemm),
        "bf16 pv": _rate(lambda: torch.matmul(p, v, out=o), gemm),
        "bf16 softmax": _rate(lambda: torch.ops.aten._softmax.out(s, -1, False, out=p), float(rows * n_keys)),
        "int8 scores": _rate(lambda: torch._int_mm(q8, k8.t(), out=s32), gemm),
        "int8 pv": _rate(lambda: torch._int_mm(p8, v8t.t(), out=o32), gemm),
    }


def measured_rates(n_keys: int, head_dim: int = 64) -> dict[str, float]:
    """Sustained ops/s of each kind of op at the forward's shapes (all threads, isolated), attention ops
    at their best over query-row blocks of 128 and 512."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4096, 1024, generator=g).to(torch.bfloat16)
    w = torch.randn(1024, 4096, generator=g).to(torch.bfloat16)
    rates = {"bf16 linear": _rate(lambda: x @ w, 2.0 * 4096**2 * 1024)}
    q, k, v = (torch.randn(1, 2, n, head_dim, generator=g).to(torch.bfloat16) for n in (2048, n_keys, n_keys))
    rates["bf16 fused sdpa"] = _rate(lambda: F.scaled_dot_product_attention(q, k, v),
                                     4.0 * 2 * 2048 * n_keys * head_dim, repeats=3)
    for rows in (128, 512):
        for name, r in _attention_rates(rows, n_keys, head_dim, g).items():
            rates[name] = max(r, rates.get(name, 0.0))
    return rates


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=20018)
    args = ap.parse_args()
    work = forward_work(args.points)
    n_keys = args.points + (504 // 14) ** 2
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}; {args.points} points, {n_keys} attention keys")
    gemm = sum(v for k, v in work.items() if k != "softmax")
    print("work: " + ", ".join(f"{k} {v / 1e12:.2f} TFLOP" for k, v in work.items() if k != "softmax")
          + f" (GEMMs {gemm / 1e12:.2f} TFLOP); softmax {work['softmax'] / 1e9:.1f} G elements")
    rates = measured_rates(n_keys)
    for name, r in rates.items():
        unit = "G elements/s" if name.endswith("softmax") else ("GOPS" if "int8" in name else "GFLOP/s")
        print(f"  {name:15s} {r / 1e9:7.1f} {unit}")
    dense = work["encoder"] + work["linears"] + work["heads"]
    floors = {
        "bf16, gemm_bf16 attention (GEMMs + separate softmax)": dense / rates["bf16 linear"] + work["scores"] / rates["bf16 scores"]
        + work["pv"] / rates["bf16 pv"] + work["softmax"] / rates["bf16 softmax"],
        "bf16, sdpa_bf16 attention (fused)": dense / rates["bf16 linear"]
        + (work["scores"] + work["pv"]) / rates["bf16 fused sdpa"],
        "bf16 GEMMs only, softmax free": dense / rates["bf16 linear"] + work["scores"] / rates["bf16 scores"]
        + work["pv"] / rates["bf16 pv"],
        "int8 scores, bf16 rest, softmax free": dense / rates["bf16 linear"] + work["scores"] / rates["int8 scores"]
        + work["pv"] / rates["bf16 pv"],
    }
    for name, seconds in floors.items():
        print(f"floor, {name}: {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
