"""dreamer-core: a staged World-Models / Dreamer toolkit.

Stages: 01 collect -> 02 train world model -> 03 train behavior -> 04 evaluate.
See docs/architecture.md for the architecture; `dreamer --help` for the CLI.
"""

__version__ = "0.3.0"
