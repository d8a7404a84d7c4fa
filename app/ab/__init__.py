"""Shadow and A/B experiments: sticky traffic splitting between served models, feedback, statistics,
the automatic decision (issue 18; the Serve ingress, the CLI and the dashboard are still to come)."""
