"""The typed, validated model of the kca AI server, built from group_data/."""

from .load import build_stack, load_stack
from .model import Problem, Service, Stack, StackError

__all__ = ["Problem", "Service", "Stack", "StackError", "build_stack", "load_stack"]
