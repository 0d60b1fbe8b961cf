"""Ankh3's task prefixes ([NLU] for embeddings and likelihoods, [S2S] for generation), read from the model
directory's own tokenizer files, against transformers' PyTorch T5 on a tiny random Ankh3-shaped model (vocabulary
146: Ankh's 144 ids plus the two prefixes, as the tests' tokenizer defines them)."""

import csv
import json

import h5py
import numpy as np
import pytest

from ankh_jax import embed, generate, score
from ankh_jax.data import tokenizer as tk
from ankh_jax.inference import decoding, infilling, scoring
from ankh_jax.io import loading

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

PREFIXES = {"[NLU]": 144, "[S2S]": 145}
SEQS = {"p1": "MKALCLLLLPVLGLLVSSKTLCSMEEAINERIQEV", "p2": "GSHMSLFDFFKNKG", "p3": "WYCHQ"}


def write_prefix_tokenizer(directory, prefixes=PREFIXES) -> None:
    """Ankh's tokenizer files plus task prefix tokens (added special tokens, additional_special_tokens)."""
    tk.write_hf_tokenizer(str(directory))
    doc = json.loads((directory / "tokenizer.json").read_text())
    vocab = doc["model"]["vocab"]
    for token, token_id in prefixes.items():
        if isinstance(vocab, dict):   # a WordLevel model: {token: id}
            vocab[token] = token_id
        elif token_id == len(vocab):  # a Unigram model: [token, score] in id order (other ids: added tokens only)
            vocab.append([token, 0.0])
        doc["added_tokens"].append({"id": token_id, "content": token, "single_word": False, "lstrip": False,
                                    "rstrip": False, "normalized": False, "special": True})
    (directory / "tokenizer.json").write_text(json.dumps(doc))
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        d = json.loads((directory / name).read_text())
        d["additional_special_tokens"] = list(prefixes) + d["additional_special_tokens"]
        (directory / name).write_text(json.dumps(d))


@pytest.fixture(scope="module")
def ankh3(tmp_path_factory):
    torch.manual_seed(7)
    config = transformers.T5Config(vocab_size=146, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2,
                                   num_heads=4, feed_forward_proj="gated-gelu", relative_attention_num_buckets=16,
                                   relative_attention_max_distance=20, dropout_rate=0.0, decoder_start_token_id=0,
                                   tie_word_embeddings=False)
    model = transformers.T5ForConditionalGeneration(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("ankh3")
    model.save_pretrained(str(path))
    write_prefix_tokenizer(path)
    return model, path


@pytest.fixture(scope="module")
def fasta(tmp_path_factory):
    path = tmp_path_factory.mktemp("fasta") / "in.fasta"
    path.write_text("".join(f">{k}\n{v}\n" for k, v in SEQS.items()))
    return path


def test_prefixes_come_from_the_tokenizer_files(ankh3, tmp_path):
    _, path = ankh3
    tokens = tk.read_model_tokens(str(path), 146)
    assert tokens.prefixes == PREFIXES
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(path))  # transformers reads the same files the same way
    assert hf_tok("[NLU]MKV")["input_ids"] == [144, *tk.AnkhTokenizer().encode("MKV").tolist()]
    assert tk.read_model_tokens(str(tmp_path), 144).prefixes == {}  # no tokenizer files: Ankh's own
    with pytest.raises(ValueError, match=r"\[S2S\].*vocab_size 145"):
        tk.read_model_tokens(str(path), 145)
    other = tmp_path / "bad"
    write_prefix_tokenizer(other, {"[NLU]": 20})
    with pytest.raises(ValueError, match=r"\[NLU\]' id 20"):
        tk.read_model_tokens(str(other), 146)


def encoder_states(model, ids):
    with torch.no_grad():
        return model.encoder(input_ids=torch.tensor([ids])).last_hidden_state[0].numpy()


