"""`shoald`: the composition root of the daemon every host runs."""
