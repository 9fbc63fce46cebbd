#!/usr/bin/env bash
# OVR-7B RL on several nodes: rollouts on nodes of their own (`ovr-train rollout-servers`: one
# data-parallel vLLM per node, every GPU an engine, all nodes behind node 0's one endpoint), the policy
# trained on N nodes by `accelerate launch` with DeepSpeed ZeRO-3. This only writes the launch commands
# for recipes/ovr-7b-rl.yaml. Run it in the project venv (`make setup`, on every node, same checkout and
# paths; the image of docker/ serves, it does not train).
#
#   export OVR_ROLLOUT_KEY=<a secret>      # on every node: the rollout server's dev routes need it
#   # each rollout node, ROLLOUT_RANK 0..ROLLOUT_NODES-1 (rank 0 runs the API on ROLLOUT_PORT and
#   # vLLM's DP coordinator on DP_RPC_PORT; the others run engines only, --headless)
#   ROLE=rollout ROLLOUT_NODES=2 ROLLOUT_RANK=0 BIND_ADDR=10.0.0.9 bash docker/train-multinode.sh
#   ROLE=rollout ROLLOUT_NODES=2 ROLLOUT_RANK=1 ROLLOUT_ADDR=10.0.0.9 bash docker/train-multinode.sh
#   # each training node, NODE_RANK 0..NUM_TRAIN_NODES-1 (rank 0's address is MAIN_ADDR)
#   ROLE=train NUM_TRAIN_NODES=2 NODE_RANK=0 MAIN_ADDR=10.0.0.1 ROLLOUT_ADDR=10.0.0.9 \
#       bash docker/train-multinode.sh
#   DRY_RUN=1 …   prints the command instead of running it
#
# The global batch stays the recipe's 512 prompts x 16 responses: gradient_accumulation_steps is divided
# by the number of training nodes. vLLM balances the prompts over every engine of every rollout node and
# forwards each weight push to all of them; the weights go once, over NCCL, in one group of training
# rank 0 and every vLLM worker: rank 0 hosts its rendezvous on VLLM_GROUP_PORT, which the rollout nodes
# must reach. tests/test_rollout_pool.py runs this path on CPU (one server, 2 engines, gloo instead of
# NCCL); the NCCL broadcast and the headless nodes need GPUs and have not run here (docs/rollouts.md).
set -euo pipefail
cd "$(dirname "$0")/.."

ROLE=${ROLE:?ROLE=rollout or ROLE=train}
RECIPE=${RECIPE:-recipes/ovr-7b-rl.yaml}
MODEL=${MODEL:-runs/ovr-7b-coldstart}       # the policy's starting point: the cold-start checkpoint
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
ROLLOUT_PORT=${ROLLOUT_PORT:-8000}
DP_RPC_PORT=${DP_RPC_PORT:-13345}           # vLLM's data-parallel RPC port on rollout node 0
VLLM_GROUP_PORT=${VLLM_GROUP_PORT:-51216}
MAX_MODEL_LEN=${MAX_MODEL_LEN:-53248}       # = the recipe's vllm_max_model_length (prompt + 48k)
RECIPE_ACCUMULATION=1024                    # the recipe's gradient_accumulation_steps on one node (rollouts_per_update rederives it)

run() {
  if [[ -n "${DRY_RUN:-}" ]]; then printf '%q ' "$@"; echo; else exec "$@"; fi
}

case "$ROLE" in
  rollout)
    ROLLOUT_NODES=${ROLLOUT_NODES:-1}
    ROLLOUT_RANK=${ROLLOUT_RANK:-0}
    args=(--model "$MODEL" --gpus "$GPUS_PER_NODE" --max-model-len "$MAX_MODEL_LEN" --gpu-memory-utilization 0.9)
    if (( ROLLOUT_NODES > 1 )); then
      HEAD=${ROLLOUT_ADDR:-${BIND_ADDR:?ROLLOUT_ADDR: the address of rollout node 0}}
      args+=(--data-parallel-size $(( ROLLOUT_NODES * GPUS_PER_NODE )) --data-parallel-address "$HEAD" --data-parallel-rpc-port "$DP_RPC_PORT")
    fi
    if (( ROLLOUT_RANK > 0 )); then
      run ovr-train rollout-servers "${args[@]}" --headless --data-parallel-start-rank $(( ROLLOUT_RANK * GPUS_PER_NODE ))
    else
      BIND_ADDR=${BIND_ADDR:?the address of this node that the trainers reach (not 0.0.0.0 on a public network)}
      run ovr-train rollout-servers "${args[@]}" --host "$BIND_ADDR" --port "$ROLLOUT_PORT"
    fi
    ;;
  train)
    NUM_TRAIN_NODES=${NUM_TRAIN_NODES:?number of training nodes}
    NODE_RANK=${NODE_RANK:?rank of this node, 0..NUM_TRAIN_NODES-1}
    MAIN_ADDR=${MAIN_ADDR:?address of training rank 0}
    ROLLOUT_ADDR=${ROLLOUT_ADDR:?ROLLOUT_ADDR: the address of rollout node 0 (its one endpoint serves every rollout GPU)}
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
      vllm_mode=server vllm_server_base_url="http://$ROLLOUT_ADDR:$ROLLOUT_PORT" \
      vllm_group_port="$VLLM_GROUP_PORT" vllm_enable_sleep_mode=false \
      gradient_accumulation_steps=$(( RECIPE_ACCUMULATION / NUM_TRAIN_NODES ))
    ;;
  *)
    echo "ROLE must be rollout or train, not $ROLE" >&2
    exit 2
    ;;
esac
