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

:func:`render` (numba, float64, exact hand-written backward): per tile, Gaussians front to back;
each updates only the 8-pixel blocks of the tile rows that the bounding box of its
alpha >= 1/255 ellipse reaches (an exact, opacity-aware extent with a margin for rounding; every
visited pixel then takes the exact tests above, in a branch-free loop that vectorises); finished
pixels/blocks/rows/tiles are skipped. Per pixel that is exactly the sequential loop. It keeps per pixel the final T and the last Gaussian drawn. The
backward walks each tile's list back to front from there over the same blocks, recovering T before
each Gaussian as T after / (1 - alpha) (1 - alpha >= 0.001: exact to rounding in float64) and the
colour behind it incrementally. exp is an inlined polynomial within ~1 ulp of libm's, and the same
code takes the discrete decisions in both kernels. Gradients are summed per chunk of tiles in a
fixed order: deterministic.

:func:`render_torch` (the slow independent cross-check): every (tile, Gaussian) pair whose
opacity-aware box touches the tile is one row of a dense ``rows x tile_pixels`` block, rows
ordered by tile then depth.
Transmittance is a *segmented* cumulative product done as a cumulative sum of log(1 - alpha) in
float64 (the segments are the tiles; each column is one pixel), so T before each Gaussian is
exact up to rounding. The discrete decisions (culling, the 1/255 skip, the early stop, the depth
order, the 0.999 clamp) are made as in the forward renderer and are piecewise constant, so the
gradient is the exact gradient of the rendered image wherever it is differentiable (every point
off those measure-zero boundaries). Plain torch autograd does the backward.

Its cost is memory-bound: rows x tile_pixels elements, a few dozen bytes each for autograd. ``tile``
(default 8) trades rows (more with small tiles) against wasted pixels per row (more with big ones).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

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
    offsets, lists, n_vis = _tile_lists(u, v, cov, z, opac, camera, tile)
    pt = np.repeat(np.arange(offsets.shape[0] - 1), np.diff(offsets))
    return torch.from_numpy(lists), torch.from_numpy(pt), n_vis


def _tile_lists(u, v, cov, z, opac, camera: PinholeCamera, tile: int):
    """(no grad) per tile (row-major) the visible Gaussians whose opacity-aware box touches it,
    front to back by depth (ties by index): (offsets T+1 int64, lists P int64, n_visible)."""
    f64 = lambda a: np.ascontiguousarray(a.detach().cpu().numpy(), dtype=np.float64)  # noqa: E731
    c = f64(cov)
    return _bin(f64(u), f64(v), c[:, 0], c[:, 1], c[:, 2], f64(z), f64(opac).reshape(-1), float(camera.near),
                float(camera.far), camera.width, camera.height, tile)


