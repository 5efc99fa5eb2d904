"""`make bench`: the quick benchmarks, one after another; each writes its report to docs/results/."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
QUICK = [
    ["synth_speed.py", "--ids", "20"],
    ["ot_speed.py"],
    ["eval_speed.py", "--quick", "--threads", "1"],
    ["protocol_speed.py", "--threads", "1"],
    ["rerank_speed.py", "--threads", "1"],
    ["pipeline_speed.py"],
    ["train_speed.py", "--iters", "2"],
]


def main() -> int:
    failed = []
    for cmd in QUICK:
        script = HERE / cmd[0]
        if not script.is_file():
            continue
        print(f"=== {' '.join(cmd)}", flush=True)
        t0 = time.time()
        rc = subprocess.call([sys.executable, str(script), *cmd[1:]], cwd=HERE.parent)
        print(f"=== {cmd[0]}: exit {rc} after {time.time() - t0:.0f} s", flush=True)
        if rc:
            failed.append(cmd[0])
    print("reports in docs/results/" + (f"; FAILED: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
