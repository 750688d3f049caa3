"""Intermediate-layer distillation: teacher hidden states and attention maps, a student that exposes
its own, the combined loss."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kdhelpers.batching import TextExamples, make_loader, pad_collate
from kdhelpers.device import autocast, get_device, seeded, to_device
from kdhelpers.losses import attention_transfer_loss, hidden_cosine_loss, hidden_mse_loss
from kdhelpers.models import logits_of, mean_pool
from kdhelpers.progress import progress_bar
from kdhelpers.pseudo import length_sorted_batches
from kdhelpers.students import StudentConfig, make_student, train_student
from kdhelpers.teacher import TextSplit, split_accuracy
from kdhelpers.train import LossFn, fit, forward_logits, make_kd_loss
from kdhelpers.validate import check_int, check_number, check_token_lists

#: What a student matches besides the teacher's logits: nothing, hidden states (MSE or cosine),
#: attention maps, or hidden states (MSE) and attention maps together (TinyBERT's layer objective).
FEATURE_KINDS = ("logits", "mse", "cosine", "attention", "mse+attention")
#: How a student turns its last hidden states into one vector for its classifier: the [CLS] token
#: through BERT's pooler (Hugging Face's default), or the mean over real tokens (as the teacher does).
POOLINGS = ("cls", "mean")
HIDDEN_KINDS = ("mse", "cosine", "mse+attention")
ATTENTION_KINDS_OF = ("attention", "mse+attention")

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


def standardise_hidden(feats: TeacherFeatures, eps: float = 1e-6) -> TeacherFeatures:
    """The features with each hidden layer's states standardised per dimension (zero mean, unit
    variance over every real token of every example); the attention maps are kept as they are.

    A hint loss on raw states is dominated by the few dimensions of large magnitude that Transformer
    states carry (and MSE grows with the teacher's scale); standardised targets weigh every
    dimension alike. The student's learned projection absorbs the affine change.
    """
    if not isinstance(feats, TeacherFeatures):
        raise TypeError(f"feats must be TeacherFeatures (got {type(feats).__name__})")
    if not feats.hidden_layers:
        raise ValueError("feats hold no hidden layer to standardise")
    check_number("eps", eps, 0.0, strict_min=True)
    stacked = torch.cat([h for h in feats.hidden], dim=1)  # (layers, all tokens, width)
    mean = stacked.mean(1, keepdim=True)
    std = stacked.std(1, keepdim=True).clamp(min=eps)
    hidden = [(h - mean) / std for h in feats.hidden]
    return TeacherFeatures(
        feats.hidden_layers, feats.attention_layers, hidden, feats.attentions, list(feats.lengths)
    )


def _example_hidden(
    states: Sequence[torch.Tensor], b: int, length: int, layers: Sequence[int]
) -> torch.Tensor:
    """Example b's hidden states at `layers` (its real tokens only), float32 on the CPU."""
    return torch.stack([states[t][b, :length] for t in layers]).float().cpu()


def _example_attention(
    maps: Sequence[torch.Tensor], b: int, length: int, layers: Sequence[int]
) -> torch.Tensor:
    """Example b's head-averaged attention maps after `layers` (real tokens only), on the CPU."""
    return torch.stack([maps[t - 1][b, :, :length, :length].float().mean(0) for t in layers]).cpu()


def _check_feature_request(
    input_ids: Sequence[Sequence[int]],
    hidden_layers: Sequence[int],
    attention_layers: Sequence[int],
    depth: int,
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """teacher_features' layer requests as tuples, after checking them against the teacher's depth."""
    if len(input_ids) == 0:
        raise ValueError("input_ids is empty: nothing to compute")
    hidden_layers, attention_layers = tuple(hidden_layers), tuple(attention_layers)
    if not hidden_layers and not attention_layers:
        raise ValueError("ask for at least one hidden or attention layer")
    if hidden_layers:
        _check_layer_map([(0, t) for t in hidden_layers], 0, depth, attention=False)
    if attention_layers:
        _check_layer_map([(1, t) for t in attention_layers], 1, depth, attention=True)
    return hidden_layers, attention_layers


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
    batch_size = check_int("batch_size", batch_size, 1)
    encoder = teacher.base_model
    hidden_layers, attention_layers = _check_feature_request(
        input_ids, hidden_layers, attention_layers, encoder.config.num_hidden_layers
    )
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
                    hidden[i] = _example_hidden(out.hidden_states, b, length, hidden_layers)
                if attention_layers:
                    attentions[i] = _example_attention(out.attentions, b, length, attention_layers)
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

    kind says what it will match besides the logits (one of FEATURE_KINDS); for hidden-state kinds
    it owns one learned nn.Linear per layer pair, mapping its width to the teacher's (FitNets'
    regressor); these are trained with the student and dropped afterwards.
    attention_dropout (default 0, for every kind, so that all students train alike) replaces the
    dropout on attention probabilities: with dropout the returned maps are no longer distributions.
    pooling 'mean' classifies from the mean of the last hidden states over real tokens (the course's
    teacher does this) through the model's own dropout and classifier; 'cls' keeps the model's
    [CLS] + pooler path.
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
        pooling: str = "cls",
    ) -> None:
        super().__init__()
        if kind not in FEATURE_KINDS:
            raise ValueError(f"kind must be one of {FEATURE_KINDS} (got {kind!r})")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS} (got {pooling!r})")
        config = getattr(model, "config", None)
        if config is None or not hasattr(config, "num_hidden_layers"):
            raise TypeError(
                f"model must be a Hugging Face Transformer classifier (got {type(model).__name__})"
            )
        if pooling == "mean" and not all(
            isinstance(getattr(model, a, None), nn.Module) for a in ("classifier", "dropout")
        ):
            raise TypeError(
                "pooling='mean' needs a model with .dropout and .classifier (a Hugging Face "
                f"BertForSequenceClassification); got {type(model).__name__}"
            )
        self.model, self.kind, self.pooling = model, kind, pooling
        self.layer_map: list[tuple[int, int]] = []
        self.projections = nn.ModuleList()
        if kind != "logits":
            if teacher_layers is None:
                raise ValueError(
                    f"kind={kind!r} needs teacher_layers (the teacher's depth) to check layer_map"
                )
            self.layer_map = _check_layer_map(
                layer_map, config.num_hidden_layers, teacher_layers, kind in ATTENTION_KINDS_OF
            )
        if kind in HIDDEN_KINDS:
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
        if kind in ATTENTION_KINDS_OF:
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
        keep = self.training and self.kind != "logits"
        want_hidden = keep and self.kind in HIDDEN_KINDS
        want_attn = keep and self.kind in ATTENTION_KINDS_OF
        if self.pooling == "cls":
            if not keep:
                return logits_of(self.model(input_ids=input_ids, attention_mask=attention_mask))
            out = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                output_hidden_states=want_hidden,
                output_attentions=want_attn,
            )
            logits = out.logits
        else:
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            out = self.model.base_model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                output_hidden_states=want_hidden,
                output_attentions=want_attn,
            )
            pooled = mean_pool(out.last_hidden_state, attention_mask)
            logits = self.model.classifier(self.model.dropout(pooled))
        if keep:
            self.features = {"hidden": out.hidden_states, "attentions": out.attentions}
        return logits


