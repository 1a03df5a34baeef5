"""Any architecture timm knows, by name, with its pretrained weights or weights from a file.

timm (PyTorch Image Models) is the field's standard library of vision networks: ResNets, RegNets, MobileNets,
EfficientNets, ConvNeXts, ViTs... `timm.create_model` builds them for any number of input channels and classes.
What proj adds: a small-input stem (ImageNet stems shrink 28x28 images to 1x1 before the last stage), weights loaded
with every tensor checked (a file for another network is one error line, not a silent half-load), pretrained
weights that fail at once without a network, and the normalisation the weights were trained with, which the data
must use too (`ImageDataModule.check_normalization`).

timm is imported inside the functions: importing it takes seconds, which only runs that build a timm model pay.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, cast
from urllib.parse import urlparse

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from proj.data.base import WeightsNormalization
from proj.errors import UserError
from proj.models.base import DATA_KEY, ImageClassifier, is_restoring, restoring

if TYPE_CHECKING:
    from timm.models import PretrainedCfg

# Images of at most this side get the small-input stem by default: an ImageNet stem (stride 4 before the first
# stage, 32 in all) leaves them 2x2 or less at the last stage; the stride-1 stem keeps 8x more resolution.
SMALL_SIDE = 64
WEIGHTS_FILES = ".pth, .pt, .bin, .safetensors, or a proj checkpoint .ckpt"
HUB_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm looks for in a hub repository, in this order
HUB_TIMEOUT = 10  # seconds for the one request that says whether the hub can be reached


class WeightsFile(NamedTuple):
    """A weights file's tensors (the network's names, no `net.` or `module.` prefix), and what a proj checkpoint
    also records: the data it was trained on (its normalisation) and the architecture."""

    state: dict[str, Tensor]
    description: dict[str, Any] | None = None
    arch: str | None = None


class Stem(NamedTuple):
    """What the small-input stem changed, in words, and the modules it made anew (untrained: no weights fit them)."""

    changes: list[str]
    new: set[str]


class TimmClassifier(ImageClassifier):
    """A timm architecture as a classifier of images of any shape; `**kwargs` go to `ImageClassifier` (optimizer,
    scheduler, ...).

    Args:
        arch: a timm model name (`timm.list_models()`; e.g. resnet18, resnet10t, regnetx_002,
            mobilenetv3_small_050, efficientnet_b0, convnext_atto), optionally with a pretrained tag
            (resnet18.a1_in1k).
        pretrained: start from the architecture's pretrained weights: from the Hugging Face hub cache, downloaded
            into it when missing and the hub can be reached. The data is then normalised as they were trained.
        weights: start from the weights in this file: a timm or torchvision state dict (.pth, .pt, .bin), a
            .safetensors file, or a proj checkpoint (.ckpt). The classifier head is re-initialised when the class
            count differs, the first convolution adapted when the channel count differs (timm's adapt_input_conv);
            every other tensor must fit.
        reset_head: start the classifier head at random even where the loaded weights' head fits: for a new task
            with as many classes as theirs, whose head answers the old task's classes (the transfer experiment in
            README "Measured": a kept head costs the fine-tune accuracy). Needs --model.weights or --model.pretrained.
        small_input: replace the ImageNet stem by a stride-1 3x3 convolution without max-pool (as CIFAR ResNets
            do), so that small images keep their resolution to the last stage; None (default): on for images of at
            most 64 pixels a side, where the convolution stem allows it.
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth: the probability of skipping a residual block in training (architectures
            with residual blocks).
        channels_last: keep weights and activations in NHWC order, which oneDNN (CPU) and tensor-core (GPU)
            convolutions run faster.
    """

    def __init__(
        self,
        arch: str = "resnet18",
        pretrained: bool = False,
        weights: str | None = None,
        reset_head: bool = False,
        small_input: bool | None = None,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        channels_last: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if pretrained and weights is not None:
            raise UserError(
                "--model.pretrained true and --model.weights FILE both choose the initial weights: pass one of them."
            )
        if reset_head and not (pretrained or weights is not None):
            raise UserError(
                "--model.reset_head true starts the head of loaded weights afresh, and none are loaded: add "
                "--model.weights FILE or --model.pretrained true (without them every layer starts at random)."
            )
        for name, rate in (("drop_rate", drop_rate), ("drop_path_rate", drop_path_rate)):
            if not 0 <= rate < 1:
                raise UserError(f"{name} must be in [0, 1), got {rate}: set --model.{name}.")
        channels, height, width = self.hparams["input_shape"]
        self.net = create(arch, channels, self.hparams["num_classes"], (height, width), drop_rate, drop_path_rate)
        stem = None
        if small_input or (small_input is None and min(height, width) <= SMALL_SIDE):
            stem = small_input_stem(self.net, arch, required=small_input is not None)
        loaded = None
        if not is_restoring() and (pretrained or weights is not None):
            path, source = pretrained_file(arch) if pretrained else (Path(str(weights)), weights_source(str(weights)))
            file = read_weights(path)
            loaded = fit_weights(self.net, file, source, arch, stem.new if stem else set(), reset_head)
            self.input_normalization = normalization_of(arch, pretrained, file, str(weights))
        else:
            self.input_normalization = self.weights_normalization(self.hparams)
        features = feature_shape(self.net, arch, (channels, height, width))
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        if not is_restoring():
            rank_zero_info(build_line(self.net, arch, stem, features, (channels, height, width), loaded))

    @classmethod
    def weights_normalization(cls, hparams: Mapping[str, Any]) -> WeightsNormalization | None:
        """ImageNet's statistics for timm's pretrained weights (those of their pretrained_cfg), a proj checkpoint's
        recorded ones for its weights, timm's (assumed) for another weights file; None from scratch."""
        arch, pretrained, weights = hparams["arch"], hparams.get("pretrained"), hparams.get("weights")
        if not pretrained and weights is None:
            return None
        if weights is not None and is_restoring() and not Path(str(weights)).is_file():
            return None  # the checkpoint brings the weights, and its data description the normalisation
        file = read_weights(Path(str(weights))) if weights is not None and not pretrained else None
        return normalization_of(arch, bool(pretrained), file, str(weights))

    @classmethod
    def load_from_checkpoint(cls, *args: Any, **kwargs: Any) -> TimmClassifier:
        """As Lightning's, without loading the initial (pretrained) weights that the checkpoint's replace."""
        with restoring():
            model = super().load_from_checkpoint(*args, **kwargs)
        assert isinstance(model, TimmClassifier)
        return model

    @property
    def head(self) -> nn.Module:
        """The classifier: timm's `get_classifier()`, re-initialised when pretrained weights had other classes."""
        classifier = cast(Any, self.net).get_classifier()
        assert isinstance(classifier, nn.Module)
        return classifier

    @property
    def backbone(self) -> nn.Module:
        """Every parameter but the head's (what BackboneFinetuning freezes and unfreezes), as one module made anew on
        each call: the network's own modules, not registered a second time (the state dict keeps its `net.` keys)."""
        return nn.ModuleList(without(self.net, self.head))


