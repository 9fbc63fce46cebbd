"""Rollouts on vLLM for server-mode RL: one data-parallel ``vllm serve`` per node
(``ovr-train rollout-servers``), the trainer's TRL client of it, its key and its CPU weight transfer."""