def test_embed_with_nlu_prefix_matches_transformers(ankh3, fasta, tmp_path):
    model, path = ankh3
    out = tmp_path / "emb.h5"
    assert embed.main([f"--model={path}", f"--fasta={fasta}", f"--output={out}", "--prefix=[NLU]",
                       "--no_progress", "--compilation_cache_dir="]) == 0
    tok = tk.AnkhTokenizer()
    with h5py.File(out) as f:
        for name, seq in SEQS.items():
            ref = encoder_states(model, [144, *tok.encode(seq).tolist()])[1:-1]  # drop [NLU] and </s>
            got = f[name][()]
            assert got.shape == (len(seq), 32)
            np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    mean = tmp_path / "mean.h5"
    assert embed.main([f"--model={path}", f"--fasta={fasta}", f"--output={mean}", "--prefix=[NLU]", "--pooling=mean",
                       "--no_progress", "--compilation_cache_dir="]) == 0
    with h5py.File(mean) as f:
        ref = encoder_states(model, [144, *tok.encode(SEQS["p2"]).tolist()])[1:-1].mean(axis=0)
        np.testing.assert_allclose(f["p2"][()], ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("command", ["embed", "score", "generate"])
def test_prefix_is_required_exactly_when_the_tokenizer_defines_prefixes(command, ankh3, fasta, tmp_path, capsys,
                                                                        random_encoder_dir):
    _, path = ankh3
    main = {"embed": embed.main, "score": score.main, "generate": generate.main}[command]
    extra = {"embed": ["--no_progress"], "score": [], "generate": ["--mask=2"]}[command]
    out = tmp_path / "out"
    assert main([f"--model={path}", f"--fasta={fasta}", f"--output={out}", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "defines task prefixes [NLU], [S2S]: give --prefix" in err
    assert main([f"--model={path}", f"--fasta={fasta}", f"--output={out}", "--prefix=[XYZ]", *extra]) == 2
    assert "not a task prefix" in capsys.readouterr().err
    if command == "embed":  # an Ankh model (no prefixes) refuses --prefix
        assert main([f"--model={random_encoder_dir()}", f"--fasta={fasta}", f"--output={out}", "--prefix=[NLU]",
                     *extra]) == 2
        assert "defines no task prefix tokens" in capsys.readouterr().err


def test_pseudo_likelihood_with_nlu_prefix_matches_transformers(ankh3, fasta, tmp_path):
    """The upstream definition: [NLU] prepended, each residue (position shifted by one) replaced by <extra_id_0>,
    decoder [start, <extra_id_0>], residue-only log-softmax."""
    model, path = ankh3
    out = tmp_path / "pll.csv"
    assert score.main([f"--model={path}", f"--fasta={fasta}", f"--output={out}", "--prefix=[NLU]"]) == 0
    got = {r["id"]: float(r["pseudo_likelihood"]) for r in csv.DictReader(out.open())}
    for name in ("p2", "p3"):
        ids = [144, *tk.AnkhTokenizer().encode(SEQS[name]).tolist()]
        total = 0.0
        for i in range(1, len(ids) - 1):
            masked = list(ids)
            masked[i] = tk.sentinel_id(0)
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([masked]),
                               decoder_input_ids=torch.tensor([[0, tk.sentinel_id(0)]])).logits[0, 1].double()
            residues = torch.log_softmax(logits[tk.FIRST_RESIDUE_ID: tk.FIRST_RESIDUE_ID + len(tk.RESIDUES)], -1)
            total += float(residues[ids[i] - tk.FIRST_RESIDUE_ID])
        assert got[name] == pytest.approx(np.exp(total / (len(ids) - 2)), rel=1e-4)


def test_generation_reads_the_s2s_prefix_and_keeps_residue_positions(ankh3, monkeypatch):
    _, path = ankh3
    config, params = loading.load(path)
    config = decoding.decoding_config(config, "float32")
    params = decoding.prepare_params(config, params)
    seen = []
    real = decoding.generate

    def spy(config, params, enc, **kw):
        seen.append(np.asarray(enc))
        return real(config, params, enc, **kw)

    monkeypatch.setattr(decoding, "generate", spy)
    samples = infilling.infill(config, params, [SEQS["p3"]], [[(1, 3)]], strategy="greedy", prefix_id=145)
    assert samples[0].masked == (1, 3)
    assert samples[0].sequence is None or len(samples[0].sequence) == len(SEQS["p3"])
    enc = seen[0][0]
    expected = [145, *tk.AnkhTokenizer().encode(SEQS["p3"]).tolist()]
    expected[2], expected[4] = tk.sentinel_id(0), tk.sentinel_id(1)
    assert enc[: len(expected)].tolist() == expected
    # Mutation scores shift by the prefix too: a single mutant's score is the pseudo-likelihood's distribution.
    lp = scoring.masked_log_probs(config, params, scoring.tokenize([SEQS["p3"]], 144),
                                  [scoring.MaskedRequest(0, (4,))])[0][0]  # H4 is token 4 after [NLU]
    score_ = scoring.score_mutations(config, params, SEQS["p3"], ["H4A"], prefix_id=144)[0]
    assert score_ == pytest.approx(lp[tk.RESIDUE_TO_ID["A"] - 3] - lp[tk.RESIDUE_TO_ID["H"] - 3], abs=1e-5)


def test_python_api_embed_takes_the_prefix_like_the_command(ankh3):
    """``AnkhModel.embed(prefix=...)``: the same numbers as transformers with ``[NLU]`` first, and the same rule as
    ``embed --prefix`` (required for a model whose tokenizer defines prefixes, refused when unknown)."""
    from ankh_jax import api

    model, path = ankh3
    loaded = api.load_model(str(path))
    (got,) = loaded.embed([SEQS["p1"]], prefix="[NLU]")
    ref = encoder_states(model, [144, *tk.AnkhTokenizer().encode(SEQS["p1"]).tolist()])[1:-1]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    with pytest.raises(ValueError, match="defines task prefixes"):
        loaded.embed([SEQS["p1"]])
    with pytest.raises(ValueError, match="not a task prefix"):
        loaded.embed([SEQS["p1"]], prefix="[XYZ]")
