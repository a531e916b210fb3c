"""Scaled dot-product attention shared by the encoder and the transformer, chunked over queries.

LAM's transformer attends 20018 point queries over 21314 keys: without chunking a kernel that
materialised the scores would need 16 x 20018 x 21314 floats (27 GB). Measured on the 2-core AVX512-BF16
dev CPU: PyTorch's CPU SDPA runs at the same speed in float32 and bfloat16 (~158 GFLOP/s), so attention
(about 3/4 of the FLOPs at 20018 points) sets a floor of ~110 s whatever the precision; bfloat16 only
speeds up the Linear layers (2.3x), see inference.precision_plan and bench/bench_network.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Query rows per attention call: bounds the attention working set whatever the SDPA kernel does.
ATTN_QUERY_CHUNK = 4096


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """Softmax attention, scale 1/sqrt(d), no mask: q B,H,Nq,d; k, v B,H,Nk,d -> B,H,Nq,d.

    Query rows are independent, so splitting them into chunks is exact; it caps memory at chunk x Nk per head.
    """
    chunk = chunk or ATTN_QUERY_CHUNK
    dtype = torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    if q.shape[2] <= chunk:
        return F.scaled_dot_product_attention(q, k, v)
    return torch.cat([F.scaled_dot_product_attention(qc, k, v) for qc in q.split(chunk, dim=2)], dim=2)
