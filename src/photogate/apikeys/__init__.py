"""API keys: records (a protocol, SQLite and Redis backends) and the service that issues,
checks and counts them (:mod:`.service`)."""
