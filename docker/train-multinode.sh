#!/usr/bin/env bash
# OVR-7B RL on several nodes: rollouts on nodes of their own (`ovr-train rollout-servers`: one vLLM
# server per GPU), the policy trained on N nodes by `accelerate launch` with DeepSpeed ZeRO-3. This
# only writes the launch commands for recipes/ovr-7b-rl.yaml. Run it in the project venv (`make setup`,
# on every node, same checkout and paths; the image of docker/ serves, it does not train).
#
#   export OVR_ROLLOUT_KEY=<a secret>      # on every node: the rollout servers' dev routes need it
#   # each rollout node (as many as you like): one vLLM server per GPU, ports ROLLOUT_PORT..+7
#   ROLE=rollout BIND_ADDR=10.0.0.9 bash docker/train-multinode.sh
#   # each training node, NODE_RANK 0..NUM_TRAIN_NODES-1 (rank 0's address is MAIN_ADDR)
#   ROLE=train NUM_TRAIN_NODES=2 NODE_RANK=0 MAIN_ADDR=10.0.0.1 ROLLOUT_ADDRS="10.0.0.9 10.0.0.10" \
#       bash docker/train-multinode.sh
#   DRY_RUN=1 …   prints the command instead of running it
#
# The global batch stays the recipe's 512 prompts x 16 responses: gradient_accumulation_steps is divided
# by the number of training nodes. The rollout pool (ovr_train/rollout_pool.py) splits each update's
# prompts over every server of every rollout node and, after each update, broadcasts the weights once
# to all of them over NCCL: training rank 0 hosts that group's rendezvous on VLLM_GROUP_PORT, which
# the rollout nodes must reach. tests/test_rollout_pool.py runs this path on CPU (two servers, gloo
# instead of NCCL); the NCCL broadcast itself needs GPUs and has not run here.
set -euo pipefail
cd "$(dirname "$0")/.."

ROLE=${ROLE:?ROLE=rollout or ROLE=train}
RECIPE=${RECIPE:-recipes/ovr-7b-rl.yaml}
MODEL=${MODEL:-runs/ovr-7b-coldstart}       # the policy's starting point: the cold-start checkpoint
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
ROLLOUT_PORT=${ROLLOUT_PORT:-8000}
VLLM_GROUP_PORT=${VLLM_GROUP_PORT:-51216}
MAX_MODEL_LEN=${MAX_MODEL_LEN:-53248}       # = the recipe's vllm_max_model_length (prompt + 48k)
RECIPE_ACCUMULATION=1024                    # the recipe's gradient_accumulation_steps on one node (rollouts_per_update rederives it)

run() {
  if [[ -n "${DRY_RUN:-}" ]]; then printf '%q ' "$@"; echo; else exec "$@"; fi
}

case "$ROLE" in
  rollout)
    BIND_ADDR=${BIND_ADDR:?the address of this node that the trainers reach (not 0.0.0.0 on a public network)}
    run ovr-train rollout-servers --model "$MODEL" --gpus "$GPUS_PER_NODE" \
      --max-model-len "$MAX_MODEL_LEN" --gpu-memory-utilization 0.9 \
      --host "$BIND_ADDR" --port "$ROLLOUT_PORT"
    ;;
  train)
    NUM_TRAIN_NODES=${NUM_TRAIN_NODES:?number of training nodes}
    NODE_RANK=${NODE_RANK:?rank of this node, 0..NUM_TRAIN_NODES-1}
    MAIN_ADDR=${MAIN_ADDR:?address of training rank 0}
    ROLLOUT_ADDRS=${ROLLOUT_ADDRS:-${ROLLOUT_ADDR:?ROLLOUT_ADDRS: addresses of the rollout nodes, space-separated}}
    URLS=""
    for addr in $ROLLOUT_ADDRS; do
      for ((i = 0; i < GPUS_PER_NODE; i++)); do URLS+="${URLS:+,}http://$addr:$((ROLLOUT_PORT + i))"; done
    done
    if (( RECIPE_ACCUMULATION % NUM_TRAIN_NODES )); then
      echo "NUM_TRAIN_NODES must divide $RECIPE_ACCUMULATION (the recipe's accumulation steps)" >&2
      exit 2
    fi
    run accelerate launch \
      --num_machines "$NUM_TRAIN_NODES" --machine_rank "$NODE_RANK" \
      --main_process_ip "$MAIN_ADDR" --main_process_port "${MAIN_PORT:-29500}" \
      --num_processes $(( NUM_TRAIN_NODES * GPUS_PER_NODE )) \
      --use_deepspeed --deepspeed_config_file recipes/deepspeed/zero3.json \
      -m ovr_train.rl --config "$RECIPE" \
      model_name_or_path="$MODEL" \
      vllm_mode=server vllm_server_base_url="$URLS" \
      vllm_group_port="$VLLM_GROUP_PORT" vllm_enable_sleep_mode=false \
      gradient_accumulation_steps=$(( RECIPE_ACCUMULATION / NUM_TRAIN_NODES ))
    ;;
  *)
    echo "ROLE must be rollout or train, not $ROLE" >&2
    exit 2
    ;;
esac
