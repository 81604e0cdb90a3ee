"""compfair: lm-evaluation-harness tasks that measure how compression changes fairness.

Kept import-light on purpose: `compfair.pth` imports `compfair_tasks._hook` at every interpreter start.
"""

__version__ = "0.1.0"
