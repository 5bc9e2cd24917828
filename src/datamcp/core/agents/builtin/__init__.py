"""Built-in agents: useful with no language model."""
