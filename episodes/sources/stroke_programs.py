"""The character programs of the ``strokes`` generator (see :mod:`varmem.episodes.sources.strokes`):
alphabet styles, character programs (strokes of sub-stroke primitives, placed to avoid crowding),
tokens drawn with motor noise, and the 1-bit rasterizer. Pure functions of seeds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Sequence

import numpy as np

# Bumped whenever a change alters the images that the same options make; worth recording in a
# manifest beside options(), which alone cannot tell two generator versions apart.
GENERATOR_VERSION = 1
SIZE = 105  # canvas side, as Omniglot's 105x105 images
CENTER = (SIZE - 1) / 2.0  # pixel centers are at integer coordinates 0..104

# Seed-sequence tags keep the streams for the different uses apart.
_TAG_LAYOUT = 0x5C1A55E5  # class counts per alphabet and the alphabet split
_TAG_ALPHABET = 0xA1FAB37  # alphabet style
_TAG_CHARACTER = 0xC4A2AC7  # character program
_TAG_TOKEN = 0x70CE4  # token noise

# Primitive kinds and the (line, arc, loop, s-curve, hook) weight formula in _alphabet_style.
_KINDS = ("line", "arc", "loop", "scurve", "hook")

# Motor noise, in character units (the largest side of a character is ~1 before it is fitted
# to 48-76 px, so 0.015 is ~1 px). Set against Omniglot (images_background_small1, per class):
# centroid std 5.3 px (Omniglot 5.5), log-size std 0.126 (0.124), log-coverage std 0.12 (0.14);
# nearest-exemplar 20-way accuracy within an alphabet, on ink boxes resized to 32x32, is ~0.63
# (Omniglot 0.45; on blurred raw pixels 0.31 against 0.21): a little easier than Omniglot.
# At 1.5x this noise the same-class look-alike test in tests/episodes/test_strokes.py fails.
_CP_JITTER = 0.02  # per control point
_SUB_ROT = 0.07  # radians, per sub-stroke
_SUB_SCALE = 0.12  # log scale, per sub-stroke
_FREE_SHIFT = 0.03  # start of an independent stroke
_ATTACH_SHIFT = 0.01  # start of an attached stroke
_ALONG_SHIFT = 0.05  # position along the stroke it is attached to, as a fraction
# Affine jitter per token, in canvas terms.
_AFF_ROT = 0.06  # radians
_AFF_SHEAR = 0.07
_AFF_SCALE = 0.10  # log scale, both axes
_AFF_ASPECT = 0.05  # log scale, one axis against the other
_AFF_SHIFT = 4.5  # pixels
_WIDTH_JITTER = 0.2  # pixels of pen width
_MIN_WIDTH, _MAX_WIDTH = 4.0, 6.0  # Omniglot's pen: 5 px (the modal run of ink in 91% of images)
_MARGIN = 5.0  # pixels kept clear at the canvas border
_SPACING = 1.2  # pixels between dense curve samples (aimed at the largest expected token scale;
# the widest gap per sub-stroke over 300 classes x 20 tokens: median 0.95, 99th pct 1.6, max 1.9 px),
# so a 4-6 px pen leaves no dents


def _rng(*words: int) -> np.random.Generator:
    return np.random.default_rng([int(w) for w in words])


# --------------------------------------------------------------------------- alphabet style


@dataclass(frozen=True)
class AlphabetStyle:
    """What all characters of one alphabet share."""

    curviness: float  # 0 = straight bars joined at corners, 1 = smooth arcs and loops
    primitives: tuple[np.ndarray, ...]  # each [K, 2], starts at (0, 0), path length 1
    primitive_weights: np.ndarray  # [n_primitives], how often characters use each
    stroke_counts: np.ndarray  # [4], P(1..4 main strokes)
    sub_mean: float  # mean number of sub-strokes per stroke (1-3)
    smooth_join: float  # P(a sub-stroke continues the previous one's direction)
    angle_step: float  # headings and corners are multiples of this (0 = continuous)
    relation_probs: np.ndarray  # [4]: independent, at start, at end, along
    mark_prob: float  # P(a character gets dots / short bars)
    sub_scale: float  # typical sub-stroke length, character units
    pen_width: float  # pixels
    slant: float  # shear x += slant * y
    aspect: float  # x scale / y scale


def _primitive(rng: np.random.Generator, kind: str) -> np.ndarray:
    """Control points [K, 2] of one primitive, starting at (0, 0), path length 1, heading ~0."""
    if kind == "line":
        k, turns = 2, np.zeros(1)
        if rng.random() < 0.35:  # slightly bent bar
            k, turns = 3, np.full(2, rng.normal(0, 0.25))
    elif kind == "arc":
        k = int(rng.integers(4, 6))
        total = rng.choice([-1, 1]) * rng.uniform(0.5, 1.3) * math.pi
        turns = np.full(k - 1, total / (k - 1))
    elif kind == "loop":
        k = int(rng.integers(7, 9))
        total = rng.choice([-1, 1]) * rng.uniform(1.7, 2.1) * math.pi
        # uneven curvature: ovals and teardrops rather than circles
        w = 1 + rng.uniform(-0.3, 0.3) * np.cos(np.linspace(0, 2 * math.pi, k - 1) + rng.uniform(0, 6.3))
        turns = total * w / w.sum()
    elif kind == "scurve":
        k = 6
        a = rng.uniform(0.4, 1.0) * math.pi * rng.choice([-1, 1])
        turns = np.array([a, a, 0, -a, -a]) / 2
    else:  # hook: a bar ending in a curl
        k = 5
        curl = rng.choice([-1, 1]) * rng.uniform(0.6, 1.2) * math.pi
        turns = np.array([0, 0, curl / 2, curl / 2])
    headings = np.cumsum(turns) - turns[0] / 2  # [k-1]
    steps = np.stack([np.cos(headings), np.sin(headings)], 1)
    steps *= rng.uniform(0.8, 1.2, (k - 1, 1))
    steps /= np.linalg.norm(steps, axis=1).sum()
    return np.concatenate([np.zeros((1, 2)), np.cumsum(steps, 0)])


@lru_cache(maxsize=4096)
def _alphabet_style(seed: int, alphabet: int) -> AlphabetStyle:
    rng = _rng(_TAG_ALPHABET, seed, alphabet)
    curviness = float(rng.beta(0.55, 0.55))
    kind_w = np.array([
        0.3 + 3.0 * (1 - curviness),  # line
        2.0 * curviness,  # arc
        rng.uniform(0.1, 0.7) * curviness,  # loop
        rng.uniform(0.0, 1.0) * curviness,  # s-curve
        0.15 + 0.8 * curviness * rng.random(),  # hook
    ])
    n_prims = int(rng.integers(10, 31))
    kinds = rng.choice(len(_KINDS), size=n_prims, p=kind_w / kind_w.sum())
    prims = tuple(_primitive(rng, _KINDS[k]) for k in kinds)
    prim_w = 1.0 / np.arange(1, n_prims + 1) ** 0.8
    prim_w = rng.permutation(prim_w / prim_w.sum())
    mean_strokes = rng.uniform(2.0, 3.8)
    counts = np.exp(-((np.arange(1, 5) - mean_strokes) ** 2) / 1.5)
    angle_step = 0.0 if curviness > 0.5 else float(rng.choice([math.pi / 2, math.pi / 4]))
    relation = rng.dirichlet([0.4, 1.2, 1.0, 1.8])
    return AlphabetStyle(
        curviness=curviness,
        primitives=prims,
        primitive_weights=prim_w,
        stroke_counts=counts / counts.sum(),
        sub_mean=1.4 + rng.uniform(0.2, 1.2) * (1.3 - curviness),
        smooth_join=float(0.15 + 0.75 * curviness),
        angle_step=angle_step,
        relation_probs=relation,
        mark_prob=float(rng.beta(0.6, 2.0)),
        sub_scale=float(rng.uniform(0.45, 0.75)),
        pen_width=float(rng.uniform(4.5, 5.3)),
        slant=float(rng.normal(0, 0.12)),
        aspect=float(np.exp(rng.normal(0, 0.12))),
    )


# --------------------------------------------------------------------------- character program


@dataclass(frozen=True)
class SubStroke:
    primitive: np.ndarray  # [K, 2] normalized control points
    rotation: float  # radians ([C] while candidate placements are scored)
    scale: float  # character units


@dataclass(frozen=True)
class Stroke:
    subs: tuple[SubStroke, ...]
    relation: str  # "free" | "start" | "end" | "along"
    target: int  # earlier stroke index for start/end/along, -1 for free
    position: tuple[float, float]  # start point for free strokes (character units; [C, 2] while placing)
    along: float  # fraction along the target stroke, for "along" ([C] while placing)


@dataclass(frozen=True)
class CharacterProgram:
    strokes: tuple[Stroke, ...]
    linear: np.ndarray  # [2, 2] character units -> pixels (style slant/aspect and size)
    offset: np.ndarray  # [2] pixels
    samples: tuple[tuple[int, ...], ...]  # dense samples per spline span, per sub-stroke (flat)
    n_noise: int  # standard normals one token uses
    pen_width: float


def _heading(v: np.ndarray) -> float:
    return math.atan2(float(v[1]), float(v[0]))


class _Noise:
    """Hands out columns of a [T, n] block of standard normals in program order (zeros: no noise)."""

    def __init__(self, z: np.ndarray | None, tokens: int):
        self.z, self.tokens, self.used = z, tokens, 0

    def take(self, k: int) -> np.ndarray:
        """[T, k]"""
        self.used += k
        if self.z is None:
            return np.zeros((self.tokens, k))
        return self.z[:, self.used - k:self.used]


@lru_cache(maxsize=8192)
def _catmull_rom_basis(k: int, samples: tuple[int, ...]) -> np.ndarray:
    """[n, K] matrix taking K control points to n points of a uniform Catmull-Rom spline through them.

    Ends use reflected phantom points (P[-1] = 2 P[0] - P[1]); span s gets samples[s] points, the
    last span also its end point.
    """
    if k == 2:
        u = np.linspace(0, 1, samples[0] + 1)
        basis = np.stack([1 - u, u], 1)
        basis.setflags(write=False)
        return basis
    ext = np.zeros((k + 2, k))  # phantom-extended points as combinations of the real ones
    ext[1:-1] = np.eye(k)
    ext[0, 0], ext[0, 1] = 2, -1
    ext[-1, -1], ext[-1, -2] = 2, -1
    rows = []
    for s, m in enumerate(samples):
        u = np.arange(m + (s == k - 2)) / m
        u2, u3 = u * u, u * u * u
        w = 0.5 * np.stack([-u3 + 2 * u2 - u, 3 * u3 - 5 * u2 + 2, -3 * u3 + 4 * u2 + u, u3 - u2], 1)
        rows.append(w @ ext[s:s + 4])
    basis = np.concatenate(rows)
    basis.setflags(write=False)  # shared through the cache
    return basis


def _draw_stroke(stroke: Stroke, drawn: Sequence[np.ndarray], samples: Any, noise: _Noise) -> np.ndarray:
    """Dense points [T, n, 2] of one stroke in character units.

    ``drawn`` holds the earlier strokes' points, [T or 1, n_i, 2] (for attachments); ``samples``
    iterates over the per-span sample counts of each sub-stroke (None: _TYPE_SAMPLES per span).
    The stroke's rotations, position and along may be arrays over T (placement candidates).
    """
    if stroke.relation == "free":
        start = np.asarray(stroke.position) + _FREE_SHIFT * noise.take(2)  # [T, 2]
    else:
        target = drawn[stroke.target]  # [T, n, 2]
        n = target.shape[1]
        if stroke.relation == "start":
            start = target[:, 0]
        elif stroke.relation == "end":
            start = target[:, -1]
        else:
            frac = np.clip(stroke.along + _ALONG_SHIFT * noise.take(1)[:, 0], 0, 1)  # [T]
            rows = np.arange(len(frac)) if target.shape[0] > 1 else np.zeros(len(frac), dtype=int)
            start = target[rows, np.round(frac * (n - 1)).astype(int)]
        start = start + _ATTACH_SHIFT * noise.take(2)
    parts = []
    for sub in stroke.subs:
        k = len(sub.primitive)
        z = noise.take(2 + 2 * (k - 1))
        theta = sub.rotation + _SUB_ROT * z[:, 0]  # [T]
        scale = sub.scale * np.exp(_SUB_SCALE * z[:, 1])  # [T]
        c, s = (np.cos(theta) * scale)[:, None], (np.sin(theta) * scale)[:, None]
        p = sub.primitive  # [K, 2]
        local = np.stack([c * p[:, 0] - s * p[:, 1], s * p[:, 0] + c * p[:, 1]], 2)  # [T, K, 2]
        local[:, 1:] += _CP_JITTER * z[:, 2:].reshape(-1, k - 1, 2)
        cps = start[:, None, :] + local
        counts = next(samples) if samples is not None else (_TYPE_SAMPLES,) * (k - 1)
        parts.append(np.matmul(_catmull_rom_basis(k, counts), cps))  # [T, n, 2]
        start = cps[:, -1]
    return np.concatenate(parts, 1)


def _draw(strokes: Sequence[Stroke], samples: Any, noise: _Noise) -> np.ndarray:
    """Dense points [T, N, 2] of all strokes in character units, with the noise of ``noise``."""
    drawn: list[np.ndarray] = []
    for stroke in strokes:
        drawn.append(_draw_stroke(stroke, drawn, samples, noise))
    return np.concatenate(drawn, 1)


def _pair_d2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared distances [C, n, m] between points a [C, n, 2] and b [C or 1, m, 2].

    The same floats as ``((a[:, :, None] - b[:, None]) ** 2).sum(-1)`` (x² + y², each difference squared
    as x·x, the two added in that order) without its [C, n, m, 2] temporary: ~2× faster, and the images
    the generator draws stay bit for bit the same (tests/episodes/test_strokes.py pins them).
    """
    dx = a[:, :, None, 0] - b[:, None, :, 0]
    d2 = np.multiply(dx, dx, out=dx)
    dy = a[:, :, None, 1] - b[:, None, :, 1]
    d2 += np.multiply(dy, dy, out=dy)
    return d2


