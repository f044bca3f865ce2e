"""NeMo and Megatron-Bridge spellings of the common model and trainer keys, translated to ours.

A YAML file (or an override) may name a key the way NeMo 1.x/2.x configs do (`trainer.max_steps`,
`model.optim.lr`, `model.encoder_seq_length`, `exp_manager.exp_dir`, ...) or the way
Megatron-Bridge's `ConfigContainer` does (`train.train_iters`, `optimizer.lr`,
`scheduler.lr_warmup_iters`, `checkpoint.save_interval`, `rng.seed`, ...); `translate_layer`
and `translate_overrides` rewrite them into this schema before it validates anything. Keys that
are already ours pass through untouched (Megatron-Core's own field names, shared by all three,
mostly are). `RULES` is the whole mapping; docs/cluster.md lists it.

- A key of a NeMo/Bridge-only section (trainer, exp_manager, optimizer, scheduler, checkpoint,
  logger, rng, dataset) that the mapping does not know is a ConfigError naming it.
- Keys with no counterpart here (device counts, Lightning plumbing) are dropped with a warning.
- Two spellings that set one of our keys to different values (`trainer.max_steps` and
  `train.steps`) are a ConfigError naming both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from megatron_sip.errors import ConfigError
from megatron_sip.logging_utils import get_logger

_log = get_logger(__name__)

Converter = Callable[[str, Any], Dict[str, Any]]
"""(source key, its value) -> {our dotted key: value}."""


def _same(target: str) -> Converter:
    return lambda key, value: {target: value}


def _choice(target: str, table: Mapping[str, Any]) -> Converter:
    def convert(key: str, value: Any) -> Dict[str, Any]:
        normalized = str(value).lower()
        if normalized not in table:
            raise ConfigError(key, f"'{value}' has no counterpart here (known: {', '.join(table)})")
        return {target: table[normalized]}
    return convert


_OUR_ACTIVATIONS = ("silu", "gelu", "relu", "squared_relu")
_OUR_NORMALIZATIONS = ("RMSNorm", "LayerNorm")


def _activation(key: str, value: Any) -> Dict[str, Any]:
    if value in _OUR_ACTIVATIONS:  # already ours: the gate stays model.gated_linear_unit's business
        return {"model.activation": value}
    table = {"swiglu": ("silu", True), "fast-swiglu": ("silu", True), "geglu": ("gelu", True),
             "fast-geglu": ("gelu", True), "gelu": ("gelu", False), "silu": ("silu", False),
             "relu": ("relu", False), "squared-relu": ("squared_relu", False)}
    if str(value).lower() not in table:
        raise ConfigError(key, f"'{value}' has no counterpart here (known: {', '.join(table)})")
    activation, gated = table[str(value).lower()]
    return {"model.activation": activation, "model.gated_linear_unit": gated}


def _betas(key: str, value: Any) -> Dict[str, Any]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ConfigError(key, f"expected [beta1, beta2], got {value!r}")
    return {"train.adam_beta1": float(value[0]), "train.adam_beta2": float(value[1])}


def _flag(target: str, if_true: Any, if_false: Any = None) -> Converter:
    def convert(key: str, value: Any) -> Dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, bool):
            raise ConfigError(key, f"expected true or false, got {value!r}")
        chosen = if_true if value else if_false
        return {} if chosen is None else {target: chosen}
    return convert


def _normalization(key: str, value: Any) -> Dict[str, Any]:
    if value in _OUR_NORMALIZATIONS:
        return {"model.normalization": value}
    return _choice("model.normalization", _NORMALIZATION)(key, value)


def _fp8(key: str, value: Any) -> Dict[str, Any]:
    """NeMo 1.x: fp8 is a bool (E4M3 unless fp8_hybrid); ours and Megatron-Bridge's: a format."""
    if isinstance(value, bool):
        return {"model.fp8": "e4m3" if value else None}
    return {"model.fp8": value}


def _adam_only(key: str, value: Any) -> Dict[str, Any]:
    if "adam" not in str(value).lower():
        raise ConfigError(key, f"'{value}': only Adam(W) is available here (train.* holds its settings)")
    return {}


def _tensorboard(key: str, value: Any) -> Dict[str, Any]:
    return {"run.tensorboard": bool(value)}


