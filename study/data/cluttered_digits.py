"""Cluttered digits: the embedded default dataset, and its detection twin.

Real handwriting on procedural clutter, in the spirit of the cluttered MNIST of Spatial Transformer Networks
(Jaderberg et al., 2015, arXiv:1506.02025, sec. 4.1): the strokes are scikit-learn's 1,797 8x8 digits (the UCI
"optdigits" test set, Alpaydin & Kaynak 1998; shipped inside scikit-learn, so nothing is downloaded), each
composited onto

* a textured colour background (a dark random colour and a neighbour of it, blended by smooth two-octave noise,
  plus pixel noise),
* ``clutter`` distractor fragments: 3-5 x 3-5 windows cut from *other* digits of the same split, drawn at the
  target's scale, any rotation, in the same inks as targets, anywhere (they may overlap the target; the target
  is painted last),
* the target digit at a random position, scale (``digit_scale``, side as a fraction of the image), width
  (0.8-1.1 of the side), rotation (+-15 degrees) and colour: a light ink of any hue whose luma is at least 0.3
  above the background under it.

Why dark grounds and light inks: with unrelated random colours for ground and ink (either polarity, any hue) a
small CNN sat at chance (loss 2.30) for ~400 SGD steps on 5,000 images, against ~30 steps for white on black;
with one contrast polarity and light inks it leaves chance within ~100 steps, which a CPU budget of seconds
per run can afford. Colour still varies per image and per glyph, so colour alone never names the target.

Every image comes with its label, the target's mask (pixels where the target's opacity reaches half its
maximum) and the mask's tight box as int64 ``[x0, y0, x1, y1]`` *inclusive* pixel indices, the convention of
clovaai/wsolevaluation (Choe et al., CVPR 2020) that the localization evaluation uses.

Splits come from **disjoint digit identities**: the 1,797 sklearn images are split 60/15/25 % per class into
train/val/test identities by ``split_seed``; a split's images re-use its own identities (targets and fragments)
with fresh clutter and pose, so no stroke image is seen in two splits. :class:`DigitScenes` draws detection scenes
(several non-overlapping digits with boxes and 1-based labels) from the same generator and the same identity split,
so pretraining on the classification set and fine-tuning a detector on the scenes is ImageNet -> VOC in miniature.

Everything is batch tensor code (``affine_grid``/``grid_sample`` place all glyphs of a chunk at once; loops run
over chunks and layers, never over images) and deterministic from the seeds: 12 k images of 32 px in ~2-3 s.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from study.config.schema import DataConfig
from study.data.bundle import DataBundle, Split, boxes_from_masks, stratified_split

__all__ = ["CLASSES_DIGITS", "SPLIT_FRACTIONS", "DigitScenes", "Rendered", "clutter_only_images",
           "held_out_class_images", "load_cluttered_digits", "render_split", "split_identities"]

CLASSES_DIGITS = tuple(str(i) for i in range(10))
SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = (0.6, 0.15, 0.25)  # of the 1,797 identities: 1,078 / 270 / 449
GLYPH = 8  # sklearn digits are 8x8, values 0..16
MAX_TILT = math.radians(15)  # target rotation range; fragments take any angle
MIN_CONTRAST = 0.3  # luma difference (Rec. 601, in [0, 1]) of a glyph's colour from the background under it
LUMA = (0.299, 0.587, 0.114)
BG_MAX = 0.5  # background channels stay in [0, 0.5]: a glyph can always be MIN_CONTRAST brighter
INK_MIN = 0.55  # glyph channels in [0.55, 1]: light inks of any hue
CHUNK_PIXELS = 2048 * 32 * 32  # images per chunk x pixels: bounds memory (~40 MB of layers), fixed for determinism


@functools.cache
def _glyphs() -> tuple[torch.Tensor, torch.Tensor]:
    """sklearn's digits as opacity float32 ``[1797, 8, 8]`` in [0, 1] and labels int64 ``[1797]``."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return torch.from_numpy(d.images / 16.0).float(), torch.from_numpy(d.target.astype(np.int64))


