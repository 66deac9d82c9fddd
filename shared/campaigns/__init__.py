"""Replay campaigns: re-run chosen runs with changed settings and compare the pairs (DESIGN "Campaigns
and A/B")."""
