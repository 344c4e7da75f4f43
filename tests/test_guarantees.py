"""The guarantees of the README's "Guarantees" section, tested for real: processes killed with SIGKILL at random
points and run again, two processes on the same output, writes that hit a file-size limit (a full disk), an
unwritable folder, a model that keeps its serving length, checkpoints that are kept, and a Hub token that is never
written. Every case checks the exit code, one error line naming what is at fault, and that nothing outside the
command's own output changed (the whole working folder is hashed before and after)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT, stsb_rows

from gte_st.cli import main


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread(one_torch_thread):
    """Tiny models on a busy shared CPU: this module runs on one torch thread (see conftest)."""


def _hashes(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """sha256 of every file under ``root`` (folders as entries too), leaving out the top-level names in ``skip``."""
    out = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if relative.parts[0] in skip:
            continue
        out[relative.as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return out


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


def _cli(*argv: str, **popen) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "gte_st.cli", *argv], cwd=REPO_ROOT, env=_env(), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, **popen,
    )  # fmt: skip


def _error_line(stderr: str, command: str) -> str:
    """The one error line of a failed command, asserting there is no traceback. Progress bars may precede it on the
    same terminal line (tqdm leaves an unfinished bar without a newline), so the line is taken from its prefix on."""
    assert "Traceback" not in stderr, stderr
    prefix = f"gte-st {command}: error: "
    assert stderr.count(prefix) == 1, stderr
    return prefix + stderr.split(prefix, 1)[1].splitlines()[0]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("guarantees-corpus") / "corpus.jsonl"
    texts = sorted({a for _, a, _ in stsb_rows("train")[:400]})[:240]
    path.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    return path


@pytest.fixture(scope="module")
def other_gte_dir(tmp_path_factory) -> Path:
    """A second tiny model with other weights (same tokenizer and shape)."""
    from conftest import build_tiny_bert

    import gte_st

    root = tmp_path_factory.mktemp("other-gte")
    gte_st.build_model(str(build_tiny_bert(root / "bert", seed=11))).save(str(root / "model"))
    return root / "model"


# ------------------------------------------------------------------------------------------------ index: concurrency
def test_two_index_builds_on_one_out_never_mix_models(corpus, tiny_gte_dir, other_gte_dir, tmp_path):
    """#26 item 3: the second writer is refused with a line naming the first, and the index that results is wholly
    the first model's (every row equals that model's own embedding)."""
    from sentence_transformers import SentenceTransformer

    from gte_st.search import Index

    out = tmp_path / "idx"
    common = ["--out", str(out), "--shard-size", "8", "--batch-size", "8", "--no-progress", "--encode-precision",
              "fp32"]  # fmt: skip
    first = _cli("index", str(corpus), "--model", str(tiny_gte_dir), *common)
    lock = tmp_path / ".idx.lock"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (lock.exists() and lock.read_text().strip()):
        time.sleep(0.01)
    assert first.poll() is None, first.communicate()
    first.send_signal(signal.SIGSTOP)  # hold the first build mid-way, lock taken, while the second one starts
    try:
        second = _cli("index", str(corpus), "--model", str(other_gte_dir), *common)
        _, err = second.communicate(timeout=120)
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 1
    assert f"{out} is being built by process {first.pid}" in _error_line(err, "index")
    assert first.wait(timeout=300) == 0, first.communicate()
    index = Index.load(out)
    assert index.meta["model"]["name"] == str(tiny_gte_dir.resolve())
    expected = SentenceTransformer(str(tiny_gte_dir), device="cpu").encode(index.texts, normalize_embeddings=True)
    assert np.abs(index.embeddings - expected).max() < 1e-4
    assert not lock.exists() and not (tmp_path / "idx.partial").exists()


# ------------------------------------------------------------------------------------ index: killed and run again
@pytest.fixture(scope="module")
def reference_index(corpus, tiny_gte_dir, tmp_path_factory):
    from gte_st.search import build_index

    return build_index(corpus, str(tiny_gte_dir), tmp_path_factory.mktemp("reference") / "idx", shard_size=8,
                       batch_size=8, show_progress_bar=False, encode_precision="fp32")  # fmt: skip


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_index_build_killed_at_a_random_point_then_rerun_equals_an_uninterrupted_build(
    corpus, tiny_gte_dir, reference_index, tmp_path, seed
):
    from gte_st.search import Index

    reference = reference_index
    out = tmp_path / "idx"
    argv = ["index", str(corpus), "--model", str(tiny_gte_dir), "--out", str(out), "--shard-size", "8",
            "--batch-size", "8", "--no-progress", "--encode-precision", "fp32"]  # fmt: skip
    proc = _cli(*argv)
    lock = tmp_path / ".idx.lock"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and not lock.exists():
        time.sleep(0.005)
    time.sleep(random.Random(seed).uniform(0.0, 1.5))  # anywhere from model load to the last files
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    rerun = _cli(*argv, *(["--overwrite"] if (out / "meta.json").exists() else []))
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    index = Index.load(out)
    assert index.ids == reference.ids
    assert np.abs(index.embeddings - reference.embeddings).max() < 1e-5
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "idx"]
    assert leftovers == [], leftovers


# -------------------------------------------------------------------------------------------- writes that fail
def _limited(max_bytes: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))

    return apply


def test_index_build_on_a_full_disk_fails_in_one_line_leaves_nothing_and_the_rerun_completes(
    corpus, tiny_gte_dir, tmp_path
):
    """#26 item 20: a write that hits a file-size limit (what a full disk looks like to the writer) ends the build
    with one line; no temporary file is left in DIR.partial, and the next run completes from the shards it kept."""
    out = tmp_path / "idx"
    argv = ["index", str(corpus), "--model", str(tiny_gte_dir), "--out", str(out), "--shard-size", "8",
            "--no-progress", "--encode-precision", "fp32"]  # fmt: skip
    limited = _cli(*argv, preexec_fn=_limited(12_000))  # shards (~4 KB) fit; docs.jsonl / embeddings.npy do not
    _, err = limited.communicate(timeout=300)
    assert limited.returncode == 1, err
    assert "File too large" in _error_line(err, "index")
    partial = tmp_path / "idx.partial"
    assert not [p for p in partial.rglob("*") if ".tmp-" in p.name], list(partial.rglob("*"))
    rerun = _cli(*argv)
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    assert "resuming" in err and not partial.exists()


def test_train_on_a_full_disk_keeps_the_previous_model(tiny_bert_dir, tmp_path):
    """Saving the final model fails: one line naming the folder; the earlier model in OUTPUT_DIR is untouched."""
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"anchor": a, "positive": b}) + "\n" for _, a, b in stsb_rows("train")[:64]))
    out = tmp_path / "out"
    out.mkdir()
    (out / "earlier.txt").write_text("an earlier model")
    before = _hashes(tmp_path)
    proc = _cli("train", "--base_model", str(tiny_bert_dir), "--data", str(data), "--output_dir", str(out),
                "--max_steps", "2", "--per_device_train_batch_size", "8", "--save_steps", "1000", "--precision",
                "fp32", preexec_fn=_limited(200_000))  # fmt: skip
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err
    assert "File too large" in _error_line(err, "train") or "disk" in _error_line(err, "train")
    after = _hashes(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith("out/checkpoints")} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], list(tmp_path.iterdir())


def test_an_unwritable_output_folder_is_one_line(corpus, tiny_gte_dir, tmp_path):
    before = _hashes(corpus.parent)
    assert main(["dedup", str(corpus), "--model", str(tiny_gte_dir), "--out", "/sys/gte-st-out.jsonl",
                 "--no-progress"]) == 1  # fmt: skip
    assert _hashes(corpus.parent) == before


# ----------------------------------------------------------------------------------------------------- export
@pytest.mark.parametrize("seed", [0, 1])
def test_export_killed_then_rerun_leaves_no_work_folder(tiny_gte_dir, tmp_path, seed):
    pytest.importorskip("onnxruntime")
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_gte_dir, model)
    argv = ["export", str(model), "--format", "onnx", "--no-optimize"]
    proc = _cli(*argv)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and not list(model.glob(".gte-st-export-*")):
        time.sleep(0.005)
    time.sleep(random.Random(seed).uniform(0.0, 0.5))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    again = _cli(*argv)
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert not [p.name for p in model.iterdir() if p.name.startswith(".")]
    assert (model / "onnx" / "model.onnx").is_file()


def test_a_second_export_into_one_model_folder_is_refused(tiny_gte_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    import shutil

    from gte_st.files import exclusive_lock

    model = tmp_path / "model"
    shutil.copytree(tiny_gte_dir, model)
    with exclusive_lock(model, doing="exported", lock_file=model / ".gte-st-export.lock"):
        proc = _cli("export", str(model), "--format", "onnx", "--no-optimize")
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert f"{model} is being exported by process {os.getpid()}" in _error_line(err, "export")
    assert not (model / "onnx").exists()


# ------------------------------------------------------------------------------------------------------ training
def _pairs(tmp_path: Path, rows: int = 64) -> Path:
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"anchor": a, "positive": b}) + "\n" for _, a, b in stsb_rows("train")[:rows]))
    return data


def _train_args(base: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["--base_model", str(base), "--data", str(data), "--output_dir", str(out), "--max_steps", "2",
            "--per_device_train_batch_size", "8", "--precision", "fp32", "--save_steps", "1", *extra]  # fmt: skip


def test_a_trained_model_serves_at_its_base_length_and_the_card_states_both(tiny_bert_dir, tmp_path):
    """#26 item 0: training at 16 tokens saves a model that still reads 128 (the base's serving length)."""
    from sentence_transformers import SentenceTransformer

    from gte_st.commands.train import main as train
    from gte_st.model_card import render_model_card

    base = SentenceTransformer(str(tiny_bert_dir), device="cpu").max_seq_length
    data = _pairs(tmp_path)
    assert train(_train_args(tiny_bert_dir, data, tmp_path / "a", "--max_seq_length", "16")) == 0
    saved = SentenceTransformer(str(tmp_path / "a"), device="cpu")
    assert saved.max_seq_length == base == 128
    summary = json.loads((tmp_path / "a" / "training_summary.json").read_text())
    assert summary["serving_max_seq_length"] == 128 and summary["stages"][0]["max_seq_length"] == 16
    card = render_model_card(tmp_path / "a", repo_id="me/a")
    assert "| Max sequence length | 128 tokens when serving" in card and "16 tokens (training only)" in card
    assert train(_train_args(tiny_bert_dir, data, tmp_path / "b", "--serving_max_seq_length", "48")) == 0
    assert SentenceTransformer(str(tmp_path / "b"), device="cpu").max_seq_length == 48


