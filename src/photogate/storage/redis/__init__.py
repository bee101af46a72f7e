"""The Redis backend: several gateways sharing one Redis."""
