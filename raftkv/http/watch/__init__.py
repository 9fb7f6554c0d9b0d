"""HTTP watches: the worker's feed of changes, its watchers and their streams."""
