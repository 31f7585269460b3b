"""Any ``timm`` model as a backbone (pooled features, classifier removed).

Registered names: ``resnet18``, ``resnet50``, ``vit_small_patch16_224``. Any other timm
architecture: ``timm_factory("<timm name>")`` builds the same kind of factory, and
``resolve_prefixed("timm:<timm name>")`` returns it for names of that form (the hook a registry
uses to answer ``BACKBONES.get("timm:<name>")``).

Hparams read:
  pretrained   true (default): the hub's weights (needs internet or the Hugging Face cache);
               a path: a local weight file, or a folder holding model.safetensors /
               pytorch_model.bin, loaded through timm's ``pretrained_cfg_overlay=dict(file=...)``
               (timm then adapts the first conv to the input channels and drops the classifier);
               false: random initialisation
  project      false (default): ``n_outputs`` = the model's pooled feature width;
               true: a Linear layer to ``feature_dim`` features
  freeze_bn    keep BatchNorm statistics frozen while training (DomainBed does so for its
               ResNets); default: true when pretrained weights were loaded
Offline (HF_HUB_OFFLINE=1, or the hub unreachable within a second) a hub name that is not in
the local cache fails at once with one line saying how to point at local weights. ``timm`` is
imported only when a model is built.
"""

from __future__ import annotations

import sys
from pathlib import Path

from harness.backbones import hub
from harness.errors import UserError
from harness.registry import BACKBONES


def _nn():
    from torch import nn

    return nn


class TimmBackbone(_nn().Module):
    def __init__(self, model, n_features: int, project_to: int | None, freeze_bn: bool):
        nn = _nn()
        super().__init__()
        self.model = model
        self.proj = nn.Linear(n_features, project_to) if project_to else nn.Identity()
        self.n_outputs = project_to or n_features
        self.freeze_bn = freeze_bn
        if freeze_bn:
            self.train(True)

    def forward(self, x):
        return self.proj(self.model(x))

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_bn and mode:
            from torch.nn.modules.batchnorm import _BatchNorm

            for m in self.model.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self


def _pretrained_source(model_name: str, hparams: dict) -> tuple[bool, str | None]:
    """(load weights?, local file or None for the hub). Fails fast offline, before importing timm."""
    value = hparams.get("pretrained", True)
    local = hub.local_weights(value)
    if local is not None:
        return True, str(hub.weight_file(local, f"backbone {model_name}"))
    if not value:
        return False, None
    if hub.is_offline():
        arch = model_name.split(".")[0]
        if not hub.cached_repos([f"timm/{arch}*", f"timm/{model_name}"]):
            raise UserError(hub.offline_message(f"backbone {model_name}", model_name, "/path/to/pytorch_model.bin"))
        return True, _cached_file(model_name)
    return True, None


def _cached_file(model_name: str) -> str:
    """The weight file of ``model_name``'s default pretrained tag in the Hugging Face cache."""
    import timm
    from huggingface_hub import try_to_load_from_cache

    try:
        cfg = timm.models.get_pretrained_cfg(model_name)
    except Exception:  # unknown name: let create_model report it
        cfg = None
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    names = [cfg.hf_hub_filename] if cfg is not None and cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
    for filename in names if repo else []:
        found = try_to_load_from_cache(repo, filename)
        if isinstance(found, str):
            return found
    raise UserError(hub.offline_message(f"backbone {model_name}", model_name, "/path/to/pytorch_model.bin"))


