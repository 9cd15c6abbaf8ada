"""Worker processes: one supervisor, N workers serving the same ports (kms-server run --workers N)."""
