"""kvbench: the load generator that measures raftkv, and the baselines it compares against."""
