"""Codebook usage as the authors log it: the share of codebook entries among the most recent code indices.

The authors' quantizer (vq_vit_model.py, ``codebook_show_usage``) keeps the last 65,536 indices it produced in a
buffer, shifting each batch's indices in, and reports ``len(unique(buffer)) / codebook_size``. Measured over one
local batch instead, usage is capped at tokens-per-batch / codebook size (a batch of 32 images x 256 tokens can
show at most half of 16,384 codes), so it is not comparable with the paper's Fig. 5.

Here each rank keeps its own share of the window (window / world_size of its latest indices, rounded up); the
usage is read from the union of the ranks' codes, so it covers the latest ``window`` indices of the global batch
stream. Two differences from the authors', both vanishing once the window has filled: their buffer starts as
zeros (code 0 counts as used until then) and, under DDP, each rank's buffer is overwritten by rank 0's at every
forward (DDP broadcasts buffers), so what rank 0 logs is its own latest 65,536 indices.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from gigatok.distributed import DistEnv


class CodebookUsageWindow:
    """The last ``window`` code indices (this rank's share of them) and the share of the codebook they use."""

    def __init__(self, codebook_size: int, window: int, env: DistEnv | None = None) -> None:
        if codebook_size < 1 or window < 1:
            raise ValueError(
                f"codebook usage window: codebook_size and window must be >= 1, got {codebook_size}, {window}"
            )
        self.codebook_size = codebook_size
        self.window = window
        self.env = env = env or DistEnv()
        self.capacity = -(-window // env.world_size)  # this rank's share, rounded up
        self.recent = torch.empty(0, dtype=torch.long)  # oldest first; at most ``capacity`` long

    def add(self, indices: torch.Tensor) -> None:
        """Shift a batch's indices in (any shape), dropping the oldest beyond the window; no host synchronisation."""
        flat = indices.detach().reshape(-1).long()
        if self.recent.device != flat.device:
            self.recent = self.recent.to(flat.device)
        self.recent = torch.cat([self.recent, flat])[-self.capacity :]

    def usage(self) -> float:
        """Share of codebook entries among the window's indices, over all ranks (0 before any index was added)."""
        used = torch.zeros(self.codebook_size, dtype=torch.float32, device=self.recent.device)
        if self.recent.numel():
            used[self.recent] = 1.0
        if self.env.world_size > 1:
            if self.env.backend == "nccl":
                used = used.to(torch.device("cuda", torch.cuda.current_device()))
            dist.all_reduce(used, op=dist.ReduceOp.MAX)
        return float(used.mean())

    def state(self) -> dict[str, Any]:
        """For the checkpoint: a resumed run then logs the usage an uninterrupted one would."""
        return {"window": self.window, "recent": self.recent.cpu()}

    def rank_states(self) -> list[dict[str, Any]]:
        """Every rank's :meth:`state`, for the checkpoint (a collective: every rank calls it)."""
        if self.env.world_size == 1:
            return [self.state()]
        states: list[Any] = [None] * self.env.world_size
        dist.all_gather_object(states, self.state())
        return states

    def load(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state` (of any window: the newest indices this rank can hold are kept)."""
        self.recent = torch.as_tensor(state["recent"], dtype=torch.long)[-self.capacity :].to(self.recent.device)


def default_window(codebook_size: int, window: int | None) -> int:
    """``train.usage_window``, or 4x the codebook size when None: the authors' 65,536 indices for 16,384 codes."""
    return window if window is not None else 4 * codebook_size
