"""The web dashboard (static ES modules) served under /ui."""
