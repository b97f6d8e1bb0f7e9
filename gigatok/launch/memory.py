"""Peak GPU memory per GPU of a training stage, DDP against FSDP, estimated (no GPU is asked): model states from the
model's parameter count, activations counted from the autograd graph of one training forward on fake tensors.

Model states, per parameter, under the mixed-precision policy the loops use on CUDA (gigatok.fsdp):

- DDP: fp32 weights, fp32 gradients and AdamW's two fp32 moments (16 B), DDP's fp32 gradient buckets (4 B), and the
  bf16 weight copies autocast keeps during the forward (2 B): 22 B, on every GPU.
- FSDP on ``gpus`` GPUs: the 16 B of fp32 weights, gradients and moments divided by ``gpus``; on top, the units
  gathered at once: the root (never resharded between forward and backward) and two blocks (the one computing and
  the one prefetched), each as bf16 weights (2 B) and unsharded fp32 gradients before their reduce-scatter (4 B).

Activations: the model is built in ``FakeTensorMode`` (shapes and dtypes, no memory, no arithmetic) and the training
forward runs under bf16 autocast (CPU's, whose casts are those of CUDA's for convolutions and matmuls); every tensor
autograd saves for backward is counted once by its storage (``saved_tensors_hooks``), parameters left out. The count
at batch 2 minus the count at batch 1 is what one sample adds: the rest (autocast's bf16 weight copies) is already a
model state above. The tokenizer's forward is the generator's: CNN encoder, transformers, quantizer, decoders, and the
loss networks its gradient flows through (LPIPS-VGG16 on the reconstruction, the discriminator once the GAN is on);
the AR's is teacher forcing plus its cross-entropy on fp32 logits. Fused attention keeps no score matrix on either
device. Not counted: the allocator's fragmentation, NCCL buffers and the discriminator's own update (a later, smaller
pass). Frozen networks (LPIPS-VGG16, the run's semantic teacher) are replicated in either mode, as bf16 weights;
their parameters are counted from the built architectures.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from unittest import mock

GIB = 2**30
DDP_BYTES, FSDP_SHARDED_BYTES, GATHERED_BYTES = 22, 16, 6
DDP_BUCKET_BYTES = 4  # of DDP_BYTES: the gradient buckets, which a single process without DDP does not have
IMAGE_SIZE = 256  # the paper's tokenizer resolution


@dataclass(frozen=True)
class MemoryEstimate:
    """One stage's estimated peak per GPU, in bytes, for DDP and FSDP on ``gpus`` GPUs, with the run's own
    activation checkpointing setting; ``other_activations`` is what the other setting would keep."""

    what: str  # "tokenizer XL-XXL", "AR-XXL"
    params: int  # trained parameters
    batch_per_gpu: float
    activations: float  # at batch_per_gpu
    frozen: float  # replicated frozen weights
    ddp: float
    fsdp: float
    left_out: str = ""
    checkpointing: bool = False  # the run's performance.activation_checkpointing
    other_activations: float = 0.0  # at batch_per_gpu, with checkpointing the other way

    def row(self, gpus: int) -> str:
        other = self.other_activations - self.activations
        label = "without activation checkpointing" if self.checkpointing else "with activation checkpointing"
        return (
            f"  {self.what:18} {self.params / 1e9:6.2f} B params, batch {self.batch_per_gpu:g} a GPU: "
            f"DDP {self.ddp / GIB:6.1f} GiB, FSDP on {gpus} {self.fsdp / GIB:6.1f} GiB (activations "
            f"{self.activations / GIB:.1f} GiB{', checkpointed' if self.checkpointing else ''}; {label}: DDP "
            f"{(self.ddp + other) / GIB:.1f}, FSDP {(self.fsdp + other) / GIB:.1f})"
            f"{' ' + self.left_out if self.left_out else ''}"
        )


@contextmanager
def _fake_build() -> Iterator[None]:
    """Build and run models on fake tensors under bf16 autocast. Truncated-normal init's rejection loop and the
    quantizer's code histogram (``bincount``, whose output shape depends on values) ask for values, so they are
    stood in for: only shapes are counted here, never values."""
    import torch
    from torch import nn
    from torch._subclasses.fake_tensor import FakeTensorMode

    with (
        FakeTensorMode(allow_non_fake_inputs=True),
        mock.patch.object(nn.init, "trunc_normal_", lambda t, *a, **k: t),
        mock.patch.object(torch, "bincount", lambda x, minlength=0: torch.zeros(minlength)),
        torch.autocast("cpu", torch.bfloat16),
    ):
        yield


def saved_bytes(forward: Callable[[], Any]) -> int:
    """Bytes autograd keeps for backward while ``forward`` runs: each saved storage once, parameters (and views of
    them) left out."""
    return saved_bytes_split(forward, [])[0]


def saved_bytes_split(forward: Callable[[], Any], units: list[Any]) -> tuple[int, int]:
    """(bytes kept for backward as ``forward`` runs, bytes kept when each module of ``units`` is checkpointed), from
    one plain pass: what each unit saves inside itself is told apart from the rest by hooks around its call. A
    checkpointed unit keeps its tensor inputs instead, and during backward one unit at a time holds what it saves
    (the largest counted)."""
    import torch
    from torch import nn

    # Keyed by id, holding the storage: a storage freed mid-forward (a loss network's discarded graph) would
    # otherwise hand its id to a later one, and the later one would go uncounted.
    outside: dict[int, tuple[torch.UntypedStorage, int]] = {}
    inside: list[dict[int, tuple[torch.UntypedStorage, int]]] = [{} for _ in units]
    inputs: dict[int, tuple[torch.UntypedStorage, int]] = {}
    current: list[int | None] = [None]

    def keep(into: dict[int, tuple[torch.UntypedStorage, int]], t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        into[id(storage)] = (storage, storage.nbytes())

    def pack(t: torch.Tensor) -> torch.Tensor:
        if not isinstance(t, nn.Parameter) and not isinstance(t._base, nn.Parameter):  # a weight's transpose
            keep(outside if current[0] is None else inside[current[0]], t)
        return t

    def entering(index: int) -> Callable[..., None]:
        def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            current[0] = index
            for value in [*args, *kwargs.values()]:
                if isinstance(value, torch.Tensor):
                    keep(inputs, value)

        return hook

    def leaving(*_: Any) -> None:
        current[0] = None

    handles = [u.register_forward_pre_hook(entering(i), with_kwargs=True) for i, u in enumerate(units)]
    handles += [u.register_forward_hook(leaving) for u in units]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            forward()
    finally:
        for handle in handles:
            handle.remove()

    def total(*parts: dict[int, tuple[torch.UntypedStorage, int]]) -> int:
        return sum(nbytes for _, nbytes in {k: v for part in parts for k, v in part.items()}.values())

    largest_unit = max((total(unit) for unit in inside), default=0)
    return total(outside, *inside), total(outside, inputs) + largest_unit


def per_sample_bytes(forward: Callable[[int], Any]) -> float:
    """What one more sample adds to the saved activations of ``forward(batch)``: batch 2 minus batch 1."""
    return float(saved_bytes(lambda: forward(2)) - saved_bytes(lambda: forward(1)))


def per_sample_split(forward: Callable[[int], Any], units: list[Any]) -> tuple[float, float]:
    """:func:`saved_bytes_split` of one more sample: batch 2 minus batch 1, without and with checkpointing."""
    plain_2, checkpointed_2 = saved_bytes_split(lambda: forward(2), units)
    plain_1, checkpointed_1 = saved_bytes_split(lambda: forward(1), units)
    return float(plain_2 - plain_1), float(checkpointed_2 - checkpointed_1)


def _activations(per_sample: tuple[float, float], batch: float, checkpointing: bool) -> tuple[float, float]:
    """(activations with the run's checkpointing setting, with the other one) at ``batch``."""
    plain, checkpointed = (x * batch for x in per_sample)
    return (checkpointed, plain) if checkpointing else (plain, checkpointed)


def _states(params: int, root: int, block: int, gpus: int) -> tuple[float, float]:
    """(DDP, FSDP) bytes of model states per GPU."""
    ddp = DDP_BYTES * params
    fsdp = FSDP_SHARDED_BYTES * params / gpus + GATHERED_BYTES * (root + 2 * block)
    return ddp, fsdp


@functools.cache
def _lpips_trunk() -> Any:
    """LPIPS's VGG16 trunk (torchvision's VGG16 features to relu5_3, the layers ``lpips.pretrained_networks.vgg16``
    slices), randomly initialised: its shapes are all that is used. Built once a process: torchvision builds and
    initialises the whole VGG16 with its 120M-parameter classifier first, ~2 s each time."""
    from torchvision.models import vgg16

    return vgg16(weights=None).features[:30].requires_grad_(False)


@functools.cache
def _inception_distance_trunk() -> Any:
    """The Inception distance's blocks (Inception-v3 through Mixed_5d, torchvision's layout), randomly initialised:
    shapes only, as :func:`_lpips_trunk`."""
    from gigatok.perceptual import INCEPTION_DISTANCE_BLOCKS
    from gigatok.semantic_encoders import inception_blocks_substitute

    return inception_blocks_substitute()[:INCEPTION_DISTANCE_BLOCKS].requires_grad_(False)


def _perceptual_trunk(cfg: Any) -> Any | None:
    """The perceptual term's frozen network, or None without the term ("auto" counts as LPIPS: the larger)."""
    if cfg.loss.perceptual_weight == 0 or cfg.loss.perceptual == "off":
        return None
    return _inception_distance_trunk() if cfg.loss.perceptual == "inception" else _lpips_trunk()


def _loss_networks(cfg: Any) -> list[Any]:
    """The frozen networks the generator's gradient flows through: the perceptual term's (LPIPS's VGG16 trunk or the
    Inception distance's blocks) and the PatchGAN. Built with real weights (small), run on fake inputs. The DINO
    discriminator's random crop and augmentation ask for values, which fake tensors do not have: its row says it is
    left out."""
    from gigatok.models.discriminator import PatchDiscriminator

    nets: list[Any] = []
    if (trunk := _perceptual_trunk(cfg)) is not None:
        nets.append(trunk)
    if cfg.loss.gan_weight > 0 and cfg.loss.discriminator == "patchgan":
        nets.append(PatchDiscriminator(cfg.loss.disc_channels, cfg.loss.disc_layers).requires_grad_(False))
    return nets


def _frozen_params(cfg: Any) -> int:
    """Parameters of the replicated frozen networks, counted from the built architectures: the perceptual term's
    and the run's own semantic teacher at its resolution."""
    import torch

    from gigatok.semantic_encoders import semantic_encoder_architecture

    trunk = _perceptual_trunk(cfg)
    frozen = sum(p.numel() for p in trunk.parameters()) if trunk is not None else 0
    sem = cfg.tokenizer.semantic
    if sem.enabled:
        with torch.device("meta"):  # shapes only: no init arithmetic, no memory
            teacher = semantic_encoder_architecture(sem.encoder, sem.encoder_resolution)
        frozen += sum(p.numel() for p in teacher.parameters())
    return frozen


def tokenizer_memory(cfg: Any, gpus: int) -> MemoryEstimate:
    """The tokenizer run ``cfg`` (a TokenizerRunConfig) at its global batch over ``gpus`` GPUs."""
    import torch

    from gigatok.models.checkpointing import checkpoint_units
    from gigatok.models.tokenizer import build_tokenizer

    t = cfg.tokenizer
    nets = _loss_networks(cfg)
    with _fake_build():
        model = build_tokenizer(t)

        def forward(batch: int) -> None:
            reconstruction = model(torch.randn(batch, 3, t.image_size, t.image_size)).reconstruction
            for net in nets:
                net(reconstruction)

        per_sample = per_sample_split(forward, list(checkpoint_units(model)))
    params = sum(p.numel() for p in model.parameters())
    blocks = [*model.encoder.stack.blocks, *model.decoder.stack.blocks]
    block = max(sum(p.numel() for p in b.parameters()) for b in blocks)
    root = params - sum(sum(p.numel() for p in b.parameters()) for b in blocks)
    batch = cfg.train.batch_size / gpus
    frozen = 2 * _frozen_params(cfg)
    ddp, fsdp = _states(params, root, block, gpus)
    checkpointing = cfg.performance.activation_checkpointing
    acts, other = _activations(per_sample, batch, checkpointing)
    left = "(the DINO discriminator's activations not counted)" if cfg.loss.discriminator == "dino" else ""
    total = acts + frozen
    return MemoryEstimate(
        f"tokenizer {t.name}", params, batch, acts, frozen, ddp + total, fsdp + total, left, checkpointing, other
    )


def ar_memory(cfg: Any, gpus: int) -> MemoryEstimate:
    """The AR run ``cfg`` (an ARRunConfig) at its global batch over ``gpus`` GPUs."""
    import torch

    from gigatok.models.ar import build_ar_model
    from gigatok.models.checkpointing import checkpoint_units

    m = cfg.model
    with _fake_build():
        model = build_ar_model(m)

        def forward(batch: int) -> None:
            tokens = torch.zeros(batch, m.num_tokens, dtype=torch.long)
            model.loss(tokens, torch.zeros(batch, dtype=torch.long))

        per_sample = per_sample_split(forward, list(checkpoint_units(model)))
    params = sum(p.numel() for p in model.parameters())
    block = sum(p.numel() for p in model.layers[0].parameters())
    batch = cfg.train.batch_size / gpus
    ddp, fsdp = _states(params, params - block * m.depth, block, gpus)
    checkpointing = cfg.performance.activation_checkpointing
    acts, other = _activations(per_sample, batch, checkpointing)
    return MemoryEstimate(
        f"AR-{cfg.size}",
        params,
        batch,
        acts,
        0.0,
        ddp + acts,
        fsdp + acts,
        checkpointing=checkpointing,
        other_activations=other,
    )


def single_process_bytes(estimate: MemoryEstimate) -> float:
    """The estimate for one process training alone (no DDP wrapper, so no gradient buckets): what
    ``bench/gpu_mfu.py --memory`` measures on one GPU, to check the estimate against."""
    return estimate.ddp - DDP_BUCKET_BYTES * estimate.params


def plan_memory(specs: list[Any], gpus: int) -> list[MemoryEstimate]:
    """One estimate per distinct trained model of the plan (tokenizers, then AR models), in plan order."""
    seen: dict[str, MemoryEstimate] = {}
    for spec in specs:
        key = f"tok {spec.tokenizer.tokenizer.name} {spec.tokenizer.train.batch_size}"
        if key not in seen and not spec.tokenizer.source:
            seen[key] = tokenizer_memory(spec.tokenizer, gpus)
        if spec.ar is not None and not spec.ar.source:
            key = f"ar {spec.ar.size} {spec.ar.train.batch_size}"
            if key not in seen:
                seen[key] = ar_memory(spec.ar, gpus)
    return list(seen.values())


def memory_lines(specs: list[Any], gpus: int) -> list[str]:
    """The estimate's memory section, as printed by ``studies/run.py --dry-run --estimate``."""
    rows = plan_memory(specs, gpus)
    head = (
        "peak memory per GPU, ESTIMATED (parameter count + activations autograd saves on fake tensors under bf16;"
        " gigatok/launch/memory.py):"
    )
    return [head, *(r.row(gpus) for r in rows)]
