"""Forward shapes at tiny profile, parameter counts at paper profile (meta device), and model components."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gigatok.config import (
    AUTHORS_LAYOUT,
    PAPER_TRANSFORMER_SIZES,
    TransformerSize,
    pooling_regions,
    tokenizer_run,
)
from gigatok.models.cnn import CNNDecoder, depth_to_space
from gigatok.models.discriminator import PatchDiscriminator
from gigatok.models.quantizer import VectorQuantizer, entropy_loss, rotate_to
from gigatok.models.tokenizer import build_tokenizer, multilevel_pool, multilevel_unpool
from gigatok.models.transformer import DetrBlock, QFormerBlock, ViTBlock

M = 1e6
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("kind", ["1d", "2d"])
@pytest.mark.parametrize("name", ["S-S", "S-B", "B-L"])
def test_forward_shapes_tiny(kind: str, name: str) -> None:
    cfg = tokenizer_run(name, profile="tiny", kind=kind).tokenizer
    model = build_tokenizer(cfg)
    images = torch.rand(2, 3, cfg.image_size, cfg.image_size) * 2 - 1
    out = model(images)
    assert out.reconstruction.shape == images.shape
    assert out.quant.indices.shape == (2, cfg.num_tokens)
    assert out.quant.indices.max() < cfg.quantizer.codebook_size
    assert out.semantic_projection is not None
    assert out.semantic_projection.shape == (2, cfg.grid_size**2, cfg.semantic.feature_dim)
    # Round trip through token indices decodes to the same image as the forward pass.
    model.eval()
    with torch.no_grad():
        indices = model.tokenize(images)
        assert torch.allclose(model.decode_indices(indices), model(images).reconstruction, atol=1e-5)


def test_vanilla_tokenizer_has_no_projector() -> None:
    model = build_tokenizer(tokenizer_run("S-S", semantic_weight=0).tokenizer)
    assert model.semantic_projector is None
    size = model.cfg.image_size
    assert model(torch.zeros(1, 3, size, size)).semantic_projection is None


@pytest.mark.parametrize("kind", ["1d", "2d"])
def test_a_meta_build_has_the_shapes_of_a_real_one(kind: str) -> None:
    from gigatok.config import ar_run
    from gigatok.models.ar import build_ar_model

    cfg = tokenizer_run("S-B", profile="tiny", kind=kind)
    for build, config in ((build_tokenizer, cfg.tokenizer), (build_ar_model, ar_run(cfg, "B").model)):
        meta, real = build(config, "meta").state_dict(), build(config).state_dict()  # type: ignore[operator]
        assert {k: v.shape for k, v in meta.items()} == {k: v.shape for k, v in real.items()}
        assert all(v.is_meta for v in meta.values()) and not any(v.is_meta for v in real.values())


def test_a_meta_build_initialises_nothing() -> None:
    """Filling a meta tensor at random imports torch._dynamo (seconds): a dry run's parameter counts skip the fills."""
    code = (
        "import sys; from gigatok.config import tokenizer_run; from gigatok.models.tokenizer import build_tokenizer; "
        "model = build_tokenizer(tokenizer_run('S-S', profile='tiny').tokenizer, 'meta'); "
        "assert model.parameter_counts()['total'] > 0; print('torch._dynamo' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == "False"


# Table 9 totals (M) and Table 1 transformer parts (M) of the paper.
TABLE9_TOTALS = {"S-S": 136, "S-B": 232, "S-L": 533, "B-L": 622, "XL-XXL": 2896}
TABLE1_1D = {"S": 26, "B": 115, "L": 405, "XL": 948, "XXL": 1870}
TABLE1_2D = {"S": 19, "B": 86, "L": 329}


def _counts(name: str, kind: str = "1d") -> dict[str, int]:
    return build_tokenizer(tokenizer_run(name, profile="paper", kind=kind).tokenizer, "meta").parameter_counts()


@pytest.mark.parametrize("name,expected", TABLE9_TOTALS.items())
def test_paper_totals_match_table9(name: str, expected: float) -> None:
    total = _counts(name)["total"] / M
    assert abs(total - expected) / expected < 0.01, f"{name}: {total:.1f}M vs Table 9 {expected}M"


# The authors' CNN sizes (their README / paper: encoder 26.1M, decoder 50.2M), the same for every tokenizer size.
AUTHORS_CNN = {"cnn_encoder": 26.1, "cnn_decoder": 50.2}


@pytest.mark.parametrize("kind", ["1d", "2d"])
@pytest.mark.parametrize("part,expected", AUTHORS_CNN.items())
def test_paper_cnn_matches_the_authors(part: str, expected: float, kind: str) -> None:
    got = _counts("S-B", kind)[part] / M
    assert abs(got - expected) / expected < 0.005, f"{part}: {got:.2f}M vs the authors' {expected}M"


def test_authors_decoder_options_change_the_cnn() -> None:
    """The paper profile's decoder is the authors' (no attention, adaptive GroupNorm, depth-to-space); the tiny
    profile keeps the workbench's original upsampling and norms, without attention (a CPU-scale cut)."""
    paper = build_tokenizer(tokenizer_run("S-S", profile="paper").tokenizer, "meta").cnn_decoder
    tiny_cfg = tokenizer_run("S-S", profile="tiny").tokenizer
    tiny = build_tokenizer(tiny_cfg).cnn_decoder
    names = {type(m).__name__ for m in paper.modules()}
    assert {"AdaptiveGroupNorm", "DepthToSpaceUpsample"} <= names and "AttnBlock" not in names
    tiny_names = {type(m).__name__ for m in tiny.modules()}
    assert "Upsample" in tiny_names and "AdaptiveGroupNorm" not in tiny_names and "AttnBlock" not in tiny_names
    # The workbench's original decoder keeps its attention block.
    workbench = CNNDecoder(dataclasses.replace(tiny_cfg.cnn, decoder_attention=True))
    assert "AttnBlock" in {type(m).__name__ for m in workbench.modules()}


@pytest.mark.parametrize("size,expected", TABLE1_1D.items())
def test_qformer_parts_match_table1(size: str, expected: float) -> None:
    counts = _counts(f"{size}-{size}")
    for part in ("encoder_transformer", "decoder_transformer"):
        got = counts[part] / M
        assert abs(got - expected) / expected < 0.05, f"1D {size} {part}: {got:.1f}M vs Table 1 {expected}M"


@pytest.mark.parametrize("size", ["S", "B"])
def test_vit_parts_match_table1(size: str) -> None:
    expected = TABLE1_2D[size]
    got = _counts(f"{size}-{size}", "2d")["encoder_transformer"] / M
    assert abs(got - expected) / expected < 0.05, f"2D {size}: {got:.1f}M vs Table 1 {expected}M"


@pytest.mark.xfail(
    strict=True,
    reason="Table 1 lists 329M for the 2D L ViT, but S (19M) and B (86M) follow 12*width^2*depth to 2% and that "
    "rule gives 302M for L (a standard ViT-L has 304M); no consistent ViT reproduces all three entries.",
)
def test_vit_large_matches_table1() -> None:
    got = _counts("L-L", "2d")["encoder_transformer"] / M
    assert abs(got - TABLE1_2D["L"]) / TABLE1_2D["L"] < 0.05


def test_vit_large_follows_the_vit_rule() -> None:
    size = PAPER_TRANSFORMER_SIZES["L"]
    got = _counts("L-L", "2d")["encoder_transformer"]
    rule = 12 * size.width**2 * size.depth
    assert abs(got - rule) / rule < 0.01


def test_block_parameter_shapes() -> None:
    """A ViT block is ~12 d^2 parameters and a Q-Former block (extra cross-attention) ~16 d^2."""
    d = 64
    vit = sum(p.numel() for p in ViTBlock(d, 4).parameters())
    qf = sum(p.numel() for p in QFormerBlock(d, 4).parameters())
    assert abs(vit - 12 * d * d) / (12 * d * d) < 0.05
    assert abs(qf - 16 * d * d) / (16 * d * d) < 0.05


def test_discriminator_size_matches_reference() -> None:
    n = sum(p.numel() for p in PatchDiscriminator(64, 3).parameters())
    assert abs(n / M - 2.77) < 0.01


def test_multilevel_pool_groups() -> None:
    feats = torch.arange(16.0).view(1, 1, 4, 4)
    pooled = multilevel_pool(feats, 16)[0, :, 0]
    assert pooled.shape == (16,)
    # Group sizes 1 (global), 1, 2, 4, 8: the first two are both the global mean.
    assert pooled[0] == pooled[1] == feats.mean()
    assert torch.allclose(pooled[2:4], torch.tensor([feats[..., :2, :].mean(), feats[..., 2:, :].mean()]))
    assert pooling_regions(3) == (4, 2)


def test_multilevel_pool_width_first() -> None:
    """The authors' first_grow="row": level 1 splits left | right, level 3 is 2 rows x 4 columns."""
    feats = torch.arange(16.0).view(1, 1, 4, 4)
    pooled = multilevel_pool(feats, 16, first_split="width")[0, :, 0]
    assert torch.allclose(pooled[2:4], torch.tensor([feats[..., :2].mean(), feats[..., 2:].mean()]))
    assert pooling_regions(3, "width") == (2, 4)


def test_multilevel_unpool_sends_each_token_to_its_region() -> None:
    """The unpooled decoder queries: a cell averages the tokens of the regions holding it, one a level."""
    tokens = torch.zeros(1, 16, 1)
    assert torch.equal(multilevel_unpool(tokens + 3.0, 4), torch.full((1, 16, 1), 3.0))
    # 16 tokens on a 4x4 grid: global, then levels of 1, 2, 4, 8 regions; the last is 4 rows x 2 columns, so its
    # first token (index 8) is the region of cells (0, 0) and (0, 1), and the five levels average.
    tokens[0, 8, 0] = 5.0
    cells = multilevel_unpool(tokens, 4)[0, :, 0].view(4, 4)
    expected = torch.zeros(4, 4)
    expected[0, :2] = 1.0
    assert torch.equal(cells, expected)
    # A level-1 token (index 2, top half under the height-first split) reaches the top two rows; width-first, the
    # left two columns.
    tokens.zero_()
    tokens[0, 2, 0] = 5.0
    assert torch.equal(multilevel_unpool(tokens, 4)[0, :, 0].view(4, 4)[:2], torch.ones(2, 4))
    assert torch.equal(multilevel_unpool(tokens, 4, first_split="width")[0, :, 0].view(4, 4)[:, :2], torch.ones(4, 2))


def test_depth_to_space_reads_channels_block_first() -> None:
    """DCR order (the authors' depth_to_space): output pixel (2i+a, 2j+b) of channel c is input channel
    (a*2 + b)*C + c, where pixel_shuffle would read c*4 + a*2 + b."""
    x = torch.randn(1, 8, 3, 3)
    out = depth_to_space(x, 2)
    assert out.shape == (1, 2, 6, 6)
    for a in range(2):
        for b in range(2):
            for c in range(2):
                assert torch.equal(out[0, c, a::2, b::2], x[0, (a * 2 + b) * 2 + c])


def test_detr_block_adds_positions_in_every_layer() -> None:
    """With zero positions a DETR block is a Q-Former block without the context norm; positions then change it."""
    torch.manual_seed(0)
    block = DetrBlock(16, 2)
    x, ctx = torch.randn(2, 4, 16), torch.randn(2, 6, 16)
    zero_q, zero_c = torch.zeros(1, 4, 16), torch.zeros(1, 6, 16)
    plain = x + block.self_attn(block.norm1(x))
    plain = plain + block.cross_attn(block.norm_q(plain), ctx)
    plain = plain + block.mlp(block.norm2(plain))
    assert torch.allclose(block(x, ctx, zero_q, zero_c), plain, atol=1e-6)
    assert not torch.allclose(block(x, ctx, torch.randn(1, 4, 16), zero_c), plain, atol=1e-3)


def test_quantizer_outputs_and_straight_through() -> None:
    cfg = tokenizer_run("S-S").tokenizer.quantizer
    vq = VectorQuantizer(cfg, latent_channels=16)
    z = torch.randn(4, 8, 16, requires_grad=True)
    out = vq(z)
    assert out.indices.shape == (4, 8)
    assert 0 < out.usage <= 1 and 1 <= out.perplexity <= 32
    out.quantized.sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_rotation_trick_value_equals_target() -> None:
    src = torch.randn(10, 8, requires_grad=True)
    tgt = torch.nn.functional.normalize(torch.randn(10, 8), dim=-1)
    rotated = rotate_to(src, tgt)
    assert torch.allclose(rotated, tgt, atol=1e-5)
    rotated.sum().backward()
    assert src.grad is not None and torch.isfinite(src.grad).all()


def test_entropy_loss_prefers_confident_and_uniform_assignments() -> None:
    confident_uniform = torch.eye(8) * 50  # each sample certain, codes used evenly
    collapsed = torch.zeros(8, 8)
    collapsed[:, 0] = 50  # every sample picks code 0
    assert entropy_loss(confident_uniform) < entropy_loss(collapsed)
    assert torch.isclose(entropy_loss(confident_uniform), -torch.log(torch.tensor(8.0)), atol=1e-3)


def test_tiny_sizes_keep_paper_order() -> None:
    from gigatok.config import TINY_TRANSFORMER_SIZES

    def params(s: TransformerSize) -> int:
        return s.width**2 * s.depth

    tiny = [params(TINY_TRANSFORMER_SIZES[n]) for n in ("S", "B", "L", "XL", "XXL")]
    assert tiny == sorted(tiny) and len(set(tiny)) == 5


@pytest.mark.parametrize("kind", ["1d", "2d"])
def test_authors_layout_trains(kind: str) -> None:
    """The paper profile's layout at tiny sizes: a training step reaches every parameter."""
    base = tokenizer_run("S-S", profile="tiny", kind=kind).tokenizer
    cnn = dataclasses.replace(base.cnn, decoder_attention=False, decoder_adaptive_norm=True, upsample="depth_to_space")
    cfg = dataclasses.replace(base, cnn=cnn, **AUTHORS_LAYOUT)
    model = build_tokenizer(cfg).train()
    images = torch.rand(2, 3, cfg.image_size, cfg.image_size) * 2 - 1
    out = model(images)
    assert out.reconstruction.shape == images.shape
    assert out.decoder_features.shape == out.cnn_features.shape  # the shortcut loss compares these two
    loss = out.reconstruction.square().mean() + out.quant.commitment_loss + out.quant.codebook_loss
    (loss + out.semantic_projection.square().mean() + model.cnn_decoder(out.cnn_features).square().mean()).backward()
    silent = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert silent == [], silent


def test_authors_init() -> None:
    """Their _init_weights: truncated normal 0.02 on convs and linears, zero biases; positions width^-0.5 N(0, 1);
    a unit-norm codebook; the quantizer's projections at PyTorch's default."""
    torch.manual_seed(0)
    base = tokenizer_run("S-S", profile="tiny").tokenizer
    model = build_tokenizer(dataclasses.replace(base, **AUTHORS_LAYOUT))
    conv = model.cnn_encoder.down[0].conv1
    assert abs(conv.weight.std().item() - 0.02) < 0.003 and not conv.bias.any()
    width = base.encoder.width
    assert abs(model.encoder.query_pos.std().item() - width**-0.5) < 0.03
    assert torch.allclose(model.quantizer.codebook.weight.norm(dim=-1), torch.ones(base.quantizer.codebook_size))
    assert model.quantizer.proj_in.bias.any()  # nn.Linear's default, untouched
    attn = model.encoder.stack.blocks[0].self_attn
    bound = (6 / (4 * width)) ** 0.5  # Xavier-uniform over the fused (3w, w) in_proj_weight
    assert attn.kv.weight.abs().max().item() <= bound and attn.kv.weight.abs().max().item() > 0.9 * bound
