"""GroupNorm that can run in the autocast dtype.

Under CUDA autocast, ``group_norm`` is on torch's fp32 list: a bf16 convolution output is read, normalised and
written back as fp32, the SiLU after it runs in fp32, and the next convolution casts it to bf16 again. At 256 px
those are the largest tensors of the tokenizer step, and that traffic is memory-bound work beside every
convolution. With ``compute_in_autocast_dtype`` set (``PerformanceConfig.low_precision_norms``, through
``set_low_precision_norms``), the norm takes and returns the autocast dtype; the kernel still accumulates its
statistics in fp32, so only the output's rounding changes (to what the next convolution would round it to anyway).
Outside autocast it is ``nn.GroupNorm``, with the same parameters and state-dict keys.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GroupNorm(nn.GroupNorm):
    compute_in_autocast_dtype: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        device = x.device.type
        if not (self.compute_in_autocast_dtype and torch.is_autocast_enabled(device)):
            return super().forward(x)
        dtype = torch.get_autocast_dtype(device)
        weight = None if self.weight is None else self.weight.to(dtype)
        bias = None if self.bias is None else self.bias.to(dtype)
        with torch.autocast(device, enabled=False):
            return F.group_norm(x.to(dtype), self.num_groups, weight, bias, self.eps)


def set_low_precision_norms(model: nn.Module, on: bool) -> nn.Module:
    """Every :class:`GroupNorm` of ``model`` in the autocast dtype (True) or in fp32 as autocast puts it (False)."""
    for module in model.modules():
        if isinstance(module, GroupNorm):
            module.compute_in_autocast_dtype = on
    return model