def _grad_norms(
    params: Sequence[nn.Parameter], terms: Mapping[str, torch.Tensor]
) -> dict[str, float]:
    """The L2 norm of each term's gradient over `params`, of their sum ('total', what global clipping
    sees), and the cosine between the first two terms' gradients."""
    grads = {}
    for name, term in terms.items():
        if not term.requires_grad:  # a term that does not depend on the parameters
            grads[name] = [torch.zeros_like(p) for p in params]
            continue
        got = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
        grads[name] = [
            torch.zeros_like(p) if g is None else g.detach()
            for p, g in zip(params, got, strict=True)
        ]
    flat = {name: torch.cat([g.flatten().float() for g in gs]) for name, gs in grads.items()}
    total = torch.stack(list(flat.values())).sum(0)
    out = {f"{name}_grad_norm": float(v.norm()) for name, v in flat.items()}
    out["total_grad_norm"] = float(total.norm())
    a, b = list(flat.values())[:2]
    denom = float(a.norm() * b.norm())
    out["cosine"] = float(a @ b) / denom if denom > 0 else 0.0
    return out


def _check_feature_targets(
    student: FeatureStudent, teacher_feats: object, attention_kind: object
) -> None:
    """Refuse teacher features that lack a layer the student matches, or have another width."""
    kind = student.kind
    if kind != "logits":
        if not isinstance(teacher_feats, TeacherFeatures):
            raise TypeError(f"kind={kind!r} needs teacher_feats from teacher_features(...)")
        needed = {t for _, t in student.layer_map}
        for what, have, used in (
            ("hidden", teacher_feats.hidden_layers, kind in HIDDEN_KINDS),
            ("attention", teacher_feats.attention_layers, kind in ATTENTION_KINDS_OF),
        ):
            missing = sorted(needed - set(have)) if used else []
            if missing:
                raise ValueError(f"teacher_feats lacks teacher layers {missing} ({what})")
        if kind in HIDDEN_KINDS and student.projections[0].out_features != teacher_feats.width:
            raise ValueError(
                f"the student's projections map to width {student.projections[0].out_features} "
                f"but the teacher's width is {teacher_feats.width}"
            )
    if attention_kind not in ("kl", "mse"):
        raise ValueError(f"attention_kind must be 'kl' or 'mse' (got {attention_kind!r})")


