"""The SQLite backend: one gateway, one database file."""
