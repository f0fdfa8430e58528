"""Batch-level mixing augmentations: CutMix, and MixUp, Cutout and NoMix as baselines with the same call shape.

CutMix: Yun et al., "CutMix: Regularization Strategy to Train Strong Classifiers with Localizable Features",
ICCV 2019, arXiv:1905.04899. The box sampler follows the paper and the official code (clovaai/CutMix-PyTorch,
``rand_bbox``): λ ~ Beta(α, α), a box of side ``sqrt(1 - λ)`` times the image side centred at a uniform pixel,
clipped to the image, and the label weight corrected to the clipped box's exact area. The per-sample mode, the
odd-side rounding of the box (``cut // 2`` before the centre, the rest after) and the soft-target layout follow
Ross Wightman's timm ``timm/data/mixup.py``. MixUp: Zhang et al., arXiv:1710.09412. Cutout: DeVries & Taylor,
arXiv:1708.04552.

Every mixer is called as ``mixer(images, labels, generator=None) -> (mixed, soft_targets)``:

- ``images``: ``[B, C, H, W]`` tensor of any floating dtype or ``torch.uint8``, on any device; never modified in
  place. ``mixed`` has the images' shape, dtype, device and memory format.
- ``labels``: ``[B]`` int64 class indices on the images' device.
- ``soft_targets``: ``[B, num_classes]`` float32 (float64 for float64 images), rows sum to 1; feed them to
  :func:`soft_target_cross_entropy`.

Randomness. Every random number of a call comes from ``generator`` (torch's default CPU generator when ``None``),
drawn on the generator's device: one ``rand`` (the per-call coin, box centres, tie-breaks), one ``randperm`` (the
partners) and one ``_standard_gamma`` (λ = G1 / (G1 + G2), an exact Beta(α, α) draw: ``torch.distributions``
has no generator argument and is slow to construct). The same generator state gives the same output whatever the
images' device. Pass a CPU generator when the images are on an accelerator: the box coordinates are needed on the
host, so draws from a CUDA generator cost one host synchronisation; from a CPU generator the device only receives
small non-blocking copies (the permutation; in sample mode also the label weights and the box rows and columns).

Cost. A call issues the same number of torch operations whatever the batch size (no Python loop over samples).
Batch mode clones the batch once and gathers only the partners' box straight into the clone's box
(``index_select(..., out=box view)``: one pass over the box, no temporary); the rest is a dozen small ops.
Sample mode gathers the partners once and selects per pixel in one more pass (see :func:`_paste_boxes`).
Mixing is a data operation: images that require grad are mixed under ``torch.no_grad()``.
``bench/cutmix_op.py`` times it against torchvision's v2 CutMix, timm's ``Mixup`` and the official code.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from study.config.schema import METHODS, MODES  # the config's allowed values, defined once

__all__ = [
    "CutMix",
    "Cutout",
    "MixUp",
    "NoMix",
    "build_mixer",
    "one_hot",
    "soft_target_cross_entropy",
]


IMAGE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.uint8)
# Integer dtype with the same item size, to select or zero pixels bit for bit.
_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_NP_BITS = {1: np.uint8, 2: np.int16, 4: np.int32, 8: np.int64}
_CPU = torch.device("cpu")
_TABLE_MAX = 1024  # cache a K x K one-hot table up to this many classes


# ---------------------------------------------------------------------------------------------------------------
# Argument checks: one-line messages naming the value and what is allowed


def _check_num_classes(num_classes: Any) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 2:
        raise ValueError(f"num_classes={num_classes!r} is not allowed (an integer >= 2)")
    return int(num_classes)


def _check_smoothing(label_smoothing: Any) -> float:
    if not isinstance(label_smoothing, numbers.Real) or not (0.0 <= label_smoothing < 1.0):
        raise ValueError(f"label_smoothing={label_smoothing!r} is not allowed (0 <= label_smoothing < 1)")
    return float(label_smoothing)


def _check_prob(prob: Any) -> float:
    if isinstance(prob, bool) or not isinstance(prob, numbers.Real) or not (0.0 <= prob <= 1.0):
        raise ValueError(f"prob={prob!r} is not allowed (0 <= prob <= 1)")
    return float(prob)


def _check_alpha(alpha: Any) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not (0.0 < alpha < math.inf):
        raise ValueError(f"alpha={alpha!r} is not allowed (a finite alpha > 0)")
    return float(alpha)


def _check_mode(mode: Any) -> str:
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not allowed (one of: {', '.join(MODES)})")
    return mode


def _check_labels(labels: Any, batch: int | None = None) -> None:
    """Labels must be a ``[B]`` int64 tensor; their range is checked by :func:`_scatter_targets`, for free."""
    if not isinstance(labels, torch.Tensor):
        raise ValueError(f"labels of type {type(labels).__name__} are not allowed (a [B] int64 tensor)")
    if labels.dtype != torch.int64:
        raise ValueError(f"labels.dtype={labels.dtype} is not allowed (torch.int64 class indices)")
    if labels.ndim != 1 or (batch is not None and labels.shape[0] != batch):
        want = f"[{batch}] to match the images" if batch is not None else "[B]"
        raise ValueError(f"labels.shape={tuple(labels.shape)} is not allowed ({want})")


def _check_batch(images: Any, labels: Any) -> None:
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images of type {type(images).__name__} are not allowed (a [B, C, H, W] tensor)")
    if images.ndim != 4:
        raise ValueError(f"images.shape={tuple(images.shape)} is not allowed (4-D: [B, C, H, W])")
    if images.dtype not in IMAGE_DTYPES:
        raise ValueError(f"images.dtype={images.dtype} is not allowed (float16, bfloat16, float32, float64 or uint8)")
    if min(images.shape) < 1:
        raise ValueError(f"images.shape={tuple(images.shape)} is not allowed (every dimension >= 1)")
    _check_labels(labels, images.shape[0])
    if labels.device != images.device:
        raise ValueError(f"labels.device={labels.device} is not allowed (the images' device, {images.device})")


# ---------------------------------------------------------------------------------------------------------------
# Targets and loss


def _target_dtype(images: torch.Tensor) -> torch.dtype:
    # float32 targets even for half images: a weight such as 331/1024 must survive, and the loss upcasts anyway.
    return torch.float64 if images.dtype == torch.float64 else torch.float32


def _scatter_targets(out: torch.Tensor, index: torch.Tensor, value: float, labels: torch.Tensor,
                     num_classes: int) -> torch.Tensor:
    """``out.scatter_(1, index, value)``, with out-of-range labels reported as a ValueError.

    The CPU scatter checks its indices anyway, so the range check costs nothing on the happy path. On an
    accelerator an out-of-range label trips the kernel's device-side assert instead: checking it up front would
    cost a host synchronisation every batch.
    """
    try:
        return out.scatter_(1, index, value)
    except RuntimeError:
        _raise_if_out_of_range(labels, num_classes)
        raise


def _raise_if_out_of_range(labels: torch.Tensor, num_classes: int) -> None:
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"labels in [{lo}, {hi}] are not allowed (0 <= label < K={num_classes})") from None


def one_hot(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0,
            dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """One-hot targets with label smoothing as ``F.cross_entropy(label_smoothing=...)`` applies it.

    Args:
        labels: ``[B]`` int64 class indices in ``[0, num_classes)``.
        num_classes: K >= 2.
        smoothing: s in [0, 1): each row is ``(1 - s) * onehot + s / K``.
        dtype: floating dtype of the result.

    Returns:
        ``[B, K]`` tensor of ``dtype`` on the labels' device; rows sum to 1.
    """
    num_classes = _check_num_classes(num_classes)
    smoothing = _check_smoothing(smoothing)
    _check_labels(labels)
    off = smoothing / num_classes
    out = torch.full((labels.shape[0], num_classes), off, dtype=dtype, device=labels.device)
    return _scatter_targets(out, labels.unsqueeze(1), 1.0 - smoothing + off, labels, num_classes)


def _mix_rows(rows: torch.Tensor, perm: torch.Tensor, partner_weight: np.ndarray | float) -> torch.Tensor:
    """``(1 - a) * rows + a * rows[perm]`` for smoothed one-hot ``rows`` [B, K], a = ``partner_weight``.

    That is ``(1 - s) * ((1 - a) * onehot(y) + a * onehot(y[perm])) + s / K``: both rows share the off value s / K,
    so the smoothing passes through the mix unchanged, a partner of the same class leaves the row one-hot, and
    without smoothing the partner's entry is ``a`` rounded once. A scalar ``a`` (batch mode) needs no tensor.
    """
    if isinstance(partner_weight, float):
        weight: float | torch.Tensor = partner_weight
    else:
        weight = torch.from_numpy(partner_weight).to(rows.device, rows.dtype, non_blocking=True).unsqueeze(1)
    return torch.lerp(rows, rows.index_select(0, perm), weight)


def soft_target_cross_entropy(logits: torch.Tensor, soft_targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``-sum_k target_k * log_softmax(logits)_k``.

    Args:
        logits: ``[B, K]`` of any floating dtype (half logits are upcast to the targets' dtype first).
        soft_targets: ``[B, K]`` floating, rows summing to 1 (from a mixer or :func:`one_hot`).

    Returns:
        0-d tensor. With one-hot smoothed targets it equals ``F.cross_entropy(logits, labels, label_smoothing=s)``.
    """
    if logits.ndim != 2 or logits.shape != soft_targets.shape:
        raise ValueError(f"logits.shape={tuple(logits.shape)} and soft_targets.shape={tuple(soft_targets.shape)} "
                         "are not allowed (both [B, K])")
    logp = F.log_softmax(logits, dim=-1, dtype=torch.promote_types(logits.dtype, soft_targets.dtype))
    return -(soft_targets * logp).sum(dim=-1).mean()


