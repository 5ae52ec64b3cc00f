"""Token-layout helpers shared by the algorithms."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def next_valid(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """x at the first valid position strictly after t, per row of [B, T] (0 where there
    is none). A reverse running minimum over valid positions, so holes are skipped."""
    T = valid.shape[1]
    if T == 0:
        return x.new_zeros(x.shape)  # (the padding below would make it [B, 1])
    pos = torch.arange(T, device=valid.device).expand_as(valid)
    first_at_or_after = torch.where(valid, pos, T).flip(-1).cummin(-1).values.flip(-1)
    after = F.pad(first_at_or_after[:, 1:], (0, 1), value=T)
    return F.pad(x, (0, 1)).gather(-1, after)  # column T reads 0


def last_valid(valid: torch.Tensor) -> torch.Tensor:
    """[B, T] bool: True at each row's last valid position."""
    return valid & ~F.pad(valid.flip(-1).cumsum(-1).flip(-1)[:, 1:] > 0, (0, 1))