def _stream_seed(*keys: int) -> int:
    """A 63-bit torch seed from integer keys (numpy's SeedSequence hashing keeps streams independent)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, dtype=np.uint64)[0] >> 1)


def split_identities(split_seed: int, fractions: Sequence[float] = SPLIT_FRACTIONS) -> dict[str, torch.Tensor]:
    """Disjoint sorted int64 index sets into the 1,797 sklearn digits, ``{"train", "val", "test"}``, stratified by
    class (each split holds every digit in the same proportion) and fixed by ``split_seed``."""
    _, labels = _glyphs()
    parts = stratified_split(labels.numpy(), tuple(fractions), split_seed)
    return {name: torch.from_numpy(p.astype(np.int64)) for name, p in zip(SPLITS, parts)}


@dataclass(frozen=True)
class Rendered:
    """One generated split: images uint8 ``[N, 3, S, S]``, labels int64 ``[N]``, boxes int64 ``[N, 4]`` (inclusive
    ``x0, y0, x1, y1``), masks bool ``[N, S, S]``, identities int64 ``[N]`` (sklearn index of each target) and
    fragment_identities int64 ``[N, clutter]`` (sklearn index each distractor was cut from)."""

    images: torch.Tensor
    labels: torch.Tensor
    boxes: torch.Tensor
    masks: torch.Tensor
    identities: torch.Tensor
    fragment_identities: torch.Tensor


# ---------------------------------------------------------------------------------------------------------------
# Drawing, batched


def _texture(n: int, s: int, g: torch.Generator) -> torch.Tensor:
    """Backgrounds float32 ``[n, 3, s, s]`` in [0, 1]: a random colour (channels in [0, BG_MAX]) and a neighbour of
    it (each channel within +-0.3) blended by smooth noise (4x4 and 8x8 random grids upsampled, so texture has
    structure at two scales), plus per-pixel noise (std 0.04). Two unrelated colours made backgrounds whose own
    edges outshone the digits: a CNN then sat at chance for hundreds of steps."""
    c0 = BG_MAX * torch.rand(n, 3, 1, 1, generator=g)
    c1 = (c0 + 0.6 * torch.rand(n, 3, 1, 1, generator=g) - 0.3).clamp(0, BG_MAX)
    coarse = F.interpolate(torch.rand(n, 1, 4, 4, generator=g), size=(s, s), mode="bicubic", align_corners=False)
    fine = F.interpolate(torch.rand(n, 1, 8, 8, generator=g), size=(s, s), mode="bilinear", align_corners=False)
    t = (0.7 * coarse + 0.3 * fine).clamp(0, 1)
    return (c0 + (c1 - c0) * t + 0.04 * torch.randn(n, 3, s, s, generator=g)).clamp(0, 1)


@functools.cache
def _base_grid(s: int) -> torch.Tensor:
    """``[s*s, 3]`` rows ``(u, v, 1)``: pixel centres in grid_sample's [-1, 1] frame (align_corners=False)."""
    c = (2 * torch.arange(s, dtype=torch.float32) + 1) / s - 1
    return torch.stack([c.repeat(s), c.repeat_interleave(s), torch.ones(s * s)], dim=1)


