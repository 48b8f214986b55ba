"""The checks: the verdict, the --fail-under gate, the checks before and after the attacks, the label order."""
