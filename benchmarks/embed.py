"""Benchmark the embedding chain against the hardware: Spark pipeline vs the in-process limit vs
per-target inference, with a roofline account of each phase.

    python benchmarks/embed.py [--pins 10000 100000 1000000] [--models small paper] [--out DIR]

It first measures the machine's fp32 GEMM rate (`gemm_gflops`), and again before and after each
row. On one generated graph and checkpoint per (size, model) (a graph already under DIR is reused)
it times four ways to embed every pin:

1. fresh: `python jobs/embed.py` in a process of its own, as a user runs it (Spark session, JVM and
   Python workers started for it), with Spark's event log on; its phases are accounted by
   `roofline`: FLOPs and achieved GFLOP/s against the GEMM rate, bytes to and from Python,
   shuffled (against the floor), broadcast and written;
2. warm: `jobs/embed.py`'s `run` in this process's session, --spark-runs times (default 2; 0 skips
   it): the last run is reported and the first recorded beside it;
3. limit: `PinSage.forward`'s math over the whole graph in memory, no Spark (`limit`: 65,536 pins
   at a time, one sparse product per chunk's pooling), in a Python process of its own; the best one
   machine can do with the same math (layer 2 applies W_2's pooled half to the boards before
   pooling). Run --limit-runs times (default 3), the last reported (the first pays for first
   touches of its buffers); checked against `PinSage.forward` on the whole graph where it has at
   most 131,072 pins;
4. per-target: the paper's Algorithm 2, each minibatch of 512 target pins building and computing its
   own 2-hop computation graph with no reuse across minibatches. Timed on a sample of minibatches and
   scaled to all pins (the row says how many pins were timed); the neighbor tables' CSR index, built
   once per run, is timed apart and counted once.

It checks that the chain's output and the limit agree within 1e-5 (on every pin, or a uniform
sample of 50,000 pins for the paper-sized model and for graphs above 1,000,000 pins, whose
embeddings would not fit the driver's result limit; with --projection-precision bfloat16 or float16 it
reports the largest and mean difference instead) and that per-target agrees with limit on the pins
it computed. Peak memory is the largest resident set, sampled every 0.2 s: of the fresh process's
tree (driver, JVM, Python workers), of this process's tree for the warm runs, of the limit's own
process (graph, model and activations) for limit. Graphs come from jobs/demo/generate_graph.py with 5
memberships per pin on average and the memberships as neighbor tables (10 neighbor rows per pin
over both tables); see `graph_spec`. Results go to DIR/embed.json and print as markdown tables.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import platform
import shlex
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass

import numpy as np
import psutil
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import torch

from jobs.demo.generate_graph import GraphSpec, generate, write_tables
from jobs.embed import parse_args, run
from jobs.lib.chain import WITH_NEIGHBORS
from jobs.lib.io import read_delta
from jobs.lib.report import Stopwatch
from jobs.lib.session import get_spark
from jobs.lib.vectors import PRECISIONS
from pinsage_model.checkpoint import build_model, read_checkpoint, save_checkpoint
from pinsage_model.config import ModelConfig
from pinsage_model.model import Neighborhood, random_model
from pinsage_model.pooling import pool_gathered, weighted_sums

MODELS = {"small": (32, 64, 32), "paper": (1024, 1024, 512)}  # (features, hidden, embedding)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEMBERSHIPS_PER_PIN = 5  # so neighbor rows (both tables) = 10 per pin
ENV = {**os.environ, "PYTHONPATH": REPO}  # for the processes the benchmark starts
LIMIT_CHUNK_PINS = 65_536  # pins per chunk of the in-process limit


class PeakMemory:
    """Largest total RSS of this process, or of process `pid` (and, with children=True, all its
    descendants: the JVM and Python workers) while the block runs."""

    def __init__(self, children: bool = True, pid: int | None = None) -> None:
        self.children = children
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        try:
            me = psutil.Process(self.pid)
        except psutil.Error:
            return
        while not self._stop.is_set():
            total = 0
            try:
                tree = [me, *(me.children(recursive=True) if self.children else [])]
            except psutil.Error:  # the process ended
                tree = []
            for p in tree:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(0.2)

    def __enter__(self) -> PeakMemory:
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def completed_stages(spark) -> dict[int, dict]:
    """The application's completed stages from Spark's REST API, by stage id."""
    url = f"{spark.sparkContext.uiWebUrl}/api/v1/applications/{spark.sparkContext.applicationId}/stages"
    with urllib.request.urlopen(url + "?status=complete", timeout=30) as r:
        return {(st["stageId"], st["attemptId"]): st for st in json.load(r)}


def gemm_gflops(threads: int, reps: int = 5) -> float:
    """The machine's fp32 GEMM rate in GFLOP/s: the best of `reps` timed 4096x1024 @ 1024x1024
    products (after one untimed) with `threads` torch threads."""
    torch.set_num_threads(threads)
    a, b = torch.randn(4096, 1024), torch.randn(1024, 1024)
    a @ b
    best = float("inf")
    for _ in range(reps):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * 4096 * 1024 * 1024 / best / 1e9


PHASES = ("validate", "layer 1", "layer 2", "publish")
ID_WEIGHT_BYTES = 24  # a neighbor row without its vector: dst, src (bigint) and weight (double)
ADJACENCY_ROW_BYTES = 12  # a broadcast neighbor row (inference.Adjacency): source position (int32), weight


def phase_flops(config: ModelConfig, pins: int, boards: int, board_rows: int, pin_rows: int) -> dict:
    """Multiply-adds (x2) of each phase of the chain: layer k projects its sources with Q_k, pools
    its neighbor rows (one weighted add per value) and applies W_k to its targets; the head (G1, G2)
    runs on every pin in the last layer. Biases, ReLUs and norms are left out."""
    count = {"pin": pins, "board": boards}
    rows = {"board": board_rows, "pin": pin_rows}
    flops = {"validate": 0.0, "publish": 0.0}
    for layer in config.schedule():
        d = config.layer(layer.k)
        flops[f"layer {layer.k}"] = 2.0 * (
            count[layer.source] * d.in_dim * d.hidden_dim
            + rows[layer.target] * d.hidden_dim
            + count[layer.target] * (d.self_dim + d.hidden_dim) * d.out_dim
        )
    flops[f"layer {config.num_layers}"] += 2.0 * pins * 2 * config.embed_dim**2
    return flops


def phase_of(description: str) -> str | None:
    """The chain's phase a Spark job belongs to, from the description the job set (Delta's own jobs
    prefix it with "Delta: ")."""
    while description.startswith("Delta: "):
        description = description[len("Delta: ") :]
    if description.startswith("validate"):
        return "validate"
    if description.startswith("layer "):
        return "layer " + description.split()[1].split("/")[0]
    if description.startswith("publish"):
        return "publish"
    return None


# Stage metrics summed per phase: event-log accumulable name -> our name (bytes, or ms for times).
STAGE_METRICS = {
    "internal.metrics.executorRunTime": "task_ms",
    "internal.metrics.shuffle.write.bytesWritten": "shuffle_bytes",
    "internal.metrics.output.bytesWritten": "written_bytes",
    "data sent to Python workers": "to_python_bytes",
    "data returned from Python workers": "from_python_bytes",
    "time to execute Python code": "python_ms",
}


def eventlog_phases(log_dir: str) -> dict[str, dict[str, float]]:
    """Per phase, the sums of STAGE_METRICS over its completed stages, from a Spark event log
    (uncompressed) written under `log_dir`."""
    files = sorted(glob.glob(f"{log_dir}/**/events_*", recursive=True) + glob.glob(f"{log_dir}/local-*"))
    job_phase: dict[int, str | None] = {}
    out = {phase: dict.fromkeys(STAGE_METRICS.values(), 0.0) for phase in PHASES}
    for path in files:
        with open(path) as f:
            for line in f:
                event = json.loads(line)
                kind = event["Event"]
                if kind == "SparkListenerJobStart":
                    phase = phase_of((event.get("Properties") or {}).get("spark.job.description") or "")
                    for stage in event["Stage IDs"]:
                        job_phase[stage] = phase
                elif kind == "SparkListenerStageCompleted":
                    info = event["Stage Info"]
                    phase = job_phase.get(info["Stage ID"])
                    if phase not in out:
                        continue
                    for acc in info.get("Accumulables", []):
                        name = STAGE_METRICS.get(acc["Name"])
                        if name is not None:
                            out[phase][name] += float(acc.get("Value") or 0)
    return out


def roofline(
    config: ModelConfig, report: dict, log_dir: str, wall_s: float, gemm: float, pins: int, cores: int
) -> dict:
    """Per phase of a chain run (its report as JSON and its event log): seconds (the job's own
    timers), FLOPs and achieved GFLOP/s as a share of the measured GEMM rate `gemm`, and bytes
    handed to and from Python, shuffled (against the floor: each neighbor row's ids and weight,
    plus each source's projection once when they are shuffled), broadcast and written."""
    layers = {f"layer {layer['k']}": layer for layer in report["layers"]}
    rows = {"board": report["input_rows"]["board_neighbors"], "pin": report["input_rows"]["pin_neighbors"]}
    boards = layers["layer 1"]["targets_written"]
    flops = phase_flops(config, pins, boards, rows["board"], rows["pin"])
    seconds = {"validate": report["seconds"]["inputs"], "publish": report["seconds"]["publish"]}
    seconds.update({name: layer["seconds"] for name, layer in layers.items()})
    metrics = eventlog_phases(log_dir)
    table = []
    for phase in PHASES:
        m = metrics[phase]
        entry = {"phase": phase, "seconds": seconds[phase], "gflop": round(flops[phase] / 1e9, 2)}
        entry["gflops"] = round(flops[phase] / 1e9 / seconds[phase], 2)
        entry["share_of_gemm"] = round(entry["gflops"] / gemm, 3)
        for name in ("to_python_bytes", "from_python_bytes", "shuffle_bytes", "written_bytes"):
            entry[name.replace("_bytes", "_mib")] = round(m[name] / 2**20, 1)
        entry["python_s"] = round(m["python_ms"] / 1000, 1)
        entry["task_s"] = round(m["task_ms"] / 1000, 1)
        layer = layers.get(phase)
        if layer is not None:
            d = config.layer(layer["k"])
            # The messages' width: hidden_dim, or out_dim when they went through W_pool (chain.through_w).
            projections = layer["sources_projected"] * (layer.get("message_dim") or d.hidden_dim) * 4
            broadcast = layer["projections"].startswith("broadcast")
            floor = rows[layer["targets"]] * ID_WEIGHT_BYTES + (0 if broadcast else projections)
            sent = projections if broadcast else 0
            if layer["projections"].endswith(WITH_NEIGHBORS):  # the rows travel too, nothing is shuffled
                floor, sent = 0, sent + layer["neighbor_rows"] * ADJACENCY_ROW_BYTES
            entry["shuffle_floor_mib"] = round(floor / 2**20, 1)
            entry["broadcast_mib"] = round(sent / 2**20, 1)
        table.append(entry)
    total = sum(flops.values())
    chain = {
        "phase": "chain (whole command)",
        "seconds": round(wall_s, 2),
        "gflop": round(total / 1e9, 1),
        "gflops": round(total / 1e9 / wall_s, 1),
        "share_of_gemm": round(total / 1e9 / wall_s / gemm, 3),
    }
    for name in ("to_python_mib", "from_python_mib", "shuffle_mib", "written_mib", "python_s", "task_s"):
        chain[name] = round(sum(e[name] for e in table), 1)
    chain["shuffle_floor_mib"] = round(sum(e.get("shuffle_floor_mib", 0) for e in table), 1)
    chain["broadcast_mib"] = round(sum(e.get("broadcast_mib", 0) for e in table), 1)
    table.append(chain)
    return {
        "gemm_gflops": round(gemm, 1),
        "cores": cores,
        "mflop_per_pin": round(total / pins / 1e6, 2),
        "compute_bound_pins_per_s": round(gemm * 1e9 / (total / pins)),
        "phases": table,
    }


def fresh_chain(root: str, broadcast_mb: str, precision: str) -> tuple[float, float, dict]:
    """`jobs/embed.py` as a user runs it: a fresh process (its own Spark session, JVM and Python
    workers) on root/input, writing root/out, with its event log in root/eventlog. Returns (wall
    seconds, peak RSS of its process tree in GiB, its report)."""
    log_dir = f"{root}/eventlog"
    shutil.rmtree(log_dir, ignore_errors=True)
    os.makedirs(log_dir)
    cmd = [
        sys.executable,
        f"{REPO}/jobs/embed.py",
        *shlex.split(job_flags(root, broadcast_mb, precision)),
        "--report-json",
        f"{root}/report.json",
        *("--conf", "spark.ui.showConsoleProgress=false"),
        *("--conf", "spark.eventLog.enabled=true"),
        *("--conf", "spark.eventLog.compress=false"),
        *("--conf", f"spark.eventLog.dir={os.path.abspath(log_dir)}"),
    ]
    with open(f"{root}/fresh.log", "w") as log:
        clock = Stopwatch()
        proc = subprocess.Popen(cmd, env=ENV, stdout=log, stderr=subprocess.STDOUT)
        with PeakMemory(pid=proc.pid) as mem:
            code = proc.wait()
        seconds = clock.seconds()
    if code != 0:
        raise RuntimeError(f"jobs/embed.py exited {code}; see {root}/fresh.log")
    with open(f"{root}/report.json") as f:
        return seconds, round(mem.peak / 2**30, 2), json.load(f)


def job_flags(root: str, broadcast_mb: str, precision: str) -> str:
    return (
        f"--pins {root}/input/pins --edges {root}/input/edges "
        f"--board-neighbors {root}/input/board_neighbors --pin-neighbors {root}/input/pin_neighbors "
        f"--checkpoint {root}/model.pt --out {root}/out "
        f"--device cpu --broadcast-projections-mb {broadcast_mb} --projection-precision {precision}"
    )


def graph_spec(pins: int, feature_dim: int) -> GraphSpec:
    boards = max(1, int(pins * MEMBERSHIPS_PER_PIN / 34.4))  # lognormal(log 25, 0.8) boards hold ~34.4 pins
    return GraphSpec(pins=pins, boards=boards, feature_dim=feature_dim, seed=3, uniform_neighbors=True)


@dataclass
class InMemoryGraph:
    pin_ids: np.ndarray
    features: torch.Tensor
    board_ids: np.ndarray
    board_nbrs: Neighborhood  # dst = board index, src = pin index
    pin_nbrs: Neighborhood  # dst = pin index, src = board index


def load(root: str) -> InMemoryGraph:
    """The graph under ROOT in memory. The features are read batch by batch into one float32 array
    (no Arrow copy of the whole column beside it): their `pins x d_in x 4` bytes are the largest
    part of the limit's memory."""
    pins = ds.dataset(f"{root}/pins", format="parquet")
    pin_ids = pins.to_table(columns=["pin_id"]).column("pin_id").to_numpy()
    features = None
    at = 0
    for batch in pins.to_batches(columns=["features"], batch_size=65_536, use_threads=False):
        flat = batch.column(0).flatten().to_numpy()
        block = flat.reshape(len(batch), -1)
        if features is None:
            features = np.empty((len(pin_ids), block.shape[1]), dtype=np.float32)
        features[at : at + len(batch)] = block
        at += len(batch)
    bn = pq.read_table(f"{root}/board_neighbors")
    pn = pq.read_table(f"{root}/pin_neighbors")
    board_ids = np.unique(
        np.concatenate([bn.column("board_id").to_numpy(), pn.column("board_id").to_numpy()])
    )

    def index(ids, values):
        return torch.from_numpy(np.searchsorted(ids, values).astype(np.int64))

    board_nbrs = Neighborhood(
        index(board_ids, bn.column("board_id").to_numpy()),
        index(pin_ids, bn.column("pin_id").to_numpy()),
        torch.from_numpy(bn.column("weight").to_numpy()),
    )
    pin_nbrs = Neighborhood(
        index(pin_ids, pn.column("pin_id").to_numpy()),
        index(board_ids, pn.column("board_id").to_numpy()),
        torch.from_numpy(pn.column("weight").to_numpy()),
    )
    return InMemoryGraph(pin_ids, torch.from_numpy(features), board_ids, board_nbrs, pin_nbrs)


def normalised_rows(nbrs: Neighborhood, num_dst: int, by: str) -> tuple[torch.Tensor, ...]:
    """The rows of `nbrs` sorted by `by` ("src" or "dst"), each weight divided by its target's
    float64 total as `pool_gathered` does: (src, dst, coefficient)."""
    w = nbrs.weight.to(torch.float64)
    total = torch.zeros(num_dst, dtype=torch.float64).index_add_(0, nbrs.dst, w)
    coeff = w / total[nbrs.dst]  # every target here has rows: its total is positive
    order = torch.argsort(nbrs.src if by == "src" else nbrs.dst, stable=True)
    return nbrs.src[order], nbrs.dst[order], coeff[order]


def limit(model, g: InMemoryGraph, chunk: int = LIMIT_CHUNK_PINS) -> torch.Tensor:
    """`PinSage.forward`'s math over the whole graph (K = 2, importance pooling, boards without
    features), `chunk` pins at a time so that no [pins, hidden] matrix is held: layer 1 projects a
    chunk of pins and adds its rows' share to the boards' pooled sums in place (one `weighted_sums`
    product per chunk); layer 2 projects every board once and applies the pooled half of W_2 to
    it (`pooled_term`: importance pooling is linear, so W_2's product moves before the pooling, onto
    the boards instead of the pins, and the vectors pooled are embed_dim wide instead of
    hidden_dim), then pools, finishes W_2 and runs the head on a chunk of target pins at a time.
    Memory: the features, the boards' vectors and one chunk's activations. Equal to
    `PinSage.forward` up to float32 rounding (`limit_vs_forward_max_abs` on small graphs)."""
    c1, c2 = model.conv(1), model.conv(2)
    assert model.config.num_layers == 2 and c1.pooling == c2.pooling == "importance"
    pins, boards = len(g.pin_ids), len(g.board_ids)
    with torch.inference_mode():
        src, dst, coeff = normalised_rows(g.board_nbrs, boards, by="src")
        cuts = torch.searchsorted(src, torch.arange(0, pins + chunk, chunk)).tolist()
        pooled = torch.zeros(boards, c1.dims.hidden_dim)
        for i, start in enumerate(range(0, pins, chunk)):
            rows = slice(cuts[i], cuts[i + 1])
            projected = c1.project(g.features[start : start + chunk])
            weighted_sums(projected, src[rows] - start, dst[rows], coeff[rows].float(), boards, out=pooled)
        h_boards = c1.combine(torch.zeros(boards, 0), pooled)
        del pooled
        pooled_terms = c2.pooled_term(c2.project(h_boards))
        src, dst, coeff = normalised_rows(g.pin_nbrs, pins, by="dst")
        cuts = torch.searchsorted(dst, torch.arange(0, pins + chunk, chunk)).tolist()
        z = torch.empty(pins, model.config.embed_dim)
        for i, start in enumerate(range(0, pins, chunk)):
            rows = slice(cuts[i], cuts[i + 1])
            n = min(chunk, pins - start)
            pooled = weighted_sums(pooled_terms, src[rows], dst[rows] - start, coeff[rows].float(), n)
            z[start : start + n] = model.head(c2.finish(g.features[start : start + n], pooled))
    return z


def limit_process(root: str, model_name: str, runs: int, per_target_pins: int) -> dict:
    """The limit and per-target inference in a Python process of their own (`--limit-of ROOT`), so
    that neither the benchmark's Spark session nor an earlier row shares their memory: its row
    fields, with ROOT/limit.npy holding the limit's embeddings in pin order."""
    cmd = [sys.executable, os.path.abspath(__file__), "--limit-of", root, "--models", model_name]
    cmd += ["--spark-runs", str(runs), "--per-target-pins", str(per_target_pins)]
    with open(f"{root}/limit.log", "w") as log:
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=ENV)
    if done.returncode != 0:
        raise RuntimeError(f"the limit's process exited {done.returncode}; see {root}/limit.log")
    return json.loads(done.stdout.strip().splitlines()[-1])


