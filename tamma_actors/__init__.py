"""tamma_actors."""
