"""gte_st.hardware's run record: the block every benchmark script writes beside its figures."""

from __future__ import annotations

import json
import sys
import time

import torch

from gte_st.hardware import RECORDED_PACKAGES, cpu_details, run_record


def test_run_record_has_every_fact_and_is_strict_json(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["scripts/bench_x.py", "--output", "out.json"])
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx512_core_vnni")
    record = run_record(["numpy", "no-such-distribution-gte-st-test"])

    assert set(record) == {
        "date", "command", "loadavg_at_start", "machine", "cpu", "isa_limit", "torch_threads", "versions"
    }  # fmt: skip
    time.strptime(record["date"], "%Y-%m-%d %H:%M UTC")
    assert record["command"] == "python scripts/bench_x.py --output out.json"
    assert len(record["loadavg_at_start"]) == 3
    assert all(isinstance(x, float) and round(x, 2) == x for x in record["loadavg_at_start"])
    assert record["machine"].endswith(" cores")
    assert record["cpu"] == cpu_details() and "isa_flags" in record["cpu"]
    assert record["isa_limit"] == "AVX512_CORE_VNNI"
    assert record["torch_threads"] == torch.get_num_threads()

    versions = record["versions"]
    assert list(versions) == [*RECORDED_PACKAGES, "numpy", "no-such-distribution-gte-st-test"]
    assert all(isinstance(versions[name], str) and versions[name] for name in [*RECORDED_PACKAGES, "numpy"])
    assert versions["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert versions["no-such-distribution-gte-st-test"] is None

    assert json.loads(json.dumps(record, allow_nan=False)) == record


def test_run_record_lists_a_package_once_and_reads_no_isa_limit_when_unset(monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    record = run_record(["torch", "numpy", "numpy"])
    assert list(record["versions"]) == [*RECORDED_PACKAGES, "numpy"]
    assert record["isa_limit"] is None
