"""Regenerate tests/fixtures/parity_gpt1d.pt from the authors' code: their `gpt_1d` GPT at reduced width.

    python tools/parity/ar.py --authors /path/to/SilentView/GigaTok --out tests/fixtures

Builds ``autoregressive.models.gpt_1d.Transformer`` (the class of the GPT probes and system-level models) at a
width of 64 with two blocks, a vocabulary of 48 codes, 16 tokens and 10 classes, with the authors' defaults for
everything else (1D absolute positions, no RoPE, no adaLN, no QK-norm, RMSNorm eps 1e-5, SwiGLU), except
``multiple_of`` 32 so that the FFN width is rounded (int(2 * 4 * 64 / 3) = 170 -> 192). Every parameter is then
overwritten with seeded random values (their init leaves the output head zero), and in eval mode, fp32 on the
CPU, their code computes:

- ``logits``, ``loss``: teacher-forced logits (B, 16, V) for [class, t_0 .. t_14] (one row with the null class)
  and their cross-entropy against t_0 .. t_15;
- ``features``: the linear-probe features of ``autoregressive/lin_probe/lin_probe.py`` (null class, the hidden
  states after n_layer // 2 blocks, mean over positions);
- ``sample_*``: their ``generate`` (KV cache, CFG over a cond/uncond batch) with top-k 1 (deterministic) for the
  constant schedule and the step schedule, the sampled tokens and the guided logits of every step;
- ``init_mean/<key>``, ``init_std/<key>``: each tensor's mean and standard deviation after their own
  initialisation (seed 0), before the weights are randomised.

Nothing here is imported by the project: the fixture holds numbers, and tests/test_parity_ar.py checks the
workbench against them without the authors' code. The output is bit-for-bit reproducible (fixed seeds, one thread).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from authors_checkout import authors_commit, put_first_on_path

FIXTURE = "parity_gpt1d.pt"
SEED = 0
# Plain values only: the fixture's "authors_config" (the keyword arguments of their ModelArgs).
AUTHORS_CONFIG: dict[str, Any] = {
    "dim": 64,
    "n_layer": 2,
    "n_head": 4,
    "multiple_of": 32,
    "vocab_size": 48,
    "block_size": 16,
    "num_classes": 10,
    "cls_token_num": 1,
    "class_dropout_prob": 0.1,
    "model_type": "c2i",
    "rope": False,
}
CFG_SCALE = 3.0
STEP_WINDOW_START = 0.3  # their step schedule's cfg_schedule_kwargs["window_start"]


def import_authors(root: Path) -> tuple[Any, Any]:
    if not (root / "autoregressive" / "models" / "gpt_1d.py").is_file():
        sys.exit(f"--authors {root}: no autoregressive/models/gpt_1d.py there (a SilentView/GigaTok checkout?)")
    put_first_on_path(root)
    from autoregressive.models import generate, gpt_1d

    return gpt_1d, generate


@torch.no_grad()
def randomise(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Seeded values for every parameter, so a wrongly mapped or ignored one changes the outputs."""
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=gen)
        if name.endswith("norm.weight"):
            p.copy_(1 + 0.2 * noise)
        elif p.ndim == 2 and name.endswith(".weight") and "embedding" not in name and "tok_embeddings" not in name:
            p.copy_(noise / p.shape[1] ** 0.5)  # Linear (out, in): unit-scale activations
        else:
            p.copy_(0.5 * noise)  # embeddings and positions


def record_sampling(generate: Any, model: torch.nn.Module, labels: torch.Tensor, **kwargs: Any) -> tuple[Any, Any]:
    """Their ``generate`` with the logits that reach its ``sample`` (the CFG-combined logits of each step)."""
    seen: list[torch.Tensor] = []
    original = generate.sample

    def spy(logits: torch.Tensor, **sampling: Any) -> Any:
        seen.append(logits[:, -1, :].clone())
        return original(logits, **sampling)

    generate.sample = spy
    try:
        tokens = generate.generate(model, labels, AUTHORS_CONFIG["block_size"], **kwargs)
    finally:
        generate.sample = original
    return tokens.long(), torch.stack(seen, dim=1)


