"""Pure-Python twins of the compiled core, written for reading and for differential tests."""
