"""The workbench AR model computes the authors' gpt_1d function, and their GPT checkpoints convert.

tests/fixtures/parity_gpt1d.pt holds a reduced-width gpt_1d.Transformer with random weights and the outputs the
authors' code computed from it (tools/parity/ar.py regenerates it bit for bit from a SilentView/GigaTok checkout).
No authors' code is needed here.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
import torch

from gigatok.config import ARConfig, ar_run, tokenizer_run
from gigatok.convert import ConversionError
from gigatok.convert.ar import load_authors_ar
from gigatok.models.ar import ARModel, build_ar_model
from gigatok.sampling import SamplingConfig, cfg_scales, sample_tokens

FIXTURE = Path(__file__).parent / "fixtures" / "parity_gpt1d.pt"
ATOL = 1e-5  # fp32; the teacher-forced logits agree to the last bit today


@pytest.fixture(scope="module")
def fixture() -> dict[str, Any]:
    return torch.load(FIXTURE, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def model(fixture: dict[str, Any]) -> ARModel:
    # Four heads at width 64: the head count is the one thing the shapes cannot tell (see gigatok/convert/ar.py).
    cfg, weights = load_authors_ar(fixture["state_dict"], heads=fixture["authors_config"]["n_head"])
    m = build_ar_model(cfg).eval()
    m.load_state_dict(weights, strict=True)
    return m


def test_fixture_names_its_source(fixture: dict[str, Any]) -> None:
    assert fixture["authors_commit"].startswith("182920c")
    assert fixture["authors_class"] == "gpt_1d.Transformer"


def test_converted_config_matches_the_authors_arguments(fixture: dict[str, Any], model: ARModel) -> None:
    a, cfg = fixture["authors_config"], model.cfg
    assert (cfg.width, cfg.depth, cfg.heads) == (a["dim"], a["n_layer"], a["n_head"])
    assert (cfg.vocab_size, cfg.num_tokens, cfg.num_classes) == (a["vocab_size"], a["block_size"], a["num_classes"])
    assert cfg.ffn_hidden == 192  # int(8 * 64 / 3) = 170 rounded up to their multiple_of 32
    assert (cfg.attn_dropout, cfg.init) == (0.0, "llamagen")  # the paper profile's, which the weights cannot tell


def test_teacher_forced_logits_match(fixture: dict[str, Any], model: ARModel) -> None:
    with torch.no_grad():
        logits = model(fixture["inputs"]["tokens"], fixture["inputs"]["labels"])
    expected = fixture["outputs"]["logits"]
    assert logits.shape == expected.shape
    assert torch.allclose(logits, expected, atol=ATOL, rtol=0), (logits - expected).abs().max()


def test_training_loss_matches(fixture: dict[str, Any], model: ARModel) -> None:
    with torch.no_grad():
        loss = model.loss(fixture["inputs"]["tokens"], fixture["inputs"]["labels"])  # eval: no class dropout
    assert torch.allclose(loss, fixture["outputs"]["loss"], atol=ATOL, rtol=0)


def test_llamagen_init_matches_the_authors_statistics(fixture: dict[str, Any], model: ARModel) -> None:
    """init "llamagen": per tensor, the mean and spread their initialize_weights gives (zero head, N(0, 0.02),
    positions N(0, width**-0.5)), within sampling error of these small tensors."""
    _, ours = load_authors_ar(_authors_layout(model.cfg, "cpu", seed=1), heads=model.cfg.heads)
    outputs = fixture["outputs"]
    for key in fixture["state_dict"]:
        theirs_std, theirs_mean = outputs[f"init_std/{key}"].item(), outputs[f"init_mean/{key}"].item()
        name = {
            "positional_embedding": "pos_embeddings",
            "cls_embedding.embedding_table.weight": "class_embeddings.weight",
        }.get(key, key)
        mine = ours[name]
        assert abs(mine.mean().item() - theirs_mean) < 0.1 * max(theirs_std, 1e-3) + 1e-6, key
        if theirs_std == 0:
            assert mine.std().item() == 0, key
        else:
            assert abs(mine.std().item() / theirs_std - 1) < 0.1, key


def test_linear_probe_features_match(fixture: dict[str, Any], model: ARModel) -> None:
    """lin_probe.py: null class, the hidden states after n_layer // 2 blocks, mean over positions."""
    with torch.no_grad():
        features = model.features(fixture["inputs"]["tokens"])
    assert torch.allclose(features, fixture["outputs"]["features"], atol=ATOL, rtol=0)


def _guided_logits(model: ARModel, labels: torch.Tensor, tokens: torch.Tensor, scales: list[float]) -> torch.Tensor:
    """KV-cached CFG logits of every step, fed the given tokens: a cond batch and a null-class batch, mixed."""
    b, n = tokens.shape
    both = torch.cat([labels, torch.full_like(labels, model.null_class)])
    cache = model.new_cache(2 * b, torch.device("cpu"))
    steps = []
    with torch.no_grad():
        for i in range(n):
            x = model.embed(None, both, 0) if i == 0 else model.embed(tokens[:, i - 1 : i].repeat(2, 1), None, i)
            logits = model.decode_step(x, cache, start=i)
            steps.append(logits[b:] + scales[i] * (logits[:b] - logits[b:]))
    return torch.stack(steps, dim=1)


