"""Other projects' own test suites, run unchanged on protoshim's loops."""
