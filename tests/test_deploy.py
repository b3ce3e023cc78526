"""The deployment artifacts in deploy/, each checked by the validator its users would trust, and
each checked against the real node.

- systemd units: `systemd-analyze verify` with nothing on stderr, and `systemd-analyze security
  --offline` under the thresholds docs/deploy.md states; the node runs under the kernel's
  equivalent of MemoryDenyWriteExecute=, and the container unit's own command line runs the image.
- cloud-init user data: `cloud-init schema` of Debian 13's cloud-init 25.1, and shellcheck on every
  script it carries (runcmd as cloud-init itself writes it out).
- Kubernetes: the DaemonSet and every render of the Helm chart (the Helm 4 SDK, no helm binary)
  pass `kubernetes-validate --strict` for the oldest and newest Kubernetes it bundles; the chart
  refuses bad values with the messages it chose; the two agree on the pod; the PrometheusRule is
  the rules file.
- Every CACHEMESH_* variable any artifact sets is one the node reads, and resolves through
  mesh.options as the node would resolve it.

scripts/deploy_tools.sh installs the tools; a missing tool skips here, which fails a CI run.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mesh.config import Config
from mesh.lab.nodes import SECRET, free_ports
from mesh.lab.poll import wait_until
from mesh.node.persistence import STATUS_ADDR_FILE
from mesh.options import OPTIONS, resolve
from mesh.values import parse_size

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
CONTAINER_UNIT = DEPLOY / "systemd" / "cachemesh.service"
PIP_UNIT = DEPLOY / "systemd" / "cachemesh-pip.service"
ENV_FILE = DEPLOY / "systemd" / "cachemesh.env"
USER_DATA = DEPLOY / "cloud-init" / "user-data.yaml"
DAEMONSET = DEPLOY / "kubernetes" / "daemonset.yaml"
CHART = DEPLOY / "helm" / "cachemesh"
RULES = DEPLOY / "prometheus" / "cachemesh.rules.yml"
TOOLS = Path(os.environ.get("CACHEMESH_TOOLS", "/var/cache/cachemesh/tools"))
INSTALL = "scripts/deploy_tools.sh installs it"

# The exposure `systemd-analyze security` may give each unit (0.0 safest, 10.0 worst), stated and
# explained in docs/deploy.md, as its --threshold takes it: in tenths (15 is 1.5). The container
# unit's figure scores the docker client alone.
THRESHOLDS = {PIP_UNIT.name: 14, CONTAINER_UNIT.name: 9}
# The oldest and newest Kubernetes whose schemas kubernetes-validate bundles.
KUBERNETES = ("1.25.0", "1.37.0")
# Custom resources kubernetes-validate has no schema for: it warns and passes them.
CRDS = {"ServiceMonitor", "PrometheusRule"}
# Variables the node reads that are not flags of `cachemesh run` (mesh/cli.py, mesh/options.py).
NON_FLAG_VARIABLES = {"CACHEMESH_SECRET", "CACHEMESH_SECRET_FILE", "CACHEMESH_PRESET", "CACHEMESH_LOG_LEVEL"}
KNOWN_VARIABLES = {option.env for option in OPTIONS} | NON_FLAG_VARIABLES


# --- finding the tools -----------------------------------------------------------------------


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed ({INSTALL})")
    return path


def _cloud_init_env() -> tuple[list[str], dict[str, str]]:
    """Debian 13's cloud-init, unpacked, on Debian 12's python3 (scripts/deploy_tools.sh)."""
    root = TOOLS / "cloud-init" / "root"
    script = root / "usr" / "bin" / "cloud-init"
    if not script.exists():
        pytest.skip(f"cloud-init 25.1 not unpacked in {root} ({INSTALL})")
    env = {**os.environ, "PYTHONPATH": str(root / "usr" / "lib" / "python3" / "dist-packages")}
    return ["/usr/bin/python3", str(script)], env


def _kubernetes_validate() -> str:
    beside = Path(sys.executable).parent / "kubernetes-validate"  # the virtualenv's
    path = str(beside) if os.access(beside, os.X_OK) else shutil.which("kubernetes-validate")
    if path is None:
        pytest.skip(f"kubernetes-validate not installed ({INSTALL})")
    return path


def _helm() -> Any:
    try:
        import helm_python
    except ImportError:
        pytest.skip(f"helm-python-sdk (the Helm 4 SDK) not installed ({INSTALL})")
    return helm_python


def _yaml() -> Any:
    try:
        import yaml
    except ImportError:
        pytest.skip("PyYAML not installed (scripts/monitoring_tools.sh installs it)")
    return yaml


def _run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, **kwargs)


# --- reading the artifacts ---------------------------------------------------------------------


def unit_entries(path: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) of a unit file, continuation lines joined as systemd joins them."""
    entries: list[tuple[str, str, str]] = []
    section, pending = "", ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith(("#", ";"))):
            continue
        if line.startswith("[") and not pending:
            section = line.strip("[]")
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        key, _, value = line.partition("=")
        entries.append((section, key.strip(), value.strip()))
    return entries


