"""Intermediate-layer distillation: teacher hidden states and attention maps, a student that exposes
its own, the combined loss."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kdhelpers.batching import pad_collate
from kdhelpers.device import autocast, get_device, seeded
from kdhelpers.losses import attention_transfer_loss, hidden_cosine_loss, hidden_mse_loss
from kdhelpers.models import logits_of
from kdhelpers.progress import progress_bar
from kdhelpers.pseudo import length_sorted_batches
from kdhelpers.train import LossFn, make_kd_loss
from kdhelpers.validate import check_int, check_number, check_token_lists

#: What a student matches besides the teacher's logits: nothing, hidden states (MSE or cosine), attention maps.
FEATURE_KINDS = ("logits", "mse", "cosine", "attention")

LayerMap = Sequence[tuple[int, int]]


def uniform_layer_map(student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
    """Pairs (student layer k, teacher layer round(k * teacher_layers / student_layers)) for k = 1..student_layers.

    Layers count from 1 (0 would be the embedding output); the last student layer always meets
    the last teacher layer, the others are spread evenly below it (as in TinyBERT).
    """
    for name, value in (("student_layers", student_layers), ("teacher_layers", teacher_layers)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int (got {value!r})")
    if student_layers > teacher_layers:
        raise ValueError(
            f"the student has more layers ({student_layers}) than the teacher ({teacher_layers})"
        )
    return [(k, round(k * teacher_layers / student_layers)) for k in range(1, student_layers + 1)]


def _check_layer_map(
    layer_map: LayerMap, student_layers: int, teacher_layers: int, attention: bool
) -> list[tuple[int, int]]:
    """Validate (student layer, teacher layer) pairs against both depths; attention maps need layers >= 1."""
    pairs = [tuple(p) for p in layer_map]
    if not pairs:
        raise ValueError(
            "layer_map is empty: give at least one (student layer, teacher layer) pair"
        )
    low = 1 if attention else 0
    for s, t in pairs:
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (s, t)):
            raise TypeError(f"layer_map pairs must be (int, int) (got {(s, t)!r})")
        if not (low <= s <= student_layers and low <= t <= teacher_layers):
            raise ValueError(
                f"layer pair {(s, t)} is out of range: student layers {low}..{student_layers}, "
                f"teacher layers {low}..{teacher_layers}"
                + (" (0 = embeddings has no attention map)" if attention else "")
            )
    return pairs  # type: ignore[return-value]


def set_attention_dropout(model: nn.Module, p: float = 0.0) -> int:
    """Set the dropout on attention probabilities of every self-attention block (query/key/value +
    dropout); returns how many."""
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
        raise ValueError(f"p must be a number in [0, 1) (got {p!r})")
    n = 0
    for module in model.modules():
        if all(hasattr(module, a) for a in ("query", "key", "value")) and isinstance(
            getattr(module, "dropout", None), nn.Dropout
        ):
            module.dropout.p = float(p)
            n += 1
    if n == 0:
        raise TypeError(f"found no self-attention block with a dropout in {type(model).__name__}")
    if hasattr(getattr(model, "config", None), "attention_probs_dropout_prob"):
        model.config.attention_probs_dropout_prob = float(p)
    return n


def use_eager_attention(model: nn.Module) -> nn.Module:
    """Switch a Hugging Face model to the plain ('eager') attention, the one that can return its attention maps."""
    if not hasattr(model, "set_attn_implementation"):
        raise TypeError(
            f"model must be a Hugging Face PreTrainedModel (got {type(model).__name__})"
        )
    model.set_attn_implementation("eager")
    return model


@dataclass
class TeacherFeatures:
    """The teacher's hidden states and head-averaged attention maps per example (unpadded), for chosen layers."""

    hidden_layers: tuple[int, ...]
    attention_layers: tuple[int, ...]
    hidden: list[torch.Tensor]  # per example: (len(hidden_layers), length, width)
    attentions: list[torch.Tensor]  # per example: (len(attention_layers), length, length)
    lengths: list[int]

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def width(self) -> int:
        """The teacher's hidden width (0 when no hidden layer was kept)."""
        return int(self.hidden[0].shape[-1]) if self.hidden_layers else 0

    def for_batch(
        self, index: torch.Tensor, attention_mask: torch.Tensor
    ) -> dict[str, dict[int, torch.Tensor]]:
        """Padded features for the rows `index` of a batch: {'hidden': {layer: (B, S, W)},
        'attentions': {layer: (B, 1, S, S)}}."""
        rows = [int(i) for i in index]
        if rows and (min(rows) < 0 or max(rows) >= len(self)):
            raise IndexError(f"batch index out of range for {len(self)} cached examples")
        seq = attention_mask.shape[1]
        got = attention_mask.sum(1).tolist()
        if [self.lengths[i] for i in rows] != [int(n) for n in got]:
            raise ValueError(
                "cached teacher features do not match this batch's token counts: "
                "compute them on the same input_ids, in the same order, as the training set"
            )
        device = attention_mask.device
        out: dict[str, dict[int, torch.Tensor]] = {"hidden": {}, "attentions": {}}
        if self.hidden_layers:
            h = torch.zeros(len(rows), len(self.hidden_layers), seq, self.width)
            for b, i in enumerate(rows):
                h[b, :, : self.lengths[i]] = self.hidden[i]
            out["hidden"] = {
                layer: h[:, j].to(device) for j, layer in enumerate(self.hidden_layers)
            }
        if self.attention_layers:
            a = torch.zeros(len(rows), len(self.attention_layers), seq, seq)
            for b, i in enumerate(rows):
                n = self.lengths[i]
                a[b, :, :n, :n] = self.attentions[i]
            out["attentions"] = {
                layer: a[:, j : j + 1].to(device) for j, layer in enumerate(self.attention_layers)
            }
        return out


