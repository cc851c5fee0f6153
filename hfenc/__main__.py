"""`python -m hfenc`: the same as the `hfenc` command."""

from .cli import main

main()
