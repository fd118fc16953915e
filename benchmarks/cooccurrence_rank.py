"""How many dimensions a dot-product embedding needs to rank like co-occurrence, on goodbooks-10k,
as docs/goodbooks.md's "Why the embedding loses at hit@10" was measured.

    python benchmarks/cooccurrence_rank.py --prepared P [--pairs validation_pairs]
        [--dims 32 64 128 256 512 1024] [--threads 1] [--out rank.json]

Reads jobs/goodbooks/prepare.py's tables (P) with the `deltalake` package: the memberships a
co-occurrence baseline sees (`edges` plus `train_edges`), the books of `pins` and the pairs. Builds
the books' co-membership counts C (zero diagonal) and their cosine A = D^-1/2 C D^-1/2 (D: each
book's number of lists), then ranks each pair's positive among all books, the query left out and
ties against the positive, by A itself and by its best rank-d approximation with a positive
semi-definite factor: Z = U_d sqrt(max(lambda_d, 0)) over A's d largest eigenvalues, scores Z_q . Z.
That is the most a d-dimensional dot-product embedding can keep of this ranking in the least-squares
sense. Prints and writes hit@10 per d.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import scipy.sparse as sp
import torch
from deltalake import DeltaTable


def hit_at_10(scores: np.ndarray, query: np.ndarray, pos: np.ndarray) -> float:
    s = scores[query]
    rows = np.arange(len(query))
    s[rows, query] = -np.inf
    target = s[rows, pos][:, None]
    return float(((s > target).sum(1) < 10).mean())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prepared", required=True, help="output root of jobs/goodbooks/prepare.py")
    p.add_argument("--pairs", default="validation_pairs", help="the pairs table under --prepared")
    p.add_argument("--dims", type=int, nargs="+", default=[32, 64, 128, 256, 512, 1024])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", help="also write the figures as JSON here")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    read = lambda name: DeltaTable(f"{a.prepared}/{name}").to_pandas()  # noqa: E731
    pins = np.sort(read("pins").pin_id.to_numpy())
    memberships = np.concatenate(
        [read(t)[["pin_id", "board_id"]].to_numpy() for t in ("edges", "train_edges")]
    )
    memberships = np.unique(memberships, axis=0)
    pin = np.searchsorted(pins, memberships[:, 0]).clip(max=len(pins) - 1)
    known = pins[pin] == memberships[:, 0]
    pin, board = pin[known], np.unique(memberships[known, 1], return_inverse=True)[1]
    x = sp.csr_matrix((np.ones(len(pin)), (pin, board)), shape=(len(pins), board.max() + 1))
    counts = (x @ x.T).toarray()
    np.fill_diagonal(counts, 0)
    norm = np.sqrt(np.asarray(x.sum(1)).ravel()) + 1e-9
    cosine = counts / np.outer(norm, norm)
    pairs = read(a.pairs)
    query = np.searchsorted(pins, pairs.query_pin.to_numpy())
    pos = np.searchsorted(pins, pairs.pos_pin.to_numpy())
    result = {"pairs": len(query), "books": len(pins), "full": hit_at_10(cosine.copy(), query, pos)}
    print(f"{len(query)} pairs, {len(pins)} books; hit@10 of the cosine itself: {result['full']:.4f}")
    clock = time.perf_counter()
    values, vectors = torch.linalg.eigh(torch.from_numpy(cosine))
    print(f"eigendecomposition {time.perf_counter() - clock:.0f}s")
    order = torch.argsort(values, descending=True)
    for d in a.dims:
        top = order[:d]
        z = vectors[:, top] * values[top].clamp(min=0).sqrt()
        result[f"rank {d}"] = hit_at_10((z @ z.T).numpy(), query, pos)
        print(f"rank {d}: hit@10 {result[f'rank {d}']:.4f}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