def without(module: nn.Module, head: nn.Module) -> Iterator[nn.Module]:
    """The largest parts of `module` that do not hold `head`, and the parameters of the modules on the way to it (a
    ViT's cls_token and pos_embed), those in a module of their own that shares them."""
    if own := dict(module.named_parameters(recurse=False)):
        holder = nn.Module()
        for name, parameter in own.items():
            holder.register_parameter(name, parameter)
        yield holder
    for child in module.children():
        if child is head:
            continue
        if any(part is head for part in child.modules()):
            yield from without(child, head)
        else:
            yield child


def create(
    arch: str, channels: int, num_classes: int, size: tuple[int, int], drop_rate: float, drop_path_rate: float
) -> nn.Module:
    """`timm.create_model` for these images and classes, untrained; an unknown name lists close ones."""
    import timm

    if not timm.is_model(arch):
        raise unknown_arch(arch)
    options: dict[str, Any] = {"in_chans": channels, "num_classes": num_classes}
    if (cfg := pretrained_cfg(arch)) is not None and cfg.fixed_input_size:
        options["img_size"] = size  # a ViT's position embeddings are made for one image size
    options.update(
        {name: rate for name, rate in (("drop_rate", drop_rate), ("drop_path_rate", drop_path_rate)) if rate}
    )
    try:
        return timm.create_model(arch, pretrained=False, **options)
    except TypeError as err:  # an architecture without stochastic depth, say
        raise UserError(f"--model.arch {arch} does not take these settings ({err}): leave them at 0.") from err


def unknown_arch(arch: str) -> UserError:
    """The names closest to `arch`, and how many of its family (the letters it starts with) timm has."""
    import timm

    close = difflib.get_close_matches(arch, timm.list_models(), n=6, cutoff=0.6)
    family = re.match(r"[a-z]+", arch.lower())
    pattern = f"{family.group()}*" if family else "*"
    count = len(timm.list_models(pattern)) if family else 0
    listed = f"timm.list_models('{pattern}') lists the {count} of that family" if count else "timm.list_models()"
    return UserError(
        f"--model.arch {arch!r}: timm has no such architecture; close names: {', '.join(close) or 'none'} "
        f"({listed}; any name it lists works)."
    )