def unit_values(path: Path, key: str) -> list[str]:
    return [value for _, k, value in unit_entries(path) if k == key]


def env_file_variables(text: str, commented: bool = False) -> dict[str, str]:
    """NAME=value lines, as docker run --env-file and systemd's EnvironmentFile= read them; with
    `commented`, the examples written as `# CACHEMESH_...=` lines too."""
    pattern = r"^(?:# )?(CACHEMESH_\w+)=(.*)$" if commented else r"^(\w+)=(.*)$"
    return dict(re.findall(pattern, text, re.M))


def user_data() -> dict[str, Any]:
    doc: dict[str, Any] = _yaml().safe_load(USER_DATA.read_text())
    return doc


def written_file(path: str) -> str:
    files = {entry["path"]: entry["content"] for entry in user_data()["write_files"]}
    return str(files[path])


def docker_run_flags(argv: list[str]) -> list[str]:
    """The options of a `docker run` command line, without the image and the ones that say how
    the container is supervised (systemd: --rm in the foreground; cloud-init: --detach and a
    restart policy), which are what differs between the two."""
    start = argv.index("run") + 1
    image_at = len(argv) - 1
    supervision = {"--rm", "--detach", "--restart", "unless-stopped", "--log-driver", "none"}
    return [arg for arg in argv[start:image_at] if arg not in supervision and not arg.startswith(">")]


def resolves(env: dict[str, str], secret_dir: Path) -> Config:
    """The node's own resolution of these variables, with the secret as the file it names."""
    unknown = {name for name in env if name.startswith("CACHEMESH_")} - KNOWN_VARIABLES
    assert not unknown, f"variables no node reads: {sorted(unknown)}"
    secret_file = secret_dir / "secret"  # every artifact gives the secret as a file of its own
    secret_file.write_text(SECRET + "\n")
    return resolve({}, {**env, "CACHEMESH_SECRET_FILE": str(secret_file)})


# --- systemd -------------------------------------------------------------------------------------


def _verify(unit: Path, root: Path | None = None) -> subprocess.CompletedProcess[str]:
    args = [_tool("systemd-analyze"), "verify", "--man=no"]
    if root is not None:
        args.append(f"--root={root}")
    return _run([*args, str(unit)])


@pytest.fixture
def pip_root(tmp_path: Path) -> Path:
    """A root where the pip unit's paths exist: the host's unit files (docker.service,
    network-online.target), and at /opt/cachemesh/bin/cachemesh the virtualenv's real entry
    point (verify checks that every command is an executable file)."""
    root = tmp_path / "root"
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(PIP_UNIT, root / "etc/systemd/system" / PIP_UNIT.name)
    entry = Path(sys.executable).parent / "cachemesh"
    (root / "opt/cachemesh/bin").mkdir(parents=True)
    shutil.copy(entry, root / "opt/cachemesh/bin/cachemesh")
    return root


def test_the_pip_unit_verifies_with_nothing_on_stderr(pip_root: Path) -> None:
    assert unit_values(PIP_UNIT, "ExecStart")[0].split()[0] == "/opt/cachemesh/bin/cachemesh"
    result = _verify(pip_root / "etc/systemd/system" / PIP_UNIT.name, root=pip_root)
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_the_container_unit_verifies_against_this_host(tmp_path: Path) -> None:
    """This host's real docker CLI and docker.service (Debian's docker.io) are what it names."""
    if not Path("/usr/bin/docker").exists():
        pytest.skip("Debian's docker.io not installed (scripts/setup.sh installs it)")
    result = _verify(CONTAINER_UNIT)
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The control: a misspelt key and a command that is not there do reach stderr."""
    broken = tmp_path / "cachemesh.service"
    text = PIP_UNIT.read_text().replace("ProtectHome=", "ProtectHomes=")
    broken.write_text(text)
    result = _verify(broken)
    assert "ProtectHomes" in result.stderr and "/opt/cachemesh/bin/cachemesh" in result.stderr


def _exposure(unit: Path, threshold: int) -> tuple[int, float, str]:
    result = _run(
        [_tool("systemd-analyze"), "security", "--offline=yes", f"--threshold={threshold}", str(unit)]
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert found, result.stdout + result.stderr
    return result.returncode, float(found.group(1)), result.stdout


@pytest.mark.parametrize("unit", [PIP_UNIT, CONTAINER_UNIT], ids=lambda p: p.name)
def test_each_unit_is_under_its_exposure_threshold(unit: Path) -> None:
    code, exposure, out = _exposure(unit, THRESHOLDS[unit.name])
    assert code == 0 and exposure <= THRESHOLDS[unit.name] / 10, out


def test_the_threshold_refuses_a_unit_without_its_sandbox(tmp_path: Path) -> None:
    """The control: the pip unit's ExecStart and user without the sandbox lines scores far above."""
    bare = tmp_path / PIP_UNIT.name
    sandbox = ("#", "Protect", "Private", "Restrict", "Capability", "SystemCall", "NoNew")
    kept = [line for line in PIP_UNIT.read_text().splitlines() if not line.startswith(sandbox)]
    bare.write_text("\n".join(kept) + "\n")
    code, exposure, _ = _exposure(bare, THRESHOLDS[PIP_UNIT.name])
    assert code != 0 and exposure > 5, exposure


