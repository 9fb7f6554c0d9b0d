"""``python -m raftkv.kvbench`` runs kvbench."""

from .cli import main

main()
