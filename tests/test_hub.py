"""gte_st.hub against a loopback Hub (tests/hub_server.py) through the real huggingface_hub client: nothing is mocked.

``huggingface_hub`` reads HF_ENDPOINT / HF_HUB_OFFLINE / the cache location into ``huggingface_hub.constants`` when it
is imported (and the suite runs with HF_HUB_OFFLINE=1), so in-process tests patch those constants for the duration of
a test, and the CLI tests run ``gte-st`` in a subprocess with its own environment, the way a user would.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest
import torch
from conftest import HUB_TOKEN as TOKEN
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results
from sentence_transformers import SentenceTransformer

from gte_st import build_model
from gte_st.checkpoints import latest_checkpoint_name
from gte_st.cli import main as cli_main
from gte_st.hub import (
    CorruptDownloadError,
    model_files,
    pull_latest_checkpoint,
    pull_model,
    push_checkpoint,
    push_model,
    split_repo_revision,
)

SENTENCES = ["A man is playing a guitar.", "A woman is slicing an onion.", "Two dogs run on the beach."]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread(one_torch_thread):
    """Tiny models on a busy shared CPU: this module runs on one torch thread (see conftest)."""


@pytest.fixture(scope="module")
def model_dir(tiny_bert_dir, tmp_path_factory) -> Path:
    """A saved tiny GTE model with a training summary and a stand-in ONNX file, plus trainer leftovers to skip."""
    path = tmp_path_factory.mktemp("gte-tiny")
    build_model(str(tiny_bert_dir), max_seq_length=64).save(str(path))
    summary = {"gte_st_version": "0.1.0", "base_model": str(tiny_bert_dir), "seed": 0, "max_seq_length": 64}
    (path / "training_summary.json").write_text(json.dumps(summary))
    (path / "onnx").mkdir()
    (path / "onnx" / "model.onnx").write_bytes(os.urandom(2048))  # transport test only: bytes, not a real graph
    (path / "training_args.bin").write_bytes(b"trainer state, not part of a published model")
    (path / "pytorch_model.bin").write_bytes(b"pickled weights: safetensors are published instead")
    (path / "checkpoint-5").mkdir()
    (path / "checkpoint-5" / "optimizer.pt").write_bytes(b"optimizer")
    return path


def _digests(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".cache" not in p.relative_to(root).parts
    }


def _encode(path: Path):
    return SentenceTransformer(str(path), device="cpu").encode(SENTENCES, convert_to_tensor=True)


def test_push_then_pull_is_byte_identical(hub, hub_env, model_dir):
    initial = hub.repos.get("me/gte-tiny")
    url = push_model(model_dir, "me/gte-tiny")
    head = hub.head("me/gte-tiny")
    assert initial is None and url.endswith(head)
    commit = hub.repos["me/gte-tiny"].commits[head]
    # one commit on top of the repo's initial commit carries the whole model
    assert hub.repos["me/gte-tiny"].commits[commit.parent].parent is None
    remote = hub.files("me/gte-tiny")
    expected = set(model_files(model_dir)) | {"README.md", ".gitattributes"}
    assert set(remote) == expected
    assert {"model.safetensors", "modules.json", "1_Pooling/config.json", "2_Normalize/config.json"} <= expected
    assert {"tokenizer.json", "onnx/model.onnx", "training_summary.json"} <= expected
    assert not any(p.startswith("checkpoint-") or p.endswith(".bin") for p in remote)
    assert b"library_name: sentence-transformers" in remote["README.md"]

    path = pull_model("me/gte-tiny")
    assert path.parent.name == "snapshots" and hub_env in path.parents
    local, pulled = _digests(model_dir), _digests(path)
    assert {p: pulled[p] for p in model_files(model_dir)} == {p: local[p] for p in model_files(model_dir)}
    assert (path / "README.md").read_bytes() == remote["README.md"]
    weights = (model_dir / "model.safetensors").read_bytes()  # served as an LFS file: cached under its sha256
    assert (path / "model.safetensors").resolve().name == hashlib.sha256(weights).hexdigest()
    assert torch.allclose(_encode(path), _encode(model_dir), atol=0, rtol=0)

    # a second push mirrors the directory: a file the model no longer has is deleted in the same single commit
    smaller = hub_env.parent / "smaller"
    shutil.copytree(model_dir, smaller)
    shutil.rmtree(smaller / "onnx")
    push_model(smaller, "me/gte-tiny", commit_message="drop onnx")
    assert "onnx/model.onnx" not in hub.files("me/gte-tiny")
    assert hub.repos["me/gte-tiny"].commits[hub.head("me/gte-tiny")].parent == head


def test_push_to_branch_and_pull_by_revision_with_the_cli(hub, hub_env, model_dir, tiny_bert_dir, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    push_model(model_dir, "me/gte-branches")
    main_head = hub.head("me/gte-branches")
    other = tmp_path / "other-model"
    build_model(str(tiny_bert_dir), max_seq_length=32).save(str(other))
    with torch.no_grad():  # different weights on the branch
        from safetensors.torch import load_file, save_file

        weights = load_file(other / "model.safetensors")
        save_file({k: v + 0.5 for k, v in weights.items()}, other / "model.safetensors")

    hf_home = tmp_path / "cli-home"
    env = {
        **os.environ,
        "HF_ENDPOINT": hub.endpoint,
        "HF_HUB_OFFLINE": "0",
        "TRANSFORMERS_OFFLINE": "0",
        "HF_HOME": str(hf_home),
        "HF_TOKEN": TOKEN,
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "OMP_NUM_THREADS": "1",
    }

    def gte_st(*args: str, **extra_env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "gte_st.cli", *args], env={**env, **extra_env}, capture_output=True, text=True
        )

    push = gte_st("push", str(other), "me/gte-branches", "--revision", "dev", "--commit-message", "branch push")
    assert push.returncode == 0, push.stderr
    dev_head = hub.head("me/gte-branches", "dev")
    assert dev_head in push.stdout and hub.head("me/gte-branches") == main_head  # main untouched
    assert hub.repos["me/gte-branches"].commits[dev_head].message == "branch push"

    pull = gte_st("pull", "me/gte-branches", "--revision", "dev", "--local-dir", str(tmp_path / "dev"))
    assert pull.returncode == 0, pull.stderr
    dev_path = Path(pull.stdout.strip())
    cached = gte_st("pull", "me/gte-branches", "--revision", "dev")  # into the HF_HOME cache
    offline = gte_st("pull", "me/gte-branches", "--revision", "dev", HF_HUB_OFFLINE="1")
    assert cached.returncode == offline.returncode == 0 and cached.stdout == offline.stdout, offline.stderr
    assert Path(offline.stdout.strip()).name == dev_head and hf_home in Path(offline.stdout.strip()).parents
    never = gte_st("pull", "me/gte-branches", "--revision", "main", HF_HUB_OFFLINE="1")
    assert never.returncode == 1 and "me/gte-branches@main is not in the local Hugging Face cache" in never.stderr
    main_path = pull_model("me/gte-branches", revision="main")
    assert dev_path == (tmp_path / "dev").resolve() and main_path.name == main_head
    assert (dev_path / "model.safetensors").read_bytes() == (other / "model.safetensors").read_bytes()
    assert (main_path / "model.safetensors").read_bytes() == (model_dir / "model.safetensors").read_bytes()
    assert not torch.allclose(_encode(dev_path), _encode(main_path))

    # create_pr opens a pull request instead of moving the branch
    pr_url = push_model(model_dir, "me/gte-branches", revision="dev", create_pr=True)
    assert pr_url.endswith("/discussions/1") and hub.head("me/gte-branches", "dev") == dev_head
    assert (
        hub.files("me/gte-branches", "refs/pr/1")["model.safetensors"]
        == (model_dir / "model.safetensors").read_bytes()
    )

    # the token is never printed, logged or written to a file
    outputs = "".join(p.stdout + p.stderr for p in (push, pull, cached, offline, never)) + caplog.text
    assert TOKEN not in outputs
    for root in (hf_home, tmp_path / "dev", other, model_dir, hub_env):
        for file in root.rglob("*"):
            assert not file.is_file() or TOKEN.encode() not in file.read_bytes(), file


def test_failed_upload_leaves_remote_and_local_unchanged(hub, hub_env, model_dir, tmp_path):
    push_model(model_dir, "me/gte-fail")
    head, remote = hub.head("me/gte-fail"), hub.files("me/gte-fail")
    retrained = tmp_path / "retrained"
    shutil.copytree(model_dir, retrained)
    (retrained / "model.safetensors").write_bytes((model_dir / "model.safetensors").read_bytes()[:-4] + b"\0\0\0\0")
    local = _digests(retrained)
    hub.fail_next_commit = True  # the connection drops halfway through the commit upload
    with pytest.raises(RuntimeError, match="remote revision is unchanged"):
        push_model(retrained, "me/gte-fail", commit_message="this one dies")
    assert hub.head("me/gte-fail") == head and hub.files("me/gte-fail") == remote
    assert _digests(retrained) == local
    push_model(retrained, "me/gte-fail")  # the next attempt goes through
    assert hub.files("me/gte-fail")["model.safetensors"] == (retrained / "model.safetensors").read_bytes()


def test_corrupted_download_is_detected(hub, hub_env, model_dir):
    push_model(model_dir, "me/gte-corrupt")
    hub.corrupt_paths = {"model.safetensors"}  # same size and headers, one byte flipped
    try:
        with pytest.raises(CorruptDownloadError, match="model.safetensors .* is corrupted: .* with sha256"):
            pull_model("me/gte-corrupt")
    finally:
        hub.corrupt_paths = set()
    path = pull_model("me/gte-corrupt")  # the bad copy was dropped from the cache: this pull fetches it again
    assert (path / "model.safetensors").read_bytes() == (model_dir / "model.safetensors").read_bytes()


def test_offline_pull_uses_the_cache(hub, hub_env, model_dir, monkeypatch):
    from huggingface_hub import constants

    push_model(model_dir, "me/gte-offline")
    online = pull_model("me/gte-offline")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    requests = len(hub.requests)
    assert pull_model("me/gte-offline") == online
    assert len(hub.requests) == requests  # nothing went to the network
    with pytest.raises(FileNotFoundError, match="is not in the local Hugging Face cache .* HF_HUB_OFFLINE=1"):
        pull_model("me/gte-offline", revision="never-pulled")
    # the cached copy is verified too: a file damaged on disk is caught
    (online / "tokenizer.json").resolve().write_text("{}")
    with pytest.raises(CorruptDownloadError, match="tokenizer.json .* with git-sha1"):
        pull_model("me/gte-offline")


def test_missing_token_is_a_clear_error_before_any_upload_and_stored_login_works(
    hub, hub_env, model_dir, monkeypatch, capsys
):
    monkeypatch.delenv("HF_TOKEN")
    requests = len(hub.requests)
    with pytest.raises(OSError, match="No Hugging Face token found.*HF_TOKEN.*hf auth login"):
        push_model(model_dir, "me/gte-no-token")
    with pytest.raises(OSError, match="No Hugging Face token found"):
        push_checkpoint(model_dir / "checkpoint-5", "me/gte-no-token")
    assert cli_main(["push", str(model_dir), "me/gte-no-token"]) == 1
    assert "gte-st push: error: No Hugging Face token found" in capsys.readouterr().err
    assert len(hub.requests) == requests and "me/gte-no-token" not in hub.repos

    # the stored login (`hf auth login` writes HF_TOKEN_PATH) is used when HF_TOKEN is not set
    token_file = Path(huggingface_hub.constants.HF_TOKEN_PATH)
    token_file.parent.mkdir(parents=True, exist_ok=True)
    token_file.write_text(TOKEN)
    assert push_model(model_dir, "me/gte-no-token") and "me/gte-no-token" in hub.repos


def test_a_file_holding_the_token_is_never_uploaded(hub, hub_env, model_dir, tmp_path):
    leaky = tmp_path / "leaky"
    shutil.copytree(model_dir, leaky)
    (leaky / "notes.txt").write_text(f"token={TOKEN}\n")
    with pytest.raises(ValueError, match="notes.txt.*contains your Hugging Face token"):
        push_model(leaky, "me/gte-leak")
    assert "me/gte-leak" not in hub.repos


def test_latest_checkpoint_is_the_highest_step_and_repo_specs_split():
    assert latest_checkpoint_name(["checkpoint-9", "checkpoint-10", "runs", "checkpoint-2"]) == "checkpoint-10"
    assert latest_checkpoint_name(["runs"]) is None
    assert split_repo_revision("me/gte@v2") == ("me/gte", "v2") and split_repo_revision("me/gte") == ("me/gte", None)
    with pytest.raises(ValueError, match="REPO_ID@REVISION"):
        split_repo_revision("me/gte@")


def test_private_repo_needs_the_token_to_pull(hub, hub_env, model_dir, monkeypatch):
    from huggingface_hub.errors import RepositoryNotFoundError

    push_model(model_dir, "me/gte-private", private=True)
    assert hub.repos["me/gte-private"].private
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(RepositoryNotFoundError):
        pull_model("me/gte-private")
    assert (pull_model("me/gte-private", token=TOKEN) / "model.safetensors").is_file()


def _trainer(model_dir: Path, output_dir: Path, max_steps: int):
    from conftest import stsb_rows
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.losses import MultipleNegativesRankingLoss

    rows = [(a, b) for score, a, b in stsb_rows("train") if score >= 4.0][:64]
    dataset = Dataset.from_dict({"anchor": [a for a, _ in rows], "positive": [b for _, b in rows]})
    model = SentenceTransformer(str(model_dir), device="cpu")
    args = SentenceTransformerTrainingArguments(
        output_dir=str(output_dir),
        max_steps=max_steps,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        save_steps=2,
        save_strategy="steps",
        logging_steps=100,
        report_to=[],
        seed=7,
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    loss = MultipleNegativesRankingLoss(model)
    return SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset, loss=loss)


def test_checkpoint_push_and_resume_from_hub_match_a_local_resume(hub, hub_env, model_dir, tmp_path, monkeypatch):
    first = _trainer(model_dir, tmp_path / "run", max_steps=4)
    first.train()
    for step in (2, 4):  # what `gte-st train --hub-checkpoints` does after each save
        push_checkpoint(tmp_path / "run" / f"checkpoint-{step}", "me/gte-train")
    commits = hub.repos["me/gte-train"].commits
    assert commits[hub.head("me/gte-train", "checkpoints")].message == "Training checkpoint checkpoint-4"
    assert hub.head("me/gte-train", "checkpoints") != hub.head("me/gte-train")  # on their own branch
    assert {p.split("/")[0] for p in hub.files("me/gte-train", "checkpoints") if "/" in p} == {
        "checkpoint-2",
        "checkpoint-4",
    }

    pulled = pull_latest_checkpoint("me/gte-train", local_dir=tmp_path / "pulled")
    assert pulled == tmp_path / "pulled" / "checkpoint-4"
    assert _digests(pulled) == _digests(tmp_path / "run" / "checkpoint-4")
    with monkeypatch.context() as offline:  # offline, the checkpoint already pulled is found again
        offline.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        assert pull_latest_checkpoint("me/gte-train", local_dir=tmp_path / "pulled") == pulled

    local = _trainer(model_dir, tmp_path / "local-resume", max_steps=6)
    local.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-4"))
    remote = _trainer(model_dir, tmp_path / "hub-resume", max_steps=6)
    remote.train(resume_from_checkpoint=str(pulled))
    assert local.state.global_step == remote.state.global_step == 6
    local_weights, remote_weights = local.model.state_dict(), remote.model.state_dict()
    assert local_weights.keys() == remote_weights.keys()
    assert all(torch.equal(local_weights[k], remote_weights[k]) for k in local_weights)
    initial = SentenceTransformer(str(model_dir), device="cpu").state_dict()
    assert not all(torch.equal(initial[k], local_weights[k]) for k in initial)  # training did move the weights


def test_only_portable_safetensors_models_are_published(model_dir, tmp_path):
    custom = tmp_path / "custom"
    shutil.copytree(model_dir, custom)
    modules = json.loads((custom / "modules.json").read_text())
    modules[1]["type"] = "gte_st.pooling.GTEMeanPooling"
    (custom / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ValueError, match=r"non-stock modules \['gte_st.pooling.GTEMeanPooling'\]"):
        model_files(custom)
    pickles = tmp_path / "pickles"
    shutil.copytree(model_dir, pickles)
    (pickles / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="no safetensors weights"):
        model_files(pickles)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        model_files(tmp_path / "missing")


def test_exported_onnx_model_round_trips_and_runs(hub, hub_env, model_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    export = pytest.importorskip("gte_st.export")
    exported = tmp_path / "exported"
    shutil.copytree(model_dir, exported, ignore=shutil.ignore_patterns("onnx"))
    assert export.export(exported, "onnx", optimize=False).variants[0].written
    push_model(exported, "me/gte-onnx")
    path = pull_model("me/gte-onnx")
    assert (path / "onnx" / "model.onnx").read_bytes() == (exported / "onnx" / "model.onnx").read_bytes()
    assert 'model_file="onnx/model.onnx"' in (path / "README.md").read_text()  # the FastEmbed snippet
    onnx = export.load_onnx_model(path).encode(SENTENCES, convert_to_tensor=True)  # runs on ONNX Runtime
    assert torch.allclose(onnx.cpu().float(), _encode(exported), atol=1e-4)


def test_gte_st_train_publishes_model_and_checkpoints_and_resumes_from_hub(hub, hub_env, tiny_bert_dir, tmp_path):
    """End to end through the training job: --push_to_hub + --hub_checkpoints, then --resume_from_hub."""
    from conftest import stsb_rows

    from gte_st.commands.train import main as train_main

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"anchor": a, "positive": b}) + "\n" for _, a, b in stsb_rows("train")[:96]))
    sts = tmp_path / "sts.jsonl"
    sts.write_text(
        "".join(json.dumps({"sentence1": a, "sentence2": b, "score": s}) + "\n" for s, a, b in stsb_rows("dev")[:100])
    )
    args = ["--base_model", str(tiny_bert_dir), "--data", str(data), "--precision", "fp32", "--seed", "5",
            "--per_device_train_batch_size", "8", "--save_steps", "2", "--learning_rate", "1e-3"]  # fmt: skip
    first = [*args, "--max_steps", "4", "--eval_sts", str(sts), "--output_dir", str(tmp_path / "first")]
    assert train_main([*first, "--push_to_hub", "me/gte-e2e", "--hub_checkpoints"]) == 0

    summary = json.loads((tmp_path / "first" / "training_summary.json").read_text())
    remote = hub.files("me/gte-e2e")
    assert remote["model.safetensors"] == (tmp_path / "first" / "model.safetensors").read_bytes()
    card = ModelCard(remote["README.md"].decode())
    _, results = model_index_to_eval_results(card.data.to_dict()["model-index"])
    assert {r.metric_type: r.metric_value for r in results} == summary["eval"]["after"][0]["metrics"]
    checkpoints = {p.split("/")[0] for p in hub.files("me/gte-e2e", "checkpoints") if "/" in p}
    assert checkpoints == {"checkpoint-2", "checkpoint-4"}

    requests = len(hub.requests)
    resumed = [*args, "--max_steps", "6", "--output_dir", str(tmp_path / "resumed")]
    assert train_main([*resumed, "--resume_from_hub", "me/gte-e2e@checkpoints"]) == 0
    fetched = {path for method, path in hub.requests[requests:] if method == "GET" and "/resolve/" in path}
    assert any(path.endswith("checkpoint-4/optimizer.pt") for path in fetched)
    assert not any("checkpoint-2/" in path for path in fetched)
    assert json.loads((tmp_path / "resumed" / "training_summary.json").read_text())["stages"][0]["steps"] == 6
