"""Algorithm 2 of the PinSage paper written plainly: each target's embedding by recursion over its
own computation graph, node by node, in float64 numpy. It shares no code with the pipeline: it reads
the checkpoint with torch.load itself and the neighbor rows from plain Python lists."""

from __future__ import annotations

import numpy as np
import torch


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    return x / max(float(np.sqrt((x * x).sum())), 1e-12)


class NaivePinSage:
    def __init__(self, checkpoint_path: str, pins, boards, board_rows, pin_rows):
        """pins: {pin_id: features}; boards: {board_id: features or empty}; *_rows: (dst, src, w)
        neighbor rows, dangling ones included (they are dropped here, by hand)."""
        raw = torch.load(checkpoint_path, weights_only=True)
        self.cfg = raw["config"]
        self.w = {k: v.double().numpy() for k, v in raw["state_dict"].items()}
        self.pins = {p: np.asarray(f, dtype=np.float64) for p, f in pins.items()}
        self.boards = {b: np.asarray(f, dtype=np.float64) for b, f in boards.items()}
        self.nbrs = {"pin": {}, "board": {}}
        for dst, src, w in board_rows:
            if dst in self.boards and src in self.pins:
                self.nbrs["board"].setdefault(dst, []).append((src, float(w)))
        for dst, src, w in pin_rows:
            if dst in self.pins and src in self.boards:
                self.nbrs["pin"].setdefault(dst, []).append((src, float(w)))

    def h(self, kind: str, node: int, k: int) -> np.ndarray:
        """Representation of a node after layer k (pins: k even; boards: k odd)."""
        if kind == "pin" and k == 0:
            return self.pins[node]
        if kind == "board" and k == -1:
            return self.boards[node] if self.cfg["board_feature_dim"] else np.zeros(0)
        i = k - 1
        Q, q = self.w[f"convs.{i}.Q.weight"], self.w[f"convs.{i}.Q.bias"]
        W, b = self.w[f"convs.{i}.W.weight"], self.w[f"convs.{i}.W.bias"]
        other = "board" if kind == "pin" else "pin"
        rows = self.nbrs[kind].get(node, [])
        messages = [relu(Q @ self.h(other, v, k - 1) + q) for v, _ in rows]
        weights = [w for _, w in rows]
        pooling = self.cfg["pooling"]
        if not rows:
            pooled = np.zeros(Q.shape[0])
        elif pooling == "importance":
            total = sum(weights)
            pooled = sum((w / total) * m for w, m in zip(weights, messages, strict=True))
        elif pooling == "mean":
            pooled = sum(messages) / len(messages)
        else:
            pooled = np.max(np.stack(messages), axis=0)
        own = self.h(kind, node, k - 2)
        return l2_normalize(relu(W @ np.concatenate([own, pooled]) + b))

    def pin_embedding(self, pin: int) -> np.ndarray:
        K = self.cfg["num_layers"]
        h = self.h("pin", pin, K)
        z = self.w["head.G2.weight"] @ relu(self.w["head.G1.weight"] @ h + self.w["head.G1.bias"])
        return l2_normalize(z) if self.cfg["normalize_output"] else z

    def board_embedding(self, board: int) -> np.ndarray:
        return self.h("board", board, self.cfg["num_layers"] - 1)
