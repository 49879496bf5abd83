"""Run every benchmark in sequence and collect their Markdown tables.

``python benchmarks/run_all.py --quick`` is the bounded run (subsamples, fewer repeats; see each script's
``--quick``). Without ``--quick`` the full run embeds all 4,700 IDC patches three times (pretrained RGB and
gray, random init) and fine-tunes end to end on 600 patches: expect 1.5-2 hours on 2 idle CPU cores and
several times that on a loaded machine. Scripts run one after another (never in parallel: they would time each other),
as separate processes so one's allocator and thread state does not leak into the next one's timings.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import _common as C

# bench_ablations fills the embedding cache that bench_head_speed's Optuna study reads.
FULL_ONLY = {"proxy_ranking"}
SCRIPTS = ["extraction", "precision", "naive", "ablations", "head_speed", "proxy_ranking", "dfl_vs_e2e"]


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--only", nargs="*", choices=SCRIPTS, default=None)
    p.add_argument("--out-dir", type=Path, default=C.RESULTS)
    args = p.parse_args()
    suffix = "_quick" if args.quick else ""
    summary_path = args.out_dir / f"run_all{'_quick' if args.quick else ''}.json"
    summary = {"command": C.command_line(), "machine": C.machine_info(C.device_of(args)), "scripts": {}}
    if args.only and summary_path.is_file():
        # Re-running some scripts updates their entries and keeps the others' in the summary.
        previous = json.loads(summary_path.read_text())
        summary["scripts"] = previous.get("scripts", {})
        summary["earlier_commands"] = previous.get("earlier_commands", []) + [previous.get("command")]
    t0 = time.perf_counter()
    # The proxy ranking embeds with five backbones; it is left out of the bounded run.
    default = [s for s in SCRIPTS if not (args.quick and s in FULL_ONLY)]
    for name in args.only or default:
        out = args.out_dir / f"{name}{suffix}.json"
        cmd = [sys.executable, str(C.HERE / f"bench_{name}.py"), "--out", str(out), "--device", args.device]
        if args.quick:
            cmd.append("--quick")
        if args.data_dir is not None:
            cmd += ["--data-dir", str(args.data_dir)]
        print(f"\n## {name}: {' '.join(cmd[1:])}", flush=True)
        t = time.perf_counter()
        rc = subprocess.run(cmd).returncode
        summary["scripts"][name] = {"returncode": rc, "seconds": round(time.perf_counter() - t, 1),
                                    "date": C.machine_info()["date"],
                                    "json": str(out.relative_to(C.HERE.parent)) if out.is_relative_to(C.HERE.parent)
                                    else str(out)}
        if rc != 0:
            print(f"!! {name} failed with exit code {rc}", flush=True)
    summary["this_invocation_seconds"] = round(time.perf_counter() - t0, 1)
    summary["total_seconds"] = round(sum(v["seconds"] for v in summary["scripts"].values()), 1)
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    print("\n## Summary\n")
    print(C.md_table([{"script": k, **v} for k, v in summary["scripts"].items()],
                     [("script", "script", ""), ("seconds", "wall s", ".0f"), ("returncode", "exit", "d")]))
    print(f"\ntotal {summary['total_seconds']:.0f} s (sum of the scripts' wall times); {C.machine_line(summary['machine'])}")
    sys.exit(max((v["returncode"] for v in summary["scripts"].values()), default=0))


if __name__ == "__main__":
    main()