@torch.inference_mode()
def teacher_features(
    teacher: nn.Module,
    input_ids: Sequence[Sequence[int]],
    hidden_layers: Sequence[int] = (),
    attention_layers: Sequence[int] = (),
    device: torch.device | str | None = None,
    batch_size: int = 64,
    progress: bool = False,
) -> TeacherFeatures:
    """Hidden states and head-averaged attention maps of the frozen teacher (eval mode, no gradients),
    kept on the CPU."""

    input_ids = check_token_lists("input_ids", input_ids)
    if len(input_ids) == 0:
        raise ValueError("input_ids is empty: nothing to compute")
    batch_size = check_int("batch_size", batch_size, 1)
    hidden_layers, attention_layers = tuple(hidden_layers), tuple(attention_layers)
    if not hidden_layers and not attention_layers:
        raise ValueError("ask for at least one hidden or attention layer")
    encoder = teacher.base_model
    depth = encoder.config.num_hidden_layers
    if hidden_layers:
        _check_layer_map([(0, t) for t in hidden_layers], 0, depth, attention=False)
    if attention_layers:
        _check_layer_map([(1, t) for t in attention_layers], 1, depth, attention=True)
    device = get_device() if device is None else torch.device(device)
    was_training, old_impl = teacher.training, encoder.config._attn_implementation
    if attention_layers:
        use_eager_attention(encoder)
    teacher.eval().to(device)
    n = len(input_ids)
    hidden: list[Any] = [None] * n
    attentions: list[Any] = [None] * n
    try:
        for idx in progress_bar(
            length_sorted_batches([len(x) for x in input_ids], batch_size),
            "teacher features",
            enabled=progress,
        ):
            batch = pad_collate(
                [{"input_ids": input_ids[i], "labels": -1, "index": i} for i in idx]
            )
            mask = batch["attention_mask"].to(device)
            with autocast(device):
                out = encoder(
                    input_ids=batch["input_ids"].to(device),
                    attention_mask=mask,
                    output_hidden_states=bool(hidden_layers),
                    output_attentions=bool(attention_layers),
                )
            for b, i in enumerate(idx):
                length = len(input_ids[i])
                if hidden_layers:
                    hidden[i] = (
                        torch.stack([out.hidden_states[t][b, :length] for t in hidden_layers])
                        .float()
                        .cpu()
                    )
                if attention_layers:
                    attentions[i] = torch.stack(
                        [
                            out.attentions[t - 1][b, :, :length, :length].float().mean(0)
                            for t in attention_layers
                        ]
                    ).cpu()
    finally:
        if attention_layers and old_impl != "eager":
            encoder.set_attn_implementation(old_impl)
        teacher.train(was_training)
    return TeacherFeatures(
        hidden_layers,
        attention_layers,
        hidden if hidden_layers else [],
        attentions if attention_layers else [],
        [len(x) for x in input_ids],
    )


