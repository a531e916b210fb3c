"""CPU Gaussian splat rasterizer (numba): the same maths as gsplat's default
``rasterization`` (pinhole, ``rasterize_mode="classic"``), so both agree to rounding.

Constants (identical to gsplat's defaults):

* EWA projection: Sigma3D = R S S^T R^T (R from the normalised wxyz quaternion,
  S = diag(scale)); camera-space Sigma = W Sigma3D W^T; Sigma2D = J Sigma J^T
  with the pinhole Jacobian J = [[fx/z, 0, -fx x/z^2], [0, fy/z, -fy y/z^2]],
  where x/z and y/z are clamped to the field of view plus 30 % (as gsplat does)
  before building J (the mean itself is projected unclamped).
* Low-pass dilation: ``EPS2D = 0.3`` px^2 added to the diagonal of Sigma2D
  (no opacity compensation: "classic" mode).
* Culling: camera depth z < near or z > far; opacity < 1/255; det(Sigma2D) <= 0;
  bounding box entirely off the image.
* Per pixel, Gaussians front to back by camera depth z of their centre
  (ties: input order): ``sigma = 0.5 d^T Sigma2D^-1 d`` with d = mean2d - pixel
  centre; ``alpha = min(0.999, opacity * exp(-sigma))``; skipped if
  ``alpha < 1/255`` (or sigma < 0); the pixel stops *before* a Gaussian that
  would bring the transmittance T to <= 1e-4; colour += c * alpha * T.
  (gsplat clamps alpha at 0.999, the original 3DGS code at 0.99: we follow gsplat.)
* Output: colour (premultiplied, + T * background if one is given), alpha = 1 - T,
  expected depth = sum(w z) / max(alpha, 1e-10) (gsplat's "RGB+ED").

Precision: projection in float64, compositing in float32 like gsplat; exp is an
inlined float32 polynomial (relative error < 4e-7, about libm's expf) and FMA
contraction is allowed, so results differ from a float64 reference by ~1e-6.

Speed: 16x16 tiles. Each Gaussian's box is the opacity-aware extent
``min(3.33, sqrt(2 ln(255 opacity)))`` sigmas per axis (gsplat's), outside of
which alpha < 1/255 anyway, so tiling changes no pixel. Gaussians are sorted by
depth once and appended to per-tile lists in that order (already sorted);
tiles are rendered in parallel with ``numba.prange`` in small dynamic chunks.
Inside a tile each Gaussian updates 16-pixel rows branch-free (SIMD); finished
rows and tiles are skipped. All kernels are ``cache=True``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np
from numba import njit, prange

TILE = 16
_CHUNK_TILES = 8
EPS2D = 0.3
ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.999
T_MIN = 1e-4
EXTENT_MAX = 3.33

_F0 = np.float32(0.0)
_F_HALF = np.float32(0.5)
_F1 = np.float32(1.0)
_F_ALPHA_MIN = np.float32(ALPHA_MIN)
_F_ALPHA_MAX = np.float32(ALPHA_MAX)
_F_T_MIN = np.float32(T_MIN)
_F_ALPHA_EPS = np.float32(1e-10)  # expected depth = sum(w z) / max(alpha, 1e-10), as gsplat

# Packed per-Gaussian raster parameters (float32 columns).
_U, _V, _CA, _CB, _CC, _OPAC, _DEPTH, _SIGMA_MAX, _EXT_Y = range(9)
_NPARAM = 9


@njit(cache=True, parallel=True)
def _project(means, quats, scales, opacities, view, fx, fy, cx, cy, width, height, near, far, eps2d, params, rects):
    """Per Gaussian: 2D mean, inverse 2D covariance, tile rectangle (or rects[i,0] = -1 if culled)."""
    n = means.shape[0]
    tan_fovx = 0.5 * width / fx
    tan_fovy = 0.5 * height / fy
    lim_x_pos = (width - cx) / fx + 0.3 * tan_fovx
    lim_x_neg = cx / fx + 0.3 * tan_fovx
    lim_y_pos = (height - cy) / fy + 0.3 * tan_fovy
    lim_y_neg = cy / fy + 0.3 * tan_fovy
    tiles_x = (width + TILE - 1) // TILE
    tiles_y = (height + TILE - 1) // TILE
    for i in prange(n):
        rects[i, 0] = -1
        mx, my, mz = means[i, 0], means[i, 1], means[i, 2]
        x = view[0, 0] * mx + view[0, 1] * my + view[0, 2] * mz + view[0, 3]
        y = view[1, 0] * mx + view[1, 1] * my + view[1, 2] * mz + view[1, 3]
        z = view[2, 0] * mx + view[2, 1] * my + view[2, 2] * mz + view[2, 3]
        if z < near or z > far:
            continue
        opac = opacities[i]
        if opac < ALPHA_MIN:
            continue
        # rotation from the (normalised) wxyz quaternion
        qw, qx, qy, qz = quats[i, 0], quats[i, 1], quats[i, 2], quats[i, 3]
        qn = math.sqrt(qw * qw + qx * qx + qy * qy + qz * qz)
        if qn == 0.0:
            continue
        qw /= qn
        qx /= qn
        qy /= qn
        qz /= qn
        r00 = 1.0 - 2.0 * (qy * qy + qz * qz)
        r01 = 2.0 * (qx * qy - qw * qz)
        r02 = 2.0 * (qx * qz + qw * qy)
        r10 = 2.0 * (qx * qy + qw * qz)
        r11 = 1.0 - 2.0 * (qx * qx + qz * qz)
        r12 = 2.0 * (qy * qz - qw * qx)
        r20 = 2.0 * (qx * qz - qw * qy)
        r21 = 2.0 * (qy * qz + qw * qx)
        r22 = 1.0 - 2.0 * (qx * qx + qy * qy)
        # M = W_rot @ R @ S: camera-space covariance = M M^T
        sx, sy, sz = scales[i, 0], scales[i, 1], scales[i, 2]
        w0, w1, w2 = view[0, 0], view[0, 1], view[0, 2]
        m00 = (w0 * r00 + w1 * r10 + w2 * r20) * sx
        m01 = (w0 * r01 + w1 * r11 + w2 * r21) * sy
        m02 = (w0 * r02 + w1 * r12 + w2 * r22) * sz
        w0, w1, w2 = view[1, 0], view[1, 1], view[1, 2]
        m10 = (w0 * r00 + w1 * r10 + w2 * r20) * sx
        m11 = (w0 * r01 + w1 * r11 + w2 * r21) * sy
        m12 = (w0 * r02 + w1 * r12 + w2 * r22) * sz
        w0, w1, w2 = view[2, 0], view[2, 1], view[2, 2]
        m20 = (w0 * r00 + w1 * r10 + w2 * r20) * sx
        m21 = (w0 * r01 + w1 * r11 + w2 * r21) * sy
        m22 = (w0 * r02 + w1 * r12 + w2 * r22) * sz
        rz = 1.0 / z
        rz2 = rz * rz
        tx = z * min(lim_x_pos, max(-lim_x_neg, x * rz))
        ty = z * min(lim_y_pos, max(-lim_y_neg, y * rz))
        # J M (2x3) then Sigma2D = (J M)(J M)^T
        j00, j02 = fx * rz, -fx * tx * rz2
        j11, j12 = fy * rz, -fy * ty * rz2
        a0 = j00 * m00 + j02 * m20
        a1 = j00 * m01 + j02 * m21
        a2 = j00 * m02 + j02 * m22
        b0 = j11 * m10 + j12 * m20
        b1 = j11 * m11 + j12 * m21
        b2 = j11 * m12 + j12 * m22
        cxx = a0 * a0 + a1 * a1 + a2 * a2 + eps2d
        cxy = a0 * b0 + a1 * b1 + a2 * b2
        cyy = b0 * b0 + b1 * b1 + b2 * b2 + eps2d
        det = cxx * cyy - cxy * cxy
        if det <= 0.0:
            continue
        extent = min(EXTENT_MAX, math.sqrt(2.0 * math.log(opac / ALPHA_MIN)))
        rad_x = math.ceil(extent * math.sqrt(cxx))
        rad_y = math.ceil(extent * math.sqrt(cyy))
        if rad_x <= 0.0 and rad_y <= 0.0:
            continue
        u = fx * x * rz + cx
        v = fy * y * rz + cy
        if u + rad_x <= 0.0 or u - rad_x >= width or v + rad_y <= 0.0 or v - rad_y >= height:
            continue
        x0 = min(tiles_x, max(0, int(math.floor((u - rad_x) / TILE))))
        x1 = min(tiles_x, max(0, int(math.ceil((u + rad_x) / TILE))))
        y0 = min(tiles_y, max(0, int(math.floor((v - rad_y) / TILE))))
        y1 = min(tiles_y, max(0, int(math.ceil((v + rad_y) / TILE))))
        if x1 <= x0 or y1 <= y0:
            continue
        params[i, _U] = u
        params[i, _V] = v
        params[i, _CA] = cyy / det
        params[i, _CB] = -cxy / det
        params[i, _CC] = cxx / det
        params[i, _OPAC] = opac
        params[i, _DEPTH] = z
        # sigma above this gives alpha < 1/255 (small margin: the exact test follows)
        smax = math.log(opac / ALPHA_MIN) + 1e-3
        params[i, _SIGMA_MAX] = smax
        params[i, _EXT_Y] = math.sqrt(2.0 * smax * cyy) + 1e-3
        rects[i, 0] = x0
        rects[i, 1] = x1
        rects[i, 2] = y0
        rects[i, 3] = y1


@njit(cache=True)
def _bin(params, rects, colors, tiles_x, tiles_y):
    """Depth-sort the visible Gaussians and build per-tile index lists (front to back).

    Returns (packed params M,8, packed colours M,C, tile offsets T+1, tile lists)."""
    n = rects.shape[0]
    n_vis = 0
    for i in range(n):
        if rects[i, 0] >= 0:
            n_vis += 1
    vis = np.empty(n_vis, np.int64)
    depth = np.empty(n_vis, np.float32)
    k = 0
    for i in range(n):
        if rects[i, 0] >= 0:
            vis[k] = i
            depth[k] = params[i, _DEPTH]
            k += 1
    order = np.argsort(depth, kind="mergesort")  # stable: ties keep input order
    n_ch = colors.shape[1]
    packed = np.empty((n_vis, _NPARAM), np.float32)
    packed_col = np.empty((n_vis, n_ch), np.float32)
    n_tiles = tiles_x * tiles_y
    counts = np.zeros(n_tiles + 1, np.int64)
    for s in range(n_vis):
        i = vis[order[s]]
        for c in range(_NPARAM):
            packed[s, c] = params[i, c]
        for c in range(n_ch):
            packed_col[s, c] = colors[i, c]
        for ty in range(rects[i, 2], rects[i, 3]):
            for tx in range(rects[i, 0], rects[i, 1]):
                counts[ty * tiles_x + tx + 1] += 1
    offsets = np.cumsum(counts)
    fill = offsets[:-1].copy()
    lists = np.empty(offsets[-1], np.int32)
    for s in range(n_vis):
        i = vis[order[s]]
        for ty in range(rects[i, 2], rects[i, 3]):
            for tx in range(rects[i, 0], rects[i, 1]):
                t = ty * tiles_x + tx
                lists[fill[t]] = s
                fill[t] += 1
    return packed, packed_col, offsets, lists


# float32 exp(-s) pieces: s = k ln2 + r (ln2 split in two for accuracy), r in [0, ln2)
_INV_LN2 = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693145751953125)
_LN2_LO = np.float32(1.428606765330187e-06)
_C2, _C3, _C4, _C5, _C6, _C7, _C8 = (np.float32(1.0 / math.factorial(k)) for k in range(2, 9))


@njit(inline="always")
def _exp_neg(s):
    """float32 exp(-s) for s in [0, ~20] (relative error < 4e-7, like libm's expf):
    degree-8 Taylor of exp(-r) times 2^-k. An inlined polynomial (no libm call), so
    the 16-pixel loop vectorises."""
    k = np.int32(s * _INV_LN2)
    kf = np.float32(k)
    r = (s - kf * _LN2_HI) - kf * _LN2_LO
    p = _F1 - r * (_F1 - r * (_C2 - r * (_C3 - r * (_C4 - r * (_C5 - r * (_C6 - r * (_C7 - r * _C8)))))))
    return p / np.float32(np.int32(1) << k)


@njit(cache=True, parallel=True, fastmath={"contract"})  # FMA contraction only: no reordering, NaN/inf kept
def _rasterize(packed, packed_col, offsets, lists, tile_order, tiles_x, width, height, background,
               out_col, out_alpha, out_depth):
    """Front-to-back compositing, tiles in parallel. out_col = premultiplied RGB + T * background
    (background (0,0,0) = transparent), out_alpha = 1 - T, out_depth = expected depth.

    Within a tile the Gaussians are taken front to back; each one visits the tile
    rows that its alpha >= 1/255 ellipse reaches, 16 pixels at a time (branch-free
    so the row vectorises). A pixel whose transmittance would drop to <= T_MIN is
    finished (flagged by a negative T); finished rows are skipped and the tile
    stops when all its pixels are finished. Per pixel this is exactly the
    sequential front-to-back loop over every Gaussian."""
    for k in prange(tile_order.shape[0]):
        tile = tile_order[k]
        ty = tile // tiles_x
        tx = tile - ty * tiles_x
        x_lo = tx * TILE
        y_lo = ty * TILE
        x_hi = min(x_lo + TILE, width) - 1
        y_hi = min(y_lo + TILE, height) - 1
        n_active = (x_hi - x_lo + 1) * (y_hi - y_lo + 1)
        # per-pixel state, one 1D array each (row slices of these stay contiguous, so the
        # 16-pixel loop vectorises without gathers): T, premultiplied R, G, B, depth sum
        b_t = np.empty(TILE * TILE, np.float32)
        b_r = np.zeros(TILE * TILE, np.float32)
        b_g = np.zeros(TILE * TILE, np.float32)
        b_b = np.zeros(TILE * TILE, np.float32)
        b_d = np.zeros(TILE * TILE, np.float32)
        row_active = np.zeros(TILE, np.int64)
        for i in range(TILE):
            for q in range(TILE):
                inside = (y_lo + i <= y_hi) and (x_lo + q <= x_hi)
                b_t[i * TILE + q] = 1.0 if inside else -1.0  # pixels off the image count as finished
                row_active[i] += 1 if inside else 0
        for s in range(offsets[tile], offsets[tile + 1]):
            if n_active == 0:
                break
            g = lists[s]
            u = packed[g, _U]
            v = packed[g, _V]
            ca = packed[g, _CA]
            cb_ = packed[g, _CB]
            cc = packed[g, _CC]
            opac = packed[g, _OPAC]
            z = packed[g, _DEPTH]
            smax = packed[g, _SIGMA_MAX]
            ext_y = packed[g, _EXT_Y]
            col_r = packed_col[g, 0]
            col_g = packed_col[g, 1]
            col_b = packed_col[g, 2]
            i0 = max(y_lo, int(math.floor(v - ext_y - 0.5)))
            i1 = min(y_hi, int(math.ceil(v + ext_y - 0.5)))
            a64 = np.float64(ca)
            for i in range(i0, i1 + 1):
                if row_active[i - y_lo] == 0:
                    continue
                py = np.float32(i) + _F_HALF
                dy = v - py
                bdy = np.float64(cb_) * dy
                disc = bdy * bdy - a64 * (np.float64(cc) * dy * dy - 2.0 * smax)
                if disc < 0.0:
                    continue
                row = (i - y_lo) * TILE
                ccdy = _F_HALF * cc * dy * dy
                bdy32 = cb_ * dy
                fin_count = 0
                tt = b_t[row: row + TILE]
                cr = b_r[row: row + TILE]
                cg = b_g[row: row + TILE]
                cb = b_b[row: row + TILE]
                dd = b_d[row: row + TILE]
                for q in range(TILE):
                    t = tt[q]
                    dx = u - (np.float32(x_lo + q) + _F_HALF)
                    sigma = _F_HALF * ca * dx * dx + ccdy + bdy32 * dx
                    alpha = min(_F_ALPHA_MAX, opac * _exp_neg(min(max(sigma, _F0), smax)))
                    ok = (t > _F0) & (sigma >= _F0) & (sigma <= smax) & (alpha >= _F_ALPHA_MIN)
                    next_t = t * (_F1 - alpha)
                    fin = ok & (next_t <= _F_T_MIN)
                    add = ok & (next_t > _F_T_MIN)
                    w = alpha * t if add else _F0
                    cr[q] += col_r * w
                    cg[q] += col_g * w
                    cb[q] += col_b * w
                    dd[q] += z * w
                    tt[q] = -t if fin else (next_t if add else t)
                    fin_count += 1 if fin else 0
                n_active -= fin_count
                row_active[i - y_lo] -= fin_count
        for i in range(y_lo, y_hi + 1):
            for j in range(x_lo, x_hi + 1):
                p = (i - y_lo) * TILE + (j - x_lo)
                t = abs(b_t[p])
                out_col[i, j, 0] = b_r[p] + t * background[0]
                out_col[i, j, 1] = b_g[p] + t * background[1]
                out_col[i, j, 2] = b_b[p] + t * background[2]
                a = _F1 - t
                out_alpha[i, j] = a
                out_depth[i, j] = b_d[p] / max(a, _F_ALPHA_EPS)


def _tile_order(n_tiles: int, n_threads: int) -> np.ndarray:
    """Interleave tiles so each thread's static chunk samples the whole image (load balance)."""
    n_threads = max(1, n_threads)
    return np.concatenate([np.arange(k, n_tiles, n_threads) for k in range(n_threads)]).astype(np.int64)


@dataclass
class RasterResult:
    """Colour H,W,3 (premultiplied, or composited when a background was given), alpha H,W,
    expected depth H,W (float32), number of Gaussians drawn."""

    color: np.ndarray
    alpha: np.ndarray
    depth: np.ndarray
    n_visible: int


def rasterize_cpu(
    means: np.ndarray,
    quats_wxyz: np.ndarray,
    scales: np.ndarray,
    opacities: np.ndarray,
    colors: np.ndarray,
    *,
    world_to_camera: np.ndarray,
    fx: float,
    fy: float,
    cx: float,
    cy: float,
    width: int,
    height: int,
    near: float,
    far: float,
    eps2d: float = EPS2D,
    background=None,
) -> RasterResult:
    """Render N Gaussians (means N,3; quats N,4 wxyz; scales N,3 sigmas; opacities N;
    colors N,3) with a pinhole camera. ``background`` None: the colour is premultiplied
    (transparent); an RGB triple: composited on it."""
    means = np.ascontiguousarray(means, dtype=np.float64)
    quats = np.ascontiguousarray(quats_wxyz, dtype=np.float64)
    scales = np.ascontiguousarray(scales, dtype=np.float64)
    opacities = np.ascontiguousarray(opacities, dtype=np.float64).reshape(-1)
    colors = np.ascontiguousarray(colors, dtype=np.float32)
    if colors.ndim != 2 or colors.shape[1] != 3:
        raise ValueError(f"colors must be N,3 RGB, got shape {colors.shape}")
    view = np.ascontiguousarray(world_to_camera, dtype=np.float64)
    n = means.shape[0]
    params = np.zeros((n, _NPARAM), np.float32)
    rects = np.empty((n, 4), np.int64)
    _project(means, quats, scales, opacities, view, float(fx), float(fy), float(cx), float(cy),
             int(width), int(height), float(near), float(far), float(eps2d), params, rects)
    tiles_x = (width + TILE - 1) // TILE
    tiles_y = (height + TILE - 1) // TILE
    packed, packed_col, offsets, lists = _bin(params, rects, colors, tiles_x, tiles_y)
    bg = np.zeros(3, np.float32) if background is None else np.asarray(background, np.float32).reshape(3)
    out_col = np.empty((height, width, 3), np.float32)
    out_alpha = np.empty((height, width), np.float32)
    out_depth = np.empty((height, width), np.float32)
    order = _tile_order(tiles_x * tiles_y, numba.get_num_threads())
    # small dynamic chunks: a thread that loses its core to another process does not hold up the frame
    with numba.parallel_chunksize(_CHUNK_TILES):
        _rasterize(packed, packed_col, offsets, lists, order, tiles_x, width, height, bg, out_col, out_alpha, out_depth)
    return RasterResult(out_col, out_alpha, out_depth, int(packed.shape[0]))
