"""Developer tooling, not part of the library's runtime (product code never imports it):

- local services for tests and the demo — `procs` (process groups, ports), `service` (state
  files), `s3` (moto), `mlflow_server`, `ray_head` (+ `ray_start`, the patched ``ray
  start``), `control` (stop by state file);
- fault drills (`drills`).
"""
