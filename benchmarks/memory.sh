#!/usr/bin/env bash
# Memory bounded by configuration, not by graph size: embed 1M pins whose 1024-wide feature table
# is several times the 1 GiB heap given to Spark (local mode: the driver is the executor).
# Usage: bash benchmarks/memory.sh [OUT_DIR]   (from the repository root, after make setup)
set -euo pipefail
out=${1:-bench-output/memory}
py=.venv/bin/python
rm -rf "$out"
$py jobs/demo/generate_graph.py --out "$out/input" --pins 1000000 --boards 145000 --feature-dim 1024 --uniform-neighbors
$py jobs/demo/init_checkpoint.py --out "$out/model.pt" --pin-feature-dim 1024 --hidden-dim 64 --embed-dim 32
echo "feature table on disk: $(du -sh "$out/input/pins" | cut -f1)"
# Broadcasting the pins' projections (244 MB) would not fit a 1 GiB driver: cap broadcasts at 64 MB.
/usr/bin/time -v $py jobs/embed.py --pins "$out/input/pins" --edges "$out/input/edges" \
    --board-neighbors "$out/input/board_neighbors" --pin-neighbors "$out/input/pin_neighbors" \
    --checkpoint "$out/model.pt" --out "$out/out" --device cpu --broadcast-projections-mb 64 \
    --conf spark.driver.memory=1g --conf spark.ui.showConsoleProgress=false 2>&1 \
    | grep -vE "^\s+(org|io|com|commons|javax)\." | tail -40
