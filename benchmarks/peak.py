"""Peak memory of a fresh `python jobs/embed.py` process tree for each `spark.driver.memory`.

    python benchmarks/peak.py [--root bench-output/related/graph] [--driver-memory 2g 4g 8g]
        [--repeat 1] [--out DIR]

ROOT is a graph and checkpoint as benchmarks/embed.py and benchmarks/related.py write them
(ROOT/input/{pins,edges,board_neighbors,pin_neighbors}, ROOT/model.pt; `make bench-related` leaves
the 1M-pin one of the small model in bench-output/related/graph). Each run embeds the graph with
the flags benchmarks/embed.py uses, plus `--conf spark.driver.memory=M`, into DIR/out-M, while its
process tree is sampled every 0.2 s: the largest total RSS of the tree, of the JVM and of the
Python processes (driver and workers), the largest total PSS (pages shared between forked Python
workers counted once) and the most processes alive at once. Prints one JSON line per run; all go
to DIR/peak.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time

import psutil

from benchmarks.embed import job_flags


def sample(proc: subprocess.Popen) -> dict:
    """Largest totals over `proc`'s process tree until it exits, sampled every 0.2 s."""
    top = psutil.Process(proc.pid)
    peak = {"tree": 0, "jvm": 0, "python": 0, "tree_pss": 0, "processes": 0}
    while proc.poll() is None:
        now = dict.fromkeys(peak, 0)
        try:
            tree = [top, *top.children(recursive=True)]
        except psutil.Error:  # the process ended
            tree = []
        for p in tree:
            try:
                mem = p.memory_full_info()
                java = "java" in p.name()
            except psutil.Error:
                continue
            now["tree"] += mem.rss
            now["tree_pss"] += mem.pss
            now["jvm" if java else "python"] += mem.rss
            now["processes"] += 1
        peak = {k: max(v, now[k]) for k, v in peak.items()}
        time.sleep(0.2)
    return peak


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default="bench-output/related/graph")
    p.add_argument("--driver-memory", nargs="+", default=["2g", "4g", "8g"])
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--out", default="bench-output/peak")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    rows = []
    for memory in [m for m in a.driver_memory for _ in range(a.repeat)]:
        out = f"{a.out}/out-{memory}"
        shutil.rmtree(out, ignore_errors=True)
        flags = job_flags(a.root, "512", "float32").replace(f"--out {a.root}/out", f"--out {out}")
        cmd = [
            sys.executable,
            "jobs/embed.py",
            *shlex.split(flags),
            "--conf",
            f"spark.driver.memory={memory}",
        ]
        clock = time.monotonic()
        with open(f"{a.out}/{memory}.log", "w") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
            peak = sample(proc)
        row = {
            "driver_memory": memory,
            "exit": proc.returncode,
            "seconds": round(time.monotonic() - clock, 1),
            **{f"{k}_gib": round(v / 2**30, 2) for k, v in peak.items() if k != "processes"},
            "processes": peak["processes"],
            "load": round(os.getloadavg()[0], 1),
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    with open(f"{a.out}/peak.json", "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