@pytest.mark.parametrize("unit", [PIP_UNIT, CONTAINER_UNIT], ids=lambda p: p.name)
@pytest.mark.parametrize(
    "line", ["ProtectSystem", "CapabilityBoundingSet", "NoNewPrivileges", "SystemCallFilter", "PrivateTmp"]
)
def test_each_threshold_refuses_the_unit_without_any_one_main_line(
    unit: Path, line: str, tmp_path: Path
) -> None:
    """The thresholds are tight: losing any one of these lines crosses them."""
    weaker = tmp_path / unit.name
    weaker.write_text("".join(k for k in unit.read_text().splitlines(True) if not k.startswith(line + "=")))
    code, exposure, _ = _exposure(weaker, THRESHOLDS[unit.name])
    assert code != 0 and exposure > THRESHOLDS[unit.name] / 10, exposure


def test_the_pip_unit_gives_the_secret_as_a_credential_file(tmp_path: Path) -> None:
    assert unit_values(PIP_UNIT, "LoadCredential") == ["secret:/etc/cachemesh/secret"]
    environment = dict(v.split("=", 1) for v in unit_values(PIP_UNIT, "Environment"))
    assert environment["CACHEMESH_SECRET_FILE"] == "%d/secret"  # %d: $CREDENTIALS_DIRECTORY
    assert "CACHEMESH_SECRET" not in environment
    assert unit_values(PIP_UNIT, "StateDirectory") == ["cachemesh"]
    assert environment["CACHEMESH_DATA_DIR"] == "/var/lib/cachemesh"
    assert unit_values(PIP_UNIT, "SupplementaryGroups") == ["docker"]
    assert not unit_values(PIP_UNIT, "DynamicUser")
    # What the node gets, as it resolves it: %d made a real directory holding the secret.
    config = resolves({**environment, **env_file_variables(ENV_FILE.read_text())}, tmp_path)
    assert config.secret == SECRET.encode() and config.data_dir == "/var/lib/cachemesh"


def test_the_env_file_sets_only_variables_a_node_reads(tmp_path: Path) -> None:
    shipped = env_file_variables(ENV_FILE.read_text())
    commented = env_file_variables(ENV_FILE.read_text(), commented=True)
    assert "CACHEMESH_SECRET" not in commented
    config = resolves(commented, tmp_path)  # every example, uncommented, is a setting that resolves
    assert config.seeds == ("build-seed.internal:7611",) and shipped.keys() <= commented.keys()


def test_the_container_unit_runs_the_image_as_the_readme_says() -> None:
    argv = shlex.split(unit_values(CONTAINER_UNIT, "ExecStart")[0])
    assert argv[:2] == ["/usr/bin/docker", "run"] and argv[-1] == "${CACHEMESH_IMAGE}"
    flags = " ".join(argv)
    for part in (
        "--rm --name cachemesh",
        "--network host",
        "--volume /var/run/docker.sock:/var/run/docker.sock",
        "--volume /var/lib/cachemesh:/var/lib/cachemesh",
        "--volume /etc/cachemesh/secret:/run/secrets/cachemesh:ro",
        "--env CACHEMESH_SECRET_FILE=/run/secrets/cachemesh",
    ):
        assert part in flags
    assert "CACHEMESH_SECRET=" not in flags
    assert unit_values(CONTAINER_UNIT, "ExecStop") == ["/usr/bin/docker stop --time 20 cachemesh"]
    assert unit_values(CONTAINER_UNIT, "Restart") == ["always"]
    assert unit_values(CONTAINER_UNIT, "Requires") == ["docker.service"]
    assert "docker.service" in unit_values(CONTAINER_UNIT, "After")[0]


PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1


def _refuse_writable_executable_memory() -> None:
    """In the child before exec: the kernel's MemoryDenyWriteExecute (Linux 6.3), kept across
    execve. systemd's version is a seccomp filter with the same intent: no mapping that is
    writable and executable, and none made executable later."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        os._exit(99)


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.slow
def test_the_node_runs_under_memory_deny_write_execute(tmp_path: Path) -> None:
    """MemoryDenyWriteExecute= is the sandbox line most likely to break a Python program (a JIT,
    an FFI callback): the node starts under it, gets ready, and leaves on SIGTERM."""
    probe = _run([sys.executable, "-c", "import sys"], preexec_fn=_refuse_writable_executable_memory)
    if probe.returncode == 99:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux 6.3 or later)")
    peer, status, registry = free_ports(3)
    (tmp_path / "secret").write_text(SECRET + "\n")
    env = {
        **os.environ,
        "CACHEMESH_SECRET_FILE": str(tmp_path / "secret"),
        "CACHEMESH_DATA_DIR": str(tmp_path / "data"),
        "CACHEMESH_ENGINE": "off",
        "CACHEMESH_LISTEN": f"127.0.0.1:{peer}",
        "CACHEMESH_STATUS_LISTEN": f"127.0.0.1:{status}",
        "CACHEMESH_REGISTRY_LISTEN": f"127.0.0.1:{registry}",
        "CACHEMESH_MDNS": "off",
    }
    node = subprocess.Popen(
        [sys.executable, "-m", "mesh", "run"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_refuse_writable_executable_memory,
    )
    try:
        wait_until(lambda: _get(f"http://127.0.0.1:{status}/readyz") == 200, 30, 0.2, what="ready")
        node.send_signal(signal.SIGTERM)
        _, err = node.communicate(timeout=30)
        assert node.returncode == 0, err
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()


# --- cloud-init -----------------------------------------------------------------------------------


def _schema(path: Path) -> subprocess.CompletedProcess[str]:
    cloud_init, env = _cloud_init_env()
    return _run([*cloud_init, "schema", "--config-file", str(path)], env=env)


def test_the_user_data_passes_cloud_init_25_1s_schema() -> None:
    cloud_init, env = _cloud_init_env()
    version = _run([*cloud_init, "--version"], env=env)
    assert " 25.1." in version.stdout + version.stderr, version
    result = _schema(USER_DATA)
    assert result.returncode == 0 and "Valid schema" in result.stdout, result.stdout + result.stderr


def test_the_schema_check_refuses_an_unknown_key(tmp_path: Path) -> None:
    """The control: a misspelt key inside write_files fails, which Debian 12's 22.4 let pass."""
    broken = tmp_path / "user-data.yaml"
    broken.write_text(USER_DATA.read_text().replace('permissions: "0755"', 'permission: "0755"', 1))
    result = _schema(broken)
    assert result.returncode != 0 and "permission" in result.stdout + result.stderr, result


def _shellcheck(script: str, shell: str | None = None) -> subprocess.CompletedProcess[str]:
    args = [_tool("shellcheck"), *(["--shell", shell] if shell else []), "-"]
    return _run(args, input=script)


def test_every_script_in_the_user_data_passes_shellcheck() -> None:
    scripts = [entry for entry in user_data()["write_files"] if entry["content"].startswith("#!")]
    assert len(scripts) == 3
    for entry in scripts:
        result = _shellcheck(entry["content"])
        assert result.returncode == 0, f"{entry['path']}:\n{result.stdout}"


def test_runcmd_as_cloud_init_writes_it_passes_shellcheck() -> None:
    """cloud-init turns runcmd into a /bin/sh script with its own util.shellify."""
    cloud_init, env = _cloud_init_env()
    program = "import sys, yaml\nfrom cloudinit import util\n"
    program += "print(util.shellify(yaml.safe_load(open(sys.argv[1]))['runcmd']))"
    script = _run(["/usr/bin/python3", "-c", program, str(USER_DATA)], env=env)
    assert script.returncode == 0 and script.stdout.startswith("#!/bin/sh"), script.stderr
    assert "cachemesh-secret && /usr/local/sbin/cachemesh-start" in script.stdout
    result = _shellcheck(script.stdout)
    assert result.returncode == 0, result.stdout


