"""ResNet-18/34/50/101 written in the project, with torchvision's exact state-dict layout.

The module names and tensor shapes match ``torchvision.models.resnet`` (v1.5: the stride of a
Bottleneck sits in its 3x3 conv), so torchvision's ImageNet checkpoints load with ``strict=True``
without importing torchvision. Two options torchvision lacks: ``last_stride`` (re-id models use 1
to keep a 2x larger final map) and ``width`` (base width; narrow widths give a CPU-sized model with
the same keys and smaller shapes). A third, ``non_local``, inserts non-local blocks (Wang et al. 2018)
after the last blocks of a stage, as the AGW baseline does (2 in layer2, 3 in layer3); their
parameters sit under ``layerN.non_local.*``, so every torchvision key keeps its name and shape.
"""

from __future__ import annotations

import os
import socket
import urllib.error
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from cmemd.errors import CheckpointError, ConfigError

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "NonLocal",
    "NonLocalStage",
    "AGW_NON_LOCAL",
    "ARCH_LAYERS",
    "agw_non_local",
    "is_non_local_key",
    "ResNet",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "ARCHS",
    "IMAGENET_URLS",
    "imagenet_location",
    "fetch_imagenet",
    "read_state_dict",
    "load_pretrained",
    "load_mapped_state_dict",
]

MODEL_ZOO = "https://download.pytorch.org/models/"
#: torchvision's published ImageNet weights. ``"imagenet"`` means IMAGENET1K_V1 (the weights the
#: re-id literature uses); ``"imagenet-v2"`` selects resnet50's IMAGENET1K_V2.
IMAGENET_URLS: dict[str, dict[str, str]] = {
    "resnet18": {"imagenet": MODEL_ZOO + "resnet18-f37072fd.pth"},
    "resnet34": {"imagenet": MODEL_ZOO + "resnet34-b627a593.pth"},
    "resnet50": {
        "imagenet": MODEL_ZOO + "resnet50-0676ba61.pth",
        "imagenet-v2": MODEL_ZOO + "resnet50-11ad3fa6.pth",
    },
    "resnet101": {"imagenet": MODEL_ZOO + "resnet101-63fe2227.pth"},
}

#: Seconds one network operation may block before an ``"imagenet"`` download gives up.
DOWNLOAD_TIMEOUT_S = 30.0


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided) -> 1x1 bottleneck (ResNet-50/101), torchvision v1.5."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


#: Non-local blocks per stage (layer1..layer4) in AGW (Ye et al., TPAMI 2021): 2 in layer2, 3 in layer3.
AGW_NON_LOCAL: tuple[int, int, int, int] = (0, 2, 3, 0)

#: Residual blocks per stage of each architecture.
ARCH_LAYERS: dict[str, tuple[int, int, int, int]] = {
    "resnet18": (2, 2, 2, 2),
    "resnet34": (3, 4, 6, 3),
    "resnet50": (3, 4, 6, 3),
    "resnet101": (3, 4, 23, 3),
}


def agw_non_local(arch: str) -> tuple[int, ...]:
    """AGW's non-local counts for ``arch``, capped at each stage's block count (ResNet-18: ``(0, 2, 2, 0)``)."""
    return tuple(min(c, n) for c, n in zip(AGW_NON_LOCAL, ARCH_LAYERS[arch]))


def is_non_local_key(key: str) -> bool:
    """True for the state-dict entries of non-local blocks (not in any torchvision checkpoint)."""
    return key.startswith("non_local.") or ".non_local." in key


