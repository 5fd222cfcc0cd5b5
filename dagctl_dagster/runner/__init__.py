"""Entrypoints that run inside step pods (and as local subprocesses): `python -m dagctl_dagster.runner.<name>`.

Each reports its results to Dagster through dagster-pipes and exits with a meaningful code:
`dbt_pipes` runs one dbt command line, `sqlmesh_apply` verifies and applies an approved SQLMesh plan.
`step_guard` stands in front of every local step process: the declared environment only, its own process
group, and no life after the run worker.
"""
