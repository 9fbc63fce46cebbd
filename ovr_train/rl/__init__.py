"""Stage two: multimodal RL with verifiable rewards (``ovr-train rl``, ``python -m ovr_train.rl``).

- `train`: ``main(config)`` read top to bottom, and the recipe's parser;
- `trainer`: the GRPO and PPO trainers, one override of TRL's rollout step calling named steps;
- `critic`: PPO's value model, GAE and value loss; `dynamic_sampling`: DAPO's filter-and-refill;
- `rewards`: the reward registry (the eval grader is the accuracy reward); `data`: RL rows;
- `prompt_limits`: one image cap for trainer and rollout servers, prompts over budget counted;
- `vision_sync`: every rank runs the vision tower in every forward (ZeRO-3 with mixed rows).
"""
