"""``GET /objectives``: the registered objectives, their capabilities and knobs, as data."""