_PRECISION = {"bf16": "bfloat16", "bf16-mixed": "bfloat16", "bf16-true": "bfloat16", "16": "float16",
              "16-mixed": "float16", "fp16": "float16", "32": "float32", "32-true": "float32", "fp32": "float32"}
_NORMALIZATION = {"rmsnorm": "RMSNorm", "layernorm": "LayerNorm", "layernorm1p": "LayerNorm"}
_DECAY = {"cosineannealing": "cosine", "cosine": "cosine", "warmupannealing": "linear", "linear": "linear",
          "constant": "constant", "warmupholdpolicy": "constant"}


@dataclass(frozen=True)
class Rule:
    source: str
    """Dotted key as NeMo or Megatron-Bridge spells it."""
    convert: Converter
    origin: str
    """NeMo, Megatron-Bridge or both (for the documentation table)."""
    targets: str
    """Our key(s), as the documentation table shows them."""


def _rule(source: str, target: str, origin: str, convert: Optional[Converter] = None) -> Rule:
    return Rule(source, convert or _same(target), origin, target)


RULES: Tuple[Rule, ...] = (
    # NeMo 1.x/2.x (Lightning trainer, model-embedded optimizer and data, exp_manager)
    _rule("trainer.max_steps", "train.steps", "NeMo"),
    _rule("trainer.log_every_n_steps", "train.log_every", "NeMo"),
    _rule("trainer.gradient_clip_val", "train.clip_grad", "NeMo"),
    _rule("trainer.precision", "model.params_dtype", "NeMo", _choice("model.params_dtype", _PRECISION)),
    _rule("model.micro_batch_size", "train.micro_batch_size", "NeMo"),
    _rule("model.global_batch_size", "train.global_batch_size", "NeMo"),
    _rule("model.encoder_seq_length", "model.seq_length", "NeMo"),
    _rule("model.rotary_percentage", "model.rotary_percent", "NeMo"),
    _rule("model.bias", "model.add_bias_linear", "NeMo"),
    _rule("model.normalization", "model.normalization", "NeMo", _normalization),
    _rule("model.activation", "model.activation + model.gated_linear_unit", "NeMo", _activation),
    _rule("model.transformer_engine", "model.transformer_impl", "NeMo",
          _flag("model.transformer_impl", "transformer_engine", "local")),
    _rule("model.fp8", "model.fp8", "NeMo", _fp8),
    _rule("model.fp8_hybrid", "model.fp8", "NeMo", _flag("model.fp8", "hybrid")),
    _rule("model.seed", "train.seed", "NeMo"),
    _rule("model.optim.name", "(Adam only)", "NeMo", _adam_only),
    _rule("model.optim.lr", "train.lr", "NeMo"),
    _rule("model.optim.weight_decay", "train.weight_decay", "NeMo"),
    _rule("model.optim.betas", "train.adam_beta1, train.adam_beta2", "NeMo", _betas),
    _rule("model.optim.sched.name", "train.lr_decay_style", "NeMo", _choice("train.lr_decay_style", _DECAY)),
    _rule("model.optim.sched.warmup_steps", "train.lr_warmup_steps", "NeMo"),
    _rule("model.optim.sched.min_lr", "train.min_lr", "NeMo"),
    _rule("model.data.data_prefix", "data.paths", "NeMo"),
    _rule("model.tokenizer.type", "data.tokenizer", "NeMo"),
    _rule("exp_manager.exp_dir", "run.output_dir", "NeMo"),
    _rule("exp_manager.name", "run.name", "NeMo"),
    _rule("exp_manager.create_tensorboard_logger", "run.tensorboard", "NeMo", _tensorboard),
    _rule("exp_manager.checkpoint_callback_params.every_n_train_steps", "train.save_every", "NeMo"),
    _rule("exp_manager.checkpoint_callback_params.save_top_k", "train.keep_last", "NeMo"),
    # Megatron-Bridge ConfigContainer
    _rule("model.bf16", "model.params_dtype", "Megatron-Bridge", _flag("model.params_dtype", "bfloat16")),
    _rule("model.fp16", "model.params_dtype", "Megatron-Bridge", _flag("model.params_dtype", "float16")),
    _rule("train.train_iters", "train.steps", "Megatron-Bridge"),
    _rule("optimizer.optimizer", "(Adam only)", "Megatron-Bridge", _adam_only),
    _rule("optimizer.lr", "train.lr", "Megatron-Bridge"),
    _rule("optimizer.min_lr", "train.min_lr", "Megatron-Bridge"),
    _rule("optimizer.weight_decay", "train.weight_decay", "Megatron-Bridge"),
    _rule("optimizer.adam_beta1", "train.adam_beta1", "Megatron-Bridge"),
    _rule("optimizer.adam_beta2", "train.adam_beta2", "Megatron-Bridge"),
    _rule("optimizer.clip_grad", "train.clip_grad", "Megatron-Bridge"),
    _rule("optimizer.bf16", "model.params_dtype", "Megatron-Bridge", _flag("model.params_dtype", "bfloat16")),
    _rule("scheduler.lr_warmup_iters", "train.lr_warmup_steps", "Megatron-Bridge"),
    _rule("scheduler.lr_decay_style", "train.lr_decay_style", "Megatron-Bridge"),
    _rule("checkpoint.save_interval", "train.save_every", "Megatron-Bridge"),
    _rule("checkpoint.save", "run.output_dir", "Megatron-Bridge"),
    _rule("logger.log_interval", "train.log_every", "Megatron-Bridge"),
    _rule("logger.tensorboard_dir", "run.tensorboard", "Megatron-Bridge", _tensorboard),
    _rule("rng.seed", "train.seed", "Megatron-Bridge"),
    _rule("dataset.seq_length", "model.seq_length", "Megatron-Bridge"),
    _rule("dataset.random_seed", "data.seed", "Megatron-Bridge"),
)
_BY_SOURCE = {rule.source: rule for rule in RULES}