class NonLocal(nn.Module):
    """Non-local block, embedded dot-product form with 1/N scaling (Wang et al. 2018; AGW's variant).

    ``z = x + W(y)``, ``y_i = (1/N) sum_j <theta(x_i), phi(x_j)> g(x_j)`` over the N = H*W positions;
    theta, phi, g are 1x1 convs to ``channels // reduction`` channels, W a 1x1 conv back to ``channels``
    followed by a BatchNorm whose scale and shift start at zero, so a new block is the identity and a
    pretrained backbone's output is unchanged before training.
    """

    def __init__(self, channels: int, reduction: int = 2) -> None:
        super().__init__()
        inner = max(1, channels // reduction)
        self.inner = inner
        self.theta = nn.Conv2d(channels, inner, kernel_size=1)
        self.phi = nn.Conv2d(channels, inner, kernel_size=1)
        self.g = nn.Conv2d(channels, inner, kernel_size=1)
        project, bn = nn.Conv2d(inner, channels, kernel_size=1), nn.BatchNorm2d(channels)
        nn.init.zeros_(bn.weight)
        nn.init.zeros_(bn.bias)
        self.W = nn.Sequential(project, bn)

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        theta = self.theta(x).flatten(2).transpose(1, 2)  # n x HW x inner
        phi = self.phi(x).flatten(2)  # n x inner x HW
        g = self.g(x).flatten(2).transpose(1, 2)  # n x HW x inner
        affinity = torch.matmul(theta, phi) / phi.shape[-1]
        y = torch.matmul(affinity, g).transpose(1, 2).reshape(n, self.inner, x.shape[2], x.shape[3])
        return x + self.W(y)


class NonLocalStage(nn.Module):
    """A ResNet stage whose last ``len(non_local)`` blocks are each followed by a non-local block.

    The residual blocks stay children ``"0"``, ``"1"``, ... (the keys of torchvision's ``nn.Sequential``
    stage); the non-local blocks are ``non_local.0``, ``non_local.1``, ... Indexing, ``len`` and
    iteration go over the residual blocks, as on the plain stage.
    """

    def __init__(self, blocks: nn.Sequential, count: int, channels: int) -> None:
        super().__init__()
        n = len(blocks)
        if not 0 < count <= n:
            raise ConfigError(f"NonLocalStage: {count} non-local blocks for a stage of {n} blocks; use 1..{n}")
        for i, block in enumerate(blocks):
            self.add_module(str(i), block)
        self.num_blocks = n
        self.after = tuple(range(n - count, n))  # AGW: after the last `count` blocks
        self.non_local = nn.ModuleList([NonLocal(channels) for _ in range(count)])

    def __len__(self) -> int:
        return self.num_blocks

    def __getitem__(self, i: int) -> nn.Module:
        return self.get_submodule(str(range(self.num_blocks)[i]))

    def __iter__(self):
        return (self._modules[str(i)] for i in range(self.num_blocks))

    def forward(self, x: Tensor) -> Tensor:
        k = 0
        for i, block in enumerate(self):
            x = block(x)
            if k < len(self.after) and i == self.after[k]:
                x = self.non_local[k](x)
                k += 1
        return x


class ResNet(nn.Module):
    """torchvision-layout ResNet.

    Args:
        block: ``BasicBlock`` or ``Bottleneck``.
        layers: blocks per stage, e.g. ``(3, 4, 6, 3)``.
        num_classes: outputs of ``fc``.
        width: channels of the stem and of layer1's planes (torchvision: 64).
        last_stride: stride of layer4 (torchvision: 2; re-id: 1).
        zero_init_residual: zero the last BN weight of every residual branch, as torchvision.
        non_local: non-local blocks after the last blocks of layer1..layer4 (AGW: ``(0, 2, 3, 0)``);
            their keys (``layerN.non_local.*``) are outside torchvision's layout, every other key is unchanged.
        arch: name recorded on the model (``model.arch``) so ``load_pretrained(model, "imagenet")``
            knows which weights to fetch.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, ...],
        num_classes: int = 1000,
        *,
        width: int = 64,
        last_stride: int = 2,
        zero_init_residual: bool = False,
        arch: str | None = None,
        non_local: tuple[int, ...] = (0, 0, 0, 0),
    ) -> None:
        super().__init__()
        if len(layers) != 4 or any(int(n) < 1 for n in layers):
            raise ConfigError(f"ResNet: layers must be 4 positive block counts, got {layers!r}")
        if int(width) < 1:
            raise ConfigError(f"ResNet: width must be a positive int, got {width!r}")
        if last_stride not in (1, 2):
            raise ConfigError(f"ResNet: last_stride must be 1 or 2, got {last_stride!r}")
        if len(non_local) != 4 or any(not 0 <= int(c) <= int(n) for c, n in zip(non_local, layers)):
            raise ConfigError(
                f"ResNet: non_local must give 4 counts, each between 0 and its stage's block count "
                f"{tuple(layers)}, got {non_local!r}"
            )
        self.arch = arch
        self.width = int(width)
        self.last_stride = int(last_stride)
        self.inplanes = self.width
        self.conv1 = nn.Conv2d(3, self.width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        w = self.width
        self.layer1 = self._make_layer(block, w, layers[0])
        self.layer2 = self._make_layer(block, 2 * w, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 4 * w, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 8 * w, layers[3], stride=self.last_stride)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.out_channels = 8 * w * block.expansion
        self.fc = nn.Linear(self.out_channels, num_classes)
        self.non_local = tuple(int(c) for c in non_local)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.constant_(m.bn3.weight, 0)
                elif isinstance(m, BasicBlock):
                    nn.init.constant_(m.bn2.weight, 0)
        # after the init loop, which would reset the zero-initialised BatchNorm of each non-local block
        for i, count in enumerate(self.non_local):
            if count:
                name = f"layer{i + 1}"
                stage = getattr(self, name)
                setattr(self, name, NonLocalStage(stage, count, (2**i) * w * block.expansion))

    def _make_layer(
        self, block: type[BasicBlock] | type[Bottleneck], planes: int, blocks: int, stride: int = 1
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                _conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        mods = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        mods += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def forward_features(self, x: Tensor) -> Tensor:
        """The final feature map (N, out_channels, H/32 or H/16, ...)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.avgpool(self.forward_features(x)), 1))


