"""Rollouts on vLLM servers for server-mode RL: the servers (``ovr-train rollout-servers``), the pool
that shards prompts over them and broadcasts weights, its key and its CPU weight transfer."""