IGNORED: Tuple[str, ...] = (
    "trainer.devices", "trainer.num_nodes", "trainer.accelerator", "trainer.strategy", "trainer.logger",
    "trainer.enable_checkpointing", "trainer.use_distributed_sampler", "trainer.max_epochs", "trainer.max_time",
    "trainer.val_check_interval", "trainer.limit_val_batches", "trainer.limit_test_batches",
    "trainer.accumulate_grad_batches", "trainer.benchmark", "trainer.enable_model_summary",
    "trainer.num_sanity_val_steps", "model.max_position_embeddings", "model.optim.sched.max_steps",
    "model.optim.sched.constant_steps", "scheduler.lr_decay_iters", "train.eval_interval", "train.eval_iters",
    "exp_manager.resume_if_exists", "exp_manager.resume_ignore_no_checkpoint", "checkpoint.load",
    "logger.wandb_project", "logger.wandb_exp_name", "model.tokenizer.library",
)
"""Keys with no counterpart here: dropped with a warning (the launcher, the step count or the
run directory already decide what they would)."""

FOREIGN_SECTIONS: Tuple[str, ...] = ("trainer", "exp_manager", "optimizer", "scheduler", "checkpoint", "logger",
                                     "rng", "dataset", "model.optim", "model.data", "model.tokenizer")
"""Sections only NeMo / Megatron-Bridge have: unknown keys in them are errors."""


def _in_foreign_section(key: str) -> bool:
    return any(key == section or key.startswith(section + ".") for section in FOREIGN_SECTIONS)


def _has_rules_below(path: str) -> bool:
    prefix = path + "."
    return any(key.startswith(prefix) for key in (*_BY_SOURCE, *IGNORED))


def translate_layer(data: Mapping[str, Any], *, origin: str) -> Dict[str, Any]:
    """One YAML file's mapping with NeMo / Megatron-Bridge keys rewritten into this schema."""
    kept: Dict[str, Any] = {}
    assigned: Dict[str, Tuple[str, Any]] = {}
    _walk(data, "", kept, assigned, origin)
    for target, (source, value) in assigned.items():
        _set_path(kept, target, value, source=source, origin=origin)
    return kept


def _walk(node: Mapping[str, Any], path: str, kept: Dict[str, Any], assigned: Dict[str, Tuple[str, Any]],
          origin: str) -> None:
    for name, value in node.items():
        key = f"{path}.{name}" if path else str(name)
        if key in _BY_SOURCE:
            for target, converted in _BY_SOURCE[key].convert(key, value).items():
                _assign(assigned, target, converted, source=key, origin=origin)
        elif key in IGNORED:
            _log.warning("%s: %s has no counterpart in megatron-sip; ignored", origin, key)
        elif isinstance(value, Mapping) and _has_rules_below(key):
            _walk(value, key, kept, assigned, origin)
        elif _in_foreign_section(key):
            raise ConfigError(key, f"({origin}) is not in the NeMo / Megatron-Bridge key mapping "
                              "(docs/cluster.md lists it); use this schema's key")
        else:
            _set_path(kept, key, value, source=key, origin=origin)


