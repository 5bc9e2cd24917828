"""Settings: one field table, loaded from defaults, TOML file, environment and flags."""

from datamcp.config.settings import Settings, load_settings

__all__ = ["Settings", "load_settings"]
