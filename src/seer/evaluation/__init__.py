"""`seer evaluate`: base vs SEER on the held-out split: clustering, detection against
external probes, faithfulness, retention, and the report."""