def feature_term(
    student: FeatureStudent,
    teacher_feats: TeacherFeatures,
    batch: Mapping[str, torch.Tensor],
    attention_kind: str = "kl",
) -> torch.Tensor:
    """The student's feature loss on this batch (its kind: hidden MSE or cosine, attention, or both per
    layer pair), averaged over its layer pairs."""
    kind = student.kind
    if not student.features:
        raise RuntimeError("the student kept no features: call it in training mode before the loss")
    mask = batch["attention_mask"]
    target = teacher_feats.for_batch(batch["index"], mask)
    fn = hidden_cosine_loss if kind == "cosine" else hidden_mse_loss
    terms = []
    for j, (s_layer, t_layer) in enumerate(student.layer_map):
        term = torch.zeros((), device=mask.device)
        if kind in ATTENTION_KINDS_OF:
            term = term + attention_transfer_loss(
                student.features["attentions"][s_layer - 1],
                target["attentions"][t_layer],
                mask,
                kind=attention_kind,
            )
        if kind in HIDDEN_KINDS:
            term = term + fn(
                student.features["hidden"][s_layer],
                target["hidden"][t_layer],
                student.projections[j],
                mask,
            )
        terms.append(term)
    return torch.stack(terms).mean()


def make_feature_kd_loss(
    student: FeatureStudent,
    teacher_feats: TeacherFeatures | None = None,
    beta: float = 1.0,
    alpha: float = 0.0,
    temperature: float = 2.0,
    attention_kind: str = "kl",
    logit_weight: float = 1.0,
    grad_every: int | None = None,
) -> LossFn:
    """The loop's loss: logit_weight * make_kd_loss(alpha, T) on the logits + beta * the student's
    feature loss, averaged over its layer pairs ('mse+attention': hidden MSE + attention loss per pair).

    The returned function keeps `.log`, a list of (logit loss, feature loss) per step, and, every
    `grad_every` steps, `.grad_log`: the gradient norm of each weighted term over the student's
    parameters, of their sum (the norm that global clipping scales down) and their cosine.
    logit_weight = 0 trains on the features alone (TinyBERT's first stage).
    """
    if not isinstance(student, FeatureStudent):
        raise TypeError(f"student must be a FeatureStudent (got {type(student).__name__})")
    check_number("beta", beta, 0.0)
    check_number("logit_weight", logit_weight, 0.0)
    if grad_every is not None:
        check_int("grad_every", grad_every, 1)
    kind = student.kind
    _check_feature_targets(student, teacher_feats, attention_kind)
    kd = make_kd_loss(alpha, temperature)
    log: list[tuple[float, float]] = []
    grad_log: list[dict[str, float]] = []
    params = [p for p in student.parameters() if p.requires_grad]

    def loss(logits: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        base = kd(logits, batch)
        feat = (
            feature_term(student, teacher_feats, batch, attention_kind)
            if kind != "logits"
            else torch.zeros((), device=logits.device)
        )
        step = len(log)
        log.append((float(base.detach()), float(feat.detach())))
        weighted = {"logit": logit_weight * base, "feature": beta * feat}
        if grad_every is not None and step % grad_every == 0:
            grad_log.append({"step": step, **_grad_norms(params, weighted)})
        return weighted["logit"] + weighted["feature"]

    loss.log = log  # type: ignore[attr-defined]
    loss.grad_log = grad_log  # type: ignore[attr-defined]
    return loss


# ---------------------------------------------------------------- one student of the comparison


@dataclass(frozen=True, kw_only=True)
class FeatureVariant:
    """One student of chapter 08: what it matches besides the logits, with which weight `beta`, how
    it pools; `stage1_epochs` > 0 makes it TinyBERT's two-stage schedule (the features alone for
    that many epochs, then the logits alone, selected on validation)."""

    name: str
    kind: str = "logits"
    beta: float = 0.0
    pooling: str = "mean"
    stage1_epochs: int = 0
    attention_kind: str = "kl"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty string (got {self.name!r})")
        if self.kind not in FEATURE_KINDS:
            raise ValueError(f"kind must be one of {FEATURE_KINDS} (got {self.kind!r})")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS} (got {self.pooling!r})")
        check_number("beta", self.beta, 0.0)
        check_int("stage1_epochs", self.stage1_epochs, 0)
        if self.stage1_epochs and self.kind == "logits":
            raise ValueError("stage1_epochs needs a feature kind to match in the first stage")
        if self.attention_kind not in ("kl", "mse"):
            raise ValueError(f"attention_kind must be 'kl' or 'mse' (got {self.attention_kind!r})")

    @property
    def two_stage(self) -> bool:
        """Whether the features are matched in a stage of their own before the logits."""
        return self.stage1_epochs > 0

    def with_beta(self, beta: float) -> FeatureVariant:
        """A copy with another feature weight."""
        return dataclasses.replace(self, beta=beta)


