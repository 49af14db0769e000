"""`python -m paystream` is the `paystream` command."""

from paystream.cli import main

main()
