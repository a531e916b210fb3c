"""Differentiable CPU splat renderer (torch autograd): the maths of ``cpu_rasterizer`` with
gradients w.r.t. centres, colours, opacities, scales and rotations.

Same model as the numba renderer (see its docstring), term by term:

* EWA projection: Sigma2D = J W R S S^T R^T W^T J^T + 0.3 I (px^2), the pinhole Jacobian built
  with x/z, y/z clamped to the field of view + 30 %; the 2D mean is projected unclamped.
* Culling: camera depth outside [near, far], opacity < 1/255, det(Sigma2D) <= 0, box off the image.
* Per pixel (centre j + 0.5, i + 0.5), front to back by camera depth of the centre (ties: input
  order): sigma = 0.5 d^T Sigma2D^-1 d, alpha = min(0.999, opacity exp(-sigma)); skipped when
  alpha < 1/255 or sigma < 0; the pixel stops before a Gaussian that would bring the
  transmittance to <= 1e-4; colour = sum c alpha T (+ T_final * background).

How it is differentiable and exact: every (tile, Gaussian) pair whose opacity-aware box touches
the tile is one row of a dense ``rows x tile_pixels`` block, rows ordered by tile then depth.
Transmittance is a *segmented* cumulative product done as a cumulative sum of log(1 - alpha) in
float64 (the segments are the tiles; each column is one pixel), so T before each Gaussian is
exact up to rounding. The discrete decisions (culling, the 1/255 skip, the early stop, the depth
order, the 0.999 clamp) are made as in the forward renderer and are piecewise constant, so the
gradient is the exact gradient of the rendered image wherever it is differentiable (every point
off those measure-zero boundaries). Plain torch autograd does the backward.

Cost is memory-bound: rows x tile_pixels elements, a few dozen bytes each for autograd. ``tile``
(default 8) trades rows (more with small tiles) against wasted pixels per row (more with big ones).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np
import torch
from numba import njit, prange

from .camera import PinholeCamera
from .cpu_rasterizer import ALPHA_MAX, ALPHA_MIN, EPS2D, EXTENT_MAX, T_MIN


@dataclass
class DiffRenderOutput:
    """rgb H,W,3 (composited on ``background``; premultiplied when it is None), alpha H,W,
    depth H,W (expected depth as the CPU renderer); rgb and alpha carry gradients (depth too in
    :func:`render_torch`, not in :func:`render`); ``weight`` N (no grad; :func:`render` fills it
    only with ``with_weight``): each Gaussian's summed compositing weight alpha*T over the image
    (0 = not seen); ``n_visible`` Gaussians that survived culling."""

    rgb: torch.Tensor
    alpha: torch.Tensor
    depth: torch.Tensor
    weight: torch.Tensor
    n_visible: int


def quat_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """N,4 wxyz (any norm > 0) -> N,3,3 rotation of the normalised quaternion."""
    q = q / q.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        -1,
    ).reshape(q.shape[:-1] + (3, 3))


def project(means, quats, scales, camera: PinholeCamera, eps2d: float = EPS2D):
    """Differentiable EWA projection. Returns (u N, v N, conic N,3 (a, b, c) with
    sigma = 0.5 a dx^2 + b dx dy + 0.5 c dy^2, cov N,3 (cxx, cxy, cyy), z N)."""
    dtype = means.dtype
    view = torch.as_tensor(camera.world_to_camera, dtype=dtype)
    rot, trans = view[:3, :3], view[:3, 3]
    pc = means @ rot.T + trans
    x, y, z = pc.unbind(-1)
    fx, fy, cx, cy = camera.fx, camera.fy, camera.cx, camera.cy
    w, h = camera.width, camera.height
    tan_fovx, tan_fovy = 0.5 * w / fx, 0.5 * h / fy
    lim_x_pos, lim_x_neg = (w - cx) / fx + 0.3 * tan_fovx, cx / fx + 0.3 * tan_fovx
    lim_y_pos, lim_y_neg = (h - cy) / fy + 0.3 * tan_fovy, cy / fy + 0.3 * tan_fovy
    m = rot @ quat_to_matrix(quats) * scales[:, None, :]  # N,3,3 = W R S
    rz = 1.0 / z
    tx = z * torch.clamp(x * rz, -lim_x_neg, lim_x_pos)
    ty = z * torch.clamp(y * rz, -lim_y_neg, lim_y_pos)
    j00, j02 = fx * rz, -fx * tx * rz * rz
    j11, j12 = fy * rz, -fy * ty * rz * rz
    a = j00[:, None] * m[:, 0, :] + j02[:, None] * m[:, 2, :]  # N,3: first row of J M
    b = j11[:, None] * m[:, 1, :] + j12[:, None] * m[:, 2, :]
    cxx = (a * a).sum(-1) + eps2d
    cxy = (a * b).sum(-1)
    cyy = (b * b).sum(-1) + eps2d
    det = cxx * cyy - cxy * cxy
    conic = torch.stack([cyy / det, -cxy / det, cxx / det], -1)
    u = fx * x * rz + cx
    v = fy * y * rz + cy
    return u, v, conic, torch.stack([cxx, cxy, cyy], -1), z


def _pairs(u, v, cov, z, opac, camera: PinholeCamera, tile: int):
    """(no grad) visible Gaussians' (tile, Gaussian) pairs sorted by tile then depth (ties by index).
    Returns (pair_gauss P long, pair_tile P long, n_visible)."""
    w, h = camera.width, camera.height
    tiles_x, tiles_y = -(-w // tile), -(-h // tile)
    u, v, z, opac = (t.detach().double() for t in (u, v, z, opac))
    cxx, cyy = cov[:, 0].detach().double(), cov[:, 2].detach().double()
    det = cxx * cyy - cov[:, 1].detach().double() ** 2
    ok = (z >= camera.near) & (z <= camera.far) & (opac >= ALPHA_MIN) & (det > 0)
    extent = torch.sqrt(2.0 * torch.log(torch.clamp(opac, min=ALPHA_MIN) / ALPHA_MIN)).clamp(max=EXTENT_MAX)
    rad_x = torch.ceil(extent * torch.sqrt(cxx.clamp(min=0)))
    rad_y = torch.ceil(extent * torch.sqrt(cyy.clamp(min=0)))
    ok &= (rad_x > 0) | (rad_y > 0)
    ok &= ~((u + rad_x <= 0) | (u - rad_x >= w) | (v + rad_y <= 0) | (v - rad_y >= h))
    x0 = torch.floor((u - rad_x) / tile).clamp(0, tiles_x)
    x1 = torch.ceil((u + rad_x) / tile).clamp(0, tiles_x)
    y0 = torch.floor((v - rad_y) / tile).clamp(0, tiles_y)
    y1 = torch.ceil((v + rad_y) / tile).clamp(0, tiles_y)
    ok &= (x1 > x0) & (y1 > y0)
    ok &= torch.isfinite(u) & torch.isfinite(v)
    vis = torch.nonzero(ok).squeeze(1)
    # depth order of the visible ones, ties in input order (stable sort of an index-ordered list)
    order = vis[torch.sort(z[vis], stable=True).indices]
    nx = (x1[order] - x0[order]).long()
    ny = (y1[order] - y0[order]).long()
    counts = nx * ny
    g = torch.repeat_interleave(order, counts)  # pairs in depth order
    rank = torch.repeat_interleave(torch.arange(order.numel()), counts)
    first = torch.cumsum(counts, 0) - counts
    k = torch.arange(g.numel()) - torch.repeat_interleave(first, counts)
    nxr = torch.repeat_interleave(nx, counts)
    tx = x0[g].long() + k % nxr
    ty = y0[g].long() + k // nxr
    tid = ty * tiles_x + tx
    sort = torch.sort(tid * max(1, order.numel()) + rank).indices  # by tile, then depth rank
    return g[sort], tid[sort], int(vis.numel())


def render_torch(
    means: torch.Tensor,
    quats_wxyz: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    colors: torch.Tensor,
    camera: PinholeCamera,
    background=(1.0, 1.0, 1.0),
    *,
    tile: int = 8,
    eps2d: float = EPS2D,
) -> DiffRenderOutput:
    """The pure-autograd form of :func:`render` (dense tile blocks, segmented log-cumsum): slow and
    memory-hungry, kept as an independent cross-check of the numba backward on small scenes."""
    dtype = means.dtype
    opacities = opacities.reshape(-1)
    n = means.shape[0]
    w, h = camera.width, camera.height
    tiles_x, tiles_y = -(-w // tile), -(-h // tile)
    n_tiles = tiles_x * tiles_y
    tp = tile * tile
    u, v, conic, cov, z = project(means, quats_wxyz, scales, camera, eps2d)
    pg, pt, n_vis = _pairs(u, v, cov, z, opacities, camera, tile)

    # pixel centres of each pair's tile: P,tp
    lx = torch.arange(tp) % tile
    ly = torch.arange(tp) // tile
    px = (pt % tiles_x)[:, None] * tile + lx[None]
    py = (pt // tiles_x)[:, None] * tile + ly[None]
    inside = (px < w) & (py < h)
    dx = u[pg][:, None] - (px.to(dtype) + 0.5)
    dy = v[pg][:, None] - (py.to(dtype) + 0.5)
    c = conic[pg]
    sigma = 0.5 * c[:, 0:1] * dx * dx + 0.5 * c[:, 2:3] * dy * dy + c[:, 1:2] * dx * dy
    alpha = torch.clamp(opacities[pg][:, None] * torch.exp(-sigma), max=ALPHA_MAX)
    with torch.no_grad():
        valid = inside & (sigma >= 0) & (alpha >= ALPHA_MIN)
    alpha = torch.where(valid, alpha, torch.zeros((), dtype=dtype))
    lg = torch.log1p(-alpha.double())  # P,tp float64
    # segmented exclusive cumulative sum per tile (rows are grouped by tile)
    cs = torch.cat([torch.zeros(1, tp, dtype=torch.float64), torch.cumsum(lg, 0)], 0)  # P+1,tp
    seg_counts = torch.bincount(pt, minlength=n_tiles)
    seg_start = torch.cumsum(seg_counts, 0) - seg_counts  # first row of each tile
    row = torch.arange(pg.numel())
    log_t = cs[row] - cs[seg_start[pt]]  # log T before this Gaussian
    with torch.no_grad():  # the pixel stops before a Gaussian that would bring T to <= T_MIN
        keep = valid & (torch.exp(log_t + lg) > T_MIN)
    t_before = torch.exp(log_t).to(dtype)
    wgt = torch.where(keep, alpha * t_before, torch.zeros((), dtype=dtype))  # P,tp
    lg_kept = torch.where(keep, lg, torch.zeros((), dtype=torch.float64))

    def per_tile(vals: torch.Tensor) -> torch.Tensor:
        return torch.zeros((n_tiles, tp), dtype=vals.dtype).index_add(0, pt, vals)

    t_final = torch.exp(per_tile(lg_kept)).to(dtype)  # n_tiles,tp
    col = colors[pg]
    chans = [per_tile(wgt * col[:, k: k + 1]) for k in range(3)]
    dsum = per_tile(wgt * z[pg][:, None])
    with torch.no_grad():
        weight = torch.zeros(n, dtype=dtype).index_add(0, pg, wgt.sum(1))

    def image(t: torch.Tensor) -> torch.Tensor:  # n_tiles,tp -> H,W
        return t.reshape(tiles_y, tiles_x, tile, tile).permute(0, 2, 1, 3).reshape(tiles_y * tile, tiles_x * tile)[:h, :w]

    t_img = image(t_final)
    rgb = torch.stack([image(ch) for ch in chans], -1)
    if background is not None:
        bg = torch.as_tensor(background, dtype=dtype).reshape(3)
        rgb = rgb + t_img[..., None] * bg
    a_img = 1.0 - t_img
    depth = image(dsum) / torch.clamp(a_img, min=1e-10)
    return DiffRenderOutput(rgb, a_img, depth, weight, n_vis)



# ------------------------------------------------------------------ numba forward + exact backward


@njit(cache=True, parallel=True)
def _raster_fwd(u, v, conic, opac, col, z, offsets, lists, chunks, tiles_x, tile, width, height, bg,
                out_rgb, out_t, out_d):
    """Per pixel, float64, the sequential front-to-back loop of the CPU renderer."""
    for k in prange(chunks.shape[0]):
        for tt in range(chunks[k, 0], chunks[k, 1]):
            t_id = chunks[k, 2] + tt * chunks[k, 3]
            if t_id >= offsets.shape[0] - 1:
                continue
            y_lo = (t_id // tiles_x) * tile
            x_lo = (t_id % tiles_x) * tile
            for i in range(y_lo, min(y_lo + tile, height)):
                for j in range(x_lo, min(x_lo + tile, width)):
                    px = j + 0.5
                    py = i + 0.5
                    t = 1.0
                    r0 = 0.0
                    r1 = 0.0
                    r2 = 0.0
                    dsum = 0.0
                    for s in range(offsets[t_id], offsets[t_id + 1]):
                        g = lists[s]
                        dx = u[g] - px
                        dy = v[g] - py
                        sig = 0.5 * conic[g, 0] * dx * dx + conic[g, 1] * dx * dy + 0.5 * conic[g, 2] * dy * dy
                        if sig < 0.0:
                            continue
                        a = min(ALPHA_MAX, opac[g] * math.exp(-sig))
                        if a < ALPHA_MIN:
                            continue
                        nt = t * (1.0 - a)
                        if nt <= T_MIN:
                            break
                        w = a * t
                        r0 += col[g, 0] * w
                        r1 += col[g, 1] * w
                        r2 += col[g, 2] * w
                        dsum += z[g] * w
                        t = nt
                    out_rgb[i, j, 0] = r0 + t * bg[0]
                    out_rgb[i, j, 1] = r1 + t * bg[1]
                    out_rgb[i, j, 2] = r2 + t * bg[2]
                    out_t[i, j] = t
                    out_d[i, j] = dsum / max(1.0 - t, 1e-10)


@njit(cache=True, parallel=True)
def _raster_bwd(u, v, conic, opac, col, offsets, lists, chunks, tiles_x, tile, width, height, bg,
                g_rgb, g_alpha, grads):
    """Exact gradients of rgb and alpha = 1 - T. grads[chunk, g, :] accumulates
    (u, v, conic a, b, c, opacity, r, g, b) per chunk (no races); the caller sums the chunks.
    Per pixel the forward loop is replayed, storing alpha and T of each drawn Gaussian, then
    walked back to front with S = sum of what lies behind (colour, then background)."""
    n_list = 0
    for t_id in range(offsets.shape[0] - 1):
        n_list = max(n_list, offsets[t_id + 1] - offsets[t_id])
    for k in prange(chunks.shape[0]):
        idx = np.empty(n_list, np.int64)
        al = np.empty(n_list, np.float64)
        tb = np.empty(n_list, np.float64)
        unclamped = np.empty(n_list, np.bool_)
        ex = np.empty(n_list, np.float64)
        for tt in range(chunks[k, 0], chunks[k, 1]):
            t_id = chunks[k, 2] + tt * chunks[k, 3]
            if t_id >= offsets.shape[0] - 1:
                continue
            y_lo = (t_id // tiles_x) * tile
            x_lo = (t_id % tiles_x) * tile
            for i in range(y_lo, min(y_lo + tile, height)):
                for j in range(x_lo, min(x_lo + tile, width)):
                    px = j + 0.5
                    py = i + 0.5
                    t = 1.0
                    m = 0
                    for s in range(offsets[t_id], offsets[t_id + 1]):
                        g = lists[s]
                        dx = u[g] - px
                        dy = v[g] - py
                        sig = 0.5 * conic[g, 0] * dx * dx + conic[g, 1] * dx * dy + 0.5 * conic[g, 2] * dy * dy
                        if sig < 0.0:
                            continue
                        e = math.exp(-sig)
                        raw = opac[g] * e
                        a = min(ALPHA_MAX, raw)
                        if a < ALPHA_MIN:
                            continue
                        nt = t * (1.0 - a)
                        if nt <= T_MIN:
                            break
                        idx[m] = g
                        al[m] = a
                        tb[m] = t
                        ex[m] = e
                        unclamped[m] = raw < ALPHA_MAX
                        m += 1
                        t = nt
                    gr0 = g_rgb[i, j, 0]
                    gr1 = g_rgb[i, j, 1]
                    gr2 = g_rgb[i, j, 2]
                    ga = g_alpha[i, j]
                    s0 = t * bg[0]  # what lies behind the current Gaussian, composited
                    s1 = t * bg[1]
                    s2 = t * bg[2]
                    for q in range(m - 1, -1, -1):
                        g = idx[q]
                        a = al[q]
                        tq = tb[q]
                        w = a * tq
                        c0 = col[g, 0]
                        c1 = col[g, 1]
                        c2 = col[g, 2]
                        grads[k, g, 6] += gr0 * w
                        grads[k, g, 7] += gr1 * w
                        grads[k, g, 8] += gr2 * w
                        inv = 1.0 / (1.0 - a)
                        d_a = (gr0 * (c0 * tq - s0 * inv) + gr1 * (c1 * tq - s1 * inv) + gr2 * (c2 * tq - s2 * inv)
                               + ga * t * inv)
                        s0 += c0 * w
                        s1 += c1 * w
                        s2 += c2 * w
                        if unclamped[q]:
                            grads[k, g, 5] += d_a * ex[q]
                            d_sig = -d_a * a
                            dx = u[g] - px
                            dy = v[g] - py
                            grads[k, g, 0] += d_sig * (conic[g, 0] * dx + conic[g, 1] * dy)
                            grads[k, g, 1] += d_sig * (conic[g, 1] * dx + conic[g, 2] * dy)
                            grads[k, g, 2] += d_sig * 0.5 * dx * dx
                            grads[k, g, 3] += d_sig * dx * dy
                            grads[k, g, 4] += d_sig * 0.5 * dy * dy


def _chunks(n_tiles: int, n_chunks: int) -> np.ndarray:
    """Rows (start, stop, first tile, stride): chunk k takes tiles k, k + n_chunks, ... (interleaved:
    each chunk samples the whole image, which balances the load)."""
    n_chunks = max(1, min(n_chunks, n_tiles))
    per = -(-n_tiles // n_chunks)
    return np.array([[0, per, k, n_chunks] for k in range(n_chunks)], dtype=np.int64)


class _Raster(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, v, conic, opac, col, z, offsets, lists, camera, tile, bg):
        w, h = camera.width, camera.height
        tiles_x = -(-w // tile)
        f64 = lambda a: np.ascontiguousarray(a.detach().cpu().numpy(), dtype=np.float64)  # noqa: E731
        arrs = tuple(f64(a) for a in (u, v, conic, opac, col, z))
        chunks = _chunks(offsets.shape[0] - 1, 4 * numba.get_num_threads())
        rgb = np.empty((h, w, 3))
        t = np.empty((h, w))
        d = np.empty((h, w))
        _raster_fwd(*arrs, offsets, lists, chunks, tiles_x, tile, w, h, bg, rgb, t, d)
        ctx.saved = (arrs, offsets, lists, chunks, tiles_x, tile, w, h, bg)
        ctx.dtype = dtype = u.dtype
        depth = torch.from_numpy(d).to(dtype)
        ctx.mark_non_differentiable(depth)  # depth is returned without gradient (see render)
        return torch.from_numpy(rgb).to(dtype), torch.from_numpy(1.0 - t).to(dtype), depth

    @staticmethod
    def backward(ctx, g_rgb, g_alpha, g_depth):
        arrs, offsets, lists, chunks, tiles_x, tile, w, h, bg = ctx.saved
        u, v, conic, opac, col, _z = arrs
        grads = np.zeros((chunks.shape[0], u.shape[0], 9))
        g_rgb = np.zeros((h, w, 3)) if g_rgb is None else np.ascontiguousarray(g_rgb.numpy(), dtype=np.float64)
        g_alpha = np.zeros((h, w)) if g_alpha is None else np.ascontiguousarray(g_alpha.numpy(), dtype=np.float64)
        _raster_bwd(u, v, conic, opac, col, offsets, lists, chunks, tiles_x, tile, w, h, bg, g_rgb, g_alpha, grads)
        gsum = torch.from_numpy(grads.sum(0))
        gsum = gsum.to(ctx.dtype)
        return gsum[:, 0], gsum[:, 1], gsum[:, 2:5], gsum[:, 5], gsum[:, 6:9], None, None, None, None, None, None


def render(
    means: torch.Tensor,
    quats_wxyz: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    colors: torch.Tensor,
    camera: PinholeCamera,
    background=(1.0, 1.0, 1.0),
    *,
    tile: int = 16,
    eps2d: float = EPS2D,
    with_weight: bool = False,
) -> DiffRenderOutput:
    """Render N Gaussians differentiably (means N,3 world; quats N,4 wxyz; scales N,3 standard
    deviations; opacities N in [0,1]; colors N,3). ``background``: RGB triple or None
    (premultiplied colour). Inputs share one float dtype (float32 or float64); the projection is
    torch autograd, the compositing a numba kernel in float64 with its exact hand-written backward
    (rgb and alpha are differentiable; depth is returned without gradient)."""
    dtype = means.dtype
    opacities = opacities.reshape(-1)
    n = means.shape[0]
    u, v, conic, cov, z = project(means, quats_wxyz, scales, camera, eps2d)
    pg, pt, n_vis = _pairs(u, v, cov, z, opacities, camera, tile)
    n_tiles = -(-camera.width // tile) * -(-camera.height // tile)
    offsets = np.concatenate([[0], np.cumsum(np.bincount(pt.numpy(), minlength=n_tiles))]).astype(np.int64)
    lists = pg.numpy().astype(np.int64)
    bg = np.zeros(3) if background is None else np.asarray(background, dtype=np.float64).reshape(3)
    rgb, alpha, depth = _Raster.apply(u, v, conic, opacities, colors, z.detach(), offsets, lists, camera, tile, bg)
    weight = torch.zeros(n, dtype=dtype)
    if with_weight:  # costs one more pass of the backward kernel
        weight = _weights(u, v, conic, opacities, offsets, lists, camera, tile, n).to(dtype)
    return DiffRenderOutput(rgb, alpha, depth, weight, n_vis)


def _weights(u, v, conic, opac, offsets, lists, camera, tile, n) -> torch.Tensor:
    """Per Gaussian the summed compositing weight alpha*T over the image: the gradient of
    sum(rgb) w.r.t. its colour, from the backward kernel with g_rgb = 1 on channel 0."""
    w, h = camera.width, camera.height
    f64 = lambda a: np.ascontiguousarray(a.detach().cpu().numpy(), dtype=np.float64)  # noqa: E731
    chunks = _chunks(offsets.shape[0] - 1, 4 * numba.get_num_threads())
    grads = np.zeros((chunks.shape[0], n, 9))
    g_rgb = np.zeros((h, w, 3))
    g_rgb[..., 0] = 1.0
    ones = np.ones((n, 3))
    _raster_bwd(f64(u), f64(v), f64(conic), f64(opac), ones, offsets, lists, chunks, -(-w // tile), tile, w, h,
                np.zeros(3), g_rgb, np.zeros((h, w)), grads)
    return torch.from_numpy(grads.sum(0)[:, 6])


def render_numpy(means, quats, scales, opacities, colors, camera: PinholeCamera, background=(1.0, 1.0, 1.0), **kw):
    """Convenience: numpy in, numpy out (float32), no gradients."""
    t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float32))  # noqa: E731
    with torch.no_grad():
        out = render(t(means), t(quats), t(scales), t(opacities), t(colors), camera, background, **kw)
    return out.rgb.numpy(), out.alpha.numpy(), out.depth.numpy()