# ---------------------------------------------------------------------------------------------------------------
# Shared machinery


_TINY = float(np.finfo(np.float64).tiny)  # torch's Gamma sampler clamps its draws to this


def _host(t: torch.Tensor) -> np.ndarray:
    """A NumPy view of a CPU tensor (no copy, no torch op); a copy to the host otherwise."""
    return t.numpy() if t.device.type == "cpu" else t.cpu().numpy()


def _betas(gammas: np.ndarray, tie: np.ndarray) -> np.ndarray:
    """Beta(α, α) from ``[2, n]`` gammas. When α is tiny (< ~0.01) both gammas can sit at the sampler's floor;
    the true λ is then 0 or 1 with equal odds, so a uniform ``tie`` decides instead of returning 0.5."""
    lam = gammas[0] / (gammas[0] + gammas[1])
    stuck = (gammas[0] <= _TINY) & (gammas[1] <= _TINY)
    return np.where(stuck, (tie < 0.5).astype(np.float64), lam)


def _beta(g1: float, g2: float, tie: float) -> float:
    """:func:`_betas` for one λ in Python floats: batch mode pays no NumPy call overhead per step."""
    if g1 <= _TINY and g2 <= _TINY:
        return float(tie < 0.5)
    return g1 / (g1 + g2)


