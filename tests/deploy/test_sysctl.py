"""The kernel setting shipped for NATS machines, and the cluster benchmark applying it for
its run only (restoring the machine's own), on a stand-in for /proc/sys."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).parents[2]
SYSCTL = ROOT / "deploy" / "sysctl" / "90-qlevents-nats.conf"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        return importlib.import_module("cluster_bench")
    finally:
        sys.path.remove(str(ROOT / "bench"))


def _proc(tmp_path: Path, ratio: str, size: str) -> Path:
    (tmp_path / "vm").mkdir()
    (tmp_path / "vm" / "dirty_background_ratio").write_text(f"{ratio}\n")
    (tmp_path / "vm" / "dirty_background_bytes").write_text(f"{size}\n")
    return tmp_path


def test_nats_machines_write_dirty_pages_back_early(bench: ModuleType) -> None:
    """One setting: background writeback from a few tens of MiB, not from 10% of memory."""
    settings = bench.sysctl_settings(SYSCTL)
    assert list(settings) == ["vm.dirty_background_bytes"]
    assert 4 << 20 <= int(settings["vm.dirty_background_bytes"]) <= 256 << 20


@pytest.mark.parametrize(("ratio", "size"), [("10", "0"), ("0", "67108864")])
def test_the_benchmark_applies_it_for_its_run_and_restores_the_machines_own(
    bench: ModuleType, tmp_path: Path, ratio: str, size: str
) -> None:
    """Applied during the run (and named in the report); afterwards the machine has its own
    setting back, whether it was a ratio or a size."""
    proc = _proc(tmp_path, ratio, size)
    wanted = bench.sysctl_settings(SYSCTL)["vm.dirty_background_bytes"]
    with bench.host_writeback(True, proc) as described:
        assert (proc / "vm" / "dirty_background_bytes").read_text() == wanted
        assert wanted in described and SYSCTL.name in described
    if size == "0":  # the kernel zeroes the size when the ratio is written; a file does not
        assert (proc / "vm" / "dirty_background_ratio").read_text() == ratio
    else:
        assert (proc / "vm" / "dirty_background_bytes").read_text() == size


def test_asked_not_to_it_measures_the_machine_as_it_is(bench: ModuleType, tmp_path: Path) -> None:
    proc = _proc(tmp_path, "10", "0")
    with bench.host_writeback(False, proc) as described:
        assert (proc / "vm" / "dirty_background_bytes").read_text() == "0\n"
        assert "ratio=10" in described
