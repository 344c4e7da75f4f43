"""GTE mean pooling: masked mean over token states, with an optional fused L2 normalisation."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from sentence_transformers.base.modules import Normalize
from sentence_transformers.sentence_transformer.modules import Pooling
from torch import Tensor


class GTEMeanPooling(Pooling):
    """Masked mean pooling over token embeddings, followed by an (optional, default on) L2 normalisation.

    GTE embeddings are the mean of the encoder's last hidden states over the non-padding tokens, scaled to unit
    length so that a dot product is the cosine similarity::

        e = normalize( sum_t m_t * h_t / max(sum_t m_t, 1e-9) )

    where ``m`` is the attention mask (with prompt tokens zeroed when ``include_prompt=False``). The sum and the
    division are accumulated in float32 even when the encoder runs in fp16/bf16; with ``normalize=True`` the
    normalisation also runs in float32 before the result is cast back to the encoder's dtype, which keeps
    bf16 embeddings unit-norm to within bf16 rounding.

    It handles the padded ``(batch, seq, dim)`` layout and the flattened ``(1, total_tokens, dim)`` layout that
    sentence-transformers' Transformer module emits with FlashAttention-2 unpadding (``cu_seq_lens_q``).

    The module is exactly equivalent to sentence-transformers' stock ``Pooling(pooling_mode="mean")`` followed by
    ``Normalize()`` (bit-identical in fp32), and :meth:`to_stock_modules` returns that pair. gte-st saves models in
    that stock layout (see :class:`gte_st.GTEModel`), so they load with plain ``SentenceTransformer(path)`` -- and in
    TEI, Infinity and FastEmbed, which read ``1_Pooling/config.json`` -- without gte-st installed.

    Args:
        embedding_dimension: Dimension of the token embeddings (the encoder's hidden size).
        normalize: L2-normalise the pooled embedding. Defaults to ``True``.
        include_prompt: If ``False``, prompt tokens (e.g. an instruction prefix) are excluded from the mean.

    Example::

        from sentence_transformers import SentenceTransformer
        from sentence_transformers.sentence_transformer.modules import Transformer
        from gte_st import GTEMeanPooling

        transformer = Transformer("sentence-transformers/all-MiniLM-L6-v2")
        model = SentenceTransformer(modules=[transformer, GTEMeanPooling(transformer.get_embedding_dimension())])
    """

    config_keys = ["embedding_dimension", "normalize", "include_prompt"]

    def __init__(self, embedding_dimension: int, normalize: bool = True, include_prompt: bool = True) -> None:
        super().__init__(embedding_dimension, pooling_mode="mean", include_prompt=include_prompt)
        self.normalize = normalize

    def forward(self, features: dict[str, Tensor | Any], **kwargs) -> dict[str, Tensor | Any]:
        token_embeddings = features["token_embeddings"]
        prompt_length = None
        if not self.include_prompt and "prompt_length" in features:
            pl = features["prompt_length"]
            prompt_length = int(pl[0].item()) if isinstance(pl, torch.Tensor) else int(pl)

        if "cu_seq_lens_q" in features:
            pooled = self._mean_flattened(token_embeddings, features, prompt_length)
        else:
            attention_mask = features.get("attention_mask")
            if attention_mask is None or attention_mask.size(-1) != token_embeddings.size(1):
                attention_mask = torch.ones(token_embeddings.shape[:-1], device=token_embeddings.device)
            if prompt_length:
                attention_mask = self._exclude_prompt_from_mask(attention_mask, prompt_length)
            pooled = self._mean_padded(token_embeddings, attention_mask, features)

        if self.normalize:
            pooled = F.normalize(pooled, p=2, dim=-1)
        features["sentence_embedding"] = pooled.to(token_embeddings.dtype)
        return features

    @staticmethod
    def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
        return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype

    def _mean_padded(self, token_embeddings: Tensor, attention_mask: Tensor, features: dict[str, Any]) -> Tensor:
        acc_dtype = self._accumulation_dtype(token_embeddings.dtype)
        mask = attention_mask.unsqueeze(-1).to(token_embeddings.dtype)
        summed = (token_embeddings * mask).sum(dim=1, dtype=acc_dtype)
        if "token_weights_sum" in features:  # set by sentence-transformers for weighted inputs
            counts = features["token_weights_sum"].unsqueeze(-1).to(acc_dtype)
        else:
            counts = mask.sum(dim=1, dtype=acc_dtype)
        return summed / torch.clamp(counts, min=1e-9)

    def _mean_flattened(self, token_embeddings: Tensor, features: dict[str, Any], prompt_length: int | None) -> Tensor:
        flat = token_embeddings.squeeze(0)  # (total_tokens, dim)
        cu_seq_lens = features["cu_seq_lens_q"]
        lengths = cu_seq_lens[1:] - cu_seq_lens[:-1]
        num_seqs = lengths.shape[0]
        if "seq_idx" in features:
            segment_ids = features["seq_idx"].squeeze(0).long()
        else:
            segment_ids = torch.repeat_interleave(torch.arange(num_seqs, device=flat.device), lengths)
        if prompt_length:
            offsets = torch.repeat_interleave(cu_seq_lens[:-1], lengths)
            keep = torch.arange(flat.shape[0], device=flat.device) - offsets >= prompt_length
            flat, segment_ids = flat[keep], segment_ids[keep]
            lengths = torch.clamp(lengths - prompt_length, min=0)
        acc_dtype = self._accumulation_dtype(flat.dtype)
        summed = torch.zeros(num_seqs, flat.shape[1], device=flat.device, dtype=acc_dtype)
        summed = summed.index_add(0, segment_ids, flat.to(acc_dtype))
        return summed / torch.clamp(lengths.unsqueeze(1).to(acc_dtype), min=1e-9)

    def to_stock_modules(self) -> list[Pooling | Normalize]:
        """The equivalent stock sentence-transformers modules: ``Pooling("mean")`` (+ ``Normalize()``)."""
        pooling = Pooling(self.embedding_dimension, pooling_mode="mean", include_prompt=self.include_prompt)
        return [pooling, Normalize()] if self.normalize else [pooling]

    def __repr__(self) -> str:
        return f"GTEMeanPooling({self.get_config_dict()})"