def resnet18(**kw) -> ResNet:
    """ResNet-18 (BasicBlock, [2, 2, 2, 2]); keyword options as :class:`ResNet`."""
    return ResNet(BasicBlock, ARCH_LAYERS["resnet18"], arch="resnet18", **kw)


def resnet34(**kw) -> ResNet:
    """ResNet-34 (BasicBlock, [3, 4, 6, 3]); keyword options as :class:`ResNet`."""
    return ResNet(BasicBlock, ARCH_LAYERS["resnet34"], arch="resnet34", **kw)


def resnet50(**kw) -> ResNet:
    """ResNet-50 (Bottleneck, [3, 4, 6, 3]); keyword options as :class:`ResNet`."""
    return ResNet(Bottleneck, ARCH_LAYERS["resnet50"], arch="resnet50", **kw)


def resnet101(**kw) -> ResNet:
    """ResNet-101 (Bottleneck, [3, 4, 23, 3]); keyword options as :class:`ResNet`."""
    return ResNet(Bottleneck, ARCH_LAYERS["resnet101"], arch="resnet101", **kw)


ARCHS: dict[str, Callable[..., ResNet]] = {
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "resnet101": resnet101,
}


# --------------------------------------------------------------------------------- checkpoints


def _unwrap(obj: object, where: str) -> dict[str, Tensor]:
    """Accept a raw state dict, ``{'state_dict': ...}`` / ``{'model': ...}``, and a ``module.`` prefix."""
    for _ in range(2):  # e.g. {'state_dict': {'module.x': ...}}
        if isinstance(obj, Mapping) and not any(isinstance(v, Tensor) for v in obj.values()):
            for key in ("state_dict", "model"):
                if key in obj and isinstance(obj[key], Mapping):
                    obj = obj[key]
                    break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(
            f"{where}: not a state dict (got {type(obj).__name__}); expected a mapping of tensor "
            "names to tensors, optionally wrapped as {'state_dict': ...}"
        )
    sd = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not sd:
        raise CheckpointError(f"{where}: the mapping holds no tensors; is this a model checkpoint?")
    if all(k.startswith("module.") for k in sd):  # saved from DataParallel / DDP
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def imagenet_location(arch: str, variant: str = "imagenet") -> tuple[str, Path]:
    """``(url, cached file)`` of torchvision's ImageNet weights for ``arch``: where they are downloaded from and
    where the torch hub cache keeps them (the file to provide by hand on an offline machine)."""
    urls = IMAGENET_URLS.get(arch)
    if urls is None:
        raise CheckpointError(
            f"load_pretrained: no ImageNet weights known for arch {arch!r}; "
            f"known: {sorted(IMAGENET_URLS)}. Pass a local file path instead."
        )
    if variant not in urls:
        raise CheckpointError(
            f"load_pretrained: source {variant!r} is not available for {arch}; "
            f"use one of {sorted(urls)} or a local file path."
        )
    url = urls[variant]
    return url, Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[1]


