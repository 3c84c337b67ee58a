"""One participant-level job for ``bench_throughput.py`` (not a benchmark by itself).

Runs ``bids_qc`` with the given arguments and prints a JSON line: the wall time from
interpreter start, this process's peak RSS and its model-weight loads. Every process that
loads weights, MultiProc's workers included, also appends ``<pid> <model>`` to the file
named by ``BIDS_QC_BENCH_LOAD_LOG``: the wrapper below is installed at import of this
module, and MultiProc's forkserver imports the main module into every worker it starts.
"""

from __future__ import annotations

import json
import os
import sys
import time

T0 = time.perf_counter()

from bids_qc.models import registry  # noqa: E402

_load = registry.load_state_dict


def _logged_load(spec, path=None):  # noqa: ANN001, ANN202 - same signature as wrapped
    state = _load(spec, path)
    log = os.environ.get("BIDS_QC_BENCH_LOAD_LOG")
    if log:
        with open(log, "a") as fh:
            fh.write(f"{os.getpid()} {spec.name}\n")
    return state


registry.load_state_dict = _logged_load

if __name__ == "__main__":
    from bids_qc.cli import run

    code = run(sys.argv[1:])
    with open("/proc/self/status") as fh:
        hwm = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM"))
    print(json.dumps({"code": code, "wall_s": time.perf_counter() - T0, "rss_mb": hwm / 1024,
                      "loads_main": registry.weights_loads(), "pid": os.getpid()}))