def limit_row(root: str, model_name: str, runs: int, per_target_pins: int) -> dict:
    """What `limit_process` runs: load the graph, time the limit `runs` times (peak resident memory
    of this process, graph included), save its embeddings, time per-target inference on a sample of
    pins and check it against the limit."""
    torch.set_num_threads(os.cpu_count() or 1)
    row: dict = {"limit_runs_s": []}
    with PeakMemory(children=False) as mem:
        g = load(f"{root}/input")
        model = build_model(read_checkpoint(f"{root}/model.pt"))
        for _ in range(runs):  # --limit-runs, the last reported
            clock = Stopwatch()
            z = limit(model, g)
            row["limit_runs_s"].append(round(clock.seconds(), 2))
    row["limit_s"] = row["limit_runs_s"][-1]
    row["limit_peak_gib"] = round(mem.peak / 2**30, 2)
    row["limit_chunk_pins"] = LIMIT_CHUNK_PINS
    if len(g.pin_ids) <= LIMIT_CHUNK_PINS * 2:  # small enough to also run PinSage.forward whole
        with torch.inference_mode():
            whole, _ = model(g.features, torch.zeros(len(g.board_ids), 0), g.board_nbrs, g.pin_nbrs)
        row["limit_vs_forward_max_abs"] = float((whole - z).abs().max())
        assert row["limit_vs_forward_max_abs"] < 1e-5, row
    np.save(f"{root}/limit.npy", z.numpy())

    pins = len(g.pin_ids)
    rng = np.random.default_rng(1)
    targets = torch.from_numpy(np.sort(rng.choice(pins, min(pins, per_target_pins), replace=False)))
    started = time.perf_counter()
    tables = csr(g.pin_nbrs, pins), csr(g.board_nbrs, len(g.board_ids))
    indexing = time.perf_counter() - started  # once per run, not per minibatch: not scaled
    started = time.perf_counter()
    zt = per_target(model, g, tables, targets)
    timed = time.perf_counter() - started
    row["per_target_timed_pins"] = len(targets)
    row["per_target_index_s"] = round(indexing, 2)
    row["per_target_s"] = round(indexing + timed * pins / len(targets), 2)
    row["per_target_vs_limit_max_abs"] = float((zt - z[targets]).abs().max())
    assert row["per_target_vs_limit_max_abs"] < 1e-5, row
    return row