def pretrained_cfg(arch: str) -> PretrainedCfg | None:
    """timm's pretrained config of `arch` (its default tag, or the one named): where the weights are, the mean and
    std they were trained with, the names of the first convolution and the classifier."""
    from timm.models import get_pretrained_cfg

    return get_pretrained_cfg(arch)


def small_input_stem(net: nn.Module, arch: str, required: bool) -> Stem | None:
    """The stem made stride 1: the first convolution (timm's `first_conv`) as a 3x3 stride-1 convolution, and the
    stem's max-pool (a top-level `maxpool`, or one in `stem`) removed. None where there is no convolution stem
    (a ViT's patch embedding) and the stem was not asked for explicitly (`required`: then a UserError)."""
    first = timm_cfg(net).get("first_conv")
    name = first if isinstance(first, str) else first[0] if first else ""
    conv = net.get_submodule(name) if name else None
    if not isinstance(conv, nn.Conv2d) or "patch_embed" in name:
        if not required:
            return None
        raise UserError(
            f"--model.small_input true: {arch} has no convolution stem to make stride 1 (its first layer is "
            f"{name or 'unknown'}): use --model.small_input false, or a convolutional --model.arch (resnet18...)."
        )
    changes, new = [], set()
    kernel, stride = conv.kernel_size, conv.stride
    if kernel != (3, 3):
        replacement = nn.Conv2d(conv.in_channels, conv.out_channels, 3, padding=1, bias=conv.bias is not None)
        net.set_submodule(name, replacement)
        changes.append(f"{name} 3x3 stride 1, was {kernel[0]}x{kernel[1]} stride {stride[0]}")
        new.add(name)
    elif stride != (1, 1):
        conv.stride = (1, 1)
        changes.append(f"{name} stride 1, was {stride[0]}")
    for pool_name, module in list(net.named_modules()):
        if isinstance(module, nn.MaxPool2d) and (pool_name == "maxpool" or pool_name.startswith("stem.")):
            net.set_submodule(pool_name, nn.Identity())
            changes.append(f"{pool_name} removed")
    return Stem(changes, new)


def weights_source(path: str) -> str:
    return f"the weights in {path!r} (--model.weights)"


def pretrained_file(arch: str) -> tuple[Path, str]:
    """The local file of `arch`'s pretrained weights, and what they are in words: from the Hugging Face hub cache,
    else downloaded when the hub can be reached; else one UserError at once, not after the hub client's retries."""
    cfg = pretrained_cfg(arch)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise UserError(
            f"--model.pretrained true: timm has no pretrained weights for {arch}: timm.list_models('{arch}*', "
            "pretrained=True) lists the architectures that have, or train from scratch (--model.pretrained false)."
        )
    if cfg.hf_hub_id:
        return hub_file(arch, cfg.hf_hub_id, cfg.hf_hub_filename), f"{arch}'s pretrained weights ({cfg.hf_hub_id})"
    return url_file(arch, str(cfg.url)), f"{arch}'s pretrained weights ({cfg.url})"


def hub_file(arch: str, hub_id: str, filename: str | None) -> Path:
    """The weights file of a hub repository (`repo` or `repo@revision`), as timm looks for it: from the cache, else
    downloaded after one request has shown that the hub answers."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_download, hf_hub_url, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError

    repo, _, revision = hub_id.partition("@")
    names = (filename,) if filename else HUB_FILES
    for name in names:
        if isinstance(cached := try_to_load_from_cache(repo, name, revision=revision or None), str):
            return Path(cached)
    try:
        for name in names:
            try:  # one request, without the retries that make hf_hub_download take ~30 s to give up offline
                get_hf_file_metadata(hf_hub_url(repo, name, revision=revision or None), timeout=HUB_TIMEOUT)
            except EntryNotFoundError:
                continue
            return Path(hf_hub_download(repo, name, revision=revision or None, library_name="timm"))
    except Exception as err:  # no network, offline mode, a proxy's refusal...: whatever the hub client raised
        reason = f"{type(err).__name__}: {first_sentence(err)}"
        raise UserError(
            f"--model.pretrained true: {arch}'s weights ({names[0]} of {repo} on the Hugging Face hub) are not in "
            f"the hub cache {constants.HF_HUB_CACHE} and the hub cannot be reached ({reason}). Download them once "
            f"where there is a network, into the hub cache (hf download {repo} {names[0]}; HF_HOME or HF_HUB_CACHE "
            "choose the folder, ~/.cache/huggingface/hub by default) and bring that folder here, or pass a local "
            "weights file: --model.weights FILE."
        ) from err
    raise UserError(f"--model.pretrained true: {repo} on the Hugging Face hub has none of {', '.join(names)}.")


def url_file(arch: str, url: str) -> Path:
    """Weights that timm has at a URL only (a few older architectures): torch's hub cache, else downloaded there."""
    target = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name
    if target.is_file():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(target), progress=False)
    except Exception as err:  # urllib's errors, or a full disk
        raise UserError(
            f"--model.pretrained true: {arch}'s weights ({url}) are not in torch's hub cache {target.parent} and "
            f"cannot be downloaded ({type(err).__name__}: {first_sentence(err)}). Download the file once into that "
            "folder (TORCH_HOME chooses it), or pass a local weights file: --model.weights FILE."
        ) from err
    return target


