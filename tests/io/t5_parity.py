"""What the HF parity tests (test_hf.py, test_ankh_family.py) share: one padded batch of real-looking proteins
(longer than the relative-position max distance), the forward passes of ankh_jax and of transformers' PyTorch T5
on it, and the one relative-error measure with its tolerance."""

import numpy as np

from ankh_jax.data.tokenizer import AnkhTokenizer
from ankh_jax.model import EncoderOnly, Transformer
from ankh_jax.testing import apply_jitted

SEQS = ["MKALCLLLLPVLGLLVSSKTLCSMEEAINERIQEVAGSLIFRAISS", "GSHMSLFDFFKNKG", "WYCHQ"]
REL_TOL = 1e-4  # fp32, max |difference| over max |reference|


def batch():
    """(input ids, attention mask, decoder inputs): the inputs' first 12 tokens shifted right as targets."""
    ids, mask = AnkhTokenizer().batch_encode(SEQS)
    targets = ids[:, :12]
    return ids, mask, np.concatenate([np.zeros_like(targets[:, :1]), targets[:, :-1]], axis=1)


def ours_logits(config, params):
    ids, _, dec_in = batch()
    return np.asarray(apply_jitted(Transformer(config), {"params": params}, ids, dec_in))


def ours_hidden(config, params):
    ids, _, _ = batch()
    enc = {k: params[k] for k in ("token_embedder", "encoder")}
    return np.asarray(apply_jitted(EncoderOnly(config), {"params": enc}, ids))


def torch_logits(model):
    import torch

    ids, mask, dec_in = batch()
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                     decoder_input_ids=torch.tensor(dec_in, dtype=torch.long)).logits.numpy()


def torch_hidden(model):
    import torch

    ids, mask, _ = batch()
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids, dtype=torch.long),
                     attention_mask=torch.tensor(mask)).last_hidden_state.numpy()


def rel_err(ours, ref, valid=None) -> float:
    if valid is not None:  # compare real (non-pad) positions only; pad outputs are arbitrary in both
        ours, ref = ours[valid], ref[valid]
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def assert_close(ours, ref, valid=None):
    err = rel_err(ours, ref, valid)
    assert err < REL_TOL, f"max abs difference is {err:.2e} of max |ref|"
