"""One embedding job, run in this process (`local`) or on Ray model replicas (`ray_runner`, with
`ray_tasks` for what runs inside Ray).

Empty on purpose: a Ray worker that unpickles a task imports `ray_tasks` alone, not torch."""
