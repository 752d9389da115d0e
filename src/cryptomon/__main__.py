"""`python -m cryptomon ...`: the same CLI as the `cryptomon` command."""

from cryptomon.cli import main

main()