def _crowding(points: np.ndarray, others: np.ndarray, attached: bool) -> np.ndarray:
    """[C]: share of each candidate's points [C, n, 2] closer than _CLEARANCE to ``others`` [m, 2].

    An attached stroke necessarily starts on another one: its first 0.12 units are not counted.
    """
    d2 = _pair_d2(points, others[None]).min(2)  # [C, n]
    close = d2 < _CLEARANCE ** 2
    if not attached:
        return close.mean(1)
    counted = ((points - points[:, :1]) ** 2).sum(-1) > 0.12 ** 2  # [C, n]
    return (close & counted).sum(1) / np.maximum(counted.sum(1), 1)


def _self_crowding(points: np.ndarray) -> np.ndarray:
    """[C]: share of each candidate's points [C, n, 2] that run over its own points further along."""
    step = np.sqrt((np.diff(points, axis=1) ** 2).sum(-1))  # [C, n-1]
    arc = np.concatenate([np.zeros((len(points), 1)), np.cumsum(step, 1)], 1)  # [C, n]
    d2 = _pair_d2(points, points)  # [C, n, n]
    close = (d2 < _CLEARANCE ** 2) & (np.abs(arc[:, :, None] - arc[:, None, :]) > 0.3)
    return close.any(2).mean(1)