class FeatureStudent(nn.Module):
    """A Hugging Face student that keeps the hidden states (and attention maps) of its last training forward.

    kind says what it will match besides the logits ('logits', 'mse', 'cosine', 'attention');
    for 'mse' and 'cosine' it owns one learned nn.Linear per layer pair, mapping its width to the
    teacher's (FitNets' regressor); these are trained with the student and dropped afterwards.
    attention_dropout (default 0, for every kind, so that all students train alike) replaces the
    dropout on attention probabilities: with dropout the returned maps are no longer distributions.
    """

    def __init__(
        self,
        model: nn.Module,
        kind: str = "logits",
        layer_map: LayerMap = (),
        teacher_width: int | None = None,
        teacher_layers: int | None = None,
        seed: int = 0,
        attention_dropout: float | None = 0.0,
    ) -> None:
        super().__init__()
        if kind not in FEATURE_KINDS:
            raise ValueError(f"kind must be one of {FEATURE_KINDS} (got {kind!r})")
        config = getattr(model, "config", None)
        if config is None or not hasattr(config, "num_hidden_layers"):
            raise TypeError(
                f"model must be a Hugging Face Transformer classifier (got {type(model).__name__})"
            )
        self.model, self.kind = model, kind
        self.layer_map: list[tuple[int, int]] = []
        self.projections = nn.ModuleList()
        if kind != "logits":
            if teacher_layers is None:
                raise ValueError(
                    f"kind={kind!r} needs teacher_layers (the teacher's depth) to check layer_map"
                )
            self.layer_map = _check_layer_map(
                layer_map, config.num_hidden_layers, teacher_layers, kind == "attention"
            )
        if kind in ("mse", "cosine"):
            if (
                isinstance(teacher_width, bool)
                or not isinstance(teacher_width, int)
                or teacher_width < 1
            ):
                raise ValueError(
                    f"kind={kind!r} needs teacher_width, a positive int (got {teacher_width!r})"
                )
            with seeded(seed):
                self.projections = nn.ModuleList(
                    nn.Linear(config.hidden_size, teacher_width) for _ in self.layer_map
                )
        if attention_dropout is not None:
            set_attention_dropout(model, attention_dropout)
        if kind == "attention":
            use_eager_attention(model)
        self.features: dict[str, Any] = {}

    @property
    def config(self) -> Any:
        """The wrapped model's config."""
        return self.model.config

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_: object
    ) -> torch.Tensor:
        """Logits; in training mode, also keeps `self.features` = {'hidden': ..., 'attentions': ...} of this batch."""
        if not self.training or self.kind == "logits":
            return logits_of(self.model(input_ids=input_ids, attention_mask=attention_mask))
        want_attn = self.kind == "attention"
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            output_hidden_states=not want_attn,
            output_attentions=want_attn,
        )
        self.features = {"hidden": out.hidden_states, "attentions": out.attentions}
        return out.logits


def make_feature_kd_loss(
    student: FeatureStudent,
    teacher_feats: TeacherFeatures | None = None,
    beta: float = 1.0,
    alpha: float = 0.0,
    temperature: float = 2.0,
    attention_kind: str = "kl",
) -> LossFn:
    """The loop's loss: make_kd_loss(alpha, T) on the logits + beta * the student's feature loss,
    averaged over its layer pairs.

    The returned function keeps `.log`, a list of (logit loss, feature loss) per step.
    """
    if not isinstance(student, FeatureStudent):
        raise TypeError(f"student must be a FeatureStudent (got {type(student).__name__})")
    check_number("beta", beta, 0.0)
    kind = student.kind
    if kind != "logits":
        if not isinstance(teacher_feats, TeacherFeatures):
            raise TypeError(f"kind={kind!r} needs teacher_feats from teacher_features(...)")
        have = (
            teacher_feats.attention_layers if kind == "attention" else teacher_feats.hidden_layers
        )
        missing = sorted({t for _, t in student.layer_map} - set(have))
        if missing:
            raise ValueError(
                f"teacher_feats lacks teacher layers {missing} ({'attention' if kind == 'attention' else 'hidden'})"
            )
        if kind != "attention" and student.projections[0].out_features != teacher_feats.width:
            raise ValueError(
                f"the student's projections map to width {student.projections[0].out_features} "
                f"but the teacher's width is {teacher_feats.width}"
            )
    if attention_kind not in ("kl", "mse"):
        raise ValueError(f"attention_kind must be 'kl' or 'mse' (got {attention_kind!r})")
    kd = make_kd_loss(alpha, temperature)
    log: list[tuple[float, float]] = []

    def loss(logits: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        base = kd(logits, batch)
        if kind == "logits":
            log.append((float(base.detach()), 0.0))
            return base
        if not student.features:
            raise RuntimeError(
                "the student kept no features: call it in training mode before the loss"
            )
        mask = batch["attention_mask"]
        target = teacher_feats.for_batch(batch["index"], mask)
        terms = []
        for j, (s_layer, t_layer) in enumerate(student.layer_map):
            if kind == "attention":
                terms.append(
                    attention_transfer_loss(
                        student.features["attentions"][s_layer - 1],
                        target["attentions"][t_layer],
                        mask,
                        kind=attention_kind,
                    )
                )
            else:
                fn = hidden_mse_loss if kind == "mse" else hidden_cosine_loss
                terms.append(
                    fn(
                        student.features["hidden"][s_layer],
                        target["hidden"][t_layer],
                        student.projections[j],
                        mask,
                    )
                )
        feat = torch.stack(terms).mean()
        log.append((float(base.detach()), float(feat.detach())))
        return base + beta * feat

    loss.log = log  # type: ignore[attr-defined]
    return loss