def _boxes(centres: np.ndarray, shape: tuple[int, int], sides: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample boxes centred at uniform pixels, clipped to the image; rows and columns handled together.

    ``centres``: ``[2, n]`` uniforms in [0, 1) (row, column): floor(u * H) is a uniform row. ``sides``: ``[2, n]``
    int64 box sides (height, width). Returns ``lo``, ``hi``: ``[2, n]`` int64 with rows ``lo[0] <= y < hi[0]`` and
    columns ``lo[1] <= x < hi[1]`` inside. An odd side puts ``side // 2`` pixels before the centre, as timm does,
    so an unclipped box has exactly the drawn side (the official code's ``cx ± cut_w // 2`` drops a pixel from odd
    sides). :func:`_box` is the scalar twin.
    """
    dims = np.array(shape, dtype=np.int64)[:, None]
    start = (centres * dims).astype(np.int64) - sides // 2
    # minimum/maximum, not np.clip: np.clip costs ~5 us per call on small arrays
    return np.maximum(start, 0), np.minimum(start + sides, dims)


def _box(cy: float, cx: float, height: int, width: int, side_h: int, side_w: int) -> tuple[int, int, int, int]:
    """One box, as :func:`_boxes` draws it, in Python ints."""
    y1 = int(cy * height) - side_h // 2
    x1 = int(cx * width) - side_w // 2
    return max(y1, 0), min(y1 + side_h, height), max(x1, 0), min(x1 + side_w, width)


def _box_view(t: torch.Tensor, y1: int, y2: int, x1: int, x2: int) -> torch.Tensor:
    """``t[..., y1:y2, x1:x2]`` as one ``as_strided`` op rather than two slices (any strides, any memory format)."""
    s = t.stride()
    return t.as_strided((t.shape[0], t.shape[1], y2 - y1, x2 - x1), s, t.storage_offset() + y1 * s[2] + x1 * s[3])


def _box_mask(lo: np.ndarray, hi: np.ndarray, shape: tuple[int, int], dtype: torch.dtype, device: torch.device,
              inside: bool = True) -> torch.Tensor:
    """``[B, 1, H, W]`` mask of each sample's box from :func:`_boxes` (of its outside when ``inside=False``,
    integer masks only).

    A floating ``dtype`` gives 0/1 values (a ``lerp`` weight); an integer one gives 0 or all bits set (for
    bitwise selection). Rows and columns are compared on the host in one ``[B, H + W]`` array and sent in one
    non-blocking copy; the broadcast product that makes the full mask runs on the device, so nothing of size
    B * H * W crosses the bus.
    """
    height, width = shape
    axis = np.concatenate((np.arange(height), np.arange(width)))
    lo_b = np.repeat(lo.T, (height, width), axis=1)  # [B, H + W]: y1 under the row positions, x1 under the columns
    hi_b = np.repeat(hi.T, (height, width), axis=1)
    lines = (axis >= lo_b) & (axis < hi_b)
    if dtype.is_floating_point:
        # float32 on the host (NumPy has no bfloat16); 0 and 1 survive the cast to any floating dtype.
        t = torch.from_numpy(lines.astype(np.float32)).to(device, dtype, non_blocking=True)
        return t[:, None, :height, None] * t[:, None, None, height:]
    # -True is all bits set in a signed type; uint8 wraps to 255, as wanted.
    t = torch.from_numpy(-lines.astype(_NP_BITS[dtype.itemsize])).to(device, non_blocking=True)
    mask = torch.bitwise_and(t[:, None, :height, None], t[:, None, None, height:])
    return mask if inside else mask.bitwise_not_()


class _Mixer:
    """Argument checks, the per-call coin flip and the unmixed path shared by every mixer."""

    #: Uniforms each box or λ needs (centres, tie-breaks); drawn with the coin in one ``rand``.
    _uniforms = 0

    def __init__(self, *, num_classes: int, label_smoothing: float = 0.0, prob: float = 1.0, mode: str = "batch"):
        self.num_classes = _check_num_classes(num_classes)
        self.label_smoothing = _check_smoothing(label_smoothing)
        self.prob = _check_prob(prob)
        self.mode = _check_mode(mode)
        #: The last call's random parameters, for introspection and plots only; not part of the contract.
        self.last_params: dict[str, Any] = {}
        self._alpha_shapes: dict[tuple[int, torch.device], torch.Tensor] = {}
        self._tables: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}

    def __call__(self, images: torch.Tensor, labels: torch.Tensor,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mix a batch. See the module docstring for shapes, dtypes and the randomness contract.

        Returns ``(mixed, soft_targets)``. When the call's single coin flip (probability ``1 - prob``) says not to
        mix, ``mixed`` is the ``images`` tensor itself (safe: no mixer ever writes into its input) and the
        targets are one-hot with label smoothing.
        """
        _check_batch(images, labels)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"generator of type {type(generator).__name__} is not allowed (a torch.Generator)")
        device = generator.device if generator is not None else _CPU
        n = 1 if self.mode == "batch" else images.shape[0]
        uniforms = _host(torch.rand(1 + self._uniforms * n, dtype=torch.float64, generator=generator, device=device))
        if not uniforms[0] < self.prob:
            self.last_params = {"mixed": False}
            return images, self._rows(images, labels)
        uniforms = uniforms[1:].reshape(self._uniforms, n)
        if images.requires_grad:  # out= ops refuse inputs that require grad; mixing is data preparation anyway
            with torch.no_grad():
                return self._mix(images, labels, uniforms, generator, device)
        return self._mix(images, labels, uniforms, generator, device)

    def _rows(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Smoothed one-hot targets ``[B, K]`` (float32, float64 for float64 images) on the labels' device.

        Rows are looked up in a cached K x K table (one op per call instead of three) when K <= 1024, i.e. at
        most 4 MiB per dtype and device; larger label spaces scatter into a fresh tensor.
        """
        dtype, k = _target_dtype(images), self.num_classes
        off, on = self.label_smoothing / k, 1.0 - self.label_smoothing + self.label_smoothing / k
        if k > _TABLE_MAX:
            out = torch.full((labels.shape[0], k), off, dtype=dtype, device=labels.device)
            return _scatter_targets(out, labels.unsqueeze(1), on, labels, k)
        key = (dtype, labels.device)
        table = self._tables.get(key)
        if table is None:
            table = self._tables[key] = torch.full((k, k), off, dtype=dtype, device=labels.device).fill_diagonal_(on)
        try:
            return table.index_select(0, labels)
        except (IndexError, RuntimeError):  # the CPU kernel checks the range for free; see _scatter_targets
            _raise_if_out_of_range(labels, k)
            raise

    def _partners(self, batch: int, generator: torch.Generator | None, device: torch.device,
                  images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The partner permutation on the generator's device and (a non-blocking copy) on the images' device."""
        perm = torch.randperm(batch, generator=generator, device=device)
        return perm, perm.to(images.device, non_blocking=True)

    def _gammas(self, n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
        """``[2, n]`` float64 Gamma(α, 1) draws on ``device``; λ = G1 / (G1 + G2) is Beta(α, α).

        ``torch._standard_gamma`` is the sampler behind ``torch.distributions.Gamma``, and it takes a generator.
        Its α tensor is cached per (n, device): one op less per call, and a call's op count then depends on nothing.
        """
        key = (n, device)
        shape = self._alpha_shapes.get(key)
        if shape is None:
            if len(self._alpha_shapes) > 8:  # odd last batches of many datasets: keep the cache small
                self._alpha_shapes.clear()
            shape = self._alpha_shapes[key] = torch.full((2, n), self.alpha, dtype=torch.float64, device=device)
        return torch._standard_gamma(shape, generator=generator)

    def _mix(self, images, labels, uniforms, generator, device):  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith(("last_", "_")))
        return f"{type(self).__name__}({fields})"


# ---------------------------------------------------------------------------------------------------------------
# The mixers


class CutMix(_Mixer):
    """CutMix (Yun et al. 2019): paste a box from a partner image, weight the labels by the box's area.

    Args:
        alpha: α > 0 of λ ~ Beta(α, α); the box's side is ``sqrt(1 - λ)`` of the image side before clipping.
        prob: probability in [0, 1] that a call mixes at all (one draw per call; the paper uses 0.5 on CIFAR).
        mode: ``"batch"``: one λ and one box for the whole batch (the paper); ``"sample"``: each sample draws its
            own λ and box, vectorised.
        num_classes: K >= 2, the width of the soft targets.
        label_smoothing: s in [0, 1), applied after mixing as ``(1 - s) * target + s / K``.

    Partners are a uniform random permutation of the batch (a sample may draw itself, as in the paper). Sample i
    keeps its own pixels outside its box and takes its partner's pixels at the same place inside; its target is
    ``(1 - a) * onehot(y_i) + a * onehot(y_partner)`` with a = clipped box area / (H * W), exactly.
    """

    _uniforms = 3  # centre row, centre column, tie-break of a degenerate Beta draw

    def __init__(self, alpha: float = 1.0, prob: float = 0.5, mode: str = "batch", *, num_classes: int,
                 label_smoothing: float = 0.0):
        super().__init__(num_classes=num_classes, label_smoothing=label_smoothing, prob=prob, mode=mode)
        self.alpha = _check_alpha(alpha)

    def _mix(self, images: torch.Tensor, labels: torch.Tensor, uniforms: np.ndarray,
             generator: torch.Generator | None, device: torch.device):
        batch, _, height, width = images.shape
        perm, perm_t = self._partners(batch, generator, device, images)
        gammas = self._gammas(uniforms.shape[1], generator, device)
        if self.mode == "batch":
            (g1,), (g2,) = gammas.tolist()
            cy, cx, tie = uniforms[:, 0].tolist()
            lam = _beta(g1, g2, tie)
            cut = math.sqrt(1.0 - lam)
            y1, y2, x1, x2 = _box(cy, cx, height, width, int(height * cut), int(width * cut))
            area = (y2 - y1) * (x2 - x1) / (height * width)
            mixed = images.clone()
            # Gather the partners' box straight into the clone's box: one pass over the box, no temporary.
            # An empty box is an empty view; the op still runs, so the op count never depends on the draw.
            torch.index_select(_box_view(images, y1, y2, x1, x2), 0, perm_t, out=_box_view(mixed, y1, y2, x1, x2))
        else:
            lam = _betas(_host(gammas), uniforms[2])
            dims = np.array((height, width), dtype=np.int64)[:, None]
            lo, hi = _boxes(uniforms[:2], (height, width), (dims * np.sqrt(1.0 - lam)).astype(np.int64))
            area = (hi - lo).prod(axis=0) / (height * width)  # float64: exact to the last bit for any real image
            mixed = _paste_boxes(images, perm_t, lo, hi)
            y1, x1, y2, x2 = *lo, *hi
        self.last_params = {"mixed": True, "perm": perm, "lam": lam, "box": (y1, y2, x1, x2), "area": area}
        return mixed, _mix_rows(self._rows(images, labels), perm_t, area)


def _paste_boxes(images: torch.Tensor, perm_t: torch.Tensor, lo: np.ndarray, hi: np.ndarray) -> torch.Tensor:
    """Sample i's pixels inside its own box (from :func:`_boxes`) replaced by ``images[perm[i]]``'s, vectorised.

    The partners are gathered once into the output, then one pass selects per pixel. Floating images use
    ``lerp(x, x[perm], m)`` with a 0/1 weight: exact for finite pixels (x + 0 * d == x, y - d * 0 == y), and one
    vectorised pass, where ``torch.where`` with a broadcast bool mask runs a scalar loop on the CPU (3.5x slower
    here). uint8 images use ``x ^ ((x ^ x[perm]) & m)`` on the bits, exact for any value.
    """
    _, _, height, width = images.shape
    out = torch.empty_like(images)  # keeps the input's memory format (channels_last stays channels_last)
    torch.index_select(images, 0, perm_t, out=out)
    mask = _box_mask(lo, hi, (height, width), images.dtype, images.device)
    if images.dtype.is_floating_point:
        return torch.lerp(images, out, mask, out=out)
    out.bitwise_xor_(images).bitwise_and_(mask).bitwise_xor_(images)
    return out


class MixUp(_Mixer):
    """MixUp (Zhang et al. 2018): ``(1 - a) * x_i + a * x_partner`` with a = 1 - λ, λ ~ Beta(α, α).

    Same arguments and call as :class:`CutMix` (but ``prob`` defaults to 1). ``mode="sample"`` draws one λ per
    sample. uint8 images are mixed
    in float32 and rounded to the nearest integer; their targets keep the drawn weight unrounded.
    """

    _uniforms = 1  # tie-break of a degenerate Beta draw

    def __init__(self, alpha: float = 1.0, prob: float = 1.0, mode: str = "batch", *, num_classes: int,
                 label_smoothing: float = 0.0):
        super().__init__(num_classes=num_classes, label_smoothing=label_smoothing, prob=prob, mode=mode)
        self.alpha = _check_alpha(alpha)

    def _mix(self, images: torch.Tensor, labels: torch.Tensor, uniforms: np.ndarray,
             generator: torch.Generator | None, device: torch.device):
        batch = images.shape[0]
        perm, perm_t = self._partners(batch, generator, device, images)
        lam = _betas(_host(self._gammas(uniforms.shape[1], generator, device)), uniforms[0])
        partner_weight = 1.0 - lam
        self.last_params = {"mixed": True, "perm": perm, "lam": lam}
        work = images if images.dtype.is_floating_point else images.float()
        partner = work.index_select(0, perm_t)
        if self.mode == "batch":
            weight: float | torch.Tensor = float(partner_weight[0])
            partner_weight = weight
        else:
            weight = torch.from_numpy(partner_weight).to(images.device, work.dtype, non_blocking=True)
            weight = weight.view(batch, 1, 1, 1)
        mixed = torch.lerp(work, partner, weight)
        if not images.dtype.is_floating_point:
            mixed = mixed.round_().clamp_(0, 255).to(images.dtype)
        return mixed, _mix_rows(self._rows(images, labels), perm_t, partner_weight)


class Cutout(_Mixer):
    """Cutout (DeVries & Taylor 2017): zero a square of side ``size * min(H, W)`` centred at a uniform pixel.

    The square is clipped at the borders; zeros are the dataset mean for normalised images. Targets stay one-hot
    (smoothed). ``mode="sample"`` gives each sample its own square; ``prob`` is one draw per call, as for CutMix.
    """

    _uniforms = 2  # centre row, centre column

    def __init__(self, size: float = 0.5, prob: float = 1.0, mode: str = "batch", *, num_classes: int,
                 label_smoothing: float = 0.0):
        super().__init__(num_classes=num_classes, label_smoothing=label_smoothing, prob=prob, mode=mode)
        if isinstance(size, bool) or not isinstance(size, numbers.Real) or not (0.0 < size <= 1.0):
            raise ValueError(f"size={size!r} is not allowed (0 < size <= 1, a fraction of the image side)")
        self.size = float(size)

    def _mix(self, images: torch.Tensor, labels: torch.Tensor, uniforms: np.ndarray,
             generator: torch.Generator | None, device: torch.device):
        batch, _, height, width = images.shape
        side = max(1, round(self.size * min(height, width)))
        if self.mode == "batch":
            y1, y2, x1, x2 = _box(float(uniforms[0, 0]), float(uniforms[1, 0]), height, width, side, side)
            mixed = images.clone()
            mixed[..., y1:y2, x1:x2] = 0
        else:
            lo, hi = _boxes(uniforms, (height, width), np.full((2, batch), side, dtype=np.int64))
            keep = _box_mask(lo, hi, (height, width), _BITS[images.element_size()], images.device, inside=False)
            y1, x1, y2, x2 = *lo, *hi
            mixed = torch.empty_like(images)
            # All-zero bits are +0.0 in every floating format and 0 in uint8.
            torch.bitwise_and(images.view(keep.dtype), keep, out=mixed.view(keep.dtype))
        self.last_params = {"mixed": True, "box": (y1, y2, x1, x2)}
        return mixed, self._rows(images, labels)


class NoMix(_Mixer):
    """The identity with one-hot (smoothed) targets, for the no-augmentation baseline and ``prob=0``."""

    def __init__(self, *, num_classes: int, label_smoothing: float = 0.0):
        super().__init__(num_classes=num_classes, label_smoothing=label_smoothing, prob=0.0, mode="batch")

    def __call__(self, images: torch.Tensor, labels: torch.Tensor,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(images, one_hot(labels))``; ``images`` is the input object itself. Draws no random numbers."""
        _check_batch(images, labels)
        return images, self._rows(images, labels)


def build_mixer(cfg: Any, num_classes: int) -> _Mixer:
    """The mixer a ``CutMixConfig`` asks for: ``method`` cutmix | mixup | cutout | none; NoMix unless the config
    ``mixes`` (``study.config.CutMixConfig.mixes``: a method other than none, with ``prob > 0``)."""
    method = cfg.method
    if method not in METHODS:
        raise ValueError(f"cutmix.method={method!r} is not allowed (one of: {', '.join(METHODS)})")
    if method != "none":
        _check_prob(cfg.prob)  # a bad p is an error, never a silent NoMix
    if not cfg.mixes:
        return NoMix(num_classes=num_classes, label_smoothing=cfg.label_smoothing)
    common = dict(prob=cfg.prob, mode=cfg.mode, num_classes=num_classes, label_smoothing=cfg.label_smoothing)
    if method == "cutmix":
        return CutMix(cfg.alpha, **common)
    if method == "mixup":
        return MixUp(cfg.alpha, **common)
    return Cutout(cfg.cutout_size, **common)
