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

import dataclasses
import json
import os
import re
from collections.abc import Iterable, Sequence

import numpy as np

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


class InvalidSequenceError(ValueError):
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
                raise ValueError(f"sequence {i} has {len(e)} tokens, more than pad_to={width}")
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


def hf_tokenizer_json() -> dict:
    """A ``tokenizers`` JSON document for Ankh: residues as single-character words, ``</s>`` appended."""
    vocab = {tok: i for i, tok in enumerate(ID_TO_TOKEN)}
    added = [
        {"id": i, "content": tok, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for i, tok in enumerate(ID_TO_TOKEN) if i < FIRST_RESIDUE_ID or i >= FIRST_RESIDUE_ID + len(RESIDUES)
    ]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        # Each character is its own word: "MKV" -> ["M", "K", "V"]; whitespace is dropped.
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "WhitespaceSplit"},
            {"type": "Split", "pattern": {"String": ""}, "behavior": "Isolated", "invert": False},
        ]},
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "</s>", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "</s>", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 0}}, {"SpecialToken": {"id": "</s>", "type_id": 0}}],
            "special_tokens": {"</s>": {"id": "</s>", "ids": [EOS_ID], "tokens": ["</s>"]}},
        },
        "decoder": None,
    }


def write_hf_tokenizer(output_dir: str, model_max_length: int = 100_000) -> list[str]:
    """Writes ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json``."""
    os.makedirs(output_dir, exist_ok=True)
    extra = [t for t in ID_TO_TOKEN if t.startswith("<extra_id_")]
    extra.sort(key=lambda t: int(t[len("<extra_id_"):-1]))
    special = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>",
               "additional_special_tokens": extra}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": model_max_length,
              "padding_side": "right", "clean_up_tokenization_spaces": False, **special}
    files = {"tokenizer.json": hf_tokenizer_json(), "tokenizer_config.json": config,
             "special_tokens_map.json": special}
    paths = []
    for name, doc in files.items():
        path = os.path.join(output_dir, name)
        with open(path, "w") as f:
            json.dump(doc, f, indent=1)
        paths.append(path)
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
                raise ValueError(f"{self.source} defines task prefixes {names}: give --prefix ([NLU] for embeddings "
                                 "and likelihoods, [S2S] for generation)")
            return None
        if not self.prefixes:
            raise ValueError(f"--prefix={prefix}: {self.source} defines no task prefix tokens")
        if prefix not in self.prefixes:
            raise ValueError(f"--prefix={prefix}: not a task prefix of {self.source} (it defines {names})")
        return self.prefixes[prefix]


def _token_ids(model_dir: str) -> tuple[dict[str, int], set[str]]:
    """``{token: id}`` and the special tokens named by the tokenizer files present in ``model_dir``."""
    docs = {}
    for name in TOKENIZER_FILES:
        path = os.path.join(model_dir, name)
        if os.path.exists(path):
            try:
                with open(path) as f:
                    docs[name] = json.load(f)
            except (OSError, json.JSONDecodeError) as e:
                raise ValueError(f"{path}: unreadable tokenizer file ({e})") from None
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
            raise ValueError(f"{where} maps {token!r} to id {ids[token]}; ankh_jax runs Ankh's ids ({token!r} = "
                             f"{expected})")
    prefixes = {}
    for token in sorted(t for t in special | set(ids) if _PREFIX.fullmatch(t)):
        if token not in ids:
            raise ValueError(f"{where} names the special token {token!r} but gives it no id")
        first_free = FIRST_RESIDUE_ID + len(RESIDUES)
        if not first_free <= ids[token] < vocab_size:
            raise ValueError(f"{where} gives {token!r} id {ids[token]}, outside {first_free}..{vocab_size - 1} (above "
                             f"the residues, below config.json's vocab_size {vocab_size})")
        shared = sorted(t for t, i in ids.items() if i == ids[token] and t != token)
        if shared:
            raise ValueError(f"{where} gives {token!r} id {ids[token]}, which is also {shared[0]!r}")
        prefixes[token] = ids[token]
    return ModelTokens(prefixes, source=model_dir)
