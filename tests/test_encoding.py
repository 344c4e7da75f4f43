"""gte_st.encoding.encode: same embeddings as stock encode in fp32, bf16 parity, order, prompts, no side effects."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import stsb_rows

from gte_st.encoding import _batches, cpu_supports_bf16, encode, resolve_precision


@pytest.fixture(scope="module")
def sentences() -> list[str]:
    rows = stsb_rows("dev")[:48]
    return [s for _, a, b in rows for s in (a, b)]


def test_fp32_matches_stock_encode(tiny_model, sentences):
    ours = encode(tiny_model, sentences, batch_size=16, precision="fp32")
    stock = tiny_model.encode(sentences, batch_size=16, normalize_embeddings=True, convert_to_numpy=True)
    assert ours.dtype == np.float32 and ours.shape == stock.shape
    np.testing.assert_allclose(ours, stock, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_order_is_preserved_whatever_the_lengths(tiny_model, sentences):
    texts = sorted(sentences, key=len)  # ascending: encode sorts descending internally
    full = encode(tiny_model, texts, batch_size=8, precision="fp32")
    singles = np.stack([encode(tiny_model, [t], precision="fp32")[0] for t in texts[::10]])
    np.testing.assert_allclose(full[::10], singles, atol=1e-5)


def test_bf16_parity_and_model_left_untouched(minilm, sentences):
    before = {name: p.detach().clone() for name, p in minilm.named_parameters()}
    fp32 = encode(minilm, sentences, precision="fp32")
    bf16 = encode(minilm, sentences, precision="bf16")
    autocast = encode(minilm, sentences, precision="bf16-autocast")
    assert (fp32 * bf16).sum(1).min() >= 0.999
    assert (fp32 * autocast).sum(1).min() >= 0.999
    assert not np.allclose(fp32, bf16, atol=1e-6)  # bf16 really ran
    for name, p in minilm.named_parameters():
        assert p.dtype == torch.float32
        assert torch.equal(p, before[name]), name


def test_prompt_is_prepended_like_stock_encode(tiny_model, sentences):
    ours = encode(tiny_model, sentences[:10], prompt="query: ", precision="fp32")
    stock = tiny_model.encode(sentences[:10], prompt="query: ", normalize_embeddings=True)
    np.testing.assert_allclose(ours, stock, atol=1e-5)
    tiny_model.prompts = {"query": "query: "}
    try:
        np.testing.assert_allclose(
            encode(tiny_model, sentences[:10], prompt_name="query", precision="fp32"), ours, atol=1e-5
        )
        with pytest.raises(ValueError, match="prompt_name 'passage'"):
            encode(tiny_model, sentences[:2], prompt_name="passage")
    finally:
        tiny_model.prompts = {}


def test_precision_resolution_and_errors(tiny_model):
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == ("bf16" if cpu_supports_bf16() else "fp32")
    assert resolve_precision("fp32", cpu) == "fp32"
    with pytest.raises(ValueError, match="precision must be"):
        resolve_precision("fp16", cpu)
    with pytest.raises(TypeError, match="list of texts"):
        encode(tiny_model, "one string")
    assert encode(tiny_model, []).shape[0] == 0


def test_batches_cover_every_row_once_and_grow_for_short_texts():
    lengths = np.array([300, 250, 120, 60] + [10] * 200)
    spans = _batches(lengths, batch_size=4, token_budget=4 * 128)
    covered = [i for start, end in spans for i in range(start, end)]
    assert covered == list(range(len(lengths)))
    assert spans[0] == (0, 4)
    assert max(end - start for start, end in spans) == 16  # capped at 4x batch_size
