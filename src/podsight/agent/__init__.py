"""The agent layer: probes, identity and outputs put to work together."""
from .agent import Agent

__all__ = ["Agent"]
