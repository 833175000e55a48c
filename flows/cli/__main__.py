"""``python -m flows.cli``: the ``adsrec`` command line (flows/cli/main.py)."""

from flows.cli.main import main

main()