@pytest.mark.parametrize("schedule", ["constant", "step"])
def test_cfg_sampling_matches(fixture: dict[str, Any], model: ARModel, schedule: str) -> None:
    """Their generate() with top-k 1: the same tokens, and the same guided logits at every KV-cached step."""
    inputs, outputs = fixture["inputs"], fixture["outputs"]
    cfg = SamplingConfig(
        cfg_scale=float(inputs["cfg_scale"]),
        cfg_schedule=schedule,
        top_k=1,
        step_fraction=float(inputs["step_window_start"]),
        step_rule="authors",
    )
    expected_tokens = outputs[f"sample_{schedule}_tokens"]
    scales = cfg_scales(cfg, model.cfg.num_tokens)
    logits = _guided_logits(model, inputs["sample_labels"], expected_tokens, scales)
    expected = outputs[f"sample_{schedule}_logits"]
    assert torch.allclose(logits, expected, atol=ATOL, rtol=0), (logits - expected).abs().max()
    assert torch.equal(sample_tokens(model, inputs["sample_labels"], cfg), expected_tokens)


# ----------------------------------------------------------------------------------------------------------------
# Conversion: released-checkpoint layouts and refusals
# ----------------------------------------------------------------------------------------------------------------


def _authors_layout(model_cfg: ARConfig, device: str = "meta", seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict in gpt_1d.Transformer's key layout for a workbench-shaped model (a released-file stand-in)."""
    torch.manual_seed(seed)
    weights = dict(build_ar_model(model_cfg, device).state_dict())
    pos = weights.pop("pos_embeddings")[0]
    weights["positional_embedding"] = torch.cat([pos, pos[-1:]])  # their extra, never-used row
    weights["cls_embedding.embedding_table.weight"] = weights.pop("class_embeddings.weight")
    return weights


@pytest.mark.parametrize("size,heads", [("B", 12), ("L", 16), ("XL", 20), ("XXL", 24)])
def test_released_sizes_convert_with_the_authors_heads(size: str, heads: int) -> None:
    """GPT_B256_e300_VQ_*.pt ... GPT_XXL256_e300_VQ_XLXXL.pt: heads from the authors' table by width."""
    paper = ar_run(tokenizer_run("S-S", profile="paper"), size).model
    cfg, weights = load_authors_ar({"model": _authors_layout(paper), "steps": 250_000})
    assert cfg == paper
    assert cfg.heads == heads
    assert set(weights) == set(build_ar_model(cfg, "meta").state_dict())


def test_training_checkpoint_file_reads_model_and_args(fixture: dict[str, Any], tmp_path: Path) -> None:
    """train_c2i.py's checkpoint: their GPT loaders read "model" even beside an "ema"; args names the size."""
    trained = fixture["state_dict"]
    ema = {k: torch.zeros_like(v) for k, v in trained.items()}
    path = tmp_path / "GPT_stand_in.pt"
    torch.save({"model": trained, "ema": ema, "steps": 5, "args": argparse.Namespace(gpt_model="GPT-B")}, path)
    with pytest.raises(ConversionError, match="args.gpt_model names a 768-wide GPT, but the weights are 64 wide"):
        load_authors_ar(path)
    torch.save({"model": trained, "ema": ema, "steps": 5, "args": argparse.Namespace(gpt_model=None)}, path)
    _, weights = load_authors_ar(path, heads=4)
    assert torch.equal(weights["output.weight"], trained["output.weight"])
    _, only_ema = load_authors_ar({"ema": trained}, heads=4)
    assert torch.equal(only_ema["output.weight"], trained["output.weight"])


def test_wrapper_prefixes_and_sampling_buffers_are_dropped(fixture: dict[str, Any]) -> None:
    weights = {f"module._orig_mod.{k}": v for k, v in fixture["state_dict"].items()}
    weights["module.layers.0.attention.kv_cache.k_cache"] = torch.zeros(2, 4, 24, 16)
    _, converted = load_authors_ar(weights, heads=4)
    build_ar_model(load_authors_ar(fixture["state_dict"], heads=4)[0]).load_state_dict(converted, strict=True)


def _refusal(source: Any) -> str:
    with pytest.raises(ConversionError) as info:
        load_authors_ar(source)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_refuses_a_tokenizer_checkpoint() -> None:
    tok = {"ema": {"encoder.conv_in.weight": torch.zeros(8, 3, 3, 3), "quantize.embedding.weight": torch.zeros(4, 8)}}
    assert "tokenizer checkpoint" in _refusal(tok)


def test_refuses_unrelated_dicts() -> None:
    assert "not an authors' gpt_1d GPT state dict" in _refusal({"weight": torch.zeros(3)})
    assert "not a tensor" in _refusal({"model": {"a": 1}})
    assert "expected a checkpoint dict" in _refusal([torch.zeros(1)])


def test_refuses_wrong_shapes_and_unsupported_variants(fixture: dict[str, Any]) -> None:
    sd = fixture["state_dict"]
    assert "output.weight has shape (47, 64), expected (48, 64)" in _refusal(
        {**sd, "output.weight": sd["output.weight"][:47]}
    )
    assert "unexpected keys extra.weight" in _refusal({**sd, "extra.weight": torch.zeros(1)})
    no_pos = {k: v for k, v in sd.items() if k != "positional_embedding"}
    assert "RoPE" in _refusal(no_pos)
    assert "adaLN" in _refusal({**sd, "layers.0.adaLN_modulation.1.weight": torch.zeros(1)})
    gqa = {**sd, "layers.0.attention.wqkv.weight": torch.zeros(128, 64)}
    assert "grouped-query" in _refusal(gqa)
    gap = {k: v for k, v in sd.items() if not k.startswith("layers.0.")}
    assert "not numbered 0..n-1" in _refusal(gap)


def test_refuses_missing_and_unreadable_files(tmp_path: Path) -> None:
    assert "no such file" in _refusal(tmp_path / "absent.pt")
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    assert "not a readable PyTorch checkpoint" in _refusal(text)
