"""Lightning callbacks, one per file, each with one job; their names are exported by :mod:`ls_lightning.integration`."""
