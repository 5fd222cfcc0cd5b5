"""Entrypoints that run inside step pods (and as local subprocesses): `python -m dagctl_dagster.runner.<name>`.

Each reports its results to Dagster through dagster-pipes and exits with a meaningful code:
`dbt_pipes` runs one dbt command line, `sqlmesh_apply` verifies and applies an approved SQLMesh plan.
"""
