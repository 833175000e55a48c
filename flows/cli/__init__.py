"""The ``adsrec`` command line: ``main.py`` assembles the app from one module per command group
(``pipeline``, ``registry``, ``analyze``, ``serving``, ``services``, ``experiments``, ``config``);
``common.py`` holds what they share (settings loading, error-and-exit, run printing) and ``dates.py``
the run-date checks made before a flow starts. Light at import: only typer loads.
"""
