"""Helpers shared by the test suite: processes to start and kill, and bounded waiting."""