def _assign(assigned: Dict[str, Tuple[str, Any]], target: str, value: Any, *, source: str, origin: str) -> None:
    # NeMo spells hybrid FP8 as two keys: fp8: true (-> e4m3) and fp8_hybrid: true (-> hybrid).
    if target == "model.fp8" and {value, assigned.get(target, (None, None))[1]} == {"e4m3", "hybrid"}:
        assigned[target] = (source, "hybrid")
        return
    if target in assigned and assigned[target][1] != value:
        other, previous = assigned[target]
        raise ConfigError(source, f"({origin}) sets {target}={value!r} but {other} sets it to {previous!r}")
    assigned[target] = (source, value)


def _set_path(tree: Dict[str, Any], dotted: str, value: Any, *, source: str, origin: str) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(source, f"({origin}) {dotted} conflicts with a scalar at {part}")
    if leaf in node and node[leaf] != value and not (isinstance(node[leaf], dict) and isinstance(value, dict)):
        raise ConfigError(source, f"({origin}) sets {dotted}={value!r}, which is also set to {node[leaf]!r}")
    if isinstance(node.get(leaf), dict) and isinstance(value, dict):
        node[leaf].update(value)
    else:
        node[leaf] = value


def translate_overrides(overrides: Sequence[str]) -> List[str]:
    """Hydra overrides with NeMo / Megatron-Bridge keys rewritten (`trainer.max_steps=10` ->
    `train.steps=10`, `model.optim.betas=[0.9,0.98]` -> two overrides); others unchanged."""
    translated: List[str] = []
    for text in overrides:
        prefix, key, has_value = _split_override(text)
        if key in _BY_SOURCE:
            translated.extend(_translate_one(text, prefix, key, has_value))
        elif key in IGNORED:
            _log.warning("override %s: %s has no counterpart in megatron-sip; ignored", text, key)
        elif _in_foreign_section(key):
            raise ConfigError(key, "is not in the NeMo / Megatron-Bridge key mapping (docs/cluster.md lists it)")
        else:
            translated.append(text)
    return translated


def _split_override(text: str) -> Tuple[str, str, bool]:
    prefix = "~" if text.startswith("~") else "++" if text.startswith("++") else "+" if text.startswith("+") else ""
    body = text[len(prefix):]
    key, sep, _ = body.partition("=")
    return prefix, key.strip(), bool(sep)


def _translate_one(text: str, prefix: str, key: str, has_value: bool) -> List[str]:
    if prefix == "~":
        return [f"~{target}" for target in _BY_SOURCE[key].convert(key, _default_probe(key))]
    if not has_value:
        raise ConfigError(key, f"override '{text}' has no value")
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        value = OverridesParser.create().parse_override(text[len(prefix):]).value()
    except OverrideParseException as exc:
        raise ConfigError(text, f"not a Hydra override ({exc.message.splitlines()[0]})") from exc
    # Our keys exist in the schema, so a translated override never needs Hydra's `+`.
    force = "++" if prefix == "++" else ""
    return [f"{force}{target}={format_value(converted)}" for target, converted in
            _BY_SOURCE[key].convert(key, value).items()]


def _default_probe(key: str) -> Any:
    """A value that makes a rule name its targets, for deletions (`~trainer.max_steps`)."""
    for probe in (1, True, "bf16", "rmsnorm", "swiglu", "adam", "cosineannealing", [0.9, 0.95]):
        try:
            targets = _BY_SOURCE[key].convert(key, probe)
        except (ConfigError, TypeError, ValueError):
            continue
        if targets:
            return probe
    return 1


def format_value(value: Any) -> str:
    """A Python value in Hydra's override grammar."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(item) for item in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{format_value(v)}" for k, v in value.items()) + "}"
    escaped = str(value).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"


def mapping_table() -> str:
    """The mapping as a Markdown table (what docs/cluster.md shows)."""
    rows = ["| NeMo / Megatron-Bridge key | megatron-sip key | spelled by |", "|---|---|---|"]
    rows += [f"| `{rule.source}` | `{rule.targets}` | {rule.origin} |" for rule in RULES]
    return "\n".join(rows)
