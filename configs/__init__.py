"""Recipe configs shipped with mmer (YAML)."""
