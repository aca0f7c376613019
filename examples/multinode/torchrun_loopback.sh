#!/usr/bin/env bash
# Two "nodes" of one process each, both on this machine and joined over 127.0.0.1: the launch of a multi-node run
# with torchrun, small enough to try anywhere (CPU, gloo). On real nodes run one torchrun per node, each with its own
# --node_rank and the first node's address as --master_addr.
#
# Usage: examples/multinode/torchrun_loopback.sh RUN_DIR [PORT [OVERRIDES...]]
#   RUN_DIR    the run directory of all ranks. Pass it explicitly: each node composes the config itself, and the
#              default `outputs/<task>/${now:...}` would resolve to a different time (a different directory) on each.
#   PORT       a free TCP port on 127.0.0.1 for the rendezvous (default 29500)
#   OVERRIDES  further ls-train overrides, e.g. data=synthetic trainer.max_epochs=1
set -euo pipefail

run_dir="${1:?usage: $0 RUN_DIR [PORT [OVERRIDES...]]}"
port="${2:-29500}"
shift $(( $# < 2 ? $# : 2 ))

launch=(torchrun --nnodes=2 --nproc_per_node=1 --master_addr=127.0.0.1 --master_port="$port")
# Lightning detects torchrun (TorchElasticEnvironment): num_nodes x devices must equal torchrun's world size
args=(trainer.num_nodes=2 trainer.devices=1 trainer.accelerator=cpu trainer.strategy=ddp "hydra.run.dir=$run_dir" "$@")

"${launch[@]}" --node_rank=1 -m ls_lightning.cli.train "${args[@]}" &
node1=$!
trap 'kill "$node1" 2>/dev/null || true' EXIT  # if node 0 fails, do not leave node 1 waiting for it
"${launch[@]}" --node_rank=0 -m ls_lightning.cli.train "${args[@]}"
wait "$node1"