def _corners(rng: np.random.Generator, step: float, n: int) -> np.ndarray:
    """[n] sharp turns between sub-strokes: 0.3-0.8 pi either way, or multiples of ``step`` up to 3/4 pi."""
    sign = rng.choice([-1.0, 1.0], n)
    if step == 0:
        return sign * rng.uniform(0.3, 0.8, n) * math.pi
    allowed = np.arange(1, int(0.75 * math.pi / step + 1e-9) + 1) * step  # never a full reversal
    return sign * rng.choice(allowed, n)


_TYPE_SAMPLES = 5  # points per span when placing strokes (coarse: only distances are scored)
_CANDIDATES = 12  # placements tried per stroke; the least crowded, most compact one is kept
_CLEARANCE = 0.12  # character units between stroke centerlines (the 5 px pen is ~0.08 units)
_MAX_SUBS = 6  # sub-strokes in all main strokes of a character
_CLUTTER = 2.0  # a later stroke whose best placement scores worse is left out (5 = all of it overlapping)


def _make_strokes(style: AlphabetStyle, rng: np.random.Generator) -> tuple[Stroke, ...]:
    """A character's strokes, placed one by one (type level, no motor noise).

    Each stroke's shape (primitives and their scales, smooth or sharp joins) is drawn first; then
    _CANDIDATES placements (start heading, turns at joins, relation point, free position) are drawn
    in one batch and the one that least runs over itself and earlier strokes and keeps the
    character compact is kept, as a person would write.
    """
    n_main = 1 + int(rng.choice(4, p=style.stroke_counts))
    shapes = []  # per main stroke: [(primitive, joins the previous sub-stroke smoothly, scale)]
    budget = _MAX_SUBS
    for i in range(n_main):
        shape = []
        for j in range(min(budget - (n_main - 1 - i), 1 + min(2, int(rng.poisson(style.sub_mean - 1))))):
            p = style.primitives[int(rng.choice(len(style.primitives), p=style.primitive_weights))]
            scale = style.sub_scale * math.exp(rng.normal(0, 0.3))
            if len(p) >= 7:  # a loop must stay open around the 5 px pen: >= ~15 px across
                scale = max(scale, 1.0)
            # two bars joined smoothly would read as one longer bar: bars meet at corners
            smooth = rng.random() < style.smooth_join and not (len(p) <= 3 and shape and len(shape[-1][0]) <= 3)
            shape.append((p, smooth, scale))
        shapes.append(shape)
        budget -= len(shape)
    if n_main == 1 and len(shapes[0]) == 1:  # a lone bar or arc is too plain to be a character
        p = style.primitives[int(rng.choice(len(style.primitives), p=style.primitive_weights))]
        shapes[0].append((p, False, style.sub_scale * math.exp(rng.normal(0, 0.3))))
    for _ in range((1 + int(rng.random() < 0.4)) if rng.random() < style.mark_prob else 0):
        # a dot or a short bar, placed freely like a diacritic
        shapes.append([(np.array([[0.0, 0.0], [1.0, 0.0]]), True, rng.choice([0.05, rng.uniform(0.12, 0.25)]))])
    strokes: list[Stroke] = []
    drawn: list[np.ndarray] = []  # [1, n, 2] per stroke
    n_cand = _CANDIDATES
    for i, shape in enumerate(shapes):
        mark = i >= n_main
        if i == 0 or mark:
            relation, target = "free", -1
        else:
            relation = ("free", "start", "end", "along")[int(rng.choice(4, p=style.relation_probs))]
            target = int(rng.integers(len(strokes))) if relation != "free" else -1
        everything = np.concatenate(drawn, 1)[0] if drawn else np.zeros((1, 2))  # [m, 2]
        lo, hi = everything.min(0), everything.max(0)
        # n_cand candidates at once: rotations [C] per sub-stroke, positions [C, 2], along [C]
        if style.angle_step:
            heading = rng.integers(0, round(2 * math.pi / style.angle_step), n_cand) * style.angle_step
        else:
            heading = rng.uniform(-math.pi, math.pi, n_cand)
        rotations = []
        for j, (p, smooth, scale) in enumerate(shape):
            if j > 0:
                heading = heading + (rng.normal(0, 0.25, n_cand) if smooth else _corners(rng, style.angle_step, n_cand))
            rotation = heading - _heading(p[1] - p[0])  # heading = direction the pen leaves in
            rotations.append(rotation)
            heading = rotation + _heading(p[-1] - p[-2])
        position = rng.uniform(lo - 0.3, hi + 0.3, (n_cand, 2)) if i > 0 else np.zeros((n_cand, 2))
        along = rng.uniform(0.15, 0.85, n_cand)
        subs = tuple(SubStroke(p, r, sc) for (p, _, sc), r in zip(shape, rotations))
        batch = Stroke(subs, relation, target, position, along)
        points = _draw_stroke(batch, drawn, None, _Noise(None, n_cand))  # [C, n, 2]
        score = 5 * _self_crowding(points)
        if i > 0:
            score += 5 * _crowding(points, everything, relation != "free")
        if mark:  # near the body, not on it
            d = np.sqrt(_pair_d2(points, everything[None]).min((1, 2)))  # [C]
            score += np.maximum(0.0, 0.15 - d) * 30 + np.maximum(0.0, d - 0.3) * 5
        elif i > 0:
            grown = np.maximum(hi, points.max(1)) - np.minimum(lo, points.min(1))  # [C, 2]
            score += 2 * (grown.max(1) - float((hi - lo).max()))
        k = int(np.argmin(score))
        if i > 0 and score[k] > _CLUTTER:  # no clean place for it: leave the stroke out
            continue
        subs = tuple(SubStroke(p, float(r[k]), sc) for (p, _, sc), r in zip(shape, rotations))
        strokes.append(Stroke(subs, relation, target, (float(position[k, 0]), float(position[k, 1])), float(along[k])))
        drawn.append(points[k:k + 1])
    return tuple(strokes)


