#!/usr/bin/env bash
# Peer venv for benchmarks/peer_update.py: sheeprl 0.8.4 on CPU torch 2.13.0, outside the repo.
#
#     bash benchmarks/setup_peer.sh [VENV]        # default VENV=/work/peer-venv
#
# Idempotent: reuses an existing venv and lets pip skip what is already installed. Installs
# nothing into the repo's own environment. torch is pinned through a constraints file so that
# pip resolving sheeprl (and lightning/torchmetrics) can never swap in another torch build.
set -euo pipefail

VENV="${1:-/work/peer-venv}"
TORCH_VERSION=2.13.0
SHEEPRL_VERSION=0.8.4

if [[ ! -x "$VENV/bin/python" ]]; then
    python3.11 -m venv "$VENV"
fi
PIP=("$VENV/bin/pip" install --disable-pip-version-check)

CONSTRAINTS="$VENV/peer-constraints.txt"
printf 'torch==%s\n' "$TORCH_VERSION" > "$CONSTRAINTS"

"${PIP[@]}" -c "$CONSTRAINTS" "torch==$TORCH_VERSION"
"${PIP[@]}" -c "$CONSTRAINTS" "sheeprl==$SHEEPRL_VERSION"

"$VENV/bin/python" - <<'EOF'
import importlib.metadata as md
import torch
print("peer venv ok: torch", torch.__version__, "| sheeprl", md.version("sheeprl"),
      "| cuda available:", torch.cuda.is_available())
EOF
