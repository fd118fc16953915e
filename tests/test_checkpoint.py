"""Checkpoint format_version 1: round trip, and refusal of anything that is not plain data."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from jobs.demo.init_checkpoint import main as init_main
from pinsage_model import CheckpointError, ModelConfig, build_model, read_checkpoint, save_checkpoint
from pinsage_model.checkpoint import expected_shapes
from pinsage_model.model import random_model

CONFIG = ModelConfig(4, pin_feature_dim=6, board_feature_dim=2, hidden_dim=5, embed_dim=3, pooling="mean")


def test_round_trip_keeps_config_weights_and_hash(tmp_path):
    model = random_model(CONFIG, seed=3)
    sha = save_checkpoint(model, str(tmp_path / "m.pt"))
    ckpt = read_checkpoint(str(tmp_path / "m.pt"))
    assert ckpt.config == CONFIG and ckpt.sha256 == sha
    rebuilt = build_model(ckpt)
    for name, tensor in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[name], tensor), name
    raw = torch.load(tmp_path / "m.pt", weights_only=True)
    assert raw["format_version"] == 1 and raw["config"]["pooling"] == "mean"
    assert {k: tuple(v.shape) for k, v in raw["state_dict"].items()} == expected_shapes(CONFIG)


def test_state_dict_keys_are_the_documented_contract():
    keys = set(expected_shapes(ModelConfig(2, 8, 0, 4, 3)))
    assert keys == {
        "convs.0.Q.weight", "convs.0.Q.bias", "convs.0.W.weight", "convs.0.W.bias",
        "convs.1.Q.weight", "convs.1.Q.bias", "convs.1.W.weight", "convs.1.W.bias",
        "head.G1.weight", "head.G1.bias", "head.G2.weight",
    }  # fmt: skip
    shapes = expected_shapes(ModelConfig(2, 8, 0, 4, 3))
    assert shapes["convs.0.W.weight"] == (3, 4)  # d_b = 0: W_1 sees n_u only
    assert shapes["convs.1.W.weight"] == (3, 12)  # own h_p(0) first


class RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = ""


def test_pickled_code_is_refused_and_never_run(tmp_path):
    global MARKER
    MARKER = str(tmp_path / "pwned")
    payload = {"format_version": 1, "config": CONFIG.to_dict(), "state_dict": {}, "hook": RunsCode()}
    with open(tmp_path / "evil.pt", "wb") as f:
        torch.save(payload, f, pickle_module=pickle)
    with pytest.raises(CheckpointError, match="refused"):
        read_checkpoint(str(tmp_path / "evil.pt"))
    assert not os.path.exists(MARKER), "loading the checkpoint ran its code"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda raw: raw.update(format_version=0), "format_version must be 1, got 0"),
        (lambda raw: raw.pop("config"), "needs a 'config' dict"),
        (lambda raw: raw["config"].update(num_layers=3), "num_layers must be even"),
        (lambda raw: raw["config"].update(pooling="sum"), "pooling must be one of"),
        (lambda raw: raw["config"].update(extra=1), "unknown keys ['extra']"),
        (lambda raw: raw["state_dict"].pop("head.G2.weight"), "missing ['head.G2.weight']"),
        (lambda raw: raw["state_dict"].update(bogus=torch.zeros(1)), "unexpected ['bogus']"),
        (lambda raw: raw["state_dict"]["convs.0.W.weight"].fill_(float("nan")), "holds NaN or Inf"),
        (
            lambda raw: raw["state_dict"].update({"head.G1.bias": torch.zeros(3, dtype=torch.int64)}),
            "floating-point",
        ),
    ],
)
def test_malformed_checkpoints_are_rejected_with_the_reason(tmp_path, mutate, message):
    save_checkpoint(random_model(CONFIG), str(tmp_path / "m.pt"))
    raw = torch.load(tmp_path / "m.pt", weights_only=True)
    mutate(raw)
    torch.save(raw, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(str(tmp_path / "bad.pt"))
    assert message in str(err.value) and "bad.pt" in str(err.value)


def test_truncated_and_missing_files(tmp_path):
    save_checkpoint(random_model(CONFIG), str(tmp_path / "m.pt"))
    data = (tmp_path / "m.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        read_checkpoint(str(tmp_path / "cut.pt"))
    with pytest.raises(CheckpointError, match="cannot be read"):
        read_checkpoint(str(tmp_path / "absent.pt"))


def test_init_checkpoint_cli_writes_a_valid_checkpoint(tmp_path, capsys):
    init_main(
        ["--out", str(tmp_path / "c.pt"), "--pin-feature-dim", "7", "--num-layers", "4", "--pooling", "max"]
    )
    ckpt = read_checkpoint(str(tmp_path / "c.pt"))
    assert ckpt.config.num_layers == 4 and ckpt.config.pin_feature_dim == 7 and ckpt.config.pooling == "max"
    assert ckpt.sha256 in capsys.readouterr().out


def test_pinned_sha256_is_checked_before_parsing(tmp_path):
    sha = save_checkpoint(random_model(CONFIG), str(tmp_path / "m.pt"))
    assert read_checkpoint(str(tmp_path / "m.pt"), sha.upper()).sha256 == sha
    (tmp_path / "evil.pt").write_bytes(b"anything at all")
    with pytest.raises(CheckpointError, match="was pinned; not loaded"):
        read_checkpoint(str(tmp_path / "evil.pt"), sha)
