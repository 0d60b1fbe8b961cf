"""The Ankh vocabulary: ids, sequence cleaning, and the seqio / HuggingFace forms of the same vocabulary.

Ankh's vocabulary (144 ids):

    0 <pad>   1 </s>   2 <unk>
    3..27     A L G V S R E D T I P K F Q N Y M H W C X B O U Z   (one token per residue, ProtT5's order)
    28..143   <extra_id_115> .. <extra_id_0>                      (sentinel k has id 143 - k)

A sequence encodes to one id per residue followed by ``</s>``; there is no BOS.

Three views of the same vocabulary live here, all checked against each other by the tests:
  * :class:`AnkhTokenizer`: plain Python, no TensorFlow, used by the model, embeddings and export;
  * :func:`seqio_vocabulary`: a ``seqio.SentencePieceVocabulary`` over the shipped SentencePiece model
    (``assets/ankh_vocab.model``, built by ``scripts/build_vocab.py``) with ``extra_ids=116``, so seqio counts
    sentinels down from 143 exactly as Ankh does. Importing it pulls in TensorFlow, so it is imported lazily;
  * :func:`write_hf_tokenizer`: ``tokenizer.json`` and friends so that ``transformers.AutoTokenizer`` encodes
    plain strings to the same ids.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import json
import os
import re
from collections.abc import Iterable, Sequence

import numpy as np

from ankh_jax.errors import InputError

PAD_ID = 0
EOS_ID = 1
UNK_ID = 2
RESIDUES = "ALGVSREDTIPKFQNYMHWCXBOUZ"
FIRST_RESIDUE_ID = 3
NUM_SENTINELS = 116
VOCAB_SIZE = 144
SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")

RESIDUE_TO_ID = {r: FIRST_RESIDUE_ID + i for i, r in enumerate(RESIDUES)}
ID_TO_TOKEN = list(SPECIAL_TOKENS) + list(RESIDUES) + [
    f"<extra_id_{VOCAB_SIZE - 1 - i}>" for i in range(FIRST_RESIDUE_ID + len(RESIDUES), VOCAB_SIZE)
]
assert len(ID_TO_TOKEN) == VOCAB_SIZE

VOCAB_MODEL_PATH = os.path.join(os.path.dirname(__file__), "assets", "ankh_vocab.model")

# A lookup table from byte value to id (-1 = not a residue), for fast vectorised encoding.
_BYTE_TO_ID = np.full(256, -1, dtype=np.int32)
for _r, _i in RESIDUE_TO_ID.items():
    _BYTE_TO_ID[ord(_r)] = _i


class InvalidSequenceError(InputError):
    """A sequence holds a character outside Ankh's vocabulary (or is empty)."""


def sentinel_id(k: int) -> int:
    """The id of ``<extra_id_k>``: sentinels count down from the top of the vocabulary."""
    if not 0 <= k < NUM_SENTINELS:
        raise ValueError(f"sentinel index {k} outside 0..{NUM_SENTINELS - 1}")
    return VOCAB_SIZE - 1 - k


def clean_sequence(seq: str, *, record: str | None = None, source: str | None = None) -> str:
    """Strips whitespace, upper-cases and drops one trailing ``*`` (a stop codon); rejects anything else.

    The error names the source (file), the record and the 1-based position of the first bad character.
    """
    cleaned = "".join(seq.split()).upper()
    cleaned = cleaned.removesuffix("*")
    where = ""
    if source is not None:
        where += f"{source}: "
    if record is not None:
        where += f"record {record!r}: "
    if not cleaned:
        raise InvalidSequenceError(f"{where}empty sequence")
    codes = _BYTE_TO_ID[np.frombuffer(cleaned.encode("latin-1", errors="replace"), dtype=np.uint8)]
    bad = np.flatnonzero(codes < 0)
    if bad.size or not cleaned.isascii():
        pos = int(bad[0]) if bad.size else next(i for i, c in enumerate(cleaned) if not c.isascii())
        raise InvalidSequenceError(
            f"{where}invalid residue {cleaned[pos]!r} at position {pos + 1} "
            f"(allowed: {RESIDUES}, one trailing '*')"
        )
    return cleaned


