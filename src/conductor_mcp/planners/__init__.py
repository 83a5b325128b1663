"""Planners turn a task into a workflow: the conductor (local GGUF or remote) and fixed strategies."""

from .base import Planner, PlanResult
from .factory import make_planner

__all__ = ["PlanResult", "Planner", "make_planner"]
