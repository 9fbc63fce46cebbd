"""Before a GPU hour: memory per GPU and time per step of a recipe (``ovr-train plan``), checked again
when a stage starts; the GPU check script's measurements (``gpu_check``)."""

from ovr_train.plan.plan import Hardware, Plan, check_before_training, cli, plan_recipe

__all__ = ["Hardware", "Plan", "check_before_training", "cli", "plan_recipe"]