def test_shellcheck_catches_a_broken_script() -> None:
    """The control: an unquoted argument in the start script is reported (SC2086)."""
    broken = written_file("/usr/local/sbin/cachemesh-start").replace("set -eu\n", "set -eu\nrm -f $1/old\n")
    result = _shellcheck(broken)
    assert result.returncode != 0 and "SC2086" in result.stdout, result.stdout


def test_the_user_data_runs_the_container_as_the_systemd_unit_does(tmp_path: Path) -> None:
    start = written_file("/usr/local/sbin/cachemesh-start")
    command = re.search(r"^docker run .*?\"\$image\"", start.replace("\\\n", " "), re.M | re.S)
    assert command, start
    ours = docker_run_flags(shlex.split(command.group(0)))
    units = docker_run_flags(shlex.split(unit_values(CONTAINER_UNIT, "ExecStart")[0]))
    assert ours == units
    assert "CACHEMESH_SECRET=" not in start
    config = resolves(env_file_variables(written_file("/etc/cachemesh/cachemesh.env")), tmp_path)
    assert config.registry_warm == ("cache/*",)


def test_the_build_runner_starts_after_wait_ready() -> None:
    gate = written_file("/usr/local/sbin/cachemesh-then-runner")
    waits = gate.index("docker exec cachemesh cachemesh wait-ready")
    assert waits < gate.index("systemctl start build-runner.service")
    runcmd = user_data()["runcmd"]
    assert runcmd.index("/usr/local/sbin/cachemesh-then-runner") == len(runcmd) - 1


# --- Kubernetes: the DaemonSet and the chart ------------------------------------------------------


def _documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in _yaml().safe_load_all(text) if doc]


def _kinds(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in docs}


def _validate(path: Path, version: str) -> subprocess.CompletedProcess[str]:
    return _run([_kubernetes_validate(), "--strict", "-k", version, str(path)])


def _assert_valid(path: Path, version: str) -> None:
    result = _validate(path, version)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "did not validate" not in out and "ERROR" not in out, out
    for warning in re.findall(r"WARN .*", out):
        assert re.search(r"Couldn't find schema for kind (\w+)", warning), warning
        assert re.search(r"kind (\w+)", warning).group(1) in CRDS, warning  # type: ignore[union-attr]


def test_the_kubernetes_versions_are_the_oldest_and_newest_bundled() -> None:
    import kubernetes_validate

    schemas = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    bundled = sorted(
        (tuple(int(n) for n in d.name.removeprefix("v").split("-")[0].split(".")) for d in schemas.iterdir()),
    )
    assert (bundled[0], bundled[-1]) == tuple(tuple(int(n) for n in v.split(".")) for v in KUBERNETES)


@pytest.mark.parametrize("version", KUBERNETES)
def test_the_daemonset_yaml_validates_strictly(version: str) -> None:
    _assert_valid(DAEMONSET, version)


def test_strict_validation_catches_a_misspelt_field(tmp_path: Path) -> None:
    """The control: an unknown field in the pod spec fails --strict."""
    broken = tmp_path / "daemonset.yaml"
    broken.write_text(DAEMONSET.read_text().replace("dnsPolicy:", "dnsPolicyy:"))
    result = _validate(broken, KUBERNETES[-1])
    assert result.returncode != 0 and "dnsPolicyy" in result.stdout + result.stderr


# Values that turn on every template and most settings, to validate what they render.
EVERYTHING = {
    "secret": {"value": "0123456789abcdef0123456789abcdef"},
    "status": {"bind": "hostIP"},
    "serviceMonitor": {"enabled": True},
    "prometheusRule": {"enabled": True},
    "cluster": "ci",
    "diskBudget": "200GiB",
    "diskHigh": "85%",
    "diskLow": "70%",
    "registryWarm": ["cache/*", "base/*"],
    "readyTimeout": "10m",
    "extraSeeds": ["build-vm-1.internal:7611"],
    "engineDataRoot": "/var/lib/docker",
    "priorityClassName": "system-node-critical",
    "nodeSelector": {"node-role.example.com/build": "true"},
    "extraEnv": [{"name": "CACHEMESH_ZONE", "value": "eu-west-1a"}],
}
DEFAULTS = {"secret": {"existingSecret": "cachemesh"}}  # the one value without a default
ENGINE_OFF = {**DEFAULTS, "engine": "off"}


def render(values: dict[str, Any], namespace: str = "cachemesh") -> dict[str, str]:
    """The chart rendered offline by the Helm 4 SDK, as `helm install` would render it (values
    checked against values.schema.json first); template path -> manifest."""
    helm = _helm()
    with helm.Chart.load(CHART) as chart:
        rendered: dict[str, str] = chart.render(
            values=values, name="cachemesh", namespace=namespace, is_install=True
        )
    return rendered