def read_weights(path: Path) -> WeightsFile:
    """The tensors of a state dict (.pth/.pt/.bin, torch.load with weights_only=True), a .safetensors file or a proj
    checkpoint; a missing, unreadable or foreign file is a UserError naming it."""
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise UserError(f"--model.weights {str(path)!r} {what}: pass a weights file ({WEIGHTS_FILES}).")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            content: Any = load_file(path)
        else:
            content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch and safetensors raise RuntimeError, EOFError, UnpicklingError, SafetensorError...
        reason = first_sentence(err)
        raise UserError(
            f"--model.weights {str(path)!r} cannot be read (truncated, or not a weights file: {reason}); pass a "
            f"weights file ({WEIGHTS_FILES})."
        ) from err
    description = arch = None
    if isinstance(content, dict) and isinstance(content.get("state_dict"), dict):  # a Lightning checkpoint
        hparams = content.get("hyper_parameters") or {}
        arch = hparams.get("arch") or hparams.get("_class_path")
        description = content.get(DATA_KEY)
        content = content["state_dict"]
        if any(key.startswith("net.") for key in content):  # proj's: the network's tensors beside the metrics'
            content = {key.removeprefix("net."): value for key, value in content.items() if key.startswith("net.")}
    elif isinstance(content, dict) and isinstance(content.get("model"), dict):  # timm's and torchvision's scripts
        content = content["model"]
    if not (isinstance(content, dict) and content and all(isinstance(value, Tensor) for value in content.values())):
        raise UserError(
            f"--model.weights {str(path)!r} holds no state dict (names of tensors): pass a weights file "
            f"({WEIGHTS_FILES})."
        )
    state = {key.removeprefix("module."): value for key, value in content.items()}  # saved from DataParallel/DDP
    return WeightsFile(state, description, arch if isinstance(arch, str) else None)


def fit_weights(
    net: nn.Module, file: WeightsFile, source: str, arch: str, new: set[str], reset_head: bool = False
) -> str:
    """Load the file's tensors into `net`: each must fit, but for the classifier (re-initialised when the class
    count differs, or `reset_head`), the first convolution (adapted by timm to another channel count) and the
    modules the small-input stem made anew. What was loaded, adapted and left, in words."""
    from timm.models import adapt_input_conv

    heads, stems = module_names(net, "classifier"), module_names(net, "first_conv")
    state, loaded, notes = dict(file.state), {}, []
    other = f" (they are {file.arch}'s)" if file.arch and file.arch != arch else ""
    fix = f"pass the --model.arch they were trained for{other}, or other weights"
    for key, target in net.state_dict().items():
        found, module = state.pop(key, None), key.rpartition(".")[0]
        if found is None:
            if key.endswith("num_batches_tracked"):  # a counter that older files lack
                continue
            first = next(iter(file.state))
            raise UserError(
                f"{source} do not fit {arch}: its {key} {tuple(target.shape)} is not in the file, whose first "
                f"tensor is {first} {tuple(file.state[first].shape)}: {fix}."
            )
        if module in heads and (reset_head or found.shape != target.shape):
            if key.endswith("weight"):
                classes = f"{target.shape[0]} classes here, {found.shape[0]} in the file"
                why = "--model.reset_head true" if found.shape == target.shape else classes
                notes.append(f"{module} re-initialised ({why})")
        elif found.shape == target.shape:
            loaded[key] = found
        elif module in new:
            notes.append(f"{module} trained from scratch (the small-input stem's)")
        elif module in stems and found.ndim == 4 and other_channels(found, target):
            loaded[key] = adapt_input_conv(target.shape[1], found, base_chans=found.shape[1])
            notes.append(f"{module} adapted from {found.shape[1]} input channels to {target.shape[1]}")
        else:
            raise UserError(
                f"{source} do not fit {arch}: {key} is {tuple(found.shape)} in the file and {tuple(target.shape)} "
                f"here: {fix}."
            )
    if state:
        extra = next(iter(state))
        raise UserError(
            f"{source} do not fit {arch}: the file's {extra} {tuple(state[extra].shape)} has no place in it "
            f"({len(state)} such tensors): {fix}."
        )
    net.load_state_dict(loaded, strict=False)
    return f"loaded {len(loaded)} tensors from {source}" + "".join(f"; {note}" for note in notes)