def _character_program(seed: int, alphabet: int, character: int) -> CharacterProgram:
    style = _alphabet_style(seed, alphabet)
    rng = _rng(_TAG_CHARACTER, seed, alphabet, character)
    strokes = _make_strokes(style, rng)
    # Type level: draw once without noise to fit the character to the canvas.
    noise = _Noise(None, 1)
    pts = _draw(strokes, None, noise)[0]  # [N, 2]
    shape = np.array([[1.0, style.slant], [0.0, 1.0]]) @ np.diag([style.aspect, 1.0])
    pts = pts @ shape.T
    lo, hi = pts.min(0), pts.max(0)
    size = max(float((hi - lo).max()), 1e-3)
    target = rng.uniform(48, 76)  # pixels, largest side of the centerline (Omniglot, ink: median 68, 5-95% 48-88)
    linear = shape * (target / size)
    offset = CENTER - (target / size) * (lo + hi) / 2
    # Dense sampling: enough points per span for <= _SPACING px gaps at the largest token scale.
    gain = float(np.linalg.norm(linear, 2)) * 1.6
    samples = []
    for stroke in strokes:
        for sub in stroke.subs:
            span = np.linalg.norm(np.diff(sub.primitive, axis=0), axis=1) * sub.scale * gain
            samples.append(tuple(int(m) for m in np.maximum(2, np.ceil(span * 1.15 / _SPACING))))
    return CharacterProgram(strokes, linear, offset, tuple(samples), noise.used, style.pen_width)


