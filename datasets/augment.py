"""Batched frame augmentation on the device (docs/design.md, "Device and speed").

uint8 frames [B, K, H, W, 3] cross to the device as they are stored; here they become
float frames [B, K, 3, S, S], normalised with the ImageNet statistics the reference code
uses. Training: RandomResizedCrop(S) + horizontal flip, the parameters drawn exactly as
torchvision draws them (area fraction uniform in `scale`, log aspect ratio uniform in
`ratio`, ten attempts, then a centre-crop fallback), all samples at once. The crop and
resize are one bilinear `grid_sample` per batch. Evaluation: a resize of the whole frame
to S x S, as the references' Resize((224, 224)).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def sample_crop_boxes(
    n: int,
    height: int,
    width: int,
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    attempts: int = 10,
) -> torch.Tensor:
    """RandomResizedCrop boxes for n images: float tensor [n, 4] of (top, left, h, w)."""
    area = height * width
    u = torch.rand(n, attempts, 4, generator=generator, device=device)
    target = area * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[..., 1])
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    ok = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    first = ok.to(torch.int8).argmax(dim=1, keepdim=True)  # first valid attempt
    pick = lambda t: t.gather(1, first).squeeze(1)  # noqa: E731
    h, w = pick(h), pick(w)
    top = torch.floor(pick(u[..., 2]) * (height - h + 1))
    left = torch.floor(pick(u[..., 3]) * (width - w + 1))
    # Fallback when no attempt fits: the largest centre crop with a ratio inside `ratio`.
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        fh, fw = height, round(height * max(ratio))
    else:
        fw, fh = width, height
    # Python scalars as torch.where's other: no host-to-device copy (a copy would make the
    # host wait for the device's queued work, stalling the pipeline once per batch).
    fits = ok.any(dim=1)
    fallback = ((height - fh) // 2, (width - fw) // 2, fh, fw)
    columns = [
        torch.where(fits, c, float(f)) for c, f in zip((top, left, h, w), fallback, strict=True)
    ]
    return torch.stack(columns, dim=1)


def crop_resize(
    images: torch.Tensor, boxes: torch.Tensor | None, size: int, flip: torch.Tensor | None = None
) -> torch.Tensor:
    """Crop each image [N, C, H, W] to its box, resize to size x size, optionally mirror."""
    n, _, height, width = images.shape
    theta = torch.zeros(n, 2, 3, device=images.device, dtype=images.dtype)
    if boxes is None:
        theta[:, 0, 0] = 1.0
        theta[:, 1, 1] = 1.0
    else:
        top, left, h, w = boxes.to(images.dtype).unbind(1)
        theta[:, 0, 0] = w / width
        theta[:, 1, 1] = h / height
        theta[:, 0, 2] = (2 * left + w) / width - 1
        theta[:, 1, 2] = (2 * top + h) / height - 1
    if flip is not None:
        theta[:, 0, 0] = torch.where(flip, -theta[:, 0, 0], theta[:, 0, 0])
    if boxes is None and flip is None and (height, width) == (size, size):
        return images
    grid = F.affine_grid(theta, [n, images.shape[1], size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


class FrameAugment:
    """uint8 [B, K, H, W, 3] -> normalised float [B, K, 3, S, S], on whatever device."""

    def __init__(
        self,
        size: int,
        scale: Sequence[float] = (0.08, 1.0),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        hflip: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        self.size, self.scale, self.ratio, self.hflip = size, tuple(scale), tuple(ratio), hflip
        self.mean, self.std = mean, std
        self._stats: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def stats(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std as [1, 3, 1, 1] tensors on `device`, made once per device."""
        if device not in self._stats:
            self._stats[device] = (
                torch.tensor(self.mean, device=device).view(1, -1, 1, 1),
                torch.tensor(self.std, device=device).view(1, -1, 1, 1),
            )
        return self._stats[device]

    def __call__(
        self, frames: torch.Tensor, train: bool, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        b, k, h, w, c = frames.shape
        x = frames.permute(0, 1, 4, 2, 3).reshape(b * k, c, h, w).float().div_(255.0)
        boxes = flip = None
        if train:
            # One crop per clip, shared by its K frames (as a per-clip transform would).
            boxes = sample_crop_boxes(b, h, w, self.scale, self.ratio, generator, x.device)
            boxes = boxes.repeat_interleave(k, dim=0)
            if self.hflip:
                flip = torch.rand(b, generator=generator, device=x.device) < 0.5
                flip = flip.repeat_interleave(k)
        x = crop_resize(x, boxes, self.size, flip)
        mean, std = self.stats(x.device)
        x = (x - mean) / std
        return x.view(b, k, c, self.size, self.size)
