"""ALTO: adaptive LoRA tuning and orchestration.

`alto.policy` makes every decision; `sim/` (SimPy) and `alto.executor` (torch) carry
them out. See README.md for the CLI and file formats.
"""

__version__ = "0.1.0"