@dataclass(frozen=True)
class FeatureSetup:
    """What every student of one comparison shares: the vocabulary size of the tiny-BERT student,
    the teacher's features (standardised or not) and depth, the layer map, the transfer rows, the
    validation split, chapter 05's alpha and T, and how often to log gradient norms (None: never)."""

    vocab_size: int
    teacher_feats: TeacherFeatures
    teacher_layers: int
    layer_map: tuple[tuple[int, int], ...]
    data: TextExamples
    validation: TextSplit
    alpha: float
    temperature: float
    grad_every: int | None = None

    def __post_init__(self) -> None:
        check_int("vocab_size", self.vocab_size, 2)
        if not isinstance(self.teacher_feats, TeacherFeatures):
            raise TypeError(
                f"teacher_feats must be TeacherFeatures (got {type(self.teacher_feats).__name__})"
            )
        if len(self.teacher_feats) != len(self.data):
            raise ValueError(
                f"teacher_feats hold {len(self.teacher_feats)} examples but data {len(self.data)}: "
                "compute the features on the training rows, in their order"
            )
        if not isinstance(self.data, TextExamples) or self.data.teacher_logits is None:
            raise TypeError(
                "data must be TextExamples with teacher_logits (the KD term needs them)"
            )
        if not isinstance(self.validation, TextSplit):
            raise TypeError(
                f"validation must be a TextSplit (got {type(self.validation).__name__})"
            )
        if self.grad_every is not None:
            check_int("grad_every", self.grad_every, 1)


@dataclass
class FeatureRun:
    """A trained student (the logits-only wrapper after a two-stage run), its training history (of
    the last stage), the first stage's history (or None), and the loss's per-step logs."""

    student: FeatureStudent
    history: dict[str, Any]
    stage1_history: dict[str, Any] | None
    loss_log: list[tuple[float, float]]
    grad_log: list[dict[str, float]]


def _fresh_student(setup: FeatureSetup, variant: FeatureVariant, seed: int) -> FeatureStudent:
    """The seeded tiny-BERT student of `variant`, wrapped to keep the features it matches."""
    return FeatureStudent(
        make_student("tiny-bert", setup.vocab_size, seed=seed),
        variant.kind,
        setup.layer_map,
        teacher_width=setup.teacher_feats.width or None,
        teacher_layers=setup.teacher_layers,
        seed=seed,
        pooling=variant.pooling,
    )


def initial_gradient_norms(
    setup: FeatureSetup,
    variant: FeatureVariant,
    device: torch.device | str,
    batches: int = 20,
    batch_size: int = 64,
    seed: int = 0,
) -> list[dict[str, float]]:
    """For a fresh student of a one-stage `variant`, the gradient norm of each weighted loss term
    (and of their sum, what global clipping sees) on each of the first `batches` shuffled training
    batches; no optimiser step is taken, so every batch sees the initial weights."""
    if variant.two_stage:
        raise ValueError("initial_gradient_norms takes a one-stage variant (stage1_epochs = 0)")
    check_int("batches", batches, 1)
    student = _fresh_student(setup, variant, seed).to(device).train()
    loss = make_feature_kd_loss(
        student, setup.teacher_feats if variant.kind != "logits" else None,
        beta=variant.beta, alpha=setup.alpha, temperature=setup.temperature,
        attention_kind=variant.attention_kind, grad_every=1,
    )  # fmt: skip
    loader = make_loader(setup.data, batch_size, shuffle=True, device=device, seed=seed)
    with seeded(seed):
        for k, batch in enumerate(loader):
            if k == batches:
                break
            batch = to_device(batch, device)
            loss(forward_logits(student, batch).float(), batch)
    return loss.grad_log


