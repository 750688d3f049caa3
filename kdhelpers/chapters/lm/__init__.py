"""Small causal language models for token-level and sequence-level distillation (chapter 10).

A character vocabulary built from the course's own text, tiny GPT-2 models (configured locally, no
download), a training loop whose loss is `kdhelpers.losses.distillation_loss` with a padding mask,
perplexity, sampling with a key/value cache, and a generation-speed measurement.

Modules: `tokenizer` (characters as tokens), `model` (tiny GPT-2, KD loss, perplexity),
`training` (settings, texts, the training loop, checkpoints), `generation` (sampling, speed),
`onpolicy` (GKD-style on-policy KD, sequence-level KD, sample metrics), `trl_bridge` (the same
run through TRL's GKDTrainer).
Everything public is importable from `kdhelpers.chapters.lm` itself.
"""

from kdhelpers.chapters.lm.generation import (  # noqa: F401
    generation_speed,
    generation_speeds,
    sample,
)
from kdhelpers.chapters.lm.model import (  # noqa: F401
    lm_logits,
    lm_loss,
    make_lm,
    nll_sum,
    perplexity,
    token_logits,
)
from kdhelpers.chapters.lm.onpolicy import (  # noqa: F401
    LM_GKD_SETTINGS,
    EvalConfig,
    GKDSettings,
    OnPolicyConfig,
    continuation_perplexity,
    distill_on_policy,
    distinct_n,
    exposure_bias_gap,
    greedy_continuations,
    onpolicy_prompts,
    repetition_rate,
    sample_continuations,
    sample_metrics,
    sequence_kd_targets,
    token_entropy,
)
from kdhelpers.chapters.lm.tokenizer import (  # noqa: F401
    BOS_ID,
    EOS_ID,
    PAD_ID,
    SPECIAL_TOKENS,
    UNK_CHAR,
    UNK_ID,
    CharTokenizer,
    build_char_tokenizer,
    count_tokens,
    pad_batch,
    project_logits,
    vocab_map,
)
from kdhelpers.chapters.lm.training import (  # noqa: F401
    LM_PROFILE_SETTINGS,
    LM_TEACHER_KEYS,
    LMSettings,
    LMSize,
    LMTrainConfig,
    course_texts,
    lm_fingerprint,
    lm_student,
    lm_teacher,
    load_or_train_lm,
    train_lm,
)
from kdhelpers.chapters.lm.trl_bridge import (  # noqa: F401
    GKDCollator,
    char_tokenizer_fast,
    distill_with_trl,
    trl_version,
)
