"""Whole-batch augmentation and normalization as tensor ops on the batch's device.

No Python loop over samples: a random crop pads the batch once and gathers every
sample's shifted window with index grids; a horizontal flip reverses the column index
of the flipped samples. These functions are pure: the same inputs give the same output.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["crop_flip_with", "normalize", "random_crop_flip"]


def crop_flip_with(x: Tensor, offsets_y: Tensor, offsets_x: Tensor, flip_mask: Tensor, pad: int) -> Tensor:
    """Crop and flip a batch with given per-sample offsets and flip mask.

    Sample ``i`` of the result is the ``H x W`` window at ``(offsets_y[i], offsets_x[i])``
    of ``x[i]`` zero-padded by ``pad`` on every side, mirrored left-right where
    ``flip_mask[i]``. Offsets must lie in ``[0, 2 * pad]``.

    Args:
        x: images ``(N, C, H, W)`` of any dtype.
        offsets_y, offsets_x: integer tensors ``(N,)`` on ``x.device``.
        flip_mask: bool tensor ``(N,)`` on ``x.device``.
        pad: the padding.
    """
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad)) if pad else x
    width_padded = padded.shape[3]
    rows = offsets_y.view(n, 1).long() + torch.arange(h, device=x.device)
    cols = offsets_x.view(n, 1).long() + torch.arange(w, device=x.device)
    cols = torch.where(flip_mask.view(n, 1), cols.flip(1), cols)
    picked_rows = padded.gather(2, rows.view(n, 1, h, 1).expand(n, c, h, width_padded))
    return picked_rows.gather(3, cols.view(n, 1, 1, w).expand(n, c, h, w))


def random_crop_flip(
    x_uint8: Tensor, pad: int, flip: bool, generator: torch.Generator | None = None
) -> Tensor:
    """Random crop (zero padding ``pad``) and, if ``flip``, random horizontal flip of a batch.

    Random numbers come from ``generator`` (on its own device, then moved to the batch's
    device) or, without one, from the default generator of the batch's device.
    """
    n = x_uint8.shape[0]
    draw_device = generator.device if generator is not None else x_uint8.device
    offsets = torch.randint(0, 2 * pad + 1, (2, n), generator=generator, device=draw_device)
    if flip:
        flip_mask = torch.randint(0, 2, (n,), generator=generator, device=draw_device).bool()
    else:
        flip_mask = torch.zeros(n, dtype=torch.bool, device=draw_device)
    offsets = offsets.to(x_uint8.device, non_blocking=True)
    flip_mask = flip_mask.to(x_uint8.device, non_blocking=True)
    return crop_flip_with(x_uint8, offsets[0], offsets[1], flip_mask, pad)


def normalize(
    x_uint8: Tensor,
    mean: Sequence[float] | Tensor,
    std: Sequence[float] | Tensor,
    *,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
) -> Tensor:
    """``(x / 255 - mean) / std`` per channel, computed in float32 and returned as ``dtype``.

    ``mean``/``std`` hold one value per channel (pass tensors already on the batch's
    device to avoid a host-to-device copy per call).
    """
    channels = x_uint8.shape[1]
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=x_uint8.device).view(1, channels, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=x_uint8.device).view(1, channels, 1, 1)
    scale = 1.0 / (255.0 * std_t)
    shift = -mean_t / std_t
    layout = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.addcmul(shift, x_uint8.to(dtype=torch.float32, memory_format=layout), scale)
    if channels_last:
        out = out.contiguous(memory_format=torch.channels_last)
    return out if dtype == torch.float32 else out.to(dtype)