def other_channels(found: Tensor, target: Tensor) -> bool:
    """Whether two convolution weights (out, in, kh, kw) differ only in their input channels."""
    return (found.shape[0], *found.shape[2:]) == (target.shape[0], *target.shape[2:])


def timm_cfg(net: nn.Module) -> dict[str, Any]:
    """The pretrained_cfg that timm.create_model gave the network (as a dict)."""
    return dict(getattr(net, "pretrained_cfg", None) or {})


def module_names(net: nn.Module, key: str) -> set[str]:
    """The modules timm's pretrained_cfg names under `key` ("classifier", "first_conv": one name or several)."""
    names = timm_cfg(net).get(key) or ()
    return {names} if isinstance(names, str) else set(names)


def normalization_of(
    arch: str, pretrained: bool, file: WeightsFile | None, weights: str
) -> WeightsNormalization | None:
    """The statistics the weights were trained with: timm's pretrained_cfg's for its pretrained weights, a proj
    checkpoint's recorded data's for its weights, and timm's, assumed, for any other weights file."""
    cfg = pretrained_cfg(arch)
    if file is not None and file.description and "mean" in file.description:
        trained_on = str(file.description.get("class_path", "other")).rpartition(".")[2]
        source = f"the weights in {weights!r} (trained on {trained_on} data)"
        return WeightsNormalization(tuple(file.description["mean"]), tuple(file.description["std"]), source)
    if cfg is None:
        return None
    if pretrained:
        return WeightsNormalization(cfg.mean, cfg.std, f"{arch}'s pretrained weights ({cfg.hf_hub_id or cfg.url})")
    source = f"the weights in {weights!r} (timm's statistics for {arch}, assumed: the file does not record its own)"
    return WeightsNormalization(cfg.mean, cfg.std, source, assumed=True)


def feature_shape(net: nn.Module, arch: str, shape: tuple[int, int, int]) -> tuple[int, ...]:
    """The shape of the last stage's features for one image (C, H, W): a check that the network takes these images
    (a ViT wants sides divisible by its patch), and what the build line reports."""
    training = net.training
    net.eval()
    try:
        with torch.no_grad():
            features = cast(Any, net).forward_features(torch.zeros(1, *shape))
    except (RuntimeError, ValueError, AssertionError) as err:
        reason = first_sentence(err)
        raise UserError(
            f"--model.arch {arch} does not take {'x'.join(map(str, shape))} images ({reason}): choose another "
            "architecture, or another image size (--data.image_size)."
        ) from err
    finally:
        net.train(training)
    return tuple(features.shape[1:])


def first_sentence(err: BaseException) -> str:
    """The first sentence of an exception's message (torch's go on for lines), or its type's name."""
    return (str(err).strip() or type(err).__name__).splitlines()[0].split(". ")[0].rstrip(".")


def build_line(
    net: nn.Module,
    arch: str,
    stem: Stem | None,
    features: tuple[int, ...],
    shape: tuple[int, int, int],
    loaded: str | None,
) -> str:
    """One line: which stem, the final feature map, and where the weights came from."""
    if stem is None:
        which = "its ImageNet stem (--model.small_input true: a stride-1 3x3 stem for small images)"
    else:
        changes = ", ".join(stem.changes) or "already stride 1"
        which = f"the small-input stem ({changes}; --model.small_input false: ImageNet's)"
    size = "x".join(map(str, features))
    parameters = sum(parameter.numel() for parameter in net.parameters())
    weights = loaded or "initialised at random (--model.pretrained true or --model.weights FILE: trained weights)"
    return (
        f"TimmClassifier: {arch} ({parameters:,} parameters) with {which}; final feature map {size} for "
        f"{'x'.join(map(str, shape))} images; {weights}."
    )
