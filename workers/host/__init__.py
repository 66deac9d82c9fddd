"""This host's own health: counting its faults (health.py), checking itself (probe.py), and taking
itself out of the queue and back (guard.py)."""
