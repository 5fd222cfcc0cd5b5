"""The Kubernetes Pod Security Standards ("baseline" and "restricted", as of Kubernetes 1.34) as a check
of a pod spec, so tests can hold every generated manifest to them offline.

`pod_security_violations(pod_spec, "restricted")` returns what the API server's Pod Security admission
would name, one line per violation (empty: the pod is admitted at that level). The rules follow
https://kubernetes.io/docs/concepts/security/pod-security-standards/ field by field.
"""

from __future__ import annotations

from typing import Any

BASELINE_CAPABILITIES = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
                         "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                "net.ipv4.tcp_keepalive_probes"}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}
SECURE_SECCOMP = {"RuntimeDefault", "Localhost"}


def _containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec.get("containers", []), *spec.get("ephemeralContainers", [])]


def _baseline(spec: dict[str, Any]) -> list[str]:
    problems = [f"host namespaces: {key}=true" for key in ("hostNetwork", "hostPID", "hostIPC") if spec.get(key)]
    problems += [f"hostPath volume {volume['name']}" for volume in spec.get("volumes", []) if "hostPath" in volume]
    pod_context = spec.get("securityContext") or {}
    contexts = [("pod", pod_context)]
    for container in _containers(spec):
        name = container["name"]
        context = container.get("securityContext") or {}
        contexts.append((f"container {name}", context))
        if context.get("privileged"):
            problems.append(f"container {name}: privileged")
        added = set((context.get("capabilities") or {}).get("add", []))
        if added - BASELINE_CAPABILITIES:
            problems.append(f"container {name}: adds capabilities {sorted(added - BASELINE_CAPABILITIES)}")
        if any(port.get("hostPort") for port in container.get("ports", [])):
            problems.append(f"container {name}: hostPort")
        if context.get("procMount", "Default") != "Default":
            problems.append(f"container {name}: procMount {context['procMount']}")
    for where, context in contexts:
        if (context.get("seccompProfile") or {}).get("type") == "Unconfined":
            problems.append(f"{where}: seccompProfile Unconfined")
        if (context.get("appArmorProfile") or {}).get("type") == "Unconfined":
            problems.append(f"{where}: appArmorProfile Unconfined")
        selinux = context.get("seLinuxOptions") or {}
        if selinux.get("type", "") not in SELINUX_TYPES or selinux.get("user") or selinux.get("role"):
            problems.append(f"{where}: seLinuxOptions {selinux}")
    unsafe = [item["name"] for item in pod_context.get("sysctls", []) if item["name"] not in SAFE_SYSCTLS]
    problems += [f"pod: unsafe sysctl {name}" for name in unsafe]
    return problems


def _restricted(spec: dict[str, Any]) -> list[str]:
    problems = [f"volume {volume['name']}: type not allowed" for volume in spec.get("volumes", [])
                if not set(volume) - {"name"} <= RESTRICTED_VOLUMES]
    pod_context = spec.get("securityContext") or {}
    if pod_context.get("runAsUser") == 0:
        problems.append("pod: runAsUser 0")
    pod_non_root = pod_context.get("runAsNonRoot") is True
    pod_seccomp = (pod_context.get("seccompProfile") or {}).get("type") in SECURE_SECCOMP
    for container in _containers(spec):
        name = container["name"]
        context = container.get("securityContext") or {}
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"container {name}: allowPrivilegeEscalation is not false")
        if context.get("runAsNonRoot") is False or not (pod_non_root or context.get("runAsNonRoot") is True):
            problems.append(f"container {name}: runAsNonRoot is not true")
        if context.get("runAsUser") == 0:
            problems.append(f"container {name}: runAsUser 0")
        seccomp = (context.get("seccompProfile") or {}).get("type")
        if not (seccomp in SECURE_SECCOMP or (seccomp is None and pod_seccomp)):
            problems.append(f"container {name}: seccompProfile is not RuntimeDefault or Localhost")
        capabilities = context.get("capabilities") or {}
        if "ALL" not in capabilities.get("drop", []):
            problems.append(f"container {name}: capabilities do not drop ALL")
        if set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"container {name}: adds capabilities other than NET_BIND_SERVICE")
    return problems


def pod_security_violations(pod_spec: dict[str, Any], level: str) -> list[str]:
    """What keeps `pod_spec` (camelCase, as sent) from the Pod Security level `baseline` or `restricted`."""
    problems = _baseline(pod_spec)
    if level == "restricted":
        problems += _restricted(pod_spec)
    return problems