def test_keep_checkpoints_keeps_them(tiny_bert_dir, tmp_path):
    from gte_st.commands.train import main as train

    out = tmp_path / "out"
    assert train(_train_args(tiny_bert_dir, _pairs(tmp_path), out, "--keep_checkpoints", "true")) == 0
    kept = sorted(p.name for p in (out / "checkpoints" / "train").iterdir())
    assert "checkpoint-2" in kept and (out / "checkpoints" / "train" / "checkpoint-2" / "model.safetensors").is_file()
    assert train(_train_args(tiny_bert_dir, _pairs(tmp_path), tmp_path / "plain")) == 0
    assert not (tmp_path / "plain" / "checkpoints").exists()


def test_a_huge_alpha_trains_and_puts_the_mass_on_the_largest_source(tiny_bert_dir, tmp_path):
    """#26 item 6: --alpha 1000 overflowed after training and the model was never written."""
    from gte_st.commands.train import main as train

    (tmp_path / "big").mkdir()
    (tmp_path / "small").mkdir()
    big, small = _pairs(tmp_path / "big", 64), _pairs(tmp_path / "small", 16)
    args = _train_args(tiny_bert_dir, big, tmp_path / "out", "--alpha", "1000")
    args[args.index("--data") + 1 : args.index("--data") + 2] = [f"big={big}", f"small={small}"]
    assert train(args) == 0
    summary = json.loads((tmp_path / "out" / "training_summary.json").read_text())
    probabilities = {d["name"]: d["sampling_probability"] for d in summary["stages"][0]["data"]}
    assert probabilities == {"big": 1.0, "small": 0.0}


