"""`python -m hfenc`: the same as the `hfenc` command."""

from hfenc.cli import main

main()
