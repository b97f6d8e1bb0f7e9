"""bench/op_profile.py, which ``bench/gpu_mfu.py --profile-ops`` prints: operators sorted into kinds of work, and a
profiled step's time shared among them. (It says where time goes; speed itself is measured by bench/, never here.)"""

from __future__ import annotations

import torch
from torch import nn

from bench.op_profile import category, profile_ops


def test_operators_and_kernels_fall_into_their_kind_of_work() -> None:
    expected = {
        "aten::convolution_backward": "convolution",
        "sm90_xmma_fprop_implicit_gemm_bf16bf16": "convolution",
        "aten::mm": "matmul",
        "ampere_bf16_s16816gemm_bf16_128x64": "matmul",
        "aten::_scaled_dot_product_flash_attention": "attention",
        "aten::native_group_norm_backward": "normalisation",
        "aten::_fused_adamw_": "optimizer",
        "void at::native::multi_tensor_apply_kernel<FusedAdam>": "optimizer",
        "aten::_log_softmax": "softmax and loss",
        "aten::copy_": "copies and casts",
        "aten::bernoulli_": "elementwise",
        "aten::silu_backward": "elementwise",
        "aten::empty_strided": "other",
    }
    assert {name: category(name) for name in expected} == expected


def test_a_profiled_step_is_shared_among_its_kinds_of_work() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.SiLU(), nn.Flatten(), nn.Linear(512, 4))
    opt = torch.optim.AdamW(model.parameters())
    x = torch.randn(4, 3, 8, 8)

    def step() -> None:
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()

    categories, top, wall_ms = profile_ops(step, torch.device("cpu"))
    names = {share.name for share in categories}
    assert {"convolution", "matmul", "normalisation", "optimizer"} <= names
    assert abs(sum(share.share for share in categories) - 1) < 1e-6
    assert 0 < len(top) <= 10 and top == sorted(top, key=lambda s: -s.ms_per_step)
    assert 0 < sum(share.ms_per_step for share in categories) <= wall_ms * 1.05