class AnkhTokenizer:
    """Ankh's tokenizer in plain Python/numpy: one id per residue plus ``</s>``."""

    vocab_size = VOCAB_SIZE
    pad_id = PAD_ID
    eos_id = EOS_ID
    unk_id = UNK_ID

    def encode(self, sequence: str, *, add_eos: bool = True, clean: bool = True, record: str | None = None
               ) -> np.ndarray:
        """Ids of one sequence (int32), ``</s>`` appended unless ``add_eos=False``."""
        seq = clean_sequence(sequence, record=record) if clean else sequence
        ids = _BYTE_TO_ID[np.frombuffer(seq.encode("ascii"), dtype=np.uint8)]
        if (ids < 0).any():
            raise InvalidSequenceError(f"invalid residue in {seq[:20]!r}...")
        if add_eos:
            ids = np.append(ids, EOS_ID)
        return ids.astype(np.int32)

    def batch_encode(self, sequences: Sequence[str], *, max_length: int | None = None,
                     pad_to: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Pads a batch to ``pad_to`` (default: the longest); returns ``(ids, attention_mask)``.

        ``max_length`` counts ``</s>``; a longer sequence is truncated to ``max_length - 1`` residues + ``</s>``.
        """
        encoded = [self.encode(s) for s in sequences]
        if max_length is not None:
            encoded = [e if len(e) <= max_length else np.append(e[: max_length - 1], EOS_ID) for e in encoded]
        width = pad_to or max(len(e) for e in encoded)
        ids = np.zeros((len(encoded), width), dtype=np.int32)
        for i, e in enumerate(encoded):
            if len(e) > width:
                raise InputError(f"sequence {i} has {len(e)} tokens, more than pad_to={width}")
            ids[i, : len(e)] = e
        return ids, (ids != PAD_ID).astype(np.int32)

    def decode(self, ids: Iterable[int], *, skip_special: bool = True) -> str:
        out = []
        for i in ids:
            i = int(i)
            if i == EOS_ID and skip_special:
                break
            if skip_special and i < FIRST_RESIDUE_ID:
                continue
            out.append(ID_TO_TOKEN[i])
        return "".join(out)


def seqio_vocabulary():
    """Ankh's vocabulary as ``seqio.SentencePieceVocabulary`` (imports seqio, hence TensorFlow)."""
    import seqio

    return seqio.SentencePieceVocabulary(VOCAB_MODEL_PATH, extra_ids=NUM_SENTINELS)


def build_sentencepiece_model() -> bytes:
    """The serialized SentencePiece model behind :func:`seqio_vocabulary`, built deterministically.

    A character model of 28 pieces (the 3 specials and 25 residues, in Ankh's id order) with an identity
    normalizer and no dummy prefix, so that ``"MKV"`` encodes to exactly one id per letter.
    """
    from sentencepiece import sentencepiece_model_pb2 as pb

    m = pb.ModelProto()
    types = pb.ModelProto.SentencePiece.Type
    for piece, kind in (("<pad>", types.CONTROL), ("</s>", types.CONTROL), ("<unk>", types.UNKNOWN)):
        m.pieces.add(piece=piece, score=0.0, type=kind)
    for r in RESIDUES:
        m.pieces.add(piece=r, score=0.0, type=types.NORMAL)
    ts = m.trainer_spec
    ts.model_type = pb.TrainerSpec.CHAR
    ts.vocab_size = len(m.pieces)
    ts.pad_id, ts.eos_id, ts.unk_id, ts.bos_id = PAD_ID, EOS_ID, UNK_ID, -1
    ts.pad_piece, ts.eos_piece, ts.unk_piece = SPECIAL_TOKENS
    ts.split_by_whitespace = False
    ns = m.normalizer_spec
    ns.name = "identity"
    ns.add_dummy_prefix = False
    ns.remove_extra_whitespaces = False
    ns.escape_whitespaces = False
    return m.SerializeToString(deterministic=True)


def _cleaning_rules_tsv() -> str:
    """SentencePiece normalization rules (hex code points, tab, replacement) for the per-character part of
    :func:`clean_sequence`: lowercase letters upper-cased, whitespace removed."""
    rules = [f"{ord(c):X}\t{ord(c.upper()):X}" for c in "abcdefghijklmnopqrstuvwxyz"]
    rules += [f"{ord(c):X}\t" for c in " \t\n\r\v\f"]
    return "\n".join(rules) + "\n"


@functools.lru_cache(maxsize=1)
def cleaning_charsmap() -> bytes:
    """The per-character cleaning as a compiled SentencePiece ``precompiled_charsmap``.

    The one form that every T5 tokenizer honours: SentencePiece (``spiece.model``), ``tokenizers``' ``Precompiled``
    normalizer and transformers 5's ``T5Tokenizer`` (which rebuilds its backend from ``tokenizer.json`` but keeps
    a precompiled charsmap). Compiled by SentencePiece's own rule compiler (a throwaway one-line training run).
    """
    import io
    import tempfile

    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb

    with tempfile.TemporaryDirectory() as tmp:
        rules = os.path.join(tmp, "rules.tsv")
        with open(rules, "w") as f:
            f.write(_cleaning_rules_tsv())
        out = io.BytesIO()
        spm.SentencePieceTrainer.train(sentence_iterator=iter([RESIDUES] * 4), model_writer=out, model_type="char",
                                       vocab_size=len(RESIDUES) + 3, normalization_rule_tsv=rules,
                                       add_dummy_prefix=False, remove_extra_whitespaces=False,
                                       hard_vocab_limit=False, minloglevel=2)
    proto = pb.ModelProto()
    proto.ParseFromString(out.getvalue())
    return proto.normalizer_spec.precompiled_charsmap


def hf_sentencepiece_model() -> bytes:
    """``spiece.model`` of an HF export: :func:`build_sentencepiece_model` with the cleaning charsmap as its
    normalizer, so transformers 4's SentencePiece ``T5Tokenizer`` upper-cases and drops whitespace too."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.ParseFromString(build_sentencepiece_model())
    proto.normalizer_spec.name = "ankh_cleaning"
    proto.normalizer_spec.precompiled_charsmap = cleaning_charsmap()
    return proto.SerializeToString(deterministic=True)


def hf_normalizer() -> dict:
    """:func:`clean_sequence` as a ``tokenizers`` normalizer: upper-cased and whitespace removed (the charsmap),
    then one trailing ``*`` dropped. Invalid characters are not errors here: they become ``<unk>``."""
    return {"type": "Sequence", "normalizers": [
        {"type": "Precompiled", "precompiled_charsmap": base64.b64encode(cleaning_charsmap()).decode("ascii")},
        {"type": "Replace", "pattern": {"Regex": r"\*\z"}, "content": ""},
    ]}


def hf_tokenizer_json() -> dict:
    """A ``tokenizers`` JSON document for Ankh: one token per residue, ``</s>`` appended.

    Every token is an added token (the residues normalized, so cleaning applies before they are matched, the
    specials and sentinels verbatim), so the text is split into residues before any pre-tokenizer runs: that keeps
    the ids right in transformers 5's ``T5Tokenizer``, which replaces the pre-tokenizer with a Metaspace one. The
    model is a Unigram over the 144 tokens (what ``T5Tokenizer`` expects), reached only by ``<unk>`` characters.
    """
    added = [
        {"id": i, "content": tok, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": FIRST_RESIDUE_ID <= i < FIRST_RESIDUE_ID + len(RESIDUES),
         "special": not FIRST_RESIDUE_ID <= i < FIRST_RESIDUE_ID + len(RESIDUES)}
        for i, tok in enumerate(ID_TO_TOKEN)
    ]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": hf_normalizer(),
        # What is left after the added tokens (characters outside the vocabulary): one <unk> per character.
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "WhitespaceSplit"},
            {"type": "Split", "pattern": {"String": ""}, "behavior": "Isolated", "invert": False},
        ]},
        "model": {"type": "Unigram", "unk_id": UNK_ID, "vocab": [[tok, 0.0] for tok in ID_TO_TOKEN],
                  "byte_fallback": False},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "</s>", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "</s>", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 0}}, {"SpecialToken": {"id": "</s>", "type_id": 0}}],
            "special_tokens": {"</s>": {"id": "</s>", "ids": [EOS_ID], "tokens": ["</s>"]}},
        },
        "decoder": {"type": "Fuse"},
    }


def write_hf_tokenizer(output_dir: str, model_max_length: int = 100_000) -> list[str]:
    """Writes ``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json`` and ``spiece.model``.

    The directory loads with ``AutoTokenizer``, ``T5TokenizerFast`` and (transformers 4) the SentencePiece
    ``T5Tokenizer``, all to the same ids: ``extra_ids`` equals the 116 sentinels listed as additional special tokens (T5's rule puts ``<extra_id_k>`` at
    ``len(spiece.model) - 1 + 116 - k`` = 143 - k, Ankh's). The tokenizer returns only the inputs a T5 model
    takes (``input_ids``, ``attention_mask``; no ``token_type_ids``), so ``model(**tokenizer(...))`` works. Each
    cleans sequences as :func:`clean_sequence` does (lowercase input gives the same ids); only ``AutoTokenizer``
    (``tokenizer_class`` ``PreTrainedTokenizerFast``: ``tokenizer.json`` as written) also drops a trailing ``*``.
    """
    os.makedirs(output_dir, exist_ok=True)
    extra = [f"<extra_id_{k}>" for k in range(NUM_SENTINELS)]
    special = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>",
               "additional_special_tokens": extra}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "extra_ids": NUM_SENTINELS, "legacy": True,
              "model_input_names": ["input_ids", "attention_mask"], "model_max_length": model_max_length,
              "padding_side": "right", "clean_up_tokenization_spaces": False, **special}
    files = {"tokenizer.json": hf_tokenizer_json(), "tokenizer_config.json": config,
             "special_tokens_map.json": special}
    paths = []
    for name, doc in files.items():
        path = os.path.join(output_dir, name)
        with open(path, "w") as f:
            json.dump(doc, f, indent=1)
        paths.append(path)
    spiece = os.path.join(output_dir, "spiece.model")
    with open(spiece, "wb") as f:
        f.write(hf_sentencepiece_model())
    paths.append(spiece)
    return paths


# ----------------------------------------------------------------------------------------------------------------
# A model directory's own tokenizer files: task prefixes (Ankh3's [NLU] / [S2S])
# ----------------------------------------------------------------------------------------------------------------
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
_PREFIX = re.compile(r"\[[A-Z0-9_]+\]")  # Ankh3's task tokens: [NLU], [S2S]


@dataclasses.dataclass(frozen=True)
class ModelTokens:
    """What a model directory's tokenizer files add to Ankh's ids: its task prefix tokens (``{token: id}``;
    empty for Ankh, Ankh2 and ankh_jax's own models). A prefix is one token before the residues; outputs drop it
    like ``</s>``."""

    prefixes: dict
    source: str = "the model"

    def prefix_id(self, prefix: str | None) -> int | None:
        """The id of ``--prefix``: required exactly when the tokenizer defines prefixes (ValueError otherwise)."""
        names = ", ".join(self.prefixes)
        if prefix is None:
            if self.prefixes:
                raise InputError(f"{self.source} defines task prefixes {names}: give --prefix ([NLU] for embeddings "
                                 "and likelihoods, [S2S] for generation)")
            return None
        if not self.prefixes:
            raise InputError(f"--prefix={prefix}: {self.source} defines no task prefix tokens")
        if prefix not in self.prefixes:
            raise InputError(f"--prefix={prefix}: not a task prefix of {self.source} (it defines {names})")
        return self.prefixes[prefix]


def _token_ids(model_dir: str) -> tuple[dict[str, int], set[str]]:
    """``{token: id}`` and the special tokens named by the tokenizer files present in ``model_dir``."""
    from ankh_jax.io.hf_files import read_model_json

    docs = {}  # each file a regular one under a size cap (never a link to /dev/zero)
    for name in TOKENIZER_FILES:
        path = os.path.join(model_dir, name)
        if os.path.exists(path):
            try:
                docs[name] = read_model_json(path)
            except OSError as e:
                raise InputError(f"{path}: unreadable tokenizer file ({e})") from None
    ids: dict[str, int] = {}
    special: set[str] = set()
    doc = docs.get("tokenizer.json") or {}
    vocab = (doc.get("model") or {}).get("vocab")
    if isinstance(vocab, dict):  # WordLevel / BPE / WordPiece
        ids.update({str(k): int(v) for k, v in vocab.items()})
    elif isinstance(vocab, list):  # Unigram (SentencePiece): [piece, score] in id order
        ids.update({str(entry[0]): i for i, entry in enumerate(vocab)})
    for added in doc.get("added_tokens") or []:
        ids[str(added["content"])] = int(added["id"])
        if added.get("special"):
            special.add(str(added["content"]))
    for token_id, added in ((docs.get("tokenizer_config.json") or {}).get("added_tokens_decoder") or {}).items():
        ids[str(added["content"])] = int(token_id)
        if added.get("special"):
            special.add(str(added["content"]))
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        for token in (docs.get(name) or {}).get("additional_special_tokens") or []:
            special.add(str(token["content"] if isinstance(token, dict) else token))
    return ids, special


def read_model_tokens(model_dir: str, vocab_size: int) -> ModelTokens:
    """The task prefixes a model directory's tokenizer files define (``tokenizer.json``, ``tokenizer_config.json``,
    ``special_tokens_map.json``; none present: no prefixes). Every id ankh_jax fixes (``<pad>``, ``</s>``,
    ``<unk>``, residues, sentinels) must be Ankh's, and every prefix must have an id below ``vocab_size`` (the
    model's ``config.json``): anything else is a ValueError saying which token."""
    model_dir = os.fspath(model_dir)
    ids, special = _token_ids(model_dir) if os.path.isdir(model_dir) else ({}, set())
    where = f"{model_dir}: tokenizer"
    for expected, token in enumerate(ID_TO_TOKEN):
        if token in ids and ids[token] != expected:
            raise InputError(f"{where} maps {token!r} to id {ids[token]}; ankh_jax runs Ankh's ids ({token!r} = "
                             f"{expected})")
    prefixes = {}
    for token in sorted(t for t in special | set(ids) if _PREFIX.fullmatch(t)):
        if token not in ids:
            raise InputError(f"{where} names the special token {token!r} but gives it no id")
        first_free = FIRST_RESIDUE_ID + len(RESIDUES)
        if not first_free <= ids[token] < vocab_size:
            raise InputError(f"{where} gives {token!r} id {ids[token]}, outside {first_free}..{vocab_size - 1} (above "
                             f"the residues, below config.json's vocab_size {vocab_size})")
        shared = sorted(t for t, i in ids.items() if i == ids[token] and t != token)
        if shared:
            raise InputError(f"{where} gives {token!r} id {ids[token]}, which is also {shared[0]!r}")
        prefixes[token] = ids[token]
    return ModelTokens(prefixes, source=model_dir)
