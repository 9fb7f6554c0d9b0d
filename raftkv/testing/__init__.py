"""Test support for raftkv: the cluster simulator, the fault proxy, the linearizability
checker for client histories and the fixtures that start real clusters.

The modules here are used by the test suites and by chaos runs; nothing in the server
imports them.
"""