def build_fixture(root: Path) -> dict[str, Any]:
    gpt_1d, generate = import_authors(root)
    torch.manual_seed(SEED)
    model = gpt_1d.Transformer(gpt_1d.ModelArgs(**AUTHORS_CONFIG))
    # Their initialisation, as per-tensor statistics (the weights themselves are overwritten below).
    init_stats = {
        f"init_{stat}/{k}": getattr(v.float(), stat)()
        for k, v in model.state_dict().items()
        for stat in ("mean", "std")
    }
    gen = torch.Generator().manual_seed(SEED)
    randomise(model, gen)
    model.eval()
    # Taken before sampling: generate() adds KV-cache buffers to the module (not part of a checkpoint).
    state_dict = {k: v.detach().float().clone().contiguous() for k, v in model.state_dict().items()}

    cfg = AUTHORS_CONFIG
    null = cfg["num_classes"]
    labels = torch.tensor([3, 7, 0, null])
    tokens = torch.randint(0, cfg["vocab_size"], (4, cfg["block_size"]), generator=gen)
    sample_labels = torch.tensor([2, 9])
    with torch.no_grad():
        logits, _ = model(idx=tokens[:, :-1], cond_idx=labels)
        _, loss = model(idx=tokens[:, :-1], cond_idx=labels, targets=tokens)
        probe_labels = torch.full((tokens.shape[0],), null)
        inner = model(idx=tokens[:, :-1], cond_idx=probe_labels, ret_inner_feat_layer=cfg["n_layer"] // 2)
        features = inner.mean(dim=1)
    sampling = {"temperature": 1.0, "top_k": 1, "top_p": 1.0, "sample_logits": True}
    const_tokens, const_logits = record_sampling(
        generate, model, sample_labels, cfg_scale=CFG_SCALE, cfg_schedule="constant", **sampling
    )
    step_tokens, step_logits = record_sampling(
        generate,
        model,
        sample_labels,
        cfg_scale=CFG_SCALE,
        cfg_schedule="step",
        cfg_schedule_kwargs={"window_start": STEP_WINDOW_START},
        **sampling,
    )
    return {
        "authors_commit": authors_commit(root),
        "authors_class": "gpt_1d.Transformer",
        "authors_config": dict(AUTHORS_CONFIG),
        "state_dict": state_dict,
        "inputs": {
            "labels": labels,
            "tokens": tokens,
            "sample_labels": sample_labels,
            "cfg_scale": torch.tensor(CFG_SCALE),
            "step_window_start": torch.tensor(STEP_WINDOW_START),
        },
        "outputs": {
            "logits": logits.float(),
            "loss": loss.float(),
            "features": features.float(),
            "sample_constant_tokens": const_tokens,
            "sample_constant_logits": const_logits,
            "sample_step_tokens": step_tokens,
            "sample_step_logits": step_logits,
            **init_stats,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--authors", type=Path, required=True, help="a checkout of SilentView/GigaTok")
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures"), help="folder for " + FIXTURE)
    args = parser.parse_args()
    torch.set_num_threads(1)  # one summation order, so the file is the same bit for bit on every run
    torch.use_deterministic_algorithms(True)
    import torch.distributed as dist

    # Their generate() asks torch.distributed for its rank: a one-process group on a file store answers it.
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=0, world_size=1)
        try:
            fixture = build_fixture(args.authors.resolve())
        finally:
            dist.destroy_process_group()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / FIXTURE
    torch.save(fixture, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    print(f"{path}: {path.stat().st_size / 1024:.0f} KiB, sha256 {digest}")


if __name__ == "__main__":
    main()
