"""gridhive package."""