def _draw(glyphs: torch.Tensor, centre: torch.Tensor, half: torch.Tensor, angle: torch.Tensor, s: int) -> torch.Tensor:
    """Opacity ``[M, s, s]`` of M glyphs ``[M, 8, 8]``, each filling a box of half-sides ``half`` ``[M, 2]`` (x, y
    pixels) centred at ``centre`` ``[M, 2]`` (pixels, pixel i covering [i, i + 1)) and turned by ``angle`` ``[M]``
    (radians). One ``affine_grid`` + bilinear ``grid_sample`` (the sampler of Spatial Transformer Networks) for all.

    Output pixel p (pixels) samples glyph point q = D^-1 R(-angle) (p - centre) in the glyph's [-1, 1] frame, D the
    half-sides; with p = (u + 1) s / 2 for grid coordinate u that is q = A u + b below.
    """
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot_inv = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)  # [M, 2, 2] = R(-angle)
    m = rot_inv / half[:, :, None]  # D^-1 R(-angle)
    a = m * (s / 2)
    b = (m @ (s / 2 - centre)[:, :, None])
    theta = torch.cat([a, b], dim=2)  # [M, 2, 3]
    # F.affine_grid's grid, as one einsum over a shared base (3-5x faster on a CPU than its batched bmm).
    grid = torch.einsum("pk,mjk->mpj", _base_grid(s), theta).view(len(glyphs), s, s, 2)
    out = F.grid_sample(glyphs[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out[:, 0].clamp_(0, 1)


def _pose(n: int, s: int, scale: tuple[float, float], g: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Random target poses: ``(centre [n, 2], half [n, 2], angle [n], extent [n, 4])``. Side ``scale`` x s, width
    0.8-1.1 of it, tilt +-15 degrees; the centre keeps the turned box inside the image when it fits, and
    ``extent`` is that turned box's axis-aligned hull (xyxy pixels, used to keep scene digits apart)."""
    side = s * (scale[0] + (scale[1] - scale[0]) * torch.rand(n, generator=g))
    half = torch.stack([side * (0.8 + 0.3 * torch.rand(n, generator=g)), side], dim=1) / 2
    angle = (2 * torch.rand(n, generator=g) - 1) * MAX_TILT
    c, si = torch.cos(angle).abs(), torch.sin(angle).abs()
    reach = torch.stack([c * half[:, 0] + si * half[:, 1], si * half[:, 0] + c * half[:, 1]], dim=1)  # [n, 2]
    room = (s - 2 * reach).clamp_min(0)
    centre = reach.clamp(max=s / 2) + room * torch.rand(n, 2, generator=g)
    return centre, half, angle, torch.cat([centre - reach, centre + reach], dim=1)


def _fragments(n: int, count: int, s: int, scale: tuple[float, float], pool: torch.Tensor, own: torch.Tensor,
               g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` distractors per image: opacity ``[n, count, s, s]`` and their sklearn identities ``[n, count]``.

    A fragment is a 3-5 x 3-5 glyph-pixel window of a digit of ``pool`` other than the image's own (``own``:
    positions in ``pool`` [n]), drawn at a target-like scale, any rotation, its window centred anywhere."""
    if count == 0:
        return torch.zeros(n, 0, s, s), torch.zeros(n, 0, dtype=torch.int64)
    m = n * count
    glyphs, _ = _glyphs()
    shift = torch.randint(1, max(2, len(pool)), (n, count), generator=g)
    ids = pool[(own[:, None] + shift) % len(pool)]  # never the image's own identity when the pool has two or more
    size = torch.randint(3, 6, (m, 2), generator=g)  # window (w, h) in glyph pixels
    start = (torch.rand(m, 2, generator=g) * (GLYPH - size + 1)).floor()
    ar = torch.arange(GLYPH)
    inside_x = (ar >= start[:, :1]) & (ar < start[:, :1] + size[:, :1])  # [m, 8]
    inside_y = (ar >= start[:, 1:]) & (ar < start[:, 1:] + size[:, 1:])
    window = glyphs[ids.flatten()] * (inside_y[:, :, None] & inside_x[:, None, :])
    side = s * (scale[0] + (scale[1] - scale[0]) * torch.rand(m, generator=g))
    half = torch.stack([side, side], dim=1) / 2
    angle = (2 * torch.rand(m, generator=g) - 1) * math.pi
    # The window's centre in the glyph frame ([-1, 1]), carried through the turn and the scale to a random spot.
    q = (start + size / 2) / GLYPH * 2 - 1
    cos, sin = torch.cos(angle), torch.sin(angle)
    offset = torch.stack([cos * q[:, 0] * half[:, 0] - sin * q[:, 1] * half[:, 1],
                          sin * q[:, 0] * half[:, 0] + cos * q[:, 1] * half[:, 1]], dim=1)
    spot = torch.rand(m, 2, generator=g) * s
    alpha = _draw(window, spot - offset, half, angle, s)
    return alpha.view(n, count, s, s), ids


def _colours(background: torch.Tensor, alpha: torch.Tensor, g: torch.Generator, tries: int = 8) -> torch.Tensor:
    """A colour ``[n, L, 3]`` per layer ``alpha [n, L, s, s]``: the first of ``tries`` light inks (channels uniform
    in [INK_MIN, 1]) whose luma is at least MIN_CONTRAST above the background's mean luma under the layer (else
    the brightest draw), so every glyph shows as a lighter shape whatever its hue."""
    n, layers = alpha.shape[:2]
    luma = torch.tensor(LUMA)
    weight = alpha.sum((2, 3)).clamp_min(1e-6)
    under = torch.einsum("nchw,nlhw,c->nl", background, alpha, luma) / weight  # [n, L]
    cand = INK_MIN + (1 - INK_MIN) * torch.rand(n, layers, tries, 3, generator=g)
    dist = cand @ luma - under[:, :, None]  # [n, L, tries]: how much brighter
    ok = dist >= MIN_CONTRAST
    pick = torch.where(ok.any(-1), ok.int().argmax(-1), dist.argmax(-1))
    return cand.gather(2, pick[..., None, None].expand(n, layers, 1, 3))[:, :, 0]


def _paint(background: torch.Tensor, alpha: torch.Tensor, colours: torch.Tensor) -> torch.Tensor:
    """Layers painted in order over the background ("over" compositing); returns uint8 ``[n, 3, s, s]``."""
    image = background.clone()
    for k in range(alpha.shape[1]):  # a handful of layers, each a whole-batch op
        image.addcmul_(alpha[:, k, None], colours[:, k, :, None, None] - image)  # image += a (colour - image)
    return (image * 255).round_().clamp_(0, 255).to(torch.uint8)


def _half_max(alpha: torch.Tensor) -> torch.Tensor:
    """Masks bool ``[..., s, s]``: where a glyph's opacity reaches half its own maximum (never empty)."""
    peak = alpha.flatten(-2).amax(-1)[..., None, None]
    return (alpha >= 0.5 * peak) & (peak > 0)


def _chunks(n: int, s: int) -> list[tuple[int, int]]:
    step = max(1, CHUNK_PIXELS // (s * s))
    return [(i, min(n, i + step)) for i in range(0, n, step)]


def render_split(pool: torch.Tensor, n: int, image_size: int, seed: int, *, clutter: int = 4,
                 digit_scale: tuple[float, float] = (0.4, 0.7), with_target: bool = True) -> Rendered:
    """``n`` classification images of side ``image_size`` from the sklearn identities ``pool`` (int64 [P]).

    Targets cycle through ``pool`` in random orders (each identity appears ``n / P`` times, up to one), so classes
    stay as balanced as the pool; fragments come from ``pool`` too. Deterministic in ``seed``.
    ``with_target=False`` draws everything the same (the same random stream) but does not paint the target: image
    i is then image i of the same call with the target left out (empty masks, boxes ``-1``; labels and identities
    still name the digit that was left out). The clutter-only OOD set (:func:`clutter_only_images`).
    """
    if n < 0 or image_size < 8 or clutter < 0 or len(pool) == 0:
        raise ValueError(f"render_split(n={n}, image_size={image_size}, clutter={clutter}, pool of {len(pool)}) "
                         "(n >= 0, image_size >= 8, clutter >= 0, a non-empty pool)")
    g = torch.Generator().manual_seed(seed)
    glyphs, glyph_labels = _glyphs()
    s = image_size
    reps = -(-n // len(pool))
    position = torch.cat([torch.randperm(len(pool), generator=g) for _ in range(reps)])[:n] if n else pool[:0]
    out: dict[str, list[torch.Tensor]] = {k: [] for k in ("images", "masks", "frag")}
    for lo, hi in _chunks(n, s):
        m = hi - lo
        own = position[lo:hi]
        background = _texture(m, s, g)
        centre, half, angle, _ = _pose(m, s, digit_scale, g)
        target = _draw(glyphs[pool[own]], centre, half, angle, s)  # [m, s, s]
        frag, frag_ids = _fragments(m, clutter, s, digit_scale, pool, own, g)
        alpha = torch.cat([frag, target[:, None]], dim=1)  # the target is painted last: always whole
        colours = _colours(background, alpha, g)  # drawn for the target too, so with_target keeps the stream
        keep = alpha.shape[1] if with_target else alpha.shape[1] - 1
        out["images"].append(_paint(background, alpha[:, :keep], colours[:, :keep]))
        out["masks"].append(_half_max(target) if with_target else torch.zeros(m, s, s, dtype=torch.bool))
        out["frag"].append(frag_ids)
    ids = pool[position]
    masks = torch.cat(out["masks"]) if n else torch.zeros(0, s, s, dtype=torch.bool)
    return Rendered(torch.cat(out["images"]) if n else torch.zeros(0, 3, s, s, dtype=torch.uint8),
                    glyph_labels[ids], boxes_from_masks(masks), masks, ids,
                    torch.cat(out["frag"]) if n else torch.zeros(0, clutter, dtype=torch.int64))


def load_cluttered_digits(cfg: DataConfig) -> DataBundle:
    """The ``cluttered_digits`` dataset: ``data.synthetic_sizes`` (train, val, test) images of ``data.image_size``
    pixels from disjoint identities (:func:`split_identities` of ``data.split_seed``), ``data.clutter`` fragments
    each, targets of side ``data.digit_scale`` x image_size. Splits carry boxes and masks; mean/std are the train
    split's per-channel statistics. ``data.ood_classes`` holds those digit classes out of every split (their
    identities are dropped from the pools, the other classes are relabelled 0..K-1 in order): the held-out test
    identities are then a near-OOD set (:func:`held_out_class_images`)."""
    ids = _pools(cfg)
    kept = [c for c in range(len(CLASSES_DIGITS)) if c not in set(cfg.ood_classes)]
    relabel = torch.full((len(CLASSES_DIGITS),), -1, dtype=torch.int64)
    relabel[kept] = torch.arange(len(kept))  # held-out classes leave a gap: labels stay 0..K-1
    splits = []
    for stream, (name, n) in enumerate(zip(SPLITS, cfg.synthetic_sizes)):
        r = render_split(ids[name], n, cfg.image_size, _stream_seed(cfg.split_seed, stream), clutter=cfg.clutter,
                         digit_scale=tuple(cfg.digit_scale))
        splits.append(Split(r.images, relabel[r.labels], r.boxes, r.masks))
    x = splits[0].images.float() / 255.0
    mean = tuple(float(v) for v in x.mean((0, 2, 3)))
    std = tuple(float(v) for v in x.std((0, 2, 3)))
    return DataBundle("cluttered_digits", *splits, len(kept), mean, std, tuple(CLASSES_DIGITS[c] for c in kept))


# ---------------------------------------------------------------------------------------------------------------
# Near out-of-distribution sets (issue 16): the same generator, something missing or unseen


def _pools(cfg: DataConfig) -> dict[str, torch.Tensor]:
    """The identity pools of the in-distribution splits: :func:`split_identities`, less the identities of the
    classes ``cfg.ood_classes`` holds out."""
    ids = split_identities(cfg.split_seed)
    if not cfg.ood_classes:
        return ids
    _, labels = _glyphs()
    held = torch.tensor(sorted(cfg.ood_classes), dtype=torch.int64)
    return {name: p[~torch.isin(labels[p], held)] for name, p in ids.items()}


def _head(r: Rendered, n: int) -> Rendered:
    return Rendered(*(getattr(r, f.name)[:n] for f in fields(Rendered)))


def clutter_only_images(cfg: DataConfig, n: int | None = None) -> Rendered:
    """Near-OOD set: the test split of ``cfg`` with the target digits left out (images uint8 ``[n, 3, S, S]``).

    Image i is test image i with the same background, the same fragments in the same inks and places (the same
    random stream: :func:`render_split` with ``with_target=False``), and no digit: it differs from test image i
    only where the target was painted. A classifier that scores these as confidently as the test images has not
    learnt that the class lives in the digit. ``n``: the first n (default: all of the test split's images). The
    masks are empty; labels and identities name the digits that were left out.
    """
    total = cfg.synthetic_sizes[2]
    n = total if n is None else min(int(n), total)
    r = render_split(_pools(cfg)["test"], total, cfg.image_size, _stream_seed(cfg.split_seed, SPLITS.index("test")),
                     clutter=cfg.clutter, digit_scale=tuple(cfg.digit_scale), with_target=False)
    return _head(r, n)


def held_out_class_images(cfg: DataConfig, n: int) -> Rendered:
    """Near-OOD set of ``data.ood_classes``: ``n`` images (uint8 ``[n, 3, S, S]``) of the held-out classes' *test*
    identities (never trained on), drawn like the test split (same clutter, scale and inks; fragments from the
    same held-out identities) from their own stream; labels are the original digits. Raises ValueError when
    ``cfg`` holds no class out."""
    if not cfg.ood_classes:
        raise ValueError("held_out_class_images needs data.ood_classes (classes held out of training)")
    _, labels = _glyphs()
    test = split_identities(cfg.split_seed)["test"]
    pool = test[torch.isin(labels[test], torch.tensor(sorted(cfg.ood_classes), dtype=torch.int64))]
    r = render_split(pool, int(n), cfg.image_size, _stream_seed(cfg.split_seed, SPLITS.index("test"), 1),
                     clutter=cfg.clutter, digit_scale=tuple(cfg.digit_scale))
    return r


# ---------------------------------------------------------------------------------------------------------------
# Detection twin


class DigitScenes(Dataset):
    """Detection scenes of cluttered digits: 1..``max_objects`` non-overlapping digits per image on the same
    textured background with ``clutter`` fragments, from the identities of one classification split.

    All images are rendered at construction (batched, held in memory as uint8). Digit ``k`` of an image is placed
    by vectorised rejection sampling: 16 candidate poses per image, the first whose turned box's hull misses every
    digit placed before it wins; an image wants a uniform 1..``max_objects`` digits and keeps those that found room.

    Args:
        num_images: dataset length.
        image_size: side ``S`` in pixels (>= 16).
        seed: scene seed (layouts, clutter, colours, which identities).
        split: which identity set of :func:`split_identities` the digits and fragments come from.
        split_seed: the identity split's seed (the classification set's ``data.split_seed``).
        max_objects: most digits per image.
        clutter: distractor fragments per image.
        digit_scale: digit side as fractions of ``S``; also ``object_scale``, which sizes the detector's anchors.
            The default 0.2-0.35 is half the classification default's 0.4-0.7, so scenes of twice the
            classification image size (48 px for 24 px, 64 for 32) hold digits of the pretraining's pixel sizes,
            four classification images' worth of area each.

    Items: ``(image float32 [3, S, S] in [0, 1], {"boxes": float32 [N, 4], "labels": int64 [N]})``, boxes tight
    around each digit's half-maximum mask in xyxy pixels with pixel i covering [i, i + 1) (``x_max`` = last column
    + 1, ``study.detection``'s convention), labels 1..10 (digit + 1; 0 is the detector's background).
    """

    classes = CLASSES_DIGITS

    def __init__(self, num_images: int, image_size: int = 64, seed: int = 0, *, split: str = "train",
                 split_seed: int = 0, max_objects: int = 4, clutter: int = 8,
                 digit_scale: tuple[float, float] = (0.2, 0.35)) -> None:
        if num_images < 0 or image_size < 16 or max_objects < 1 or clutter < 0 or split not in SPLITS:
            raise ValueError(f"DigitScenes(num_images={num_images}, image_size={image_size}, split={split!r}, "
                             f"max_objects={max_objects}, clutter={clutter}) (sizes >= 0, image_size >= 16, "
                             f"max_objects >= 1, clutter >= 0, split one of {', '.join(SPLITS)})")
        if not 0 < digit_scale[0] <= digit_scale[1] <= 1:
            raise ValueError(f"digit_scale={tuple(digit_scale)} (0 < low <= high <= 1)")
        self.num_images, self.image_size, self.seed, self.split = num_images, image_size, seed, split
        self.max_objects, self.clutter = max_objects, clutter
        self.object_scale = tuple(float(v) for v in digit_scale)
        pool = split_identities(split_seed)[split]
        g = torch.Generator().manual_seed(_stream_seed(split_seed, seed, 1 + SPLITS.index(split), 7919))
        parts = [self._render(hi - lo, pool, g) for lo, hi in _chunks(num_images, image_size * 2)]
        self.images = torch.cat([p[0] for p in parts]) if parts else torch.zeros(0, 3, image_size, image_size,
                                                                                  dtype=torch.uint8)
        self.boxes = torch.cat([p[1] for p in parts]) if parts else torch.zeros(0, max_objects, 4)
        self.labels = torch.cat([p[2] for p in parts]) if parts else torch.zeros(0, max_objects, dtype=torch.int64)
        self.present = torch.cat([p[3] for p in parts]) if parts else torch.zeros(0, max_objects, dtype=torch.bool)
        self.identities = torch.cat([p[4] for p in parts]) if parts else torch.zeros(0, max_objects,
                                                                                      dtype=torch.int64)
        self.fragment_identities = torch.cat([p[5] for p in parts]) if parts else torch.zeros(0, clutter,
                                                                                               dtype=torch.int64)

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if not 0 <= index < self.num_images:
            raise IndexError(f"index {index} out of range for {self.num_images} images")
        keep = self.present[index]
        return (self.images[index].float().div_(255),
                {"boxes": self.boxes[index][keep].clone(), "labels": self.labels[index][keep].clone()})

    def _render(self, n: int, pool: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, ...]:
        s, k_max, tries = self.image_size, self.max_objects, 16
        glyphs, glyph_labels = _glyphs()
        background = _texture(n, s, g)
        wanted = torch.randint(1, k_max + 1, (n,), generator=g)
        own = torch.randint(0, len(pool), (n, k_max), generator=g)
        hulls = torch.zeros(n, 0, 4)
        present = torch.zeros(n, k_max, dtype=torch.bool)
        alpha = torch.zeros(n, k_max, s, s)
        for k in range(k_max):  # slots, each placed for the whole batch at once
            centre, half, angle, hull = (t.view(n, tries, *t.shape[1:]) for t in _pose(n * tries, s,
                                                                                      self.object_scale, g))
            lo = torch.maximum(hull[:, :, None, :2], hulls[:, None, :, :2])  # [n, tries, k, 2]
            hi = torch.minimum(hull[:, :, None, 2:], hulls[:, None, :, 2:])
            hit = ((hi - lo).clamp_min(0).prod(-1) > 0) & present[:, None, :k]
            free = ~hit.any(-1)  # [n, tries]
            pick = free.int().argmax(-1)
            present[:, k] = free.any(-1) & (k < wanted)
            sel = torch.arange(n)
            hulls = torch.cat([hulls, hull[sel, pick][:, None]], dim=1)
            drawn = _draw(glyphs[pool[own[:, k]]], centre[sel, pick], half[sel, pick], angle[sel, pick], s)
            alpha[:, k] = drawn * present[:, k, None, None]
        frag, frag_ids = _fragments(n, self.clutter, s, self.object_scale, pool, own[:, 0], g)
        layers = torch.cat([frag, alpha], dim=1)  # digits last; they never overlap each other
        images = _paint(background, layers, _colours(background, layers, g))
        boxes = boxes_from_masks(_half_max(alpha).flatten(0, 1)).view(n, k_max, 4).float()
        boxes[..., 2:] += 1  # inclusive last pixel -> half-open xyxy
        ids = pool[own]
        return images, boxes, glyph_labels[ids] + 1, present, ids, frag_ids
