"""The T5 hyper-parameters of an Ankh model, as one frozen dataclass.

Gin sees the class as ``T5Config`` (registered with ``gin.external_configurable``, so constructing ``T5Config(...)``
in Python never picks up gin bindings by accident); model gin files (``configs/models/*.gin``) bind its fields and
define the macro ``MODEL_CONFIG = @T5Config()``.

Ankh's sizes live in one place, the model gin files: ``models/ankh_base.gin`` binds everything Ankh-wide plus the
Base sizes, ``models/ankh_large.gin`` and ``models/ankh_tiny.gin`` include it and override only their sizes (t5x's
``base.gin`` + ``large.gin`` layering). The presets :meth:`T5Config.ankh_base`, :meth:`~T5Config.ankh_large` and
:meth:`~T5Config.tiny` read those files with gin's own parser (:func:`model_gin_bindings`) rather than repeating
the numbers. Gin, not a Python table, is the source because the gin files are what a run is made of and what
users read, copy and override (``--gin.T5Config.d_model=...``); reading them needs no generated files that could
drift from a table. The dataclass therefore has no defaults for the architecture, only for run-time knobs
(dropout, dtypes, scan, remat) and the token ids every Ankh shares.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import numbers
from importlib import resources

import gin
import jax.numpy as jnp
from gin import config_parser

from ankh_jax.errors import InputError, InputNotFoundError

REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
# The gated feed-forward's activation, named as transformers names it (``dense_act_fn``): Ankh's ``gelu_new``
# (GELU, tanh approximation; ``feed_forward_proj: "gated-gelu"``) and Ankh2's ``silu`` ("gated-silu").
ACTIVATIONS = ("gelu_new", "silu")
# The presets' gin files, relative to the shipped configs (``ankh_jax.configs``, the checkout's configs/).
# The range of each size: far above any Ankh (48 + 24 layers, d_model 1536, d_ff 3840), far below what would
# exhaust memory before a shape is compared with the weights.
SIZE_LIMITS = {"vocab_size": (1, 1 << 20), "d_model": (1, 1 << 16), "d_kv": (1, 1 << 12), "d_ff": (1, 1 << 18),
               "num_heads": (1, 1 << 10), "num_encoder_layers": (0, 1 << 10), "num_decoder_layers": (0, 1 << 10),
               "relative_attention_num_buckets": (1, 1 << 12), "relative_attention_max_distance": (1, 1 << 24),
               "attention_chunk_size": (0, 1 << 24), "decoder_start_token_id": (0, 1 << 20),
               "pad_token_id": (0, 1 << 20), "eos_token_id": (0, 1 << 20)}
PRESET_GIN_FILES = {"ankh_base": "models/ankh_base.gin", "ankh_large": "models/ankh_large.gin",
                    "ankh2_large": "models/ankh2_large.gin", "tiny": "models/ankh_tiny.gin"}


@dataclasses.dataclass(frozen=True, kw_only=True)
class T5Config:
    """Ankh's T5: gated-GELU feed-forward, RMSNorm, relative position bias, untied LM head."""

    # The architecture: no defaults, Ankh's values live in the model gin files (module docstring; the presets).
    vocab_size: int
    d_model: int
    d_kv: int
    d_ff: int
    num_heads: int
    num_encoder_layers: int
    num_decoder_layers: int
    relative_attention_num_buckets: int
    relative_attention_max_distance: int
    dropout_rate: float = 0.0       # a run-time knob (Ankh pretrains without dropout)
    layer_norm_epsilon: float
    activation: str = "gelu_new"    # the gated MLP's activation, one of ACTIVATIONS (Ankh2: "silu")
    # Run-time knobs, and the token ids every Ankh shares.
    dtype: str = "float32"          # activations / matmul inputs; "bfloat16" on TPU
    param_dtype: str = "float32"    # parameters are kept in fp32
    scan_layers: bool = False       # nn.scan over layers: one compiled layer, stacked params
    remat_policy: str = "none"      # none | full | dots | dots_no_batch
    # > 0: attention over keys and queries in chunks of this many (model/attention.py: O(L) memory, equal to the
    # plain path within float32 round-off); 0: the plain heads x L x L path. Not an HF config.json field.
    attention_chunk_size: int = 0
    decoder_start_token_id: int = 0
    pad_token_id: int = 0
    eos_token_id: int = 1

    def __post_init__(self):
        if self.remat_policy not in REMAT_POLICIES:
            raise InputError(f"remat_policy={self.remat_policy!r}; expected one of {REMAT_POLICIES}")
        if isinstance(self.attention_chunk_size, numbers.Integral) and self.attention_chunk_size < 0:
            raise InputError(f"T5Config.attention_chunk_size must be >= 0 (0: no chunking), got "
                             f"{self.attention_chunk_size}")
        if self.activation not in ACTIVATIONS:
            raise InputError(f"activation={self.activation!r}; expected one of {ACTIVATIONS}")
        for name in ("dtype", "param_dtype"):
            jnp.dtype(getattr(self, name))  # raises on a bad name
        self._check_sizes()

    def _check_sizes(self) -> None:
        """Every size an integer within :data:`SIZE_LIMITS` (a config from a stranger's model directory must not
        make the loader build ten million layers' names, or allocate a 10^9-wide embedding, before it is
        refused); the float knobs finite numbers in range."""
        for name, (low, high) in SIZE_LIMITS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise InputError(f"T5Config.{name}={value!r}: must be an integer")
            if not low <= value <= high:
                raise InputError(f"T5Config.{name}={value}: must be in {low}..{high}")
        for name, (low, high) in (("dropout_rate", (0.0, 1.0)), ("layer_norm_epsilon", (0.0, 1.0))):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not low <= value < high:
                raise InputError(f"T5Config.{name}={value!r}: must be a number in [{low}, {high})")

    # -- presets (read from configs/models/*.gin) --------------------------------------------------------------
    @classmethod
    def from_gin_file(cls, name: str, **overrides) -> T5Config:
        """The config a model gin file shipped with ankh_jax binds (``name`` relative to configs/), plus
        ``overrides``; the global gin config is neither read nor changed."""
        return cls(**{**model_gin_bindings(name), **overrides})

    @classmethod
    def ankh_base(cls, **overrides) -> T5Config:
        """ElnaggarLab/ankh-base (``models/ankh_base.gin``): 48 encoder / 24 decoder layers, d_model 768."""
        return cls.from_gin_file(PRESET_GIN_FILES["ankh_base"], **overrides)

    @classmethod
    def ankh_large(cls, **overrides) -> T5Config:
        """ElnaggarLab/ankh-large (``models/ankh_large.gin``): Base's layers, d_model 1536, 16 heads."""
        return cls.from_gin_file(PRESET_GIN_FILES["ankh_large"], **overrides)

    @classmethod
    def ankh2_large(cls, **overrides) -> T5Config:
        """ElnaggarLab/ankh2-large (and ankh2-ext1/-ext2; ``models/ankh2_large.gin``): Ankh Large, gated SiLU."""
        return cls.from_gin_file(PRESET_GIN_FILES["ankh2_large"], **overrides)

    @classmethod
    def tiny(cls, **overrides) -> T5Config:
        """A CPU-sized Ankh (``models/ankh_tiny.gin``): same vocabulary and structure, 2 + 2 layers of width 64."""
        return cls.from_gin_file(PRESET_GIN_FILES["tiny"], **overrides)

    # -- derived -------------------------------------------------------------------------------------------
    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)

    @property
    def params_dtype(self):
        return jnp.dtype(self.param_dtype)

    def replace(self, **changes) -> T5Config:
        return dataclasses.replace(self, **changes)

    # -- serialisation -------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> T5Config:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise InputError(f"unknown T5Config fields {sorted(unknown)}")
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> T5Config:
        return cls.from_dict(json.loads(text))

    def to_hf_dict(self) -> dict:
        """A HuggingFace ``T5Config`` dict (``config.json``) for this model."""
        return {
            "architectures": ["T5ForConditionalGeneration"],
            "model_type": "t5",
            "vocab_size": self.vocab_size,
            "d_model": self.d_model,
            "d_kv": self.d_kv,
            "d_ff": self.d_ff,
            "num_heads": self.num_heads,
            "num_layers": self.num_encoder_layers,
            "num_decoder_layers": self.num_decoder_layers,
            "relative_attention_num_buckets": self.relative_attention_num_buckets,
            "relative_attention_max_distance": self.relative_attention_max_distance,
            "dropout_rate": self.dropout_rate,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "feed_forward_proj": "gated-gelu" if self.activation == "gelu_new" else f"gated-{self.activation}",
            "dense_act_fn": self.activation,
            "is_gated_act": True,
            "initializer_factor": 1.0,
            "is_encoder_decoder": True,
            # transformers 5 ties and rescales by d_model**-0.5 unless this is explicitly false.
            "tie_word_embeddings": False,
            "use_cache": True,
            "pad_token_id": self.pad_token_id,
            "eos_token_id": self.eos_token_id,
            "decoder_start_token_id": self.decoder_start_token_id,
            "torch_dtype": "float32",
        }

    @classmethod
    def from_hf_dict(cls, d: dict, **overrides) -> T5Config:
        """Reads a HuggingFace T5 ``config.json``; rejects T5 variants that are not Ankh-shaped."""
        activation = activation_of_hf(d.get("feed_forward_proj", "relu"))
        if d.get("tie_word_embeddings") is True:
            # Ankh's released models have an untied lm_head and no d_model**-0.5 rescale; a tied T5 would need both.
            raise InputError("tie_word_embeddings=true: ankh_jax models have an untied lm_head")
        fields = {
            "vocab_size": d["vocab_size"], "d_model": d["d_model"], "d_kv": d["d_kv"], "d_ff": d["d_ff"],
            "num_heads": d["num_heads"], "num_encoder_layers": d["num_layers"],
            "num_decoder_layers": d.get("num_decoder_layers") or d["num_layers"],
            "relative_attention_num_buckets": d.get("relative_attention_num_buckets", 32),
            "relative_attention_max_distance": d.get("relative_attention_max_distance", 128),
            "dropout_rate": d.get("dropout_rate", 0.0), "layer_norm_epsilon": d.get("layer_norm_epsilon", 1e-6),
            "activation": activation,
            "decoder_start_token_id": d.get("decoder_start_token_id", 0) or 0,
            "pad_token_id": d.get("pad_token_id", 0) or 0, "eos_token_id": d.get("eos_token_id", 1) or 1,
        }
        fields.update(overrides)
        return cls(**fields)

    def num_params(self, *, encoder_only: bool = False) -> int:
        """Exact parameter count (untied head), without building the model."""
        d, h = self.d_model, self.num_heads * self.d_kv
        attn = 4 * d * h
        mlp = 3 * d * self.d_ff
        enc = self.num_encoder_layers * (attn + mlp + 2 * d) + d + self.relative_attention_num_buckets * self.num_heads
        emb = self.vocab_size * d
        if encoder_only:
            return emb + enc
        dec = self.num_decoder_layers * (2 * attn + mlp + 3 * d) + d + self.relative_attention_num_buckets * self.num_heads
        return emb + enc + dec + self.vocab_size * d


