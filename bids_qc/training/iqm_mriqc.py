"""MRIQC's own IQM functions on bids_qc's inputs: do the formulas agree?

MRIQC cannot run offline (its workflow fetches templates from TemplateFlow and needs ANTs,
AFNI and FSL), but its formulas (``mriqc.qc.anatomical``) are plain numpy. In a separate,
benchmark-only virtual environment holding ``mriqc`` (installed without its dependencies)
and numpy, scipy and statsmodels, :data:`RUNNER` loads that module (its logging
``config`` stubbed) and applies its functions to the arrays bids_qc's IQMs were computed
from: the INU-corrected brain, the mixture's partial-volume maps, the air, the head and
the artefact masks. Any difference is then a difference of definition, not of masks,
bias field or segmentation; MRIQC's own masks and FAST segmentation are not reproduced.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np

#: Run by the MRIQC venv's python: ``python -c RUNNER <inputs.npz>``; prints a JSON.
RUNNER = r'''
import importlib.util, json, sys, types
import numpy as np
stub = types.ModuleType("mriqc"); stub.__path__ = []
config = types.ModuleType("mriqc.config")
config.loggers = types.SimpleNamespace(interface=types.SimpleNamespace(warning=print))
stub.config = config
sys.modules["mriqc"], sys.modules["mriqc.config"] = stub, config
import site, pathlib
path = next(pathlib.Path(p) / "mriqc" / "qc" / "anatomical.py" for p in site.getsitepackages()
            if (pathlib.Path(p) / "mriqc" / "qc" / "anatomical.py").is_file())
spec = importlib.util.spec_from_file_location("mriqc_anatomical", path)
aq = importlib.util.module_from_spec(spec); spec.loader.exec_module(aq)
d = np.load(sys.argv[1])
pvms = {"csf": d["csf"], "gm": d["gm"], "wm": d["wm"], "bg": d["bg"]}
st = aq.summary_stats(d["values"], pvms)
out = {f"summary_{k}_{s}": v for k, row in st.items() for s, v in row.items()}
for t in ("csf", "gm", "wm"):
    out[f"snr_{t}"] = aq.snr(st[t]["median"], st[t]["stdv"], st[t]["n"])
    out[f"snrd_{t}"] = aq.snr_dietrich(st[t]["median"], mad_air=st["bg"]["mad"],
                                       sigma_air=st["bg"]["stdv"])
out["cnr"] = aq.cnr(st["wm"]["median"], st["gm"]["median"], st["bg"]["stdv"],
                    st["wm"]["stdv"], st["gm"]["stdv"])
out["cjv"] = aq.cjv(st["wm"]["median"], st["gm"]["median"], st["wm"]["mad"], st["gm"]["mad"])
out["efc"] = aq.efc(d["fov"])
out["fber"] = aq.fber(d["fov"], d["head"])
out["wm2max"] = aq.wm2max(d["fov"], float(d["wm2max_mu"]))
out.update({f"icvs_{k}": v for k, v in aq.volume_fraction([d["csf"], d["gm"], d["wm"]]).items()})
out.update({f"rpve_{k}": v for k, v in aq.rpve([d["csf"].copy(), d["gm"].copy(),
                                               d["wm"].copy()], None).items()})
out["qi_1"] = aq.art_qi1(d["air_far"] & ~d["art"], d["art"])
print(json.dumps({k: float(v) for k, v in out.items()}))
'''

#: Why bids_qc's value differs from MRIQC's function on the same inputs, where it does.
WHY = {
    "snrd": "bids_qc divides by the air's SD (Dietrich 2007); MRIQC by its MAD where that "
            "exceeds 1 (unstable in quantised air)",
    "fber": "bids_qc uses the mean energies of MRIQC's documentation; MRIQC's code takes "
            "medians (0 in quantised air: -1)",
    "rpve": "bids_qc's rPVE is the tissue's share of partial-volume mass in mixed voxels; "
            "MRIQC's sums over every voxel of the map, zeros included",
    "summary": "MRIQC rounds intensities to integers and weights to 3 decimals first",
    "snr": "follows the summary statistics",
    "cnr": "the air's SD enters both; follows the summary statistics",
    "cjv": "follows the summary statistics (medians and MADs)",
}


def mriqc_values(python: Path, arrays: dict[str, np.ndarray]) -> dict[str, float]:
    """MRIQC's functions on ``arrays`` (:attr:`bids_qc.iqms.compute.IQMResult.arrays`),
    run by the benchmark venv's ``python``."""
    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(tmp) / "inputs.npz"
        np.savez(npz, **arrays)
        done = subprocess.run([str(python), "-c", RUNNER, str(npz)], capture_output=True,
                              text=True, timeout=600)
    if done.returncode:
        raise RuntimeError(f"MRIQC's functions failed in {python}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def why(name: str) -> str:
    """The reason a value differs (by the IQM's family)."""
    for key in ("snrd", "fber", "rpve", "summary", "snr", "cnr", "cjv"):
        if name.startswith(key):
            return WHY[key]
    return ""
