"""Tests of the durable log stores."""