def activation_of_hf(feed_forward_proj: str) -> str:
    """The gated activation a transformers ``feed_forward_proj`` means (transformers' own parsing: ``gated-X``
    is gated with ``X``, and ``gated-gelu`` means ``gelu_new``); a T5 ankh_jax cannot run is a ValueError."""
    gated, _, act = str(feed_forward_proj).rpartition("-")
    if gated != "gated":
        raise InputError(f"feed_forward_proj={feed_forward_proj!r} is a non-gated (T5 v1.0) feed-forward; ankh_jax "
                         f"runs gated T5s only (Ankh, Ankh2: gated-gelu, gated-silu)")
    act = "gelu_new" if act == "gelu" else act
    if act not in ACTIVATIONS:
        raise InputError(f"feed_forward_proj={feed_forward_proj!r}: activation {act!r} is not implemented; ankh_jax "
                         f"runs gated-gelu (gelu_new) and gated-silu T5s")
    return act


def model_gin_bindings(name: str) -> dict:
    """``{field: value}`` of the ``T5Config.field = value`` lines of a model gin file in ``ankh_jax.configs``,
    its ``include`` lines followed (later bindings override earlier ones, as in gin)."""
    return dict(_read_model_gin(name))


class _LiteralsOnly(config_parser.ParserDelegate):
    """Parses gin references and macros to a marker: a preset takes literal values only."""

    def configurable_reference(self, scoped_configurable_name, evaluate):
        return _Reference(f"@{scoped_configurable_name}{'()' if evaluate else ''}")

    def macro(self, macro_name):
        return _Reference(f"%{macro_name}")


@dataclasses.dataclass(frozen=True)
class _Reference:
    text: str


@functools.cache
def _read_model_gin(name: str) -> tuple[tuple[str, object], ...]:
    configs = resources.files("ankh_jax.configs")
    source = configs.joinpath(name)
    if not source.is_file():
        raise InputNotFoundError(f"model gin file {name!r} not found in {configs}")
    bindings: dict[str, object] = {}
    for statement in config_parser.ConfigParser(source.read_text(), _LiteralsOnly()):
        if isinstance(statement, config_parser.IncludeStatement):
            bindings.update(_read_model_gin(statement.filename))
        elif isinstance(statement, config_parser.BindingStatement) and statement.selector == "T5Config":
            if statement.scope or isinstance(statement.value, _Reference):
                raise InputError(f"{name}: {statement.location.line_content.strip()!r}: a preset's gin file binds "
                                 "unscoped literal T5Config values only")
            bindings[statement.arg_name] = statement.value
    return tuple(bindings.items())


gin.external_configurable(T5Config, name="T5Config")