@pytest.mark.parametrize("how", ["--hub_token", "HF_TOKEN", "stored login"])
def test_the_hub_token_is_never_written(hub, hub_env, tiny_bert_dir, tmp_path, monkeypatch, how):
    """#26 item 9: with --push_to_hub, --hub_checkpoints and --keep_checkpoints, no file the run writes (checkpoints'
    training_args.bin included) holds the token, whichever way it was given, and the run completes."""
    import huggingface_hub
    from conftest import HUB_TOKEN

    from gte_st.commands.train import main as train

    monkeypatch.delenv("HF_TOKEN", raising=False)
    extra = ["--push_to_hub", f"me/token-{how.strip('-').replace(' ', '-').lower()}", "--hub_checkpoints", "true",
             "--keep_checkpoints", "true"]  # fmt: skip
    if how == "--hub_token":
        extra += ["--hub_token", HUB_TOKEN]
    elif how == "HF_TOKEN":
        monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    else:
        token_file = Path(huggingface_hub.constants.HF_TOKEN_PATH)
        token_file.parent.mkdir(parents=True, exist_ok=True)
        token_file.write_text(HUB_TOKEN)
    out = tmp_path / "out"
    assert train(_train_args(tiny_bert_dir, _pairs(tmp_path), out, *extra)) == 0
    written = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.name == "training_args.bin" for p in written)
    leaks = [str(p) for p in written if HUB_TOKEN.encode() in p.read_bytes()]
    assert leaks == []
    assert "checkpoint-2/training_args.bin" in hub.files(extra[1], "checkpoints")


