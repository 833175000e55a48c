"""What every benchmark reports about the machine it ran on (components/machine.py, shared with the
experiments)."""

from components.machine import cpu_model, describe_machine

__all__ = ["cpu_model", "describe_machine"]
