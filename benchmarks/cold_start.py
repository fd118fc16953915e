"""Screen training options for new books on goodbooks-10k without Spark, as docs/goodbooks.md's
"New books" validation table was measured.

    python benchmarks/cold_start.py --prepared P --neighbors N --out DIR --name NAME
        [--no-log-degree] [--splits validation[,test]] [--eval-only] [--data-dir D] [OPTION=VALUE ...]

Reads the tables of jobs/goodbooks/prepare.py (P) and jobs/neighborhoods.py (N) with the `deltalake`
package, trains with `pinsage_model.training.train` (what jobs/train.py runs: the chain's training
defaults with the cut budget of the docs, then each OPTION=VALUE, a `TrainOptions` field such as
neighbor_dropout=0.5 or arrival_memberships=0,1,3), saves DIR/NAME.pt, then scores the new-book pairs
as jobs/embed_new.py and jobs/evaluate.py do, in numpy: warm books over the whole graph, new books from
their features and the top boards of walks from their revealed memberships (the walk of
pinsage_model/training/arrival.py, once per r, cached in DIR), pooling the boards' last
representations; each positive ranked by cosine among all books, the query left out, ties against
it. With --no-log-degree the pins' last feature column (the log degree) is left out. --data-dir
(the goodbooks CSV folder) adds hit@10 split by whether the pair's books share their authors.
Writes DIR/NAME.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import time

import numpy as np
import torch
from deltalake import DeltaTable

from pinsage_model.checkpoint import build_model, read_checkpoint, save_checkpoint
from pinsage_model.training.arrival import WalkParams, arrival_neighbors
from pinsage_model.training.graph import build_graph
from pinsage_model.training.loop import TrainOptions, train

BUDGET = dict(
    epochs=3,
    batch_size=8192,
    lr=0.005,
    embed_dim=64,
    co_membership_pairs=500_000,
    loss="softmax",
    temperature=0.1,
    hard_negatives=0,
    seed=0,
)
REVEALED = (0, 1, 3)
CHUNK = 2000


def table(path: str):
    return DeltaTable(path).to_pyarrow_table()


def column(t, name: str) -> np.ndarray:
    return t.column(name).to_numpy()


def matrix(t, name: str = "features") -> np.ndarray:
    return np.stack(t.column(name).to_numpy(zero_copy_only=False)).astype(np.float32)


def graph_rows(edges, board_neighbors, pin_neighbors) -> tuple:
    """`build_graph`'s three row arguments from the edges and the two neighbor tables."""
    return (
        (column(edges, "pin_id"), column(edges, "board_id"), column(edges, "weight")),
        (
            column(board_neighbors, "board_id"),
            column(board_neighbors, "pin_id"),
            column(board_neighbors, "weight"),
        ),
        (column(pin_neighbors, "pin_id"), column(pin_neighbors, "board_id"), column(pin_neighbors, "weight")),
    )


def option(name: str, value: str):
    default = getattr(TrainOptions(), name)
    if isinstance(default, tuple):
        return tuple(int(x) for x in value.split(","))
    return type(default)(value)


