"""The CPU a process runs on, as far as speed depends on it: its model, the instruction sets that decide the kernels,
and an instruction-set limit set through the environment.

Which encode path is fastest differs between CPUs (bf16 weight copies lead on AMX CPUs, an int8 OpenVINO IR on
CPUs with AVX-512 VNNI but no AMX; docs/benchmarks.md), so the decisions :mod:`gte_st.calibration` measures are keyed
by :func:`cpu_key`. ``ONEDNN_MAX_CPU_ISA`` limits oneDNN (torch's and OpenVINO's CPU kernels) to a lower instruction
set, which stands for an older CPU on the one at hand: :func:`cpu_supports_bf16` honours it, and it is part of the
key. :func:`run_record` is the block of facts every benchmark script writes beside its figures.

Example::

    from gte_st.hardware import cpu_details, cpu_supports_bf16

    cpu_details()["isa_flags"]   # e.g. ['avx512f', 'avx512_vnni', 'avx512_bf16']
    cpu_supports_bf16()          # False under ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI
"""

from __future__ import annotations

import functools
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# The CPUID flags that decide which kernels torch / OpenVINO / ONNX Runtime run (Linux /proc/cpuinfo names).
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")
# oneDNN's ONEDNN_MAX_CPU_ISA values below which bf16 matrix products are not native (no AVX512-BF16, no AMX).
NO_BF16_ISAS = frozenset(
    {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}
)  # fmt: skip
# The environment variables that limit the instruction sets of the math libraries (oneDNN, MKL).
ISA_LIMIT_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")
# The distributions whose versions every benchmark records (run_record); a script names the others it uses.
RECORDED_PACKAGES = ("torch", "sentence-transformers", "transformers", "gte-st")


def isa_limit() -> str | None:
    """oneDNN's instruction-set limit from the environment (``ONEDNN_MAX_CPU_ISA``, or its old name
    ``DNNL_MAX_CPU_ISA``), upper-cased; ``None`` when unset."""
    value = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    return value.strip().upper() if value and value.strip() else None


def isa_limit_allows_bf16() -> bool:
    """Whether the instruction-set limit (if any) leaves native bf16 matrix products to oneDNN."""
    return isa_limit() not in NO_BF16_ISAS


@functools.lru_cache(maxsize=1)
def _cpuid_bf16() -> bool:
    import torch

    cpu = getattr(torch, "cpu", None)
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        fn = getattr(cpu, probe, None)
        if fn is not None and fn():
            return True
    return False


def cpu_supports_bf16() -> bool:
    """Whether this CPU executes bf16 matrix products natively (AMX tiles or AVX512-BF16), within the
    instruction-set limit of the environment (:func:`isa_limit`)."""
    return isa_limit_allows_bf16() and _cpuid_bf16()


@functools.lru_cache(maxsize=1)
def cpu_details() -> dict[str, Any]:
    """The CPU as the OS names it: model name, family / model / stepping, the cache sizes of cpu0 and the ISA flags
    of :data:`ISA_FLAGS` it has. Empty fields where ``/proc`` or ``/sys`` is not readable (non-Linux)."""
    fields: dict[str, str] = {}
    try:
        block = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
        fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in block.splitlines())}
    except OSError:
        pass
    caches = {}
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level, kind, size = ((index / name).read_text().strip() for name in ("level", "type", "size"))
        except OSError:
            continue
        caches[f"L{level}" + {"Data": "d", "Instruction": "i"}.get(kind, "")] = size
    flags = set(fields.get("flags", "").split())
    return {
        "model_name": fields.get("model name") or platform.processor() or platform.machine(),
        "family_model_stepping": "/".join(fields.get(k, "?") for k in ("cpu family", "model", "stepping")),
        "caches": caches,
        "isa_flags": [flag for flag in ISA_FLAGS if flag in flags],
    }


def cpu_key() -> dict[str, Any]:
    """What a measured speed decision depends on besides the model and the libraries: the CPU (model name, family /
    model / stepping, ISA flags), the instruction-set limits of the environment, the machine's cores and torch's
    intra-op threads."""
    import torch

    details = cpu_details()
    return {
        "machine": platform.machine(),
        "cpu": details["model_name"],
        "family_model_stepping": details["family_model_stepping"],
        "isa_flags": details["isa_flags"],
        "isa_limits": {name: os.environ[name] for name in ISA_LIMIT_VARIABLES if os.environ.get(name)},
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }


def describe_cpu() -> str:
    """One line for logs: the CPU model, its ISA flags and the limit in force, e.g.
    ``AMD EPYC (avx512f avx512_vnni avx512_bf16)``."""
    details = cpu_details()
    limit = isa_limit()
    return f"{details['model_name']} ({' '.join(details['isa_flags']) or 'no AVX-512'}" + (
        f"; ONEDNN_MAX_CPU_ISA={limit})" if limit else ")"
    )


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages of the machine, rounded to two decimals."""
    return [round(x, 2) for x in os.getloadavg()]


def package_version(name: str) -> str | None:
    """The installed version of distribution ``name`` (e.g. ``"faiss-cpu"``); ``None`` when it is not installed."""
    import importlib.metadata  # ~30 ms (email parsing): not at import time

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def run_record(extra_packages: Sequence[str] = ()) -> dict[str, Any]:
    """The facts a benchmark's figures depend on besides its own settings, for the header of its results JSON.

    Every benchmark reports when and how it ran and on what: the date (UTC), the command line, the load average at
    the start (a busy machine explains a slow figure), the machine and its cores, the CPU (:func:`cpu_details`: model,
    caches, ISA flags), the instruction-set limit of the environment (:func:`isa_limit`), torch's intra-op threads and
    the versions of torch, sentence-transformers, transformers and gte-st plus ``extra_packages`` (distribution names;
    one that is not installed is ``None``). One function, so every script writes the same keys, and the record is
    plain JSON (no NaN). torch is imported here, not at import time, so scripts answer ``--help`` without it.

    Example::

        from gte_st.hardware import load_average, run_record

        report = {**run_record(["faiss-cpu"]), "settings": vars(args)}
        ...  # measure
        report["loadavg_at_end"] = load_average()
    """
    import torch

    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": " ".join(["python", *sys.argv]),
        "loadavg_at_start": load_average(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "cpu": cpu_details(),
        "isa_limit": isa_limit(),
        "torch_threads": torch.get_num_threads(),
        "versions": {name: package_version(name) for name in dict.fromkeys([*RECORDED_PACKAGES, *extra_packages])},
    }


__all__ = [
    "ISA_FLAGS",
    "RECORDED_PACKAGES",
    "cpu_details",
    "cpu_key",
    "cpu_supports_bf16",
    "describe_cpu",
    "isa_limit",
    "isa_limit_allows_bf16",
    "load_average",
    "package_version",
    "run_record",
]