def fetch_imagenet(arch: str, variant: str = "imagenet", *, progress: bool = True) -> Path:
    """The cached file of torchvision's ImageNet weights for ``arch``, downloaded first when it is missing (with
    the bounded socket timeout, so an offline machine fails in seconds). Reads nothing into memory: it lets a
    caller find out early, before slow preparation, whether :func:`read_state_dict` will have the weights.

    Raises:
        CheckpointError: the download failed (no network, bad hash); the message names the cache file.
    """
    url, cached = imagenet_location(arch, variant)
    if cached.is_file():
        return cached
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        prefix = torch.hub.HASH_REGEX.search(cached.name)
        # written to a temporary file and moved into place: a failed download leaves no partial file
        torch.hub.download_url_to_file(url, str(cached), prefix.group(1) if prefix else None, progress=progress)
    except (urllib.error.URLError, OSError) as e:
        raise _offline(url, cached, e) from e
    except RuntimeError as e:  # torch.hub reports a hash mismatch as RuntimeError
        raise CheckpointError(
            f"load_pretrained: {url} failed to download ({e}); retry, or pass a local path as source."
        ) from e
    finally:
        socket.setdefaulttimeout(old_timeout)
    return cached


def _offline(url: str, cached: Path, err: Exception) -> CheckpointError:
    """The error for weights that cannot be downloaded: where to put the file by hand instead."""
    return CheckpointError(
        f"load_pretrained: could not download {url} ({err}). Without network access, put the "
        f"file at {cached} (torch hub cache) or pass a local path as source."
    )


def _download(arch: str, variant: str, progress: bool) -> tuple[dict[str, Tensor], str]:
    url, cached = imagenet_location(arch, variant)
    # A bounded socket timeout makes an offline machine fail in seconds instead of hanging.
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        obj = torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=progress, check_hash=True)
    except (urllib.error.URLError, OSError) as e:
        raise _offline(url, cached, e) from e
    except RuntimeError as e:  # torch.hub reports a hash mismatch as RuntimeError
        raise CheckpointError(
            f"load_pretrained: {url} failed to load ({e}); delete {cached} and retry, or pass a local path as source."
        ) from e
    finally:
        socket.setdefaulttimeout(old_timeout)
    return _unwrap(obj, str(cached)), str(cached)


def read_state_dict(
    source: str | os.PathLike, *, arch: str | None = None, progress: bool = True
) -> tuple[dict[str, Tensor], str]:
    """Read a ResNet state dict from a local file or torchvision's ImageNet weights.

    Args:
        source: a file path, or ``"imagenet"`` (IMAGENET1K_V1) / ``"imagenet-v2"`` (resnet50 only).
        arch: ``"resnet18"`` .. ``"resnet101"``; needed for ``"imagenet"``.
        progress: show the download progress bar.

    Returns:
        ``(state_dict, where)``: a flat ``{name: tensor}`` (unwrapped, ``module.`` stripped) and the
        file it came from (for error messages).
    """
    if isinstance(source, str) and source in ("imagenet", "imagenet-v2"):
        if arch is None:
            raise CheckpointError(f"read_state_dict: source {source!r} needs arch= (one of {sorted(IMAGENET_URLS)})")
        return _download(arch, source, progress)
    path = Path(source)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path}: file not found; pass an existing .pth file or "
            "'imagenet' for torchvision's ImageNet weights"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt / truncated / not a torch file
        raise CheckpointError(
            f"checkpoint {path}: cannot be read by torch.load ({e}); is the file complete and a PyTorch state dict?"
        ) from e
    return _unwrap(obj, str(path)), str(path)