# --------------------------------------------------------------------------- rendering


def _disc_offsets(radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel offsets from floor(point) that can lie within ``radius`` of a point in its unit cell."""
    r = int(math.ceil(radius)) + 1
    oy, ox = np.mgrid[-r + 1:r + 1, -r + 1:r + 1]
    # distance from the nearest corner of the cell [0, 1)^2 to the pixel
    dx = np.maximum(0, np.maximum(ox - 1, -ox))
    dy = np.maximum(0, np.maximum(oy - 1, -oy))
    keep = dx * dx + dy * dy <= radius * radius
    return ox[keep].astype(np.int64), oy[keep].astype(np.int64)


def rasterize(points: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """``uint8 [T, 105, 105]`` ink (0 or 255) from pen positions ``[T, N, 2]`` (x, y px) and widths [T].

    A pixel is ink when its center lies within ``width / 2`` of a point: a round pen. The images
    are 1-bit like Omniglot's, so that both preprocessings (max-pool, resize) see the same kind of
    edges as on Omniglot. Points must lie at least ``width/2 + 2`` pixels inside the canvas and at
    most ~1.5 px apart along a stroke.
    """
    t, n, _ = points.shape
    reach = float(widths.max()) / 2
    ox, oy = _disc_offsets(reach)  # [W]
    base = np.floor(points)
    frac = (points - base).astype(np.float32)  # [T, N, 2]
    base = base.astype(np.int32)
    cell = (np.arange(t, dtype=np.int32)[:, None] * (SIZE * SIZE) + base[..., 1] * SIZE + base[..., 0])  # [T, N]
    flat = (cell[..., None] + (oy * SIZE + ox).astype(np.int32)).ravel()  # [T*N*W]
    dx = ox.astype(np.float32) - frac[..., 0:1]  # [T, N, W]
    dy = oy.astype(np.float32) - frac[..., 1:2]
    d2 = dx * dx
    d2 += dy * dy
    best = np.full(t * SIZE * SIZE, reach * reach + 1.0, dtype=np.float32)
    np.minimum.at(best, flat, d2.ravel())
    ink = best.reshape(t, -1) <= (widths.astype(np.float32)[:, None] / 2) ** 2
    return (ink.astype(np.uint8) * 255).reshape(t, SIZE, SIZE)


def render_tokens(seed: int, alphabet: int, character: int, tokens: Sequence[int]) -> np.ndarray:
    """``uint8 [len(tokens), 105, 105]``: the given tokens of one character, ink = 255.

    A pure function of ``(seed, alphabet, character, token)`` for each image.
    """
    program = _character_program(seed, alphabet, character)
    n_tok = len(tokens)
    z = np.stack([_rng(_TAG_TOKEN, seed, alphabet, character, t).standard_normal(program.n_noise + 8) for t in tokens])
    pts = _draw(program.strokes, iter(program.samples), _Noise(z[:, :program.n_noise], n_tok))  # [T, N, 2]
    pts = pts @ program.linear.T + program.offset
    a = z[:, program.n_noise:]  # [T, 8] affine and pen noise
    theta = _AFF_ROT * a[:, 0]
    shear = _AFF_SHEAR * a[:, 1]
    sx = np.exp(_AFF_SCALE * a[:, 2] + _AFF_ASPECT * a[:, 3])
    sy = np.exp(_AFF_SCALE * a[:, 2] - _AFF_ASPECT * a[:, 3])
    c, s = np.cos(theta), np.sin(theta)
    # M = R(theta) @ [[1, shear], [0, 1]] @ diag(sx, sy), per token
    m = np.empty((n_tok, 2, 2))
    m[:, 0, 0], m[:, 0, 1] = c * sx, (c * shear - s) * sy
    m[:, 1, 0], m[:, 1, 1] = s * sx, (s * shear + c) * sy
    pts = np.matmul(pts - CENTER, m.transpose(0, 2, 1)) + CENTER + _AFF_SHIFT * a[:, None, 4:6]
    widths = np.clip(program.pen_width + _WIDTH_JITTER * a[:, 6], _MIN_WIDTH, _MAX_WIDTH)
    # Keep the pen inside the canvas: shrink about the center if too large, then shift in.
    lo, hi = pts.min(1), pts.max(1)  # [T, 2]
    room = SIZE - 1 - 2 * _MARGIN
    shrink = np.minimum(1.0, room / np.maximum((hi - lo).max(1), 1e-6))  # [T]
    mid = (lo + hi) / 2
    pts = (pts - mid[:, None]) * shrink[:, None, None] + mid[:, None]
    lo, hi = pts.min(1), pts.max(1)
    pts += (np.maximum(0, _MARGIN - lo) - np.maximum(0, hi - (SIZE - 1 - _MARGIN)))[:, None]
    return rasterize(pts, widths)


# --------------------------------------------------------------------------- the source
