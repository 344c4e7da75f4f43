from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from sentence_transformers.base.modules import Normalize
from sentence_transformers.sentence_transformer.modules import Pooling

from gte_st import GTEMeanPooling


def reference_mean(token_embeddings: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Hand-written masked mean in float64."""
    te, m = token_embeddings.double(), mask.double().unsqueeze(-1)
    return (te * m).sum(1) / m.sum(1)


@pytest.fixture
def padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    token_embeddings = torch.randn(4, 7, 16)
    lengths = torch.tensor([7, 3, 1, 5])
    mask = (torch.arange(7).unsqueeze(0) < lengths.unsqueeze(1)).long()
    # garbage in padded positions must never leak into the mean
    token_embeddings = token_embeddings.masked_fill(~mask.bool().unsqueeze(-1), 1e4)
    return token_embeddings, mask


def test_masked_mean_ignores_padding(padded_batch):
    token_embeddings, mask = padded_batch
    pooling = GTEMeanPooling(16, normalize=False)
    out = pooling({"token_embeddings": token_embeddings, "attention_mask": mask})["sentence_embedding"]
    torch.testing.assert_close(out.double(), reference_mean(token_embeddings, mask), atol=1e-5, rtol=1e-5)


def test_normalized_output_is_unit_length_and_matches_reference(padded_batch):
    token_embeddings, mask = padded_batch
    out = GTEMeanPooling(16)({"token_embeddings": token_embeddings, "attention_mask": mask})["sentence_embedding"]
    expected = F.normalize(reference_mean(token_embeddings, mask), dim=-1)
    torch.testing.assert_close(out.double(), expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(4))


def test_bf16_input_accumulates_in_float32_and_returns_bf16(padded_batch):
    token_embeddings, mask = padded_batch
    bf16 = token_embeddings.bfloat16()
    out = GTEMeanPooling(16)({"token_embeddings": bf16, "attention_mask": mask})["sentence_embedding"]
    assert out.dtype == torch.bfloat16
    expected = F.normalize(reference_mean(bf16.float(), mask), dim=-1)
    # only the final cast to bf16 rounds: error is within one bf16 ulp (2^-8 relative)
    torch.testing.assert_close(out.double(), expected, atol=4e-3, rtol=0)
    # a naive bf16 sum would drift much further on long sequences
    long = torch.full((1, 4096, 16), 1.0 + 2**-7, dtype=torch.bfloat16)
    long_out = GTEMeanPooling(16, normalize=False)(
        {"token_embeddings": long, "attention_mask": torch.ones(1, 4096, dtype=torch.long)}
    )["sentence_embedding"]
    assert long_out.float().sub(1.0 + 2**-7).abs().max() < 1e-6


def test_prompt_tokens_are_excluded(padded_batch):
    token_embeddings, mask = padded_batch
    mask = mask.clone()
    mask[2, :3] = 1  # every row at least as long as the prompt
    features = {"token_embeddings": token_embeddings, "attention_mask": mask, "prompt_length": 2}
    out = GTEMeanPooling(16, normalize=False, include_prompt=False)(features)["sentence_embedding"]
    without_prompt = mask.clone()
    without_prompt[:, :2] = 0
    torch.testing.assert_close(out.double(), reference_mean(token_embeddings, without_prompt), atol=1e-5, rtol=1e-5)
    # the caller's mask is not modified (cached losses re-embed the same features)
    assert features["attention_mask"].equal(mask)


def test_flattened_layout_matches_padded(padded_batch):
    token_embeddings, mask = padded_batch
    lengths = mask.sum(1)
    flat = torch.cat([token_embeddings[i, : lengths[i]] for i in range(4)]).unsqueeze(0)
    cu = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    pooling = GTEMeanPooling(16)
    padded_out = pooling({"token_embeddings": token_embeddings, "attention_mask": mask})["sentence_embedding"]
    flat_out = pooling({"token_embeddings": flat, "cu_seq_lens_q": cu})["sentence_embedding"]
    torch.testing.assert_close(flat_out, padded_out, atol=1e-6, rtol=1e-6)

    # with a prompt excluded, the flattened path agrees with the padded path too
    no_prompt = GTEMeanPooling(16, include_prompt=False)
    mask3 = mask.clone()
    mask3[2, :2] = 1
    lengths3 = mask3.sum(1)
    flat3 = torch.cat([token_embeddings[i, : lengths3[i]] for i in range(4)]).unsqueeze(0)
    cu3 = torch.cat([torch.zeros(1, dtype=torch.long), lengths3.cumsum(0)])
    a = no_prompt({"token_embeddings": token_embeddings, "attention_mask": mask3, "prompt_length": 1})
    b = no_prompt({"token_embeddings": flat3, "cu_seq_lens_q": cu3, "prompt_length": 1})
    torch.testing.assert_close(b["sentence_embedding"], a["sentence_embedding"], atol=1e-6, rtol=1e-6)


def test_equivalent_to_stock_pooling_and_normalize(padded_batch):
    token_embeddings, mask = padded_batch
    ours = GTEMeanPooling(16)({"token_embeddings": token_embeddings, "attention_mask": mask})["sentence_embedding"]
    features = {"token_embeddings": token_embeddings, "attention_mask": mask}
    for module in GTEMeanPooling(16).to_stock_modules():
        features = module(features)
    assert torch.equal(ours, features["sentence_embedding"])
    stock = GTEMeanPooling(16, normalize=False).to_stock_modules()
    assert len(stock) == 1 and isinstance(stock[0], Pooling) and stock[0].pooling_mode == "mean"
    assert isinstance(GTEMeanPooling(16).to_stock_modules()[1], Normalize)


def test_config_round_trip(tmp_path):
    pooling = GTEMeanPooling(24, normalize=False, include_prompt=False)
    pooling.save(str(tmp_path))
    loaded = GTEMeanPooling.load(str(tmp_path))
    assert loaded.get_config_dict() == {"embedding_dimension": 24, "normalize": False, "include_prompt": False}
    assert loaded.get_embedding_dimension() == 24
