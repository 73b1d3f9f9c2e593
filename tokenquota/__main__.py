"""`python -m tokenquota`: the same as the `tokenquota` command."""

from .cli import main

main()
