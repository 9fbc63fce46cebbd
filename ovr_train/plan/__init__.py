"""Before a GPU hour: memory per GPU and time per step of a recipe (``ovr-train plan``), checked again
when a stage starts. `plan` holds the estimates, `command` the recipe resolution, the CLI and the
stages' start-up check, `gpu_check` the measurement to hold them against."""

from ovr_train.plan.command import check_before_training, cli, recipe_settings
from ovr_train.plan.plan import Hardware, Plan, plan_recipe

__all__ = ["Hardware", "Plan", "check_before_training", "cli", "plan_recipe", "recipe_settings"]
