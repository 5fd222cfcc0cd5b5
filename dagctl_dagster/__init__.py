"""dagctl-dagster."""