def rendered_docs(values: dict[str, Any]) -> list[dict[str, Any]]:
    out = render(values)
    return _documents("\n---\n".join(t for name, t in sorted(out.items()) if not name.endswith(".txt")))


def _pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = _kinds(docs)["DaemonSet"]["spec"]["template"]["spec"]
    return spec


def _env(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in _pod(docs)["containers"][0]["env"]}


@pytest.mark.parametrize("version", KUBERNETES)
@pytest.mark.parametrize(
    "values", [DEFAULTS, EVERYTHING, ENGINE_OFF], ids=["defaults", "everything", "engine-off"]
)
def test_every_render_of_the_chart_validates_strictly(
    values: dict[str, Any], version: str, tmp_path: Path
) -> None:
    out = render(values)
    manifests = tmp_path / "rendered.yaml"
    manifests.write_text("\n---\n".join(t for name, t in sorted(out.items()) if not name.endswith(".txt")))
    _assert_valid(manifests, version)


def test_the_chart_renders_what_each_value_asks_for() -> None:
    kinds = _kinds(rendered_docs(EVERYTHING))
    assert set(kinds) == {
        "DaemonSet",
        "Secret",
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
        "PrometheusRule",
    }
    defaults = _kinds(rendered_docs(DEFAULTS))
    assert set(defaults) == {"DaemonSet", "Service", "ServiceAccount", "PriorityClass"}  # no Secret
    off = rendered_docs(ENGINE_OFF)
    assert "docker-socket" not in {v["name"] for v in _pod(off)["volumes"]}
    assert _env(off)["CACHEMESH_ENGINE"] == "off"


def test_the_status_page_stays_on_localhost_unless_bound_to_the_host_ip() -> None:
    """The default weakens nothing: the status page on 127.0.0.1, the probes reaching it there
    (the pod's loopback is the node's, where the kubelet runs). hostIP is the explicit value that
    puts it on the node's address, for a scraper; the probes then dial the pod (node) IP."""
    for docs in (rendered_docs(DEFAULTS), _documents(DAEMONSET.read_text())):
        container = _pod(docs)["containers"][0]
        assert _env(docs)["CACHEMESH_STATUS_LISTEN"] == "127.0.0.1:7612"
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert container[probe]["httpGet"]["host"] == "127.0.0.1"
            assert container[probe]["httpGet"]["port"] == 7612
        assert "status" not in {p["name"] for p in container["ports"]}
    exposed = rendered_docs({**DEFAULTS, "status": {"bind": "hostIP"}})
    assert _env(exposed)["CACHEMESH_STATUS_LISTEN"] == "$(HOST_IP):7612"
    assert "host" not in _pod(exposed)["containers"][0]["readinessProbe"]["httpGet"]


