"""`cachemesh doctor`: pure checks (checks.py) over what the probe (probe.py) finds on this host."""
