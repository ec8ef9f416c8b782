"""dreamer-core: a staged World-Models / Dreamer toolkit.

Stages: 01 collect -> 02 train world model -> 03 train behavior -> 04 evaluate.
See docs/architecture.md for the architecture; `dreamer --help` for the CLI.

The Python API (``dreamer_core.api``: models, update steps, data, run loading, the stages as
functions, the encoder registry, callbacks) is re-exported here lazily: ``import
dreamer_core`` stays cheap (no torch), and ``dreamer_core.WorldModel`` imports the API on
first use.
"""

__version__ = "0.5.0"

# The names of dreamer_core.api (tests/test_api.py keeps the two lists equal).
_API = (
    "ActorCritic", "Batch", "BehaviorConfig", "Callback", "Dataset", "DreamerError", "EncoderConfig",
    "OptimConfig", "SequenceSampler", "WorldModel", "WorldModelConfig", "behavior_config", "behavior_update",
    "collect", "decoder_names", "encoder_names", "evaluate", "load_agent", "load_policy", "load_world_model",
    "make_optimizer", "register_decoder", "register_encoder", "train", "train_behavior", "train_world_model",
    "world_model_config", "world_model_update",
)
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> object:
    """Import ``dreamer_core.api`` on the first use of one of its names (PEP 562)."""
    if name in _API:
        from dreamer_core import (
            api,  # the package face's lazy re-export (tests/test_architecture.py)
        )

        return getattr(api, name)
    raise AttributeError(f"module 'dreamer_core' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
