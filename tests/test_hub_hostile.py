"""A hostile (or tampered-with) Hub: listings that point outside the download folder, wrong sizes, bodies that end
early. Whatever the Hub sends, ``pull`` / ``gte_st.load`` / ``--resume_from_hub`` end with one line naming the path
and touch nothing outside their own download folder (tests/hub_server.py's fault injection, real huggingface_hub)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from conftest import HUB_TOKEN

from gte_st import build_model
from gte_st.cli import main as cli_main
from gte_st.files import UnsafePathError
from gte_st.hub import CorruptDownloadError, pull_model, push_model


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread(one_torch_thread):
    """Tiny models on a busy shared CPU: this module runs on one torch thread (see conftest)."""


@pytest.fixture(scope="module")
def model_dir(tiny_bert_dir, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("gte-hostile")
    build_model(str(tiny_bert_dir), max_seq_length=32).save(str(path))
    return path


def _tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` with its sha256 (what must not change)."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _error_line(stderr: str, command: str) -> str:
    """The one error line of a failed command, asserting there is no traceback. Progress bars may precede it on the
    same terminal line (tqdm leaves an unfinished bar without a newline), so the line is taken from its prefix on."""
    assert "Traceback" not in stderr, stderr
    prefix = f"gte-st {command}: error: "
    assert stderr.count(prefix) == 1, stderr
    return prefix + stderr.split(prefix, 1)[1].splitlines()[0]


def _add_after_first(entry: dict):
    """A listing that is honest the first time (``snapshot_download``'s own, whose path checks refuse ``..``) and adds
    ``entry`` from the second listing on (the one gte-st fetches to verify the download)."""

    def tamper(call: int, entries: list[dict]) -> list[dict]:
        return entries if call == 1 else [*entries, entry]

    return tamper


def _tamper(hub, fn) -> None:
    """Install ``fn`` as the Hub's listing tamperer, counting listings from the next request."""
    hub.tree_calls = 0
    hub.tamper_tree = fn


HOSTILE_ENTRIES = {
    "traversal-local-dir": {"type": "file", "path": "../victim.txt", "size": 1, "oid": "0" * 40},
    "traversal-cache": {"type": "file", "path": "../../../../victim.txt", "size": 1, "oid": "0" * 40},
    "absolute": {"type": "file", "path": "/VICTIM", "size": 1, "oid": "0" * 40},
}


@pytest.mark.parametrize("case", sorted(HOSTILE_ENTRIES))
@pytest.mark.parametrize("into", ["local-dir", "cache"])
def test_a_listed_path_outside_the_download_is_refused_before_anything_is_read_or_removed(
    hub, hub_env, model_dir, tmp_path, case, into, capsys
):
    repo = f"me/hostile-{case}-{into}"
    push_model(model_dir, repo)
    victim = tmp_path / "victim.txt"
    victim.write_text("my notes\n")
    entry = dict(HOSTILE_ENTRIES[case])
    if case == "absolute":
        entry["path"] = str(victim)
    _tamper(hub, _add_after_first(entry))
    before = _tree(tmp_path)
    try:
        argv = ["pull", repo] + (["--local-dir", str(tmp_path / "pulled")] if into == "local-dir" else [])
        assert cli_main(argv) == 1
    finally:
        hub.tamper_tree = None
    assert entry["path"] in _error_line(capsys.readouterr().err, "pull")
    assert victim.read_text() == "my notes\n"
    after = _tree(tmp_path)
    # nothing outside the download (the local dir or the Hugging Face cache) changed
    outside = {k: v for k, v in after.items() if not k.startswith(("pulled/", "hf-cache/"))}
    assert outside == {k: v for k, v in before.items() if not k.startswith(("pulled/", "hf-cache/"))}


def test_the_library_raises_unsafe_path_error(hub, hub_env, model_dir, tmp_path):
    push_model(model_dir, "me/hostile-lib")
    (tmp_path / "victim.txt").write_text("keep")
    _tamper(hub, _add_after_first(HOSTILE_ENTRIES["traversal-local-dir"]))
    try:
        with pytest.raises(UnsafePathError, match=r"\.\./victim\.txt"):
            pull_model("me/hostile-lib", local_dir=tmp_path / "pulled")
    finally:
        hub.tamper_tree = None
    assert (tmp_path / "victim.txt").read_text() == "keep"


def test_wrong_sizes_in_the_listing_are_a_corrupt_download_not_a_crash(hub, hub_env, model_dir, tmp_path):
    push_model(model_dir, "me/hostile-size")

    def wrong_sizes(call: int, entries: list[dict]) -> list[dict]:
        if call == 1:
            return entries
        return [{**e, "size": e["size"] + 1} if e.get("path") == "config.json" else e for e in entries]

    _tamper(hub, wrong_sizes)
    try:
        with pytest.raises(CorruptDownloadError, match="config.json .* is corrupted"):
            pull_model("me/hostile-size", local_dir=tmp_path / "pulled")
    finally:
        hub.tamper_tree = None
    path = pull_model("me/hostile-size", local_dir=tmp_path / "pulled")  # an honest Hub again: the pull completes
    assert (path / "config.json").read_bytes() == (model_dir / "config.json").read_bytes()


def test_a_body_that_ends_early_is_an_error_and_the_next_pull_completes(hub, hub_env, model_dir, tmp_path, capsys):
    push_model(model_dir, "me/hostile-truncated")
    hub.truncate_paths = {"model.safetensors"}
    try:
        assert cli_main(["pull", "me/hostile-truncated", "--local-dir", str(tmp_path / "pulled")]) == 1
    finally:
        hub.truncate_paths = set()
    _error_line(capsys.readouterr().err, "pull")
    path = pull_model("me/hostile-truncated", local_dir=tmp_path / "pulled")
    assert (path / "model.safetensors").read_bytes() == (model_dir / "model.safetensors").read_bytes()


def test_load_of_an_original_layout_hub_model_refuses_a_hostile_listing(
    hub, hub_env, tiny_gte_original_dir, tmp_path, monkeypatch
):
    """``gte_st.load(<hub id>)`` downloads original-layout checkpoints itself (to convert them): same rule."""
    import gte_st
    from gte_st.hub import _api

    monkeypatch.setenv("GTE_ST_CACHE", str(tmp_path / "converted"))
    api = _api(HUB_TOKEN)
    api.create_repo("me/original", exist_ok=True)
    api.upload_folder(repo_id="me/original", folder_path=str(tiny_gte_original_dir))
    victim = tmp_path / "victim.json"
    victim.write_text("{}")
    cache_depth = len((tmp_path / "hf-cache" / "models--me--original" / "snapshots" / "x").relative_to(tmp_path).parts)
    entry = {"type": "file", "path": "../" * cache_depth + "victim.json", "size": 1, "oid": "0" * 40}
    # Listings: gte-st's own check of config.json (1), snapshot_download's of the checkpoint (2), gte-st's (3).
    _tamper(hub, lambda call, entries: [*entries, entry] if call == 3 else entries)
    try:
        with pytest.raises(UnsafePathError, match="victim.json"):
            gte_st.load("me/original")
    finally:
        hub.tamper_tree = None
    assert victim.read_text() == "{}"


def test_resume_from_hub_refuses_a_hostile_listing(hub, hub_env, tmp_path):
    from gte_st.hub import pull_latest_checkpoint, push_checkpoint

    checkpoint = tmp_path / "run" / "checkpoint-4"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text("{}")
    push_checkpoint(checkpoint, "me/hostile-resume")
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    entry = {"type": "file", "path": "checkpoint-4/../../victim.txt", "size": 1, "oid": "0" * 40}
    _tamper(hub, lambda call, entries: [*entries, entry] if call >= 3 else entries)
    try:
        with pytest.raises(UnsafePathError, match=r"checkpoint-4/\.\./\.\./victim\.txt"):
            pull_latest_checkpoint("me/hostile-resume", local_dir=tmp_path / "local")
    finally:
        hub.tamper_tree = None
    assert victim.read_text() == "keep"
