"""Where the gateway keeps its state: tasks, nodes, the queue and runtime settings."""
