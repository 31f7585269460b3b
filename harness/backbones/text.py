"""BERT-family text encoders through ``transformers``.

Registered names: ``distilbert-base-uncased``, ``bert-base-uncased`` (hub names, the weights
WILDS and its follow-ups use for CivilComments) and ``TextEncoder`` (whatever model
``hparams["pretrained"]`` names). Input: a LongTensor (N, 2, L) holding token ids
(``x[:, 0]``) and the attention mask (``x[:, 1]``), made by the dataset with the tokenizer of
the same model (``load_tokenizer``). Output: the [CLS] hidden state (``pooling: "cls"``, the
default, as WILDS' DistilBERT classifier) or the masked mean of the last hidden states
(``pooling: "mean"``); ``n_outputs`` = the model's hidden size, or ``feature_dim`` with
``project: true`` (a Linear layer on top).

Hparams read:
  pretrained  true (default): the hub's weights of the backbone name (internet or the Hugging
              Face cache); a folder: ``AutoModel.from_pretrained(folder)`` (a saved model with
              its tokenizer files); false: random initialisation of the same architecture (its
              config and tokenizer still come from the hub or the folder)
  pooling     "cls" | "mean";   project, feature_dim   as above
Offline (HF_HUB_OFFLINE=1, or the hub unreachable within a second) a hub name that is not in
the local cache fails at once with one line saying how to point at a local folder.
"""

from __future__ import annotations

from pathlib import Path

from harness.backbones import hub
from harness.errors import UserError
from harness.registry import BACKBONES

# registered name -> hub repo ids it may be cached under (the hub moved them under organisations)
HUB_IDS = {
    "distilbert-base-uncased": ["distilbert-base-uncased", "distilbert/distilbert-base-uncased"],
    "bert-base-uncased": ["bert-base-uncased", "google-bert/bert-base-uncased"],
}
GENERIC = "TextEncoder"


def model_source(backbone: str, hparams: dict) -> tuple[str, bool]:
    """(what to pass to ``from_pretrained``, local_files_only) for a text backbone and its hparams.

    The dataset calls this too, to tokenise with the tokenizer of the same model. Fails fast
    (one-line UserError, no heavy import) when the weights would need an unreachable hub.
    """
    value = hparams.get("pretrained", True)
    local = hub.local_weights(value)
    if local is not None:
        if not local.is_dir():
            raise UserError(f"backbone {backbone}: 'pretrained' must be a folder saved by transformers "
                            f"(config.json, weights, tokenizer files), got the file {local}")
        if not (local / "config.json").is_file():
            raise UserError(f"backbone {backbone}: {local} has no config.json; expected a folder saved with "
                            "save_pretrained() (config.json, model.safetensors or pytorch_model.bin, tokenizer files)")
        return str(local), True
    if backbone not in HUB_IDS:
        if backbone == GENERIC:
            raise UserError(f"backbone {GENERIC} loads the model of hparam 'pretrained', which must be a local folder "
                            "(--hparams '{\"pretrained\": \"/path/to/model_dir\"}')")
        raise UserError(f"'{backbone}' is not a text backbone; use one of {', '.join([*HUB_IDS, GENERIC])}")
    if hub.is_offline():
        cached = hub.cached_repos(HUB_IDS[backbone])
        if not cached:
            raise UserError(hub.offline_message(f"backbone {backbone}", backbone, "/path/to/model_dir",
                                                    random_init_ok=False))
        return HUB_IDS[backbone][0 if cached[0].name.count("--") == 1 else 1], True
    return HUB_IDS[backbone][-1], False


def _import_transformers():
    try:
        import transformers
    except ImportError:
        raise UserError("text backbones need transformers: pip install 'harness[text]'") from None
    transformers.logging.set_verbosity_error()  # no load reports or progress bars in err.txt
    transformers.logging.disable_progress_bar()
    return transformers


def load_tokenizer(backbone: str, hparams: dict):
    """The tokenizer of the model that ``backbone`` with ``hparams`` loads."""
    src, local_only = model_source(backbone, hparams)
    transformers = _import_transformers()
    try:
        return transformers.AutoTokenizer.from_pretrained(src, local_files_only=local_only)
    except OSError as e:
        raise UserError(f"cannot load the tokenizer of {src}: {str(e).splitlines()[0]}") from None


def _module():
    from torch import nn

    return nn.Module


class TextEncoder(_module()):
    def __init__(self, model, pooling: str, project_to: int | None):
        from torch import nn

        super().__init__()
        if pooling not in ("cls", "mean"):
            raise UserError(f"hparam 'pooling' must be 'cls' or 'mean', got {pooling!r}")
        self.model, self.pooling = model, pooling
        hidden = int(model.config.hidden_size)
        self.proj = nn.Linear(hidden, project_to) if project_to else nn.Identity()
        self.n_outputs = project_to or hidden

    def forward(self, x):
        if x.dim() != 3 or x.shape[1] != 2:
            raise ValueError(f"text backbones take (N, 2, L) token ids and attention masks, got shape {tuple(x.shape)}")
        ids, mask = x[:, 0].long(), x[:, 1].long()
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        if self.pooling == "cls":
            z = hidden[:, 0]
        else:
            m = mask.unsqueeze(-1).to(hidden.dtype)
            z = (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
        return self.proj(z)


def build_text_encoder(backbone: str, input_shape: tuple[int, ...], hparams: dict) -> TextEncoder:
    if len(input_shape) != 2 or input_shape[0] != 2:
        raise UserError(f"backbone {backbone} needs tokenised text inputs of shape (2, L) (ids, mask), "
                        f"got {tuple(input_shape)}: use it with a text dataset such as CivilComments")
    src, local_only = model_source(backbone, hparams)
    transformers = _import_transformers()
    try:
        if hparams.get("pretrained", True) is False:
            config = transformers.AutoConfig.from_pretrained(src, local_files_only=local_only)
            model = transformers.AutoModel.from_config(config)
        else:
            model = transformers.AutoModel.from_pretrained(src, local_files_only=local_only)
    except OSError as e:
        raise UserError(f"backbone {backbone}: cannot load {src}: {str(e).splitlines()[0]}") from None
    if getattr(model.config, "max_position_embeddings", None) and input_shape[1] > model.config.max_position_embeddings:
        raise UserError(f"max_length {input_shape[1]} exceeds the {model.config.max_position_embeddings} "
                        f"positions of {Path(src).name}")
    project = int(hparams["feature_dim"]) if hparams.get("project", False) else None
    return TextEncoder(model, hparams.get("pooling", "cls"), project)


@BACKBONES.register("distilbert-base-uncased")
def distilbert_base_uncased(input_shape: tuple[int, ...], hparams: dict):
    return build_text_encoder("distilbert-base-uncased", input_shape, hparams)


@BACKBONES.register("bert-base-uncased")
def bert_base_uncased(input_shape: tuple[int, ...], hparams: dict):
    return build_text_encoder("bert-base-uncased", input_shape, hparams)


@BACKBONES.register("TextEncoder")
def text_encoder(input_shape: tuple[int, ...], hparams: dict):
    return build_text_encoder(GENERIC, input_shape, hparams)