def _first(keys: list[str], n: int = 5) -> str:
    more = f" ... (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_mapped_state_dict(
    model: nn.Module,
    state_dict: Mapping[str, Tensor],
    key_map: Mapping[str, str],
    *,
    where: str = "<state dict>",
    strict: bool = True,
    allow_unused: Callable[[str], bool] | None = None,
) -> list[str]:
    """Copy ``state_dict[key_map[k]]`` into ``model``'s entry ``k`` for every ``k`` in ``key_map``.

    Several model keys may map to the same source key (one checkpoint into several copies).
    A ``num_batches_tracked`` absent from old checkpoints keeps the model's value.

    Raises:
        CheckpointError: a shape mismatch (always); with ``strict``, a mapped source key that is
            missing, or a source key no model key uses (unless ``allow_unused(key)``).

    Returns:
        The model keys that were loaded.
    """
    target = model.state_dict()
    missing, mismatched, loaded = [], [], []
    new_sd = dict(target)
    for mkey, skey in key_map.items():
        if mkey not in target:
            raise CheckpointError(f"load: model has no entry {mkey!r} (key map is wrong)")
        if skey not in state_dict:
            if not skey.endswith("num_batches_tracked"):
                missing.append(skey)
            continue
        src = state_dict[skey]
        if tuple(src.shape) != tuple(target[mkey].shape):
            mismatched.append(f"{skey}: checkpoint {tuple(src.shape)} vs model {tuple(target[mkey].shape)}")
            continue
        new_sd[mkey] = src.to(dtype=target[mkey].dtype)
        loaded.append(mkey)
    used = set(key_map.values())
    unexpected = [k for k in state_dict if k not in used and not (allow_unused is not None and allow_unused(k))]
    if mismatched:
        raise CheckpointError(
            f"checkpoint {where}: {len(mismatched)} shape mismatch(es): {_first(mismatched, 3)}. "
            "Check that arch and width match the checkpoint (ImageNet weights need width=64)."
        )
    if strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f"missing keys [{_first(sorted(missing))}]")
        if unexpected:
            parts.append(f"unexpected keys [{_first(sorted(unexpected))}]")
        raise CheckpointError(
            f"checkpoint {where}: " + "; ".join(parts) + ". Is it a torchvision ResNet of the same arch? "
            "Use strict=False to load only the matching entries."
        )
    model.load_state_dict(new_sd, strict=True)
    return loaded


def load_pretrained(model: ResNet, source: str | os.PathLike, *, strict: bool = True, progress: bool = True) -> ResNet:
    """Load torchvision-format weights into a :class:`ResNet`.

    Args:
        model: a ResNet built by ``resnet18`` .. ``resnet101`` (its ``arch`` picks the URL).
        source: a local file path, or ``"imagenet"`` (torchvision's IMAGENET1K_V1 weights,
            downloaded into the torch hub cache with hash check), or ``"imagenet-v2"`` (resnet50).
        strict: every model entry must be in the file and every file entry in the model
            (``num_batches_tracked`` may be absent). Shape mismatches raise even when not strict.
        progress: show the download progress bar.

    Raises:
        CheckpointError: unreadable file, no network for ``"imagenet"`` (the message says where
            to put the file), missing/unexpected keys or shape mismatches (named).
    """
    sd, where = read_state_dict(source, arch=getattr(model, "arch", None), progress=progress)
    key_map = {k: k for k in model.state_dict() if not is_non_local_key(k)}  # non-local blocks keep their init
    load_mapped_state_dict(model, sd, key_map, where=where, strict=strict)
    return model
