"""Per-target validation: latency, memory and energy records, cross-backend equivalence, the
report (report.json against its schema, report.html with plots) and remote devices."""