def test_the_probes_ask_the_node_its_own_questions() -> None:
    container = _pod(rendered_docs(DEFAULTS))["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"


def test_the_daemonset_yaml_and_the_charts_default_render_agree() -> None:
    """So that they cannot drift: the same pod (host network, DNS policy, probes, env, mounts,
    volumes, security context, resources, tolerations), update strategy, and peers Service."""
    ours = _kinds(_documents(DAEMONSET.read_text()))
    chart = _kinds(rendered_docs(DEFAULTS))
    assert ours["DaemonSet"]["spec"]["template"]["spec"] == chart["DaemonSet"]["spec"]["template"]["spec"]
    assert ours["DaemonSet"]["spec"]["updateStrategy"] == chart["DaemonSet"]["spec"]["updateStrategy"]
    for kind in ("Service", "PriorityClass"):
        mine = {k: v for k, v in ours[kind].items() if k not in ("metadata", "spec")}
        theirs = {k: v for k, v in chart[kind].items() if k not in ("metadata", "spec")}
        assert mine == theirs, kind
    assert ours["Service"]["spec"]["ports"] == chart["Service"]["spec"]["ports"]
    assert ours["Service"]["metadata"]["name"] == chart["Service"]["metadata"]["name"]
    assert ours["ServiceAccount"]["automountServiceAccountToken"] is False
    assert chart["ServiceAccount"]["automountServiceAccountToken"] is False
    pod = _pod(_documents(DAEMONSET.read_text()))
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"


@pytest.mark.parametrize(
    "values", [DEFAULTS, EVERYTHING, ENGINE_OFF], ids=["defaults", "everything", "engine-off"]
)
def test_the_pod_environment_resolves_as_the_node_resolves_it(values: dict[str, Any], tmp_path: Path) -> None:
    """Every variable the chart sets is one the node reads, and together they make a Config the
    node accepts: the kubelet's $(HOST_IP) and the downward API filled in as it would."""
    env = {}
    for name, value in _env(rendered_docs(values)).items():
        if isinstance(value, dict):  # valueFrom: the downward API
            value = {"status.hostIP": "192.0.2.10", "spec.nodeName": "build-7"}.get(
                value.get("fieldRef", {}).get("fieldPath", ""), ""
            )
        env[name] = value.replace("$(HOST_IP)", "192.0.2.10")
    config = resolves(env, tmp_path)
    assert config.advertise == "192.0.2.10:7611" and config.node_name == "build-7"
    assert config.seeds[0] == "cachemesh-peers.cachemesh.svc.cluster.local:7611"
    assert config.mdns is False and config.secret == SECRET.encode()


def test_the_daemonset_yaml_environment_resolves_too(tmp_path: Path) -> None:
    env = {}
    for name, value in _env(_documents(DAEMONSET.read_text())).items():
        env[name] = value.replace("$(HOST_IP)", "192.0.2.10") if isinstance(value, str) else "build-7"
    config = resolves(env, tmp_path)
    assert config.status_listen == "127.0.0.1:7612" and config.registry_listen == "127.0.0.1:7613"


def test_the_prometheus_rule_is_the_rules_file_itself() -> None:
    rule = _kinds(rendered_docs(EVERYTHING))["PrometheusRule"]
    assert rule["spec"]["groups"] == _yaml().safe_load(RULES.read_text())["groups"]
    link = CHART / "files" / "cachemesh.rules.yml"
    assert link.is_symlink() and link.resolve() == RULES.resolve()


def test_the_chart_lints_clean() -> None:
    helm = _helm()
    report = helm.lint(CHART, DEFAULTS, strict=True)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems and not report["errors"], report


REFUSED = {
    "no secret": ({}, "no cluster secret: set secret.existingSecret"),
    "two secrets": (
        {"secret": {"existingSecret": "a", "value": "0123456789abcdef0123"}},
        "set one of secret.existingSecret and secret.value, not both",
    ),
    "short secret": ({"secret": {"value": "tooshort"}}, "secret.value is 8 bytes"),
    "port too high": ({**DEFAULTS, "ports": {"status": 70000}}, "at '/ports/status': maximum"),
    "port zero": ({**DEFAULTS, "ports": {"peer": 0}}, "at '/ports/peer': minimum"),
    "port not a number": ({**DEFAULTS, "ports": {"registry": "http"}}, "at '/ports/registry'"),
    "ports collide": ({**DEFAULTS, "ports": {"status": 7611}}, "must differ"),
    "budget in words": ({**DEFAULTS, "diskBudget": "20 gigs"}, 'diskBudget "20 gigs" is not a size'),
    "budget negative": ({**DEFAULTS, "diskBudget": "-5GB"}, 'diskBudget "-5GB" is not a size'),
    "budget unit": ({**DEFAULTS, "diskBudget": "20GiG"}, 'diskBudget "20GiG" is not a size'),
    "watermark": ({**DEFAULTS, "diskHigh": "120%"}, 'diskHigh "120%" is not a percentage'),
    "low without high": ({**DEFAULTS, "diskLow": "70%"}, "diskLow needs diskHigh"),
    "timeout": ({**DEFAULTS, "readyTimeout": "soon"}, 'readyTimeout "soon" is not a duration'),
    "nothing to share": (
        {**ENGINE_OFF, "registry": {"enabled": False}},
        "engine: off with registry.enabled: false",
    ),
    "scraping localhost": (
        {**DEFAULTS, "serviceMonitor": {"enabled": True}},
        "serviceMonitor.enabled needs status.bind: hostIP",
    ),
    "unknown value": ({**DEFAULTS, "diskbudget": "20GB"}, "diskbudget"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_the_chart_refuses_bad_values_with_its_message(case: str) -> None:
    helm = _helm()
    values, message = REFUSED[case]
    with pytest.raises(helm.HelmError) as refused:
        render(values)
    assert message in str(refused.value), str(refused.value)


BUDGETS = ["20GB", "500MiB", "1.5TB", "1048576", "20 GB", "20gb", "3k", "2TiB", "off", 0, 123456789]


@pytest.mark.parametrize("budget", BUDGETS, ids=str)
def test_a_budget_the_chart_accepts_is_one_the_node_accepts(budget: str | int) -> None:
    env = _env(rendered_docs({**DEFAULTS, "diskBudget": budget}))
    assert env["CACHEMESH_DISK_BUDGET"] == str(budget)
    parse_size(env["CACHEMESH_DISK_BUDGET"])  # raises if the node would refuse it


@pytest.mark.parametrize("budget", ["20 gigs", "-5GB", "20GiG", "GB", "1,5GB"])
def test_a_budget_the_chart_refuses_is_one_the_node_refuses(budget: str) -> None:
    with pytest.raises(ValueError):
        parse_size(budget)


# --- the container unit's command line, run ----------------------------------------------------


@pytest.fixture
def unit_files(workdir: Path) -> Iterator[dict[str, Path]]:
    ports = free_ports(3, "0.0.0.0")
    files = {"data": workdir / "data", "secret": workdir / "secret", "env": workdir / "cachemesh.env"}
    files["data"].mkdir()
    files["secret"].write_text(SECRET + "\n")
    files["secret"].chmod(0o600)
    # This machine's network is the container's: its ports must be free here, not the defaults.
    files["env"].write_text(
        f"CACHEMESH_LISTEN=0.0.0.0:{ports[0]}\nCACHEMESH_STATUS_LISTEN=127.0.0.1:{ports[1]}\n"
        f"CACHEMESH_REGISTRY_LISTEN=127.0.0.1:{ports[2]}\nCACHEMESH_MDNS=false\n"
        "CACHEMESH_NODE_NAME=unit\nCACHEMESH_EXCLUDE=cachemesh*\n"
    )
    yield files


@pytest.mark.docker
@pytest.mark.container
@pytest.mark.slow
def test_the_container_units_commands_run_the_image(engines: Any, unit_files: dict[str, Path]) -> None:
    """ExecStartPre, ExecStart and ExecStop of deploy/systemd/cachemesh.service, as written but
    for the host paths, against a private engine: the hardened container (no capabilities, a
    read-only root, the secret as a file) gets healthy and ready, answers wait-ready, and stops
    cleanly; --rm leaves nothing behind."""
    from tests.test_container import build_image

    builder = engines("builder")
    build_image(builder)
    host_paths = {  # the host side of each mount, and the image
        "--volume /var/run/docker.sock:": f"--volume {builder.sock}:",
        "--volume /var/lib/cachemesh:": f"--volume {unit_files['data']}:",
        "--volume /etc/cachemesh/secret:": f"--volume {unit_files['secret']}:",
        "--env-file /etc/cachemesh/cachemesh.env": f"--env-file {unit_files['env']}",
        "${CACHEMESH_IMAGE}": "cachemesh:test",
    }
    assert all(part in unit_values(CONTAINER_UNIT, "ExecStart")[0] for part in host_paths)

    def command(key: str) -> list[str]:
        line = unit_values(CONTAINER_UNIT, key)[0].removeprefix("-")
        for unit_path, here in host_paths.items():
            line = line.replace(unit_path, here, 1)
        argv = shlex.split(line)
        assert argv[0] == "/usr/bin/docker"
        return argv[1:]

    builder.cli(*command("ExecStartPre"), check=False)  # `-`: no stale container is fine
    docker_env = {
        **os.environ,
        "DOCKER_HOST": builder.host,
        "DOCKER_CONFIG": str(builder.cli_config()),
    }
    client = subprocess.Popen(
        [builder.kind.cli_path, *command("ExecStart")],
        env=docker_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until(
            lambda: (
                builder.cli(
                    "inspect", "--format", "{{.State.Health.Status}}", "cachemesh", check=False
                ).stdout.strip()
                == "healthy"
            ),
            90,
            1.0,
            what="HEALTHCHECK healthy",
        )
        ready = builder.cli("exec", "cachemesh", "cachemesh", "wait-ready", "--timeout", "60s", check=False)
        assert ready.returncode == 0, ready.stdout + ready.stderr
        inspect = json.loads(builder.cli("inspect", "cachemesh").stdout)[0]
        assert inspect["HostConfig"]["ReadonlyRootfs"] is True
        assert inspect["HostConfig"]["CapDrop"] == ["ALL"]
        assert not any(e.startswith("CACHEMESH_SECRET=") for e in inspect["Config"]["Env"])
        assert (unit_files["data"] / STATUS_ADDR_FILE).exists()  # the data dir is the host's
        builder.cli(*command("ExecStop"))
        out, _ = client.communicate(timeout=60)
        assert client.returncode == 0, out
        assert "stopped" in out
        gone = builder.cli("inspect", "cachemesh", check=False)
        assert gone.returncode != 0  # --rm
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
        builder.cli("rm", "-f", "cachemesh", check=False)
