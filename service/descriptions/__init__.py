"""Class descriptions: named sets, each POST adding a new immutable version."""