@njit(cache=True)
def _bin(u, v, cxx, cxy, cyy, z, opac, near, far, width, height, tile):
    """Culling (depth outside [near, far], opacity < 1/255, det(Sigma2D) <= 0, box off the image,
    non-finite centre), the opacity-aware box as the CPU renderer's, then a counting sort of the
    depth-sorted (stable) visible Gaussians into per-tile lists."""
    n = u.shape[0]
    tiles_x = -(-width // tile)
    tiles_y = -(-height // tile)
    rect = np.empty((n, 4), np.int64)
    n_vis = 0
    for i in range(n):
        rect[i, 0] = -1
        det = cxx[i] * cyy[i] - cxy[i] * cxy[i]
        if not (z[i] >= near and z[i] <= far and opac[i] >= ALPHA_MIN and det > 0.0):
            continue
        if not (np.isfinite(u[i]) and np.isfinite(v[i])):
            continue
        extent = min(EXTENT_MAX, math.sqrt(2.0 * math.log(max(opac[i], ALPHA_MIN) / ALPHA_MIN)))
        rad_x = math.ceil(extent * math.sqrt(max(cxx[i], 0.0)))
        rad_y = math.ceil(extent * math.sqrt(max(cyy[i], 0.0)))
        if rad_x <= 0.0 and rad_y <= 0.0:
            continue
        if u[i] + rad_x <= 0.0 or u[i] - rad_x >= width or v[i] + rad_y <= 0.0 or v[i] - rad_y >= height:
            continue
        x0 = min(max(math.floor((u[i] - rad_x) / tile), 0.0), float(tiles_x))
        x1 = min(max(math.ceil((u[i] + rad_x) / tile), 0.0), float(tiles_x))
        y0 = min(max(math.floor((v[i] - rad_y) / tile), 0.0), float(tiles_y))
        y1 = min(max(math.ceil((v[i] + rad_y) / tile), 0.0), float(tiles_y))
        if x1 <= x0 or y1 <= y0:
            continue
        rect[i, 0] = int(x0)
        rect[i, 1] = int(x1)
        rect[i, 2] = int(y0)
        rect[i, 3] = int(y1)
        n_vis += 1
    vis = np.empty(n_vis, np.int64)
    k = 0
    for i in range(n):
        if rect[i, 0] >= 0:
            vis[k] = i
            k += 1
    order = vis[np.argsort(z[vis], kind="mergesort")]  # stable: ties keep index order
    n_tiles = tiles_x * tiles_y
    counts = np.zeros(n_tiles + 1, np.int64)
    for i in order:
        for ty in range(rect[i, 2], rect[i, 3]):
            for tx in range(rect[i, 0], rect[i, 1]):
                counts[ty * tiles_x + tx + 1] += 1
    offsets = np.cumsum(counts)
    fill = offsets[:-1].copy()
    lists = np.empty(offsets[-1], np.int64)
    for i in order:  # front to back: each tile's list comes out depth-sorted
        for ty in range(rect[i, 2], rect[i, 3]):
            for tx in range(rect[i, 0], rect[i, 1]):
                t = ty * tiles_x + tx
                lists[fill[t]] = i
                fill[t] += 1
    return offsets, lists, n_vis


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

# Packed per-Gaussian columns (float64) of the kernels: 2D mean, conic (a, b, c), opacity, depth,
# colour, the sigma cut-off and the half-width and half-height of the alpha >= 1/255 ellipse.
_PU, _PV, _PA, _PB, _PC, _POP, _PZ, _PR, _PG, _PBL, _PSMAX, _PEXTX, _PEXTY = range(13)
_NPACK = 13

# Per-chunk scratch of the kernels: one float64 buffer, one field per per-pixel quantity, fields
# _FS apart (compile-time offsets from one base: LLVM then proves the fields disjoint and
# vectorises the pixel loops); a tile's pixels sit in rows of tile rounded up to a multiple of
# _LANES, so tile <= _TILE_MAX. Indices are uint64 (numba adds no negative-index wraparound then).
_LANES = 8
_TILE_MAX = 32
_FS = _TILE_MAX * _TILE_MAX + 8  # + one cache line: the fields do not share L1 sets
_U8 = np.uint64(_LANES)
_F_T, _F_R, _F_G, _F_B, _F_D, _F_L = (np.uint64(k * _FS) for k in range(6))  # forward
_B_T, _B_GT, _B_GS, _B_G0, _B_G1, _B_G2, _B_L = (np.uint64(k * _FS) for k in range(7))  # backward
_A_R, _A_G, _A_B, _A_O, _A_L0, _A_L1, _A_L2 = (np.uint64(k * _TILE_MAX) for k in range(7))  # backward, per column

# float64 exp(-s) pieces: s = k ln2 + r, |r| <= ln2 / 2 (ln2 split so k * _LN2_HI is exact)
_INV_LN2 = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_E2, _E3, _E4, _E5, _E6, _E7, _E8, _E9, _E10, _E11, _E12, _E13 = (1.0 / math.factorial(k) for k in range(2, 14))


@intrinsic
def _f64_from_bits(typingctx, bits):
    """The float64 whose IEEE-754 bit pattern is the int64 ``bits`` (a free bitcast)."""
    sig = types.float64(types.int64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return sig, codegen


@intrinsic
def _fma(typingctx, a, b, c):
    """a * b + c rounded once (llvm.fma: one instruction on CPUs with FMA, vectorisable). Explicit,
    so the forward and backward kernels round identically (no compiler-chosen contraction)."""
    sig = types.float64(types.float64, types.float64, types.float64)

    def codegen(context, builder, signature, args):
        f64 = ir.DoubleType()
        fn = builder.module.declare_intrinsic("llvm.fma", [f64], ir.FunctionType(f64, [f64, f64, f64]))
        return builder.call(fn, args)

    return sig, codegen


@njit(inline="always")
def _exp_neg(s):
    """float64 exp(-s) for s in [0, ~700]: s = k ln2 + r, |r| <= ln2 / 2; the degree-13 Taylor
    polynomial of exp(-r) (truncation < 1e-17; within 0.7 ulp of exp(-s) all told) times an exact
    2^-k. Its higher terms go by Estrin's scheme, the last three by Horner's (accuracy): a short
    dependency chain. Inlined and branch-free, so the pixel loops vectorise."""
    k = np.int64(s * _INV_LN2 + 0.5)
    kf = np.float64(k)
    x = _fma(kf, _LN2_LO, _fma(kf, _LN2_HI, -s))  # -r: exp(-s) = 2^-k exp(x)
    x2 = x * x
    x4 = x2 * x2
    q0 = _fma(x, _E4, _E3)
    q1 = _fma(x, _E6, _E5)
    q2 = _fma(x, _E8, _E7)
    q3 = _fma(x, _E10, _E9)
    q4 = _fma(x, _E12, _E11)
    r0 = _fma(x2, q1, q0)
    r1 = _fma(x2, q3, q2)
    r2 = _fma(x2, _E13, q4)
    tail = _fma(x4 * x4, r2, _fma(x4, r1, r0))  # sum_{j>=3} x^(j-3) / j!
    p = _fma(x, _fma(x, _fma(x, tail, _E2), 1.0), 1.0)
    return p * _f64_from_bits((1023 - k) << 52)


@njit(inline="always")
def _alpha(hca, bdy, cdy, dx, op, sm):
    """(sigma, exp(-sigma), raw alpha) of a pixel at column offset dx = u - x, on a row where
    bdy = b dy and cdy = c dy^2 / 2 (hca = a / 2): sigma = (a/2 dx + b dy) dx + c/2 dy^2. exp is
    taken of sigma clamped to [0, sm] (sigma > sm gives alpha < 1/255 either way; sigma < 0 is
    tested by the caller). The one definition both kernels use, so they take identical decisions."""
    sig = _fma(_fma(hca, dx, bdy), dx, cdy)
    e = _exp_neg(min(max(sig, 0.0), sm))
    return sig, e, op * e


def _pack(u, v, conic, opac, col, z) -> np.ndarray:
    """N,_NPACK float64 kernel parameters (numpy in, float64 numpy arrays)."""
    n = u.shape[0]
    p = np.empty((n, _NPACK))
    p[:, _PU], p[:, _PV], p[:, _PA:_PC + 1], p[:, _POP], p[:, _PZ], p[:, _PR:_PBL + 1] = u, v, conic, opac, z, col
    a, b, c = conic[:, 0], conic[:, 1], conic[:, 2]
    with np.errstate(all="ignore"):
        # alpha >= 1/255 needs opac exp(-sigma) >= 1/255, i.e. sigma <= ln(255 opac); the margin
        # covers the rounding of the extents below (the pixel loops then test alpha exactly)
        smax = np.log(np.maximum(opac, ALPHA_MIN) / ALPHA_MIN) + 1e-3
        det = a * c - b * b
        # the minimum over dx of sigma at row offset dy is dy^2 det / (2 a) (over dy at column offset
        # dx: dx^2 det / (2 c)): no pixel farther than ext_y (ext_x) reaches alpha 1/255. Exact up to
        # rounding ~ eps * condition number: used for conics well conditioned enough (all in practice:
        # eps2d bounds the condition); the kernels visit every pixel of the tile for the others
        ok = (a > 0) & (c > 0) & (det > 1e-7 * np.abs(a * c)) & np.isfinite(det)
        det = np.where(ok, det, 1.0)
        p[:, _PEXTX] = np.where(ok, np.sqrt(2.0 * smax * c / det) * (1 + 1e-6) + 1e-3, 1e9)
        p[:, _PEXTY] = np.where(ok, np.sqrt(2.0 * smax * a / det) * (1 + 1e-6) + 1e-3, 1e9)
    p[:, _PSMAX] = smax
    return p


@njit(inline="always")
def _extent(par, g, x_lo, y_lo, tw, th):
    """The tile rows (first, last; 0-based) and lane blocks (first, last) that Gaussian g's
    alpha >= 1/255 ellipse can reach (its bounding box)."""
    ex = par[g, _PEXTX]
    ey = par[g, _PEXTY]
    ug = par[g, _PU]
    vg = par[g, _PV]
    i0 = int(max(0.0, math.floor(vg - ey - 0.5) - y_lo))
    i1 = int(min(th - 1.0, math.ceil(vg + ey - 0.5) - y_lo))
    b0 = int(max(0.0, math.floor(ug - ex - 0.5) - x_lo)) // _LANES
    b1 = int(min(tw - 1.0, math.ceil(ug + ex - 0.5) - x_lo)) // _LANES
    return i0, i1, b0, b1


@njit(cache=True, parallel=True)
def _raster_fwd(par, offsets, lists, chunks, tiles_x, tile, width, height, bg, out_rgb, out_t, out_d, out_last):
    """Per pixel, float64, the sequential front-to-back loop of the CPU renderer, done per tile
    Gaussian by Gaussian (front to back): each one updates the blocks of _LANES pixels of the
    tile rows that its alpha >= 1/255 ellipse's bounding box reaches (no pixel outside has
    alpha >= 1/255; the pixel loop applies the exact per-pixel tests, branch-free). Finished
    pixels (negative T), blocks and rows are skipped and the tile stops when all its pixels are
    finished. out_last: per pixel the index in ``lists`` of the last Gaussian drawn (its tile's
    start - 1 if none)."""
    rs = -(-tile // _LANES) * _LANES
    nb = rs // _LANES
    n_tiles = offsets.shape[0] - 1
    for k in prange(chunks.shape[0]):
        st = np.empty(6 * _FS)
        row_active = np.empty(tile, np.int64)
        blk_active = np.empty(tile * nb, np.int64)
        for tt in range(chunks[k, 0], chunks[k, 1]):
            t_id = chunks[k, 2] + tt * chunks[k, 3]
            if t_id >= n_tiles:
                continue
            y_lo = (t_id // tiles_x) * tile
            x_lo = (t_id % tiles_x) * tile
            th = min(tile, height - y_lo)
            tw = min(tile, width - x_lo)
            start = offsets[t_id]
            for i in range(tile):
                row_active[i] = tw if i < th else 0
                for b in range(nb):
                    blk_active[i * nb + b] = max(0, min(_LANES, tw - _LANES * b)) if i < th else 0
                for q in range(rs):
                    p = np.uint64(i * rs + q)
                    st[_F_T + p] = 1.0 if (i < th and q < tw) else -1.0  # off the image: finished
                    st[_F_R + p] = 0.0
                    st[_F_G + p] = 0.0
                    st[_F_B + p] = 0.0
                    st[_F_D + p] = 0.0
                    st[_F_L + p] = start - 1.0
            n_active = th * tw
            for s in range(start, offsets[t_id + 1]):
                if n_active == 0:
                    break
                g = lists[s]
                fs = np.float64(s)
                ug = par[g, _PU]
                vg = par[g, _PV]
                ca = par[g, _PA]
                hca = 0.5 * ca
                cb = par[g, _PB]
                cc = par[g, _PC]
                op = par[g, _POP]
                zg = par[g, _PZ]
                c0 = par[g, _PR]
                c1 = par[g, _PG]
                c2 = par[g, _PBL]
                sm = par[g, _PSMAX]
                i0, i1, b0, b1 = _extent(par, g, x_lo, y_lo, tw, th)
                for il in range(i0, i1 + 1):
                    if row_active[il] == 0:
                        continue
                    dy = vg - (y_lo + il + 0.5)
                    bdy = cb * dy
                    cdy = 0.5 * cc * dy * dy
                    for b in range(b0, b1 + 1):
                        if blk_active[il * nb + b] == 0:
                            continue
                        base = np.uint64(il * rs + b * _LANES)
                        xq = ug - (x_lo + b * _LANES + 0.5)
                        fin_count = 0
                        for q in range(_U8):
                            p = base + q
                            t = st[_F_T + p]
                            sig, e, raw = _alpha(hca, bdy, cdy, xq - np.float64(q), op, sm)
                            a = min(ALPHA_MAX, raw)
                            ok = (t > 0.0) & (sig >= 0.0) & (a >= ALPHA_MIN)
                            nt = t * (1.0 - a)
                            fin = ok & (nt <= T_MIN)  # stops before this Gaussian
                            add = ok & (nt > T_MIN)
                            w = a * t if add else 0.0
                            st[_F_R + p] += c0 * w
                            st[_F_G + p] += c1 * w
                            st[_F_B + p] += c2 * w
                            st[_F_D + p] += zg * w
                            st[_F_T + p] = -t if fin else (nt if add else t)
                            st[_F_L + p] = fs if add else st[_F_L + p]
                            fin_count += 1 if fin else 0
                        n_active -= fin_count
                        row_active[il] -= fin_count
                        blk_active[il * nb + b] -= fin_count
            for i in range(th):
                for q in range(tw):
                    p = np.uint64(i * rs + q)
                    t = abs(st[_F_T + p])
                    out_rgb[y_lo + i, x_lo + q, 0] = st[_F_R + p] + t * bg[0]
                    out_rgb[y_lo + i, x_lo + q, 1] = st[_F_G + p] + t * bg[1]
                    out_rgb[y_lo + i, x_lo + q, 2] = st[_F_B + p] + t * bg[2]
                    out_t[y_lo + i, x_lo + q] = t
                    out_d[y_lo + i, x_lo + q] = st[_F_D + p] / max(1.0 - t, 1e-10)
                    out_last[y_lo + i, x_lo + q] = np.int64(st[_F_L + p])


@njit(cache=True, parallel=True)
def _raster_bwd(par, offsets, lists, chunks, tiles_x, tile, width, height, bg, out_t, out_last, g_rgb, g_alpha,
                grads):
    """Exact gradients of rgb and alpha = 1 - T. grads[chunk, g, :] accumulates
    (u, v, conic a, b, c, opacity, r, g, b) per chunk (no races); the caller sums the chunks.

    Per tile the Gaussians are walked back to front from the last one any pixel drew, over the
    same blocks as the forward. For a pixel, the Gaussians up to its last drawn one
    that pass the forward's alpha tests (the same code) are exactly the ones it drew. T before
    each is recovered as T after / (1 - alpha) (float64, 1 - alpha >= 0.001: exact to rounding),
    and with S (what lies behind: colours, then background) d rgb/d alpha = c T - S / (1 - alpha),
    d (1 - T_final)/d alpha = T_final / (1 - alpha). Per pixel only g.S is kept (GS), plus the
    pixel's upstream gradients; per column the sums over rows of dL/dsigma times 1, dy, dy^2 give
    the conic and mean gradients at the end of each Gaussian."""
    rs = -(-tile // _LANES) * _LANES
    nb = rs // _LANES
    n_tiles = offsets.shape[0] - 1
    for k in prange(chunks.shape[0]):
        st = np.empty(7 * _FS)
        acc = np.empty(7 * _TILE_MAX)
        zeroed = np.zeros(_TILE_MAX // _LANES, np.bool_)  # per lane block: acc holds this Gaussian's sums
        row_last = np.empty(tile, np.int64)
        blk_last = np.empty(tile * nb, np.int64)
        for tt in range(chunks[k, 0], chunks[k, 1]):
            t_id = chunks[k, 2] + tt * chunks[k, 3]
            if t_id >= n_tiles:
                continue
            y_lo = (t_id // tiles_x) * tile
            x_lo = (t_id % tiles_x) * tile
            th = min(tile, height - y_lo)
            tw = min(tile, width - x_lo)
            start = offsets[t_id]
            s_hi = start - 1
            for i in range(tile):
                row_last[i] = start - 1
                for b in range(nb):
                    blk_last[i * nb + b] = start - 1
                for q in range(rs):
                    p = np.uint64(i * rs + q)
                    t = 1.0
                    last = start - 1
                    gr0 = gr1 = gr2 = ga = 0.0
                    if i < th and q < tw:
                        t = out_t[y_lo + i, x_lo + q]
                        last = out_last[y_lo + i, x_lo + q]
                        gr0 = g_rgb[y_lo + i, x_lo + q, 0]
                        gr1 = g_rgb[y_lo + i, x_lo + q, 1]
                        gr2 = g_rgb[y_lo + i, x_lo + q, 2]
                        ga = g_alpha[y_lo + i, x_lo + q]
                    st[_B_T + p] = t
                    st[_B_GT + p] = ga * t
                    st[_B_GS + p] = t * (gr0 * bg[0] + gr1 * bg[1] + gr2 * bg[2])
                    st[_B_G0 + p] = gr0
                    st[_B_G1 + p] = gr1
                    st[_B_G2 + p] = gr2
                    st[_B_L + p] = last
                    blk_last[i * nb + q // _LANES] = max(blk_last[i * nb + q // _LANES], last)
                    row_last[i] = max(row_last[i], last)
                s_hi = max(s_hi, row_last[i])
            for s in range(s_hi, start - 1, -1):
                g = lists[s]
                fs = np.float64(s)
                ug = par[g, _PU]
                vg = par[g, _PV]
                ca = par[g, _PA]
                hca = 0.5 * ca
                cb = par[g, _PB]
                cc = par[g, _PC]
                op = par[g, _POP]
                c0 = par[g, _PR]
                c1 = par[g, _PG]
                c2 = par[g, _PBL]
                sm = par[g, _PSMAX]
                i0, i1, gb0, gb1 = _extent(par, g, x_lo, y_lo, tw, th)
                touched = False
                for il in range(i0, i1 + 1):
                    if row_last[il] < s:
                        continue
                    dy = vg - (y_lo + il + 0.5)
                    bdy = cb * dy
                    cdy = 0.5 * cc * dy * dy
                    dy2 = dy * dy
                    b0 = gb0
                    b1 = gb1
                    while b0 <= b1 and blk_last[il * nb + b0] < s:
                        b0 += 1
                    while b1 >= b0 and blk_last[il * nb + b1] < s:
                        b1 -= 1
                    if b0 > b1:
                        continue
                    if not touched:
                        touched = True
                        for b in range(nb):
                            zeroed[b] = False
                    for b in range(b0, b1 + 1):
                        if not zeroed[b]:
                            zeroed[b] = True
                            for c in range(7):
                                for q in range(_LANES):
                                    acc[c * _TILE_MAX + b * _LANES + q] = 0.0
                    # one loop over the run of blocks (a runtime trip count: LLVM's loop vectoriser
                    # then checks at run time that acc and st do not overlap)
                    base = np.uint64(il * rs + b0 * _LANES)
                    cbase = np.uint64(b0 * _LANES)
                    xq = ug - (x_lo + b0 * _LANES + 0.5)
                    for q in range(np.uint64((b1 - b0 + 1) * _LANES)):
                        p = base + q
                        cq = cbase + q
                        sig, e, raw = _alpha(hca, bdy, cdy, xq - np.float64(q), op, sm)
                        a = min(ALPHA_MAX, raw)
                        ok = (fs <= st[_B_L + p]) & (sig >= 0.0) & (a >= ALPHA_MIN)
                        inv = 1.0 / (1.0 - a)
                        tq = st[_B_T + p] * inv  # T before this Gaussian
                        w = a * tq if ok else 0.0
                        gr0 = st[_B_G0 + p]
                        gr1 = st[_B_G1 + p]
                        gr2 = st[_B_G2 + p]
                        gc = gr0 * c0 + gr1 * c1 + gr2 * c2
                        gs = st[_B_GS + p]
                        d_a = gc * tq - (gs - st[_B_GT + p]) * inv
                        acc[_A_R + cq] += gr0 * w
                        acc[_A_G + cq] += gr1 * w
                        acc[_A_B + cq] += gr2 * w
                        st[_B_GS + p] = gs + gc * w
                        st[_B_T + p] = tq if ok else st[_B_T + p]
                        d_a = d_a if (ok & (raw < ALPHA_MAX)) else 0.0  # clamped at 0.999: no gradient
                        acc[_A_O + cq] += d_a * e
                        d_sig = -d_a * a
                        acc[_A_L0 + cq] += d_sig
                        acc[_A_L1 + cq] += d_sig * dy
                        acc[_A_L2 + cq] += d_sig * dy2
                if touched:
                    gu = gv = g_a = g_b = g_c = g_o = g_r = g_g = g_bl = 0.0
                    for col in range(rs):
                        if not zeroed[col // _LANES]:
                            continue
                        c = np.uint64(col)
                        dx = ug - (x_lo + col + 0.5)
                        l0 = acc[_A_L0 + c]
                        l1 = acc[_A_L1 + c]
                        gu += ca * dx * l0 + cb * l1  # sum of dL/dsigma * dsigma/du, ...
                        gv += cb * dx * l0 + cc * l1
                        g_a += 0.5 * dx * dx * l0
                        g_b += dx * l1
                        g_c += 0.5 * acc[_A_L2 + c]
                        g_o += acc[_A_O + c]
                        g_r += acc[_A_R + c]
                        g_g += acc[_A_G + c]
                        g_bl += acc[_A_B + c]
                    grads[k, g, 0] += gu
                    grads[k, g, 1] += gv
                    grads[k, g, 2] += g_a
                    grads[k, g, 3] += g_b
                    grads[k, g, 4] += g_c
                    grads[k, g, 5] += g_o
                    grads[k, g, 6] += g_r
                    grads[k, g, 7] += g_g
                    grads[k, g, 8] += g_bl


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
        f64 = lambda a: np.ascontiguousarray(a.detach().cpu().numpy(), dtype=np.float64)  # noqa: E731
        par = _pack(*(f64(a) for a in (u, v, conic, opac, col, z)))
        rgb, t, d, last, chunks = _forward(par, offsets, lists, w, h, tile, bg)
        ctx.saved = (par, offsets, lists, chunks, tile, w, h, bg, t, last)
        ctx.dtype = dtype = u.dtype
        depth = torch.from_numpy(d).to(dtype)
        ctx.mark_non_differentiable(depth)  # depth is returned without gradient (see render)
        return torch.from_numpy(rgb).to(dtype), torch.from_numpy(1.0 - t).to(dtype), depth

    @staticmethod
    def backward(ctx, g_rgb, g_alpha, g_depth):
        par, offsets, lists, chunks, tile, w, h, bg, t, last = ctx.saved
        g_rgb = np.zeros((h, w, 3)) if g_rgb is None else np.ascontiguousarray(g_rgb.numpy(), dtype=np.float64)
        g_alpha = np.zeros((h, w)) if g_alpha is None else np.ascontiguousarray(g_alpha.numpy(), dtype=np.float64)
        gsum = torch.from_numpy(_backward(par, offsets, lists, chunks, tile, w, h, bg, t, last, g_rgb, g_alpha))
        gsum = gsum.to(ctx.dtype)
        return gsum[:, 0], gsum[:, 1], gsum[:, 2:5], gsum[:, 5], gsum[:, 6:9], None, None, None, None, None, None


def _forward(par, offsets, lists, w, h, tile, bg):
    """The forward kernel: (rgb H,W,3, T H,W, depth H,W, last drawn H,W, chunks), float64."""
    if not 1 <= tile <= _TILE_MAX:
        raise ValueError(f"tile must be in 1..{_TILE_MAX}, got {tile}")
    chunks = _chunks(offsets.shape[0] - 1, 4 * numba.get_num_threads())
    rgb = np.empty((h, w, 3))
    t = np.empty((h, w))
    d = np.empty((h, w))
    last = np.empty((h, w), np.int64)
    with numba.parallel_chunksize(1):  # chunks to threads dynamically (the results do not depend on it)
        _raster_fwd(par, offsets, lists, chunks, -(-w // tile), tile, w, h, bg, rgb, t, d, last)
    return rgb, t, d, last, chunks


def _backward(par, offsets, lists, chunks, tile, w, h, bg, t, last, g_rgb, g_alpha) -> np.ndarray:
    """The backward kernel: N,9 gradients (u, v, conic a, b, c, opacity, r, g, b), float64, the
    per-chunk sums added in chunk order (deterministic)."""
    grads = np.zeros((chunks.shape[0], par.shape[0], 9))
    with numba.parallel_chunksize(1):
        _raster_bwd(par, offsets, lists, chunks, -(-w // tile), tile, w, h, bg, t, last, g_rgb, g_alpha, grads)
    return grads.sum(0)


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
    (rgb and alpha are differentiable; depth is returned without gradient). ``tile``: 1..32."""
    dtype = means.dtype
    opacities = opacities.reshape(-1)
    n = means.shape[0]
    u, v, conic, cov, z = project(means, quats_wxyz, scales, camera, eps2d)
    offsets, lists, n_vis = _tile_lists(u, v, cov, z, opacities, camera, tile)
    bg = np.zeros(3) if background is None else np.asarray(background, dtype=np.float64).reshape(3)
    rgb, alpha, depth = _Raster.apply(u, v, conic, opacities, colors, z.detach(), offsets, lists, camera, tile, bg)
    weight = torch.zeros(n, dtype=dtype)
    if with_weight:  # costs one more pass of the forward and backward kernels
        weight = _weights(u, v, conic, opacities, z, offsets, lists, camera, tile).to(dtype)
    return DiffRenderOutput(rgb, alpha, depth, weight, n_vis)


def _weights(u, v, conic, opac, z, offsets, lists, camera, tile) -> torch.Tensor:
    """Per Gaussian the summed compositing weight alpha*T over the image: the gradient of
    sum(rgb) w.r.t. its colour, from the backward kernel with g_rgb = 1 on channel 0."""
    w, h = camera.width, camera.height
    f64 = lambda a: np.ascontiguousarray(a.detach().cpu().numpy(), dtype=np.float64)  # noqa: E731
    n = u.shape[0]
    par = _pack(f64(u), f64(v), f64(conic), f64(opac), np.ones((n, 3)), f64(z))
    bg = np.zeros(3)
    _, t, _, last, chunks = _forward(par, offsets, lists, w, h, tile, bg)
    g_rgb = np.zeros((h, w, 3))
    g_rgb[..., 0] = 1.0
    grads = _backward(par, offsets, lists, chunks, tile, w, h, bg, t, last, g_rgb, np.zeros((h, w)))
    return torch.from_numpy(grads[:, 6])


def render_numpy(means, quats, scales, opacities, colors, camera: PinholeCamera, background=(1.0, 1.0, 1.0), **kw):
    """Convenience: numpy in, numpy out (float32), no gradients."""
    t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float32))  # noqa: E731
    with torch.no_grad():
        out = render(t(means), t(quats), t(scales), t(opacities), t(colors), camera, background, **kw)
    return out.rgb.numpy(), out.alpha.numpy(), out.depth.numpy()

