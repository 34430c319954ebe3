"""lifelong bench --scaleout --quick against the real parts: its own broker, a learner and two predictors as
processes, load, then forged snapshot records, kill -9 of a predictor and of the learner, a broker restart."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from harness import require

from lifelong.bench.scaleout import ScaleoutOptions, run_scaleout
from lifelong.bench.scaleout_faults import FAULTS
from lifelong.bench.streams import data_dir

needs_data = pytest.mark.skipif(not (data_dir() / "tabular" / "elec2_skmf.csv").exists(),
                                reason=f"benchmark data not found at {data_dir()} (set LIFELONG_DATA_DIR)")

pytestmark = [pytest.mark.integration, needs_data]

WINDOW_KEYS = {"n", "requests", "req_per_s", "req_per_cpu_s", "p50_ms", "p99_ms", "version_regressions",
               "errors_5xx", "unavailable"}


def test_scaleout_quick_serves_no_forged_snapshot_and_never_goes_back(tmp_path: Path) -> None:
    require("java")
    doc = run_scaleout(ScaleoutOptions(out=tmp_path / "out", quick=True, workdir=tmp_path / "work"))
    assert doc["errors"] == {}, doc["errors"]
    saved = json.loads((tmp_path / "out" / "scaleout.json").read_text())
    assert saved["serving"] == json.loads(json.dumps(doc["serving"]))
    assert "# Scale-out bench (quick run)" in (tmp_path / "out" / "scaleout.md").read_text()

    s = doc["serving"]
    assert [w["n"] for w in s["predictors"]] == [1, 2]
    for w in s["predictors"]:
        assert WINDOW_KEYS <= set(w) and w["requests"] > 0 and w["req_per_cpu_s"] > 0
        assert 0 < w["p50_ms"] <= w["p99_ms"]
        assert w["version_regressions"] == 0 and w["errors_5xx"] == 0 and w["unavailable"] == 0
    assert s["n1_with_n2_clients"]["n"] == 1 and s["n1_with_n2_clients"]["clients"] == s["predictors"][1]["clients"]
    assert s["publish_to_swap_samples"] > 0 and s["staleness_samples"] > 0 and s["ready_within_s"] > 0

    f = s["faults"]
    assert set(f["scenarios"]) == set(FAULTS)
    assert f["corrupt_snapshots_served"] == 0 and s["version_regressions_all"] == 0 and s["errors_5xx_all"] == 0
    assert f["requests"] > 0 and f["rejects_total"] > 0 and f["advanced_after_garbage"] is True
    kill = f["scenarios"]["learner_kill"]
    assert kill["resumed_from_checkpoint"] is True and kill["generation_after"] > kill["generation_before"]
    assert f["scenarios"]["predictor_kill"]["ready_s"] > 0
    assert f["scenarios"]["broker_restart"]["advanced_after"] == {"0": True, "1": True}
    hard = ("version_regressions", "corrupt_snapshots_served", "errors_5xx", "rejects", "advanced_after_garbage",
            "learner_resumed")
    assert all(doc["targets"][k]["met"] for k in hard), doc["targets"]