def train_feature_variant(
    setup: FeatureSetup,
    variant: FeatureVariant,
    config: StudentConfig,
    device: torch.device | str,
    seed: int = 0,
) -> FeatureRun:
    """A fresh tiny-BERT student (seeded) trained as `variant` says, with the course loop: one stage
    (KD + beta * features, early stopping on validation accuracy), or TinyBERT's two stages (the
    features alone for stage1_epochs with the last weights kept, then KD on the logits alone)."""
    if not isinstance(setup, FeatureSetup):
        raise TypeError(f"setup must be a FeatureSetup (got {type(setup).__name__})")
    if not isinstance(variant, FeatureVariant):
        raise TypeError(f"variant must be a FeatureVariant (got {type(variant).__name__})")
    if not isinstance(config, StudentConfig):
        raise TypeError(f"config must be a StudentConfig (got {type(config).__name__})")
    config = config.replace(seed=seed)
    student = _fresh_student(setup, variant, seed)
    common = dict(alpha=setup.alpha, temperature=setup.temperature)
    stage1 = None
    if variant.two_stage:
        loss1 = make_feature_kd_loss(
            student, setup.teacher_feats, beta=1.0, logit_weight=0.0,
            attention_kind=variant.attention_kind, grad_every=setup.grad_every, **common,
        )  # fmt: skip
        loader = make_loader(
            setup.data, config.batch_size, shuffle=True, device=device, seed=seed,
            bucket=config.bucket,
        )  # fmt: skip
        stage1_config = dataclasses.replace(
            config.train_config(), epochs=variant.stage1_epochs, patience=None
        )
        stage1 = fit(
            student, loader, None, loss1, stage1_config, device=device,
            desc=f"{variant.name} stage 1, seed {seed}",
        )  # fmt: skip
        if student.model.config._attn_implementation == "eager":  # no maps needed any more
            student.model.set_attn_implementation("sdpa")
        student = FeatureStudent(student.model, "logits", pooling=variant.pooling)
        loss = make_feature_kd_loss(student, beta=0.0, **common)
    else:
        loss = make_feature_kd_loss(
            student, setup.teacher_feats if variant.kind != "logits" else None,
            beta=variant.beta, attention_kind=variant.attention_kind,
            grad_every=setup.grad_every, **common,
        )  # fmt: skip
    hist = train_student(
        student, setup.data, setup.validation, loss, device, config,
        f"{variant.name}, seed {seed}",
    )  # fmt: skip
    if variant.two_stage:
        return FeatureRun(student, hist, stage1, loss1.log, loss1.grad_log)
    return FeatureRun(student, hist, None, loss.log, loss.grad_log)


def gradient_share(
    grad_log: Sequence[Mapping[str, float]], max_norm: float
) -> dict[str, list[float]]:
    """Per logged step of a make_feature_kd_loss grad_log: the feature term's share of the two
    gradient norms, feature / (feature + logit), and the clip factor of global clipping at
    `max_norm`, min(1, max_norm / total norm)."""
    max_norm = check_number("max_norm", max_norm, 0.0, strict_min=True)
    if not grad_log:
        raise ValueError("grad_log is empty: train or measure with grad_every set")
    share, clip = [], []
    for k, step in enumerate(grad_log):
        missing = {"logit_grad_norm", "feature_grad_norm", "total_grad_norm"} - set(step)
        if missing:
            raise ValueError(f"grad_log[{k}] lacks {sorted(missing)}")
        both = step["feature_grad_norm"] + step["logit_grad_norm"]
        share.append(step["feature_grad_norm"] / both if both > 0 else 0.0)
        total = step["total_grad_norm"]
        clip.append(min(1.0, max_norm / total) if total > 0 else 1.0)
    return {"feature_share": share, "clip_factor": clip}


def score_variant(
    setup: FeatureSetup,
    variant: FeatureVariant,
    config: StudentConfig,
    device: torch.device | str,
    seed: int,
    test: TextSplit,
) -> tuple[FeatureRun, dict[str, Any]]:
    """Train `variant` with `seed` (train_feature_variant), time it and test it once: the run and its
    row (student, beta, seed, test and validation accuracy, best epoch, epoch limit, minutes)."""
    started = time.perf_counter()
    run = train_feature_variant(setup, variant, config, device, seed=seed)
    minutes = (time.perf_counter() - started) / 60
    one_stage_hint = variant.kind != "logits" and not variant.two_stage
    row = {
        "student": variant.name,
        "beta": variant.beta if one_stage_hint else None,
        "seed": seed,
        "test_accuracy": split_accuracy(run.student, test, device),
        "val_accuracy": run.history["best_val_accuracy"],
        "best_epoch": run.history["best_epoch"],
        "epoch_limit": config.epochs,
        "minutes": minutes,
    }
    return run, row
