"""Participant level on several images in one process loads each model's weights once,
VINN's included (``--segment always`` makes it segment every image)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bids_qc.demo import SUBJECTS, build_dataset
from bids_qc.models.registry import installed_models
from bids_qc.schema import COLUMNS

# A fresh process, so that no earlier test has filled the models' caches.
_CHILD = """
import json, sys
from bids_qc.cli import run
from bids_qc.models.registry import weights_loads
code = run(sys.argv[1:])
print(json.dumps({"code": code, "loads": weights_loads()}))
"""


def test_linear_run_loads_each_model_once(tmp_path):
    bids, _ = build_dataset(tmp_path, SUBJECTS[:2], seed=7, zoom=2.0)
    out = tmp_path / "out"
    config = tmp_path / "linear.yml"
    config.write_text("plugin: Linear\nplugin_args: {}\n")
    models = [m.name for m in installed_models()]
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(bids), str(out), "participant", "-q",
         "--plugin-config", str(config), "-w", str(tmp_path / "work"), "--segment", "always",
         "--models", *models],
        capture_output=True, text=True, cwd=Path(__file__).parents[1], timeout=600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert lines, proc.stderr[-3000:]
    info = json.loads(lines[-1])
    assert info["code"] == 0, proc.stderr[-3000:]
    results = [json.loads(p.read_text()) for p in sorted(out.glob("sub-*/anat/*_T1w.json"))]
    assert len(results) == 2
    # The models that computed a value for the images (schema: each column's producer).
    producer = {c.name: c.producer for c in COLUMNS}
    ran = {name for name in models
           if all(any(v is not None and producer.get(k) == name
                      for k, v in res["metrics"].items()) for res in results)}
    assert "segqc" in ran  # the shipped model runs on the demo images
    # VINN has no columns: it ran when it segmented every image (a file per image)
    if "vinn" in models:
        assert all("cpu_seconds" in res["provenance"]["stages"]["vinn"] for res in results)
        assert len(list(out.rglob("*_desc-vinn_dseg.nii.gz"))) == 2
        ran.add("vinn")
    assert {name: info["loads"].get(name, 0) for name in ran} == {name: 1 for name in ran}