def csr(nbrs: Neighborhood, num_dst: int):
    order = torch.argsort(nbrs.dst, stable=True)
    indptr = torch.zeros(num_dst + 1, dtype=torch.int64)
    indptr[1:] = torch.cumsum(torch.bincount(nbrs.dst, minlength=num_dst), 0)
    return indptr, nbrs.src[order], nbrs.weight[order]


def rows_of(table, targets: torch.Tensor):
    """Neighbor rows of `targets` from a CSR table: (local target index, source, weight)."""
    indptr, src, w = table
    starts, ends = indptr[targets], indptr[targets + 1]
    counts = ends - starts
    local = torch.repeat_interleave(torch.arange(len(targets)), counts)
    offsets = torch.arange(int(counts.sum())) - torch.repeat_interleave(
        torch.cumsum(counts, 0) - counts, counts
    )
    positions = torch.repeat_interleave(starts, counts) + offsets
    return local, src[positions], w[positions]


def per_target(model, g: InMemoryGraph, tables, targets: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """Algorithm 2 for K = 2: each minibatch computes its own 2-hop graph, nothing reused across.
    `tables`: the (pin, board) neighbor tables as CSR, built once for all minibatches."""
    pin_table, board_table = tables
    out = []
    with torch.inference_mode():
        for i in range(0, len(targets), batch):
            t = targets[i : i + batch]
            t_local, boards, w2 = rows_of(pin_table, t)
            s1, b_local = torch.unique(boards, return_inverse=True)
            s1_local, pins, w1 = rows_of(board_table, s1)
            s0, p_local = torch.unique(pins, return_inverse=True)
            h_b = model.conv(1)(
                g.features[s0], torch.zeros(len(s1), 0), p_local, s1_local, w1, pool=pool_gathered
            )
            h_p = model.conv(2)(h_b, g.features[t], b_local, t_local, w2, pool=pool_gathered)
            out.append(model.head(h_p))
    return torch.cat(out)


# The chain is checked on every pin of the small model up to this size, else on a uniform sample.
CHECK_ALL_MAX_PINS = 1_000_000
CHECK_SAMPLE_PINS = 50_000


def spark_embeddings(spark, out: str, pin_ids: np.ndarray, sample: np.ndarray | None) -> np.ndarray:
    df = read_delta(spark, f"{out}/pin_embeddings")
    if sample is not None:
        df = df.join(spark.createDataFrame([(int(i),) for i in pin_ids[sample]], "pin_id bigint"), "pin_id")
    table = df.toArrow()
    ids = table.column("pin_id").to_numpy()
    dim = len(table.column("embedding")[0])
    emb = table.column("embedding").combine_chunks().flatten().to_numpy().reshape(len(ids), dim)
    order = np.argsort(ids)
    assert np.array_equal(ids[order], pin_ids if sample is None else pin_ids[sample]), "pin sets differ"
    return emb[order]


def write_graph(root: str, pins: int, model_name: str) -> ModelConfig:
    """ROOT/input: the benchmark's generated graph of `pins` pins (one an earlier run left there is
    reused), and ROOT/model.pt: the model's checkpoint with random weights (seed 5). Returns its
    configuration."""
    d_in, hidden, d = MODELS[model_name]
    done = f"{root}/input/.complete"
    if not os.path.exists(done):
        write_tables(generate(graph_spec(pins, d_in)), f"{root}/input")
        open(done, "w").close()
    config = ModelConfig(2, d_in, 0, hidden, d, "importance", True)
    save_checkpoint(random_model(config, seed=5), f"{root}/model.pt")
    return config


def bench_one(
    spark,
    pins: int,
    model_name: str,
    root: str,
    per_target_pins: int,
    broadcast_mb: str,
    precision: str,
    spark_runs: int = 2,
    limit_runs: int = 3,
) -> dict:
    config = write_graph(root, pins, model_name)
    ckpt = read_checkpoint(f"{root}/model.pt")
    row: dict = {"pins": pins, "model": model_name, "projection_precision": precision}
    row["load_before"] = os.getloadavg()[0]
    gemm_before = gemm_gflops(os.cpu_count() or 1)

    fresh_s, fresh_peak, report = fresh_chain(root, broadcast_mb, precision)
    row["fresh_s"] = fresh_s
    row["fresh_peak_gib"] = fresh_peak
    row["fresh_pins_per_s"] = round(pins / fresh_s)
    row["fresh_phases_s"] = report["seconds"]
    row["roofline"] = roofline(
        config, report, f"{root}/eventlog", fresh_s, gemm_before, pins, spark.sparkContext.defaultParallelism
    )
    row["neighbor_rows"] = report["input_rows"]["board_neighbors"] + report["input_rows"]["pin_neighbors"]
    row["boards"] = report["layers"][0]["targets_written"]
    row["projections"] = [layer["projections"] for layer in report["layers"]]

    args = parse_args(shlex.split(job_flags(root, broadcast_mb, precision)))
    row["spark_runs_s"] = []
    if spark_runs:
        with PeakMemory() as mem:
            for _ in range(spark_runs):  # the first run on a graph also warms the JVM and workers
                before = completed_stages(spark)
                clock = Stopwatch()
                warm = run(spark, args, ckpt)
                row["spark_runs_s"].append(round(clock.seconds(), 2))
        stages = [st for key, st in completed_stages(spark).items() if key not in before]
        row["shuffle_write_mib"] = round(sum(st["shuffleWriteBytes"] for st in stages) / 2**20, 1)
        row["spark_phases_s"] = warm.seconds
        row["spark_peak_gib"] = round(mem.peak / 2**30, 2)
    row["spark_s"] = row["spark_runs_s"][-1] if spark_runs else fresh_s

    row.update(limit_process(root, model_name, limit_runs, per_target_pins))
    # The GEMM rate just before the fresh run and just after the limit: on a shared machine the
    # higher one is what the cores could do; every share of it is taken against that.
    row["gemm_gflops"] = [round(gemm_before, 1), round(gemm_gflops(os.cpu_count() or 1), 1)]
    if max(row["gemm_gflops"]) > gemm_before:
        row["roofline"] = roofline(
            config,
            report,
            f"{root}/eventlog",
            fresh_s,
            max(row["gemm_gflops"]),
            pins,
            spark.sparkContext.defaultParallelism,
        )
    bound = row["roofline"]["compute_bound_pins_per_s"]
    row["limit_share_of_bound"] = round(pins / row["limit_s"] / bound, 3)
    row["fresh_share_of_bound"] = round(pins / fresh_s / bound, 3)

    z = np.load(f"{root}/limit.npy", mmap_mode="r")
    pin_ids = pq.read_table(f"{root}/input/pins", columns=["pin_id"]).column("pin_id").to_numpy()
    rng = np.random.default_rng(0)
    check_all = model_name == "small" and pins <= CHECK_ALL_MAX_PINS
    sample = None if check_all else np.sort(rng.choice(pins, min(pins, CHECK_SAMPLE_PINS), replace=False))
    got = spark_embeddings(spark, f"{root}/out", pin_ids, sample)
    error = np.abs(got - (z if sample is None else z[sample]))
    row["spark_vs_limit_max_abs"] = float(error.max())
    row["spark_vs_limit_mean_abs"] = float(error.mean())
    row["checked_pins"] = len(got)
    row["spark_over_limit"] = round(row["spark_s"] / row["limit_s"], 2)
    row["fresh_over_limit"] = round(fresh_s / row["limit_s"], 2)
    row["per_target_over_spark"] = round(row["per_target_s"] / row["spark_s"], 2)
    row["per_target_over_fresh"] = round(row["per_target_s"] / fresh_s, 2)
    row["spark_pins_per_s"] = round(pins / row["spark_s"])
    row["load_after"] = os.getloadavg()[0]
    if precision == "float32":  # reduced-precision projections are measured, not held to float32's bound
        assert row["spark_vs_limit_max_abs"] < 1e-5, row
    assert row["per_target_vs_limit_max_abs"] < 1e-5, row
    return row


def print_tables(rows: list[dict]) -> None:
    print(
        "| model | pins | nbr rows | fresh s | warm s (first) | limit s | per-target s | fresh/limit | "
        "per-target/fresh | fresh pins/s | share of bound: fresh, limit | fresh peak GiB | "
        "limit peak GiB | max abs diff | load |"
    )
    print("| --- " + "| ---: " * 14 + "|")
    for r in rows:
        warm = f"{r['spark_runs_s'][-1]} ({r['spark_runs_s'][0]})" if r["spark_runs_s"] else "-"
        print(
            f"| {r['model']} | {r['pins']:,} | {r['neighbor_rows']:,} | {r['fresh_s']} | {warm} | "
            f"{r['limit_s']} | {r['per_target_s']} | {r['fresh_over_limit']} | "
            f"{r['per_target_over_fresh']} | "
            f"{r['fresh_pins_per_s']:,} | {r['fresh_share_of_bound']:.0%}, {r['limit_share_of_bound']:.0%} | "
            f"{r['fresh_peak_gib']} | {r['limit_peak_gib']} | {r['spark_vs_limit_max_abs']:.1e} | "
            f"{r['load_before']:.1f}-{r['load_after']:.1f} |"
        )
    for r in rows:
        roof = r["roofline"]
        print(
            f"\n{r['model']}, {r['pins']:,} pins: GEMM {roof['gemm_gflops']} GFLOP/s "
            f"(before, after: {r['gemm_gflops']}), "
            f"{roof['mflop_per_pin']} MFLOP/pin, compute-bound {roof['compute_bound_pins_per_s']:,} pins/s"
        )
        print(
            "| phase | s | GFLOP | GFLOP/s | share of GEMM | to Python MiB | from Python MiB | Python s | "
            "task s | shuffle MiB (floor) | broadcast MiB | written MiB |"
        )
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for e in roof["phases"]:
            floor = f" ({e['shuffle_floor_mib']})" if "shuffle_floor_mib" in e else ""
            print(
                f"| {e['phase']} | {e['seconds']} | {e['gflop']} | {e['gflops']} | "
                f"{e['share_of_gemm']:.1%} | "
                f"{e['to_python_mib']} | {e['from_python_mib']} | {e['python_s']} | {e['task_s']} | "
                f"{e['shuffle_mib']}{floor} | {e.get('broadcast_mib', '')} | {e['written_mib']} |"
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pins", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["small", "paper"])
    p.add_argument(
        "--paper-max-pins", type=int, default=100_000, help="largest graph for the paper-sized model"
    )
    p.add_argument("--per-target-pins", type=int, default=20_480, help="pins timed for per-target inference")
    p.add_argument("--out", default="bench-output/embed")
    p.add_argument(
        "--broadcast-projections-mb", default="auto", help="passed to the embed job (auto: its default)"
    )
    p.add_argument(
        "--projection-precision", choices=tuple(PRECISIONS), default="float32", help="passed to the embed job"
    )
    p.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE", help="extra Spark conf")
    p.add_argument(
        "--spark-runs",
        type=int,
        default=2,
        help="runs of the chain on each graph; the last is reported, all are recorded (the first "
        "pays for warming the JVM and the Python workers)",
    )
    p.add_argument(
        "--limit-runs",
        type=int,
        default=3,
        help="runs of the in-process limit on each graph; the last is reported, all are recorded",
    )
    p.add_argument("--limit-of", metavar="ROOT", help=argparse.SUPPRESS)  # limit_process's own entry
    a = p.parse_args()
    if a.limit_of:
        print(json.dumps(limit_row(a.limit_of, a.models[0], a.spark_runs, a.per_target_pins)))
        return
    logging.basicConfig(level=logging.WARNING)
    conf = {"spark.ui.showConsoleProgress": "false", **dict(c.split("=", 1) for c in a.conf)}
    gemm = gemm_gflops(os.cpu_count() or 1)
    print(f"fp32 GEMM 4096x1024x1024: {gemm:.1f} GFLOP/s on {os.cpu_count()} threads", flush=True)
    spark = get_spark("pinsage-bench-embed", None, conf)
    rows = []
    for model_name in a.models:
        for pins in a.pins:
            if model_name == "paper" and pins > a.paper_max_pins:
                continue
            row = bench_one(
                spark,
                pins,
                model_name,
                f"{a.out}/{model_name}-{pins}",
                a.per_target_pins,
                a.broadcast_projections_mb,
                a.projection_precision,
                a.spark_runs,
                max(1, a.limit_runs),
            )
            rows.append(row)
            print(json.dumps(row), flush=True)
    cores = spark.sparkContext.defaultParallelism
    meta = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Spark local[{cores}]",
        "gemm_gflops": round(gemm, 1),
        "rows": rows,
    }
    os.makedirs(a.out, exist_ok=True)
    with open(f"{a.out}/embed.json", "w") as f:
        json.dump(meta, f, indent=2)
    print(meta["machine"])
    print_tables(rows)


if __name__ == "__main__":
    main()
