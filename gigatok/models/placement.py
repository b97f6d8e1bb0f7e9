"""Where a model is built: ``torch.device(device)``, and on the meta device without initialising its weights.

A meta tensor has a shape and no values, so filling it does nothing, but torch still runs the fill: its random ops
(``normal_``, the first of which ``nn.Embedding`` calls) go through a Python reference that imports
``torch._dynamo`` on first use, 3-4 s once per process here, and the remaining fills take about a third of a
meta build. Parameter counts (dry runs, the size metrics of a launch) and state-dict shapes build on meta only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

# In-place ops that only write values (torch.nn.init's functions and the Tensor methods they call): skipped on
# meta tensors. Ops that change a
# tensor's shape or metadata (unsqueeze_, resize_, requires_grad_, ...) are left to run.
VALUE_FILLS = frozenset(
    {
        "normal_",
        "uniform_",
        "zero_",
        "fill_",
        "copy_",
        "clamp_",
        "erfinv_",
        "mul_",
        "add_",
        "sub_",
        "div_",
        "exp_",
        "random_",
        "bernoulli_",
        "exponential_",
        "log_normal_",
        "trunc_normal_",
        "constant_",
        "ones_",
        "zeros_",
        "xavier_uniform_",
        "xavier_normal_",
        "kaiming_uniform_",
        "kaiming_normal_",
        "orthogonal_",
    }
)


class SkipMetaFills(TorchFunctionMode):
    """Value fills of meta tensors return the tensor untouched (there is nothing to fill)."""

    def __torch_function__(
        self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if getattr(func, "__name__", None) in VALUE_FILLS:  # a Tensor method, or torch.nn.init's (tensor=...)
            target = args[0] if args else kwargs.get("tensor")
            if isinstance(target, torch.Tensor) and target.is_meta:
                return target
        return func(*args, **kwargs)


@contextlib.contextmanager
def placed(device: torch.device | str | None) -> Iterator[None]:
    """Build modules on ``device`` (default CPU); on the meta device their weights are left uninitialised."""
    where = torch.device(device or "cpu")
    with torch.device(where), SkipMetaFills() if where.type == "meta" else contextlib.nullcontext():
        yield
