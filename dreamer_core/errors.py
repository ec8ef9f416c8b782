"""User-facing errors.

Everything that is the user's to fix (a bad flag, a missing optional dependency, a corrupt
file, a dataset whose spaces do not fit) is raised as a :class:`DreamerError` whose message
is one paragraph naming the problem and the fix. The CLI prints that paragraph and exits
with code 2, without a traceback. Nothing else in the package catches these.

Imports: nothing from dreamer_core (bottom layer).
"""

from __future__ import annotations


class DreamerError(Exception):
    """A problem the user can fix; the message says what it is and how to fix it."""

    exit_code = 2


class MissingDependencyError(DreamerError):
    """An optional dependency is not installed."""

    def __init__(self, package: str, extra: str, purpose: str):
        super().__init__(
            f"{purpose} needs the optional package '{package}', which is not installed. "
            f"Install it with: pip install 'dreamer-core[{extra}]' "
            f"(or, from a checkout: pip install -e '.[{extra}]')."
        )
        self.package = package
        self.extra = extra


class UnknownEnvError(DreamerError):
    """An environment id that no registry knows."""


class DatasetError(DreamerError):
    """A dataset that is missing, corrupt, of another schema version, or does not fit."""


class SpacesMismatchError(DatasetError):
    """Data whose observation or action spaces differ from those already stored."""