def build_timm(model_name: str, input_shape: tuple[int, ...], hparams: dict):
    """A ``TimmBackbone`` of timm's ``model_name`` for inputs of ``input_shape`` (C, H, W)."""
    if len(input_shape) != 3:
        raise UserError(f"backbone {model_name} (timm) needs image inputs (C, H, W), got shape {tuple(input_shape)}")
    pretrained, file = _pretrained_source(model_name, hparams)
    try:
        import timm
    except ImportError:
        raise UserError(f"backbone {model_name} needs timm: pip install 'harness[timm]'") from None
    kwargs: dict = {"num_classes": 0}
    if input_shape[0] != 3:
        kwargs["in_chans"] = input_shape[0]
    if file is not None:
        kwargs["pretrained_cfg_overlay"] = dict(file=file)
    import logging

    timm_log = logging.getLogger("timm")
    level = timm_log.level
    timm_log.setLevel(logging.ERROR)  # timm lists every unexpected key; _check_loaded says it in one line
    try:
        try:  # transformers need the image size; convnets take any and reject the argument
            model = timm.create_model(model_name, pretrained=pretrained, img_size=tuple(input_shape[1:]), **kwargs)
        except TypeError:
            model = timm.create_model(model_name, pretrained=pretrained, **kwargs)
    except RuntimeError as e:
        if "Unknown model" in str(e):
            close = timm.list_models(f"*{model_name.split('.')[0][:6]}*")[:8]
            raise UserError(f"unknown timm model '{model_name}'" + (f"; similar: {', '.join(close)}" if close else "")) from None
        if file is not None and ("state_dict" in str(e) or "size mismatch" in str(e)):
            first = str(e).strip().splitlines()
            detail = " ".join(line.strip() for line in first[:2])[:300]
            raise UserError(f"backbone {model_name}: the weights in {file} do not fit {model_name}: {detail}") from None
        raise
    except (FileNotFoundError, IsADirectoryError) as e:
        raise UserError(f"backbone {model_name}: cannot read pretrained weights {file}: {e}") from None
    finally:
        timm_log.setLevel(level)
    if file is not None:
        _check_loaded(model, file, model_name)
    n_features = int(getattr(model, "head_hidden_size", None) or model.num_features)
    project = int(hparams["feature_dim"]) if hparams.get("project", False) else None
    return TimmBackbone(model, n_features, project, bool(hparams.get("freeze_bn", pretrained)))


def _check_loaded(model, file: str, model_name: str) -> None:
    """Fail when the weight file shares no tensor name with the model, warn when it shares few
    (timm loads non-strictly once the classifier is dropped)."""
    if file.endswith(".npz"):
        return  # original JAX checkpoints are converted by timm's own loader
    from timm.models import load_state_dict

    try:
        keys = set(load_state_dict(file, weights_only=True))
    except Exception:  # noqa: BLE001 - timm itself has read it; the check is advisory
        return
    own = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
    shared = sum(k in keys for k in own)
    if shared == 0:
        raise UserError(f"backbone {model_name}: none of the {len(keys)} tensors in {file} matches a tensor of "
                        f"{model_name} by name; is it a checkpoint of another architecture?")
    if shared < len(own) / 2:
        print(f"warning: backbone {model_name}: {Path(file).name} provides only {shared} of the model's "
              f"{len(own)} tensors; the others keep their random initialisation", file=sys.stderr)


def timm_factory(model_name: str):
    """A backbone factory ``f(input_shape, hparams)`` for any timm architecture name."""

    def factory(input_shape: tuple[int, ...], hparams: dict):
        return build_timm(model_name, input_shape, hparams)

    factory.__name__ = f"timm_{model_name}"
    return factory


@BACKBONES.register("resnet18")
def resnet18(input_shape: tuple[int, ...], hparams: dict):
    return build_timm("resnet18", input_shape, hparams)


@BACKBONES.register("resnet50")
def resnet50(input_shape: tuple[int, ...], hparams: dict):
    return build_timm("resnet50", input_shape, hparams)


@BACKBONES.register("vit_small_patch16_224")
def vit_small_patch16_224(input_shape: tuple[int, ...], hparams: dict):
    return build_timm("vit_small_patch16_224", input_shape, hparams)


PREFIX = "timm:"


def resolve_prefixed(name: str):
    """The factory for a backbone name ``timm:<timm name>``; None for other names."""
    if name.startswith(PREFIX) and len(name) > len(PREFIX):
        return timm_factory(name[len(PREFIX):])
    return None
