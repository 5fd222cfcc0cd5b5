"""The Kubernetes backend's outside-system layer: pure manifest builders (`specs`), the thin client layer
(`client`), and the in-pod Dockerfile selector (`dockerfile`). No Dagster import here."""

from .specs import (
    GitCheckout as GitCheckout,
    build_image_tags as build_image_tags,
    build_kaniko_job as build_kaniko_job,
    build_plan_labels as build_plan_labels,
    build_resource_name as build_resource_name,
    build_runner_argv as build_runner_argv,
    build_step_pod as build_step_pod,
)
