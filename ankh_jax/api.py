"""The notebook API: load an Ankh model (ankh_jax or HuggingFace directory) and embed sequences.

    import ankh_jax
    model = ankh_jax.load_large_model()          # a local copy of ElnaggarLab/ankh-large
    per_residue = model.embed(["MKALCLLLLPVLGLLVSS", "GSHMSLFDFFKNKGSA"])        # [L, 1536] each
    pooled = model.embed(sequences, pooling="mean")                             # [1536] each

``load_model(path)`` takes either an ankh_jax training directory (it holds ``model_config.json``) or a HuggingFace
model directory (``config.json`` plus safetensors / ``pytorch_model.bin``, full model or ``T5EncoderModel``).
Nothing is downloaded: the released weights are found through an environment variable or a fixed local folder,
and without them the error says exactly how to fetch them.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

from ankh_jax.data.tokenizer import AnkhTokenizer
from ankh_jax.errors import InputError, InputNotFoundError
from ankh_jax.io import loading
from ankh_jax.io.loading import ANKH_JAX_CONFIG_FILE, HF_CONFIG_FILE, model_format
from ankh_jax.model.config import T5Config
from ankh_jax.storage.home import HOME_ENV, ankh_jax_home
from ankh_jax.storage.paths import is_remote
from ankh_jax.storage.remote_copy import local_copy

__all__ = ["ANKH_JAX_CONFIG_FILE", "HOME_ENV", "RELEASED", "AnkhModel", "load_base_model", "load_config_and_params",
           "load_large_model", "load_model", "model_format", "released_model_dir"]

RELEASED = {
    "base": ("ElnaggarLab/ankh-base", "ANKH_JAX_BASE_MODEL", "ankh-base", T5Config.ankh_base),
    "large": ("ElnaggarLab/ankh-large", "ANKH_JAX_LARGE_MODEL", "ankh-large", T5Config.ankh_large),
}

# ``(config, params)`` from either kind of directory, params normalised once (see ankh_jax.io.loading).
load_config_and_params = loading.load


@dataclasses.dataclass
class AnkhModel:
    """A loaded model: ``config``, ``params`` (plain, in ``config``'s layout: unrolled unless loaded with
    ``scan_layers``), ``tokenizer`` and where it came from. The commands (embed, score, generate) open their model
    through it.

    ``embed`` runs the encoder scanned (one compiled layer), so its first call stacks the encoder's layers once
    and replicates them on every local device; the decoding methods use ``params`` in their own layout, also
    replicated, once per (dtype, device count)."""

    config: T5Config
    params: dict
    tokenizer: AnkhTokenizer
    path: str | None = None

    @property
    def has_decoder(self) -> bool:
        return "decoder" in self.params

    @property
    def encoder_params(self) -> dict:
        """The ``EncoderOnly`` params: the ``token_embedder`` and ``encoder`` subtrees."""
        from ankh_jax.model import params_layout

        return params_layout.encoder_subtree(self.params)

    def num_params(self) -> int:
        import jax

        return int(sum(x.size for x in jax.tree_util.tree_leaves(self.params)))

    def prefix_id(self, prefix: str | None) -> int | None:
        """The token id of a task prefix (Ankh3's ``"[NLU]"``, ``"[S2S]"``) from the model directory's tokenizer
        files, read once per model: required exactly when they define prefixes (ValueError otherwise)."""
        from ankh_jax.data.tokenizer import read_model_tokens

        if self.path is None:
            if prefix is not None:
                raise InputError(f"prefix={prefix}: this model was not loaded from a directory, so it has no "
                                 "tokenizer files defining task prefixes")
            return None
        if "_model_tokens" not in self.__dict__:
            self.__dict__["_model_tokens"] = read_model_tokens(self.path, self.config.vocab_size)
        return self.__dict__["_model_tokens"].prefix_id(prefix)

    def embedding_params(self, num_devices: int | None = None):
        """The encoder stacked for the scanned encoder and replicated on every local device (the first
        ``num_devices``), made once per device count (``ankh_jax.inference.embedding.prepare_params``)."""
        from ankh_jax.inference import embedding as embed_lib

        cache = self.__dict__.setdefault("_embedding_params", {})
        if num_devices not in cache:
            cache[num_devices] = embed_lib.prepare_params(self.config, self.encoder_params, num_devices)
        return cache[num_devices]

    def embed(self, sequences: Sequence[str], *, pooling: str = "none", dtype: str = "float32",
              batch_tokens: int | None = None, max_length: int | None = None, progress: bool = False,
              prefix: str | None = None, num_devices: int | None = None):
        """Per-residue ``[L, d_model]`` (``</s>`` dropped) or mean-pooled ``[d_model]`` float32 numpy arrays, in
        input order; the same length-sorted, token-budget batching as ``python -m ankh_jax.embed``, sharded over
        every local device (the first ``num_devices``).

        ``prefix``: the task prefix token before each sequence (Ankh3: ``"[NLU]"``), as ``embed --prefix``:
        required exactly when the model directory's tokenizer files define prefixes (ValueError otherwise), and
        dropped from the output like ``</s>``."""
        from ankh_jax.inference import embedding as embed_lib

        prefix_id = self.prefix_id(prefix)
        kwargs = {} if batch_tokens is None else {"batch_tokens": batch_tokens}
        return embed_lib.embed_sequences(self.config, self.embedding_params(num_devices), list(sequences),
                                         pooling=pooling, dtype=dtype, max_length=max_length, progress=progress,
                                         prefix_id=prefix_id, **kwargs)

    # -- the decoder: generation, infilling, likelihoods (ankh_jax.inference.decoding / infilling / scoring) -------
    def decoding_params(self, dtype: str | None = None, num_devices: int | None = None):
        """``(config, params)`` for the decoding libraries: the config with compute ``dtype`` (default the
        model's), the full params in its layout replicated on every local device (the first ``num_devices``), made
        once per (dtype, device count)."""
        from ankh_jax.inference import decoding

        key = (dtype or self.config.dtype, num_devices)
        cache = self.__dict__.setdefault("_decoding_state", {})
        if key not in cache:
            config = decoding.decoding_config(self.config, key[0])
            cache[key] = (config, decoding.prepare_params(config, self.params, num_devices))
        return cache[key]

    def generate(self, input_ids, *, max_new_tokens: int = 20, strategy: str = "greedy", **kwargs):
        """Generated ids ``[batch, max_new_tokens]`` after the decoder start token, 0 after ``</s>``, from encoder
        ids ``[batch, length]`` (0 = padding); ``kwargs``: ``num_beams``, ``temperature``, ``top_k``, ``top_p``,
        ``min_new_tokens``, ``length_penalty``, ``seed`` (see ``ankh_jax.inference.decoding.generate``)."""
        from ankh_jax.inference import decoding

        config, params = self.decoding_params()
        return decoding.generate(config, params, input_ids, max_new_tokens=max_new_tokens, strategy=strategy,
                                 prepared=True, **kwargs)

    def infill(self, sequence: str, positions, *, num_samples: int = 1, strategy: str = "sample", **kwargs):
        """``num_samples`` fillings of ``sequence`` with the 1-based ``positions`` (ints, or a spec like
        ``'10-14,30'``) masked, as ``ankh_jax.inference.infilling.InfillSample`` (``sequence`` None when malformed)."""
        from ankh_jax.data.tokenizer import clean_sequence
        from ankh_jax.inference import infilling

        sequence = clean_sequence(sequence)
        if isinstance(positions, str):
            mask = infilling.parse_mask_spec(positions, len(sequence))
        else:
            mask = infilling.check_positions([int(p) - 1 for p in positions], len(sequence))
        config, params = self.decoding_params()
        return infilling.infill(config, params, [sequence], [[mask] * num_samples], strategy=strategy, **kwargs)

    def pseudo_likelihood(self, sequences: Sequence[str], **kwargs):
        """Ankh's pseudo-likelihood of each sequence (``ankh_jax.inference.scoring.pseudo_likelihood``), float64 ``[n]``."""
        from ankh_jax.inference import scoring

        config, params = self.decoding_params()
        return scoring.pseudo_likelihood(config, params, list(sequences), **kwargs)

    def score_mutations(self, wildtype: str, mutants: Sequence[str], **kwargs):
        """Masked-marginal scores of ``mutants`` (``'A23G'``, ``'A23G:K45R'``, 1-based) of ``wildtype``."""
        from ankh_jax.inference import scoring

        config, params = self.decoding_params()
        return scoring.score_mutations(config, params, wildtype, list(mutants), **kwargs)


def load_model(path: str | os.PathLike, *, encoder_only: bool = False, step: int | None = None,
               scan_layers: bool = False) -> AnkhModel:
    """An ankh_jax or HuggingFace model directory as an :class:`AnkhModel`: the checkpoint ``step`` of an ankh_jax
    training directory (default the latest); ``scan_layers`` loads the params stacked (the layout embedding runs
    in, so the commands skip restacking)."""
    config, params = loading.load(path, encoder_only=encoder_only, step=step, scan_layers=scan_layers)
    files = os.fspath(path)
    if is_remote(files) and loading.model_format(files) == "hf":  # its tokenizer files: the cached local copy
        files = local_copy(files)
    return AnkhModel(config=config, params=params, tokenizer=AnkhTokenizer(), path=files)


def released_model_dir(which: str) -> str:
    """Where the released Ankh ``which`` ('base' / 'large') is looked for (it may not exist)."""
    _, env, folder, _ = RELEASED[which]
    if os.environ.get(env):
        return os.environ[env]
    return os.path.join(ankh_jax_home(), folder)


def _load_released(which: str, path, encoder_only: bool) -> AnkhModel:
    repo, env, _, preset = RELEASED[which]
    model_dir = os.fspath(path) if path is not None else released_model_dir(which)
    if not os.path.exists(os.path.join(model_dir, HF_CONFIG_FILE)) and not os.path.exists(
            os.path.join(model_dir, ANKH_JAX_CONFIG_FILE)):
        raise InputNotFoundError(
            f"No local copy of {repo} at {model_dir}. ankh_jax never downloads; fetch it once with\n"
            f"    huggingface-cli download {repo} --local-dir {model_dir}\n"
            f"(or `hf download {repo} --local-dir {model_dir}` with huggingface_hub >= 1.0), then call "
            f"load_{which}_model() again, or point {env} (or {HOME_ENV}, which holds ankh-base/ and "
            f"ankh-large/) at the folder, or pass its path.")
    model = load_model(model_dir, encoder_only=encoder_only)
    want, got = preset(), model.config
    for field in ("d_model", "d_ff", "num_heads", "d_kv", "num_encoder_layers", "vocab_size"):
        if getattr(want, field) != getattr(got, field):
            raise InputError(f"{model_dir}: {field}={getattr(got, field)}, but Ankh {which.capitalize()} has "
                             f"{getattr(want, field)}; is this the right model? (use load_model for any other)")
    return model


def load_base_model(path: str | os.PathLike | None = None, *, encoder_only: bool = False) -> AnkhModel:
    """Ankh Base (``ElnaggarLab/ankh-base``) from ``path`` or the local copy, like ``ankh.load_base_model()``."""
    return _load_released("base", path, encoder_only)


def load_large_model(path: str | os.PathLike | None = None, *, encoder_only: bool = False) -> AnkhModel:
    """Ankh Large (``ElnaggarLab/ankh-large``) from ``path`` or the local copy, like ``ankh.load_large_model()``."""
    return _load_released("large", path, encoder_only)
