"""What a run records: ``training_summary.json`` (written next to the final model; the model card reads it) and the
short human summary printed at the end."""

from __future__ import annotations

import math
import os
from typing import Any

SUMMARY_FILE = "training_summary.json"
STAGE_DONE_FILE = "stage_summary.json"


def jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return getattr(value, "__name__", str(value))


def format_summary(summary: dict[str, Any], final_dir: str | os.PathLike) -> str:
    """A short human summary: time, pairs/s per stage, evaluation before -> after."""
    minutes, seconds = divmod(summary["total_runtime_s"], 60)
    lines = [f"Trained {final_dir} in {int(minutes)}m{seconds:04.1f}s ({summary['precision']}, "
             f"world size {summary['world_size']})"]  # fmt: skip
    for stage in summary["stages"]:
        lines.append(
            f"  stage {stage['name']}: {stage['steps']} steps x {stage['global_batch_size']} "
            f"({stage['loss']['name']}), {stage['pairs_per_second']:.1f} pairs/s, {stage['runtime_s']:.0f}s"
            + (f", replay share {stage['replay_share']}" if stage.get("replay_share") else "")
            + (f", LoRA r={stage['lora']['r']}" if stage.get("lora") else "")
        )
    if wise_ft := summary.get("wise_ft"):
        lines.append(f"  WiSE-FT: weights = {1 - wise_ft['alpha']:.2g} x base + {wise_ft['alpha']:.2g} x fine-tuned "
                     f"({'chosen on the evaluation tasks' if wise_ft['mode'] == 'auto' else 'fixed'})")  # fmt: skip
    before = {(r["dataset"], r["split"]): r for r in summary["eval"]["before"]}
    if before:
        lines.append(f"  {'evaluation':<36} {'before':>8} {'after':>8} {'delta':>8}")
    for result in summary["eval"]["after"]:
        old = before.get((result["dataset"], result["split"]))
        key = result["main_score"]
        new_value = result["metrics"][key]
        old_value = old["metrics"][key] if old else math.nan
        label = f"{result['dataset']} {key}"
        lines.append(f"  {label:<36} {old_value:8.4f} {new_value:8.4f} {new_value - old_value:+8.4f}")
    if any(stage.get("lora", {}).get("saved") == "adapter" for stage in summary["stages"]):
        lines.append(f'Load it with gte_st.lora.load_adapter("{final_dir}"); it keeps its LoRA adapter (peft layout).')
    else:
        lines.append(f'Load it with SentenceTransformer("{final_dir}").')
    return "\n".join(lines)


__all__ = ["STAGE_DONE_FILE", "SUMMARY_FILE", "format_summary", "jsonable"]
