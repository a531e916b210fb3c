"""Scaled dot-product attention shared by the encoder and the transformer, chunked over queries.

LAM's transformer attends 20018 point queries over 21314 keys: without chunking a kernel that
materialised the scores would need 16 x 20018 x 21314 floats (27 GB). Float32 uses PyTorch's SDPA.

bfloat16 on CPU (the "fast" precision) uses explicit bf16 matmuls instead: on the 2-core AVX512-BF16
dev CPU PyTorch's CPU SDPA runs at the same ~158 GFLOP/s in float32 and bfloat16, whereas bf16 GEMMs
reach ~270 (scores, inner dim 64) to ~375 GFLOP/s (probabilities x values). Measured on one full-size
joint-attention layer under bf16 autocast (1024 wide, 20018 + 1296 tokens, under contention): 15.4-17.3 s
with SDPA, 11.1-11.8 s with :func:`cpu_bf16_attention` (~1/3 each scores GEMM, softmax, PV GEMM; block
size 256-1024 rows makes no difference). Whole network: bench/bench_network.py.

Other CPUs differ: on a 2-core Xeon with AMX, bf16 SDPA (fused: its softmax never leaves the cache) ran the
same layer in 2.2-2.7 s against 3.8-4.8 s for :func:`cpu_bf16_attention`, the whole fast forward in 39.5 s
against 61.8 s (bench/README.md, per-CPU table). So bfloat16 on CPU runs the kernel that :mod:`.attention_choice` measured fastest
on this machine (or the one forced with ``--attention`` / ``$LAM_HEAD_ATTENTION``): see :func:`run_kernel`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import attention_choice

#: Query rows per attention call: bounds the attention working set whatever the SDPA kernel does.
ATTN_QUERY_CHUNK = 4096
#: Query rows per step of the explicit bf16 path: a rows x Nk bf16 score block (22 MB at 21314 keys).
CPU_BF16_ROWS = 512


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """Softmax attention, scale 1/sqrt(d), no mask: q B,H,Nq,d; k, v B,H,Nk,d -> B,H,Nq,d.

    Query rows are independent, so splitting them into chunks is exact; it caps memory at chunk x Nk per head.
    bfloat16 on CPU runs this machine's kernel (:func:`attention_choice.current_kernel`, see :func:`run_kernel`);
    everything else PyTorch's SDPA.
    """
    chunk = chunk or ATTN_QUERY_CHUNK
    dtype = torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)
    if dtype == torch.bfloat16 and q.device.type == "cpu":
        return run_kernel(attention_choice.current_kernel(), q, k, v)
    return sdpa_chunked(q.to(dtype), k.to(dtype), v.to(dtype), chunk)


def sdpa_chunked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, chunk: int) -> torch.Tensor:
    """PyTorch's SDPA over query chunks of ``chunk`` rows (exact: query rows are independent)."""
    if q.shape[2] <= chunk:
        return F.scaled_dot_product_attention(q, k, v)
    return torch.cat([F.scaled_dot_product_attention(qc, k, v) for qc in q.split(chunk, dim=2)], dim=2)


def run_kernel(name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """One of :data:`attention_choice.KERNELS` on q B,H,Nq,d; k, v B,H,Nk,d -> bfloat16 B,H,Nq,d.

    ``sdpa_bf16`` / ``sdpa_bf16_q1024``: PyTorch's SDPA on bf16 tensors (its CPU flash kernel accumulates in
    float32), query chunks of 4096 / 1024; ``sdpa_fp32``: SDPA on float32 copies, output rounded to bf16;
    ``gemm_bf16``: :func:`cpu_bf16_attention`. All are exact attention; they differ in rounding and speed.
    """
    bf16 = torch.bfloat16
    if name == "gemm_bf16":
        return cpu_bf16_attention(q, k, v)
    if name == "sdpa_bf16":
        return sdpa_chunked(q.to(bf16), k.to(bf16), v.to(bf16), 4096)
    if name == "sdpa_bf16_q1024":
        return sdpa_chunked(q.to(bf16), k.to(bf16), v.to(bf16), 1024)
    if name == "sdpa_fp32":
        return sdpa_chunked(q.float(), k.float(), v.float(), 4096).to(bf16)
    attention_choice.check_name(name, source="run_kernel")
    raise AssertionError(f"attention kernel {name!r} is listed but not implemented")


def cpu_bf16_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows: int = CPU_BF16_ROWS) -> torch.Tensor:
    """Attention as two bf16 GEMMs per head and block of query rows: q B,H,Nq,d; k, v B,H,Nk,d -> bf16 B,H,Nq,d.

    S = (q/sqrt(d)) k^T and O = softmax(S) v run as bf16 matmuls (fp32 accumulation, bf16 results);
    PyTorch's CPU softmax of a bf16 tensor computes in float32 and rounds the probabilities to bf16.
    Two reused rows x Nk buffers hold the scores and probabilities, so the peak extra memory stays ~45 MB.
    Versus float32 the error comes from bf16 rounding of the inputs, the scores and the probabilities.
    """
    bf16 = torch.bfloat16
    b, h, n, d = q.shape
    nk = k.shape[2]
    qb = (q.float() * d**-0.5).to(bf16)
    kb, vb = k.to(bf16), v.to(bf16)
    out = torch.empty(b, h, n, d, dtype=bf16, device=q.device)
    rows = min(rows, n)
    scores = torch.empty(rows * nk, dtype=bf16, device=q.device)
    probs = torch.empty(rows * nk, dtype=bf16, device=q.device)
    for bi in range(b):
        for hi in range(h):
            k_t = kb[bi, hi].contiguous().t()  # d,Nk view: the GEMM reads it transposed
            v_h = vb[bi, hi].contiguous()
            for start in range(0, n, rows):
                q_blk = qb[bi, hi, start:start + rows]
                r = q_blk.shape[0]
                s = torch.matmul(q_blk, k_t, out=scores[: r * nk].view(r, nk))
                p = torch.ops.aten._softmax.out(s, -1, False, out=probs[: r * nk].view(r, nk))
                torch.matmul(p, v_h, out=out[bi, hi, start:start + r])
    return out
