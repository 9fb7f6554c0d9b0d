"""Command-line entry points (``kvnode``, ``kvctl``), installed as ``raftkv.cli``.

They stay thin: parse arguments, call into ``raftkv``, print. The package is installed
under ``raftkv.cli`` rather than as a top-level ``cli`` package, which would clash with
any other distribution that made the same choice.
"""