class _RunsCode:
    """Pickles into a call of a function: what ``torch.load(weights_only=True)`` refuses to unpickle."""

    def __reduce__(self):
        return (os.getcwd, ())


def test_a_checkpoint_file_torch_refuses_to_unpickle_is_named_on_resume(tiny_bert_dir, tmp_path, capsys):
    """#26 item 18: an rng_state.pth (or any pickle) that weights_only loading refuses ends the resume with one line
    naming the file, not an UnpicklingError traceback. The refusal itself stays."""
    import shutil

    import torch

    from gte_st.commands.train import main as train

    out = tmp_path / "out"
    args = _train_args(tiny_bert_dir, _pairs(tmp_path), out, "--keep_checkpoints", "true")
    assert train(args) == 0
    stage = out / "checkpoints" / "train"
    shutil.rmtree(stage / "final")  # as if the run had been killed after checkpoint-2
    evil = stage / "checkpoint-2" / "rng_state.pth"
    torch.save({"state": _RunsCode()}, evil)
    capsys.readouterr()
    resumed = [*args, "--resume", "true"]
    resumed[resumed.index("--max_steps") + 1] = "4"
    assert main(["train", *resumed]) == 1
    assert f"{evil}: refused by torch.load(weights_only=True)" in _error_line(capsys.readouterr().err, "train")


def test_pickled_weights_torch_refuses_are_named(tiny_gte_dir, tmp_path, capsys):
    import shutil

    import torch
    from safetensors.torch import load_file

    model = tmp_path / "pickled"
    shutil.copytree(tiny_gte_dir, model)
    weights = load_file(model / "model.safetensors")
    (model / "model.safetensors").unlink()
    torch.save({**weights, "extra": _RunsCode()}, model / "pytorch_model.bin")
    sts = tmp_path / "sts.jsonl"
    sts.write_text("".join(json.dumps({"sentence1": a, "sentence2": b, "score": s}) + "\n"
                           for s, a, b in stsb_rows("dev")[:8]))  # fmt: skip
    assert main(["eval", str(model), "--task", "sts", "--data", str(sts)]) == 1
    line = _error_line(capsys.readouterr().err, "eval")
    assert f"{model / 'pytorch_model.bin'}: refused by torch.load(weights_only=True)" in line
