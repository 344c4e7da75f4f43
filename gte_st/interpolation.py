"""Weight-space interpolation between a fine-tuned model and its base (WiSE-FT).

.. math::

    \\theta_\\alpha = (1 - \\alpha)\\,\\theta_{\\text{base}} + \\alpha\\,\\theta_{\\text{fine-tuned}}

for every floating-point weight; ``alpha = 1`` is the fine-tuned model, ``alpha = 0`` the base. Reason: a model
fine-tuned from a base stays in the same basin, and the points on the line between them usually keep most of the
fine-tuned model's gain on its own task while losing much less of the base's quality elsewhere than the fine-tuned
end does (Wortsman et al., 2022): a post-training knob for how much general quality to buy back, chosen on dev data.

References:
    - Wortsman et al., *Robust fine-tuning of zero-shot models* (WiSE-FT), CVPR 2022: https://arxiv.org/abs/2109.01903

Example::

    from gte_st.interpolation import interpolate_state_dicts

    base = {k: v.clone() for k, v in model.state_dict().items()}   # before training
    ...                                                             # train
    model.load_state_dict(interpolate_state_dicts(base, model.state_dict(), alpha=0.5))
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch


def interpolate_state_dicts(
    base: Mapping[str, torch.Tensor], finetuned: Mapping[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """``(1 - alpha) * base + alpha * finetuned`` for every floating-point tensor (computed in float32 or wider and
    returned in the fine-tuned tensor's dtype and device); any other tensor (integer buffers such as position ids)
    must be equal in both and is taken as it is. Both state dicts must hold the same keys and shapes: the models
    must share an architecture (a LoRA adapter must be merged first)."""
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and 0 <= alpha <= 1):
        raise ValueError(f"the interpolation weight alpha must lie in [0, 1], got {alpha!r}")
    if missing := sorted(set(base) ^ set(finetuned)):
        raise ValueError(f"the two models do not have the same weights (e.g. {missing[:3]}); same architecture needed")
    out: dict[str, torch.Tensor] = {}
    for key, tuned in finetuned.items():
        original = base[key]
        if original.shape != tuned.shape:
            raise ValueError(f"weight {key}: shape {tuple(original.shape)} in the base, {tuple(tuned.shape)} tuned")
        if not tuned.is_floating_point():
            if not torch.equal(original.to(tuned.device), tuned):
                raise ValueError(f"weight {key}: a non-float tensor differs between the models; cannot interpolate it")
            out[key] = tuned.clone()
            continue
        wide = torch.promote_types(tuned.dtype, torch.float32)
        mixed = (1 - alpha) * original.to(tuned.device, wide) + alpha * tuned.to(wide)
        out[key] = mixed.to(tuned.dtype)
    return out


__all__ = ["interpolate_state_dicts"]
