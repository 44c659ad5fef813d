"""``python -m loraplex.cli serve ...``: what the ``loraplex`` console script runs."""

from loraplex.cli import main

main()