def ranks(ids: np.ndarray, vectors: np.ndarray, query: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """1 + the candidates (all ids but the query and the positive) scoring above the positive."""
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    order = np.argsort(ids)
    qi, pi = order[np.searchsorted(ids[order], query)], order[np.searchsorted(ids[order], pos)]
    out = []
    for s in range(0, len(qi), CHUNK):
        scores = unit[qi[s : s + CHUNK]] @ unit.T
        rows = np.arange(len(scores))
        target = scores[rows, pi[s : s + CHUNK]]
        scores[rows, qi[s : s + CHUNK]] = -np.inf
        out.append(1 + (scores > target[:, None] + 1e-9).sum(1))
    return np.concatenate(out)


def new_share(ids: np.ndarray, vectors: np.ndarray, new: np.ndarray, queries: np.ndarray) -> float:
    """Share of new books in the top 10 of the warm `queries`."""
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    order = np.argsort(ids)
    qi = order[np.searchsorted(ids[order], queries)]
    is_new = np.isin(ids, new)
    share = []
    for s in range(0, len(qi), CHUNK):
        scores = unit[qi[s : s + CHUNK]] @ unit.T
        scores[np.arange(len(scores)), qi[s : s + CHUNK]] = -np.inf
        share.append(is_new[np.argpartition(-scores, 10, axis=1)[:, :10]].mean(1))
    return float(np.concatenate(share).mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prepared", required=True)
    p.add_argument("--neighbors", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--no-log-degree", action="store_true")
    p.add_argument("--splits", default="validation")
    p.add_argument("--eval-only", action="store_true")
    p.add_argument("--data-dir")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("options", nargs="*", metavar="OPTION=VALUE")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(a.threads)
    P, N = a.prepared, a.neighbors
    settings = {**BUDGET, "structural_features": 0 if a.no_log_degree else 1}
    settings.update({k: option(k, v) for k, v in (o.split("=", 1) for o in a.options)})
    options = TrainOptions(**settings)

    pins = table(f"{P}/pins")
    pin_ids, features = column(pins, "pin_id"), matrix(pins)
    if a.no_log_degree:
        features = features[:, :-1]
    edges, bn, pn = table(f"{P}/edges"), table(f"{N}/board_neighbors"), table(f"{N}/pin_neighbors")
    board_ids = np.unique(np.r_[column(edges, "board_id"), column(bn, "board_id"), column(pn, "board_id")])
    graph, _ = build_graph(
        pin_ids,
        features,
        board_ids,
        np.zeros((len(board_ids), 0), np.float32),
        *graph_rows(edges, bn, pn),
    )

    def pairs(name: str):
        t = table(f"{P}/{name}")
        return column(t, "query_pin"), column(t, "pos_pin")

    checkpoint, report = f"{a.out}/{a.name}.pt", f"{a.out}/{a.name}.json"
    if a.eval_only:
        model, history = build_model(read_checkpoint(checkpoint)), json.load(open(report))["epochs"]
    else:
        clock = time.time()
        validation = tuple(graph.pin_index(x) for x in pairs("validation_pairs"))
        training = tuple(graph.pin_index(x) for x in pairs("train_pairs"))
        model, logs = train(graph, training, options, validation)
        history = [dataclasses.asdict(e) for e in logs]
        save_checkpoint(model, checkpoint)
        logging.info("trained in %.0fs", time.time() - clock)
    model.eval()
    with torch.no_grad():
        z, boards = model(*graph.whole_graph())
    z, boards = z.double().numpy(), boards.numpy()
    conv = model.conv(model.config.num_layers)

    def walked(r: int):
        """New books' neighbor rows at r, walked over edges plus the revealed ones (cached)."""
        path = f"{a.out}/cold_neighbors_r{r}.npz"
        if os.path.exists(path):
            d = np.load(path)
            return d["pin"], d["board"], d["weight"]
        new = np.sort(column(table(f"{P}/cold_pins_r{r}"), "pin_id"))
        revealed = table(f"{P}/cold_edges_r{r}")
        rp, rb = column(revealed, "pin_id"), column(revealed, "board_id")
        everyone = np.r_[pin_ids, new]
        order = np.argsort(everyone)

        def at(x):
            return order[np.searchsorted(everyone[order], x)]

        walk_boards = np.unique(np.r_[board_ids, rb])
        walk_edges = (
            np.r_[at(column(edges, "pin_id")), at(rp)],
            np.searchsorted(walk_boards, np.r_[column(edges, "board_id"), rb]),
            np.r_[column(edges, "weight"), np.ones(len(rp))],
        )
        kept = (np.searchsorted(new, rp), np.searchsorted(walk_boards, rb), np.ones(len(rp)))
        s, b, w = arrival_neighbors(
            walk_edges, len(everyone), len(walk_boards), at(new), kept, WalkParams(), np.random.default_rng(0)
        )
        np.savez(path, pin=new[s], board=walk_boards[b], weight=w)
        return new[s], walk_boards[b], w

    def new_books(r: int):
        t = table(f"{P}/cold_pins_r{r}")
        new, f = column(t, "pin_id"), matrix(t)
        if a.no_log_degree:
            f = f[:, :-1]
        pooled, total = np.zeros((len(new), conv.dims.hidden_dim)), np.zeros(len(new))
        if r:
            s, b, w = walked(r)
            order = np.argsort(new)
            si = order[np.searchsorted(new[order], s)]
            bi = np.searchsorted(graph.board_ids, b)
            ok = graph.board_ids[np.minimum(bi, len(graph.board_ids) - 1)] == b
            with torch.no_grad():
                projected = conv.project(torch.from_numpy(boards)).double().numpy()
            np.add.at(pooled, si[ok], projected[bi[ok]] * w[ok, None])
            np.add.at(total, si[ok], w[ok])
            pooled /= np.where(total > 0, total, 1)[:, None]
        with torch.no_grad():
            out = model.head(conv.combine(torch.from_numpy(f), torch.from_numpy(pooled).float()))
        return new, out.double().numpy()

    authors = None
    if a.data_dir:
        import pandas as pd

        authors = pd.read_csv(f"{a.data_dir}/books.csv", usecols=["book_id", "authors"]).set_index("book_id")
        authors = authors.authors

    def metrics(ids, vectors, query, pos, new):
        r = ranks(ids, vectors, query, pos)
        out = {f"hit@{k}": float(np.mean(r <= k)) for k in (10, 100, 500)} | {"mrr": float(np.mean(1 / r))}
        out["new_share_top10"] = new_share(ids, vectors, new, warm_queries)
        if authors is not None:
            same = np.array([authors[q] == authors[p] for q, p in zip(query, pos, strict=True)])
            out["hit@10_same_author"] = float(np.mean(r[same] <= 10))
            out["hit@10_other_author"] = float(np.mean(r[~same] <= 10))
        return {k: round(v, 4) for k, v in out.items()}

    warm_queries = np.unique(pairs("validation_pairs")[0])
    content = table(f"{P}/content")
    all_new = column(table(f"{P}/cold_pins_r0"), "pin_id")
    result = {"name": a.name, "no_log_degree": a.no_log_degree, "options": dataclasses.asdict(options)}
    result["warm_validation_hit10"] = [e["hit_rate"] for e in history]
    for split in a.splits.split(","):
        query, pos = pairs(f"cold_{split}_pairs")
        result[f"content_{split}"] = metrics(
            column(content, "pin_id"), matrix(content).astype(np.float64), query, pos, all_new
        )
        for r in REVEALED:
            new, vectors = new_books(r)
            result[f"r{r}_{split}"] = metrics(np.r_[graph.pin_ids, new], np.r_[z, vectors], query, pos, new)
            print(a.name, split, f"r={r}", result[f"r{r}_{split}"], flush=True)
        print(a.name, split, "content", result[f"content_{split}"], flush=True)
    print(a.name, "warm validation hit@10 by epoch", result["warm_validation_hit10"])
    with open(f"{a.out}/{a.name}{'-eval-' + a.splits if a.eval_only else ''}.json", "w") as f:
        json.dump(result, f, indent=1, default=list)


if __name__ == "__main__":
    main()
