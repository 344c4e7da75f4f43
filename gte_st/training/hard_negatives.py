"""Hard negatives for a stage, mined from the current model with sentence-transformers' ``mine_hard_negatives``."""

from __future__ import annotations

from datasets import DatasetDict
from sentence_transformers import SentenceTransformer

from gte_st.training.arguments import RecipeArguments


def mine_negatives(data: DatasetDict, model: SentenceTransformer, recipe: RecipeArguments) -> DatasetDict:
    """Hard negatives for every source from the current model (sentence-transformers' ``mine_hard_negatives``)."""
    from sentence_transformers.util import mine_hard_negatives

    mined = {}
    for name, dataset in data.items():
        pairs = dataset.select_columns(["anchor", "positive"])
        mined[name] = mine_hard_negatives(
            pairs,
            model,
            anchor_column_name="anchor",
            positive_column_name="positive",
            num_negatives=recipe.mining_num_negatives,
            range_min=recipe.mining_range_min,
            range_max=recipe.mining_range_max,
            relative_margin=recipe.mining_relative_margin,
            sampling_strategy="top",
            output_format="n-tuple",
            batch_size=64,
            verbose=False,
        )
    return DatasetDict(mined)


__all__ = ["mine_negatives"]
