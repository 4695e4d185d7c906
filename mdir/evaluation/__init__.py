"""`mdir eval` / `mdir metrics`: evaluation of image folders, shard datasets and registered
generators. Sits above training, the registry and metrics (it combines them); nothing
below imports it."""
