"""`python -m dreamer_core ...` is the same as the `dreamer` command."""

from dreamer_core.cli import main

main()
