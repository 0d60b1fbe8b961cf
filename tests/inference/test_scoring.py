"""Pseudo-likelihood and variant-effect scores against a direct transformers (PyTorch) computation of their
definitions on the exported weights, within 1e-5 relative; mutation strings checked before any compute."""

import numpy as np
import pytest

from ankh_jax.data.tokenizer import AnkhTokenizer
from ankh_jax.inference import decoding, scoring
from ankh_jax.model.network import shift_right
from ankh_jax.testing import DECODING_CFG as CFG
from ankh_jax.testing import DECODING_SEQS as SEQS

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def prepared(params):
    return decoding.prepare_params(CFG, params)


@pytest.fixture(scope="module")
def special_ids(exported):
    """Every id whose piece starts with '<', read from the exported HF tokenizer (not from ankh_jax)."""
    tok = transformers.AutoTokenizer.from_pretrained(str(exported))
    return [i for i, t in enumerate(tok.convert_ids_to_tokens(list(range(144)))) if t.startswith("<")]


def _torch_residue_log_probs(hf_model, special_ids, enc, dec):
    with torch.no_grad():
        logits = hf_model(input_ids=torch.tensor(enc, dtype=torch.long),
                          decoder_input_ids=torch.tensor(dec, dtype=torch.long)).logits.double()
    logits[..., special_ids] = -float("inf")
    return torch.log_softmax(logits, dim=-1).numpy()


def torch_pseudo_likelihood(hf_model, special_ids, seq):
    """Ankh's definition, batched over the positions of one protein as the upstream function does."""
    ids = AnkhTokenizer().encode(seq)
    n = len(seq)
    enc = np.repeat(ids[None], n, axis=0)
    enc[np.arange(n), np.arange(n)] = 143  # <extra_id_0>
    dec = np.tile([[0, 143]], (n, 1))
    lp = _torch_residue_log_probs(hf_model, special_ids, enc, dec)[:, -1]
    return float(np.exp(lp[np.arange(n), ids[:n]].mean()))


def test_pseudo_likelihood_matches_transformers(prepared, hf_model, special_ids):
    assert special_ids == [0, 1, 2] + list(range(28, 144))
    ours = scoring.pseudo_likelihood(CFG, prepared, SEQS, batch_tokens=256)  # several batches and buckets
    ref = np.array([torch_pseudo_likelihood(hf_model, special_ids, s) for s in SEQS])
    np.testing.assert_allclose(ours, ref, rtol=1e-5)
    assert np.all((ours > 0) & (ours < 1)) and len(set(np.round(ours, 6))) == len(SEQS)


def test_mutation_scores_match_the_definition_by_hand(prepared, hf_model, special_ids):
    wt = SEQS[0]  # M K A L C L L ...
    mutants = ["K2R", "A3G:C5W", "C5W:A3G", "M1A"]
    ours = scoring.score_mutations(CFG, prepared, wt, mutants)
    ids = AnkhTokenizer().encode(wt)
    expected = []
    for muts in ([(1, "K", "R")], [(2, "A", "G"), (4, "C", "W")], [(2, "A", "G"), (4, "C", "W")],
                 [(0, "M", "A")]):
        enc = ids.copy()
        dec = [0]
        for k, (pos, w, _) in enumerate(muts):
            enc[pos] = 143 - k
            dec += [143 - k, ids[pos]]
        lp = _torch_residue_log_probs(hf_model, special_ids, enc[None], np.array([dec[:-1]]))[0]
        tok = AnkhTokenizer().encode
        expected.append(sum(lp[2 * k + 1, tok(m, add_eos=False)[0]] - lp[2 * k + 1, tok(w, add_eos=False)[0]]
                            for k, (_, w, m) in enumerate(muts)))
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)
    assert ours[1] == ours[2]  # the order inside a multi-mutant does not matter


@pytest.mark.parametrize("mutant,msg", [("A2G", "has 'K' at position 2"), ("K99R", "outside"),
                                        ("K2", "malformed"), ("K2J", "not a residue"), ("K2R:K2A", "twice"),
                                        ("", "empty")])
def test_bad_mutants_are_refused_before_compute(mutant, msg):
    with pytest.raises(ValueError, match=msg):
        scoring.score_mutations(CFG, None, SEQS[1][:1] + "K" + SEQS[1][2:], ["K2R", mutant])


def test_generated_log_likelihood_is_the_teacher_forced_sum(params, prepared, hf_model):
    ids = AnkhTokenizer().batch_encode(SEQS)[0]
    gen = np.array([[5, 6, 1, 0], [7, 8, 9, 10], [1, 0, 0, 0]], np.int32)
    ours = scoring.generated_log_likelihood(CFG, prepared, ids, gen)
    with torch.no_grad():
        logits = hf_model(input_ids=torch.tensor(ids, dtype=torch.long),
                          attention_mask=torch.tensor(ids != 0),
                          decoder_input_ids=torch.tensor(np.asarray(shift_right(gen)), dtype=torch.long)).logits
    lp = torch.log_softmax(logits.double(), dim=-1).numpy()
    picked = np.take_along_axis(lp, gen[..., None], axis=-1)[..., 0]
    expected = [picked[0, :3].sum(), picked[1].sum(), picked[2, :1].sum()]
    np.testing.assert_allclose(ours, expected, rtol=1e-5)
    np.testing.assert_allclose(scoring.generated_log_likelihood(CFG, prepared, ids, gen, [1, 4, 2]),
                               [picked[0, :1].sum(), picked[1].sum(), picked[2, :2].sum()], rtol=1e-5)
